"""A minimal RFC 6455 client side for the load generators, over plain sockets.

Cheap on purpose, so the client is never what limits a measurement:

* every frame a client sends is built once (:func:`client_frame`): header,
  masking key and masked payload are precomputed, and the load loops send
  slices of one big buffer holding the same frame repeated. Each connection
  uses one random masking key for all its frames; RFC 6455 asks for a fresh
  key per frame, which no server checks and which matters only against
  cache-poisoning proxies, not on loopback.
* what a client receives is never buffered or copied: :class:`Counter` is a
  byte-counting state machine over WebSocket frame headers and the MQTT fixed
  headers inside them. It counts the PUBLISH packets of exactly the expected
  size (the echo of what the peer sent), counts anything else apart, and
  compares the first packets byte for byte, so a relay that corrupts or
  reorders bytes is noticed.

The handshake and the MQTT CONNECT/SUBSCRIBE exchange (:class:`SetupReader`)
use the gateway's own codec (``linchpin_gateway.wire``); they run once per
connection, outside the measured window.
"""

from __future__ import annotations

import base64
import os
import socket

from linchpin_common.contract import wire
from linchpin_common.rawws import client_frame, mask, new_key  # noqa: F401 (the load generators use ws.*)

TIMEOUT = 30.0


class HandshakeError(Exception):
    pass


def connect(port: int, path: str, protocol: str | None = "mqtt", host: str = "127.0.0.1",
            timeout: float = TIMEOUT) -> tuple[socket.socket, bytes]:
    """A blocking, TCP_NODELAY socket after a successful opening handshake,
    and any bytes that arrived after the 101 response."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(handshake_request(host, port, path, protocol))
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            sock.close()
            raise HandshakeError(f"connection closed during the handshake: {buf[:200]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/") else b"?"
    if status != b"101":
        sock.close()
        raise HandshakeError(f"handshake refused: {head[:200]!r}")
    return sock, rest


def handshake_request(host: str, port: int, path: str, protocol: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- setup phase: whole messages through the real codec ------------------------


def server_frames(buf: bytearray):
    """(opcode, payload) of each complete frame at the start of ``buf`` (a
    server's: never masked), taken out of it; an incomplete one stays."""
    while len(buf) >= 2:
        n, pos = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return
            n, pos = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                return
            n, pos = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < pos + n:
            return
        opcode, payload = buf[0] & 0x0F, bytes(buf[pos:pos + n])
        del buf[:pos + n]
        yield opcode, payload


class Closed(Exception):
    pass


class SetupReader:
    """Reads whole server frames and decodes MQTT packets with wire.Parser.

    Used before the measured window only. ``raw`` keeps the bytes of any
    frame not consumed yet, to hand over to a :class:`Counter`.
    """

    def __init__(self, sock: socket.socket, leftover: bytes = b""):
        self.sock = sock
        self.raw = bytearray(leftover)
        self.parser = wire.Parser(wire.MAX_REMAINING_LENGTH)
        self.packets: list = []

    def _frame(self):
        """(opcode, payload) of the next complete frame in raw, or None."""
        raw = self.raw
        if len(raw) < 2:
            return None
        b0, b1 = raw[0], raw[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if len(raw) < 4:
                return None
            n = int.from_bytes(raw[2:4], "big")
            pos = 4
        elif n == 127:
            if len(raw) < 10:
                return None
            n = int.from_bytes(raw[2:10], "big")
            pos = 10
        if b1 & 0x80:
            raise Closed("server sent a masked frame")
        if len(raw) < pos + n:
            return None
        payload = bytes(raw[pos:pos + n])
        del raw[:pos + n]
        return b0 & 0x0F, payload

    def next_packet(self):
        while not self.packets:
            frame = self._frame()
            if frame is None:
                chunk = self.sock.recv(262144)
                if not chunk:
                    raise Closed("connection closed")
                self.raw += chunk
                continue
            opcode, payload = frame
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                raise Closed(f"server closed the WebSocket (code {code}, {payload[2:]!r})")
            if opcode == 0x9:
                self.sock.sendall(client_frame(payload, new_key(), 0xA))
                continue
            if opcode in (0x0, 0x2):
                self.packets.extend(self.parser.feed(payload))
        return self.packets.pop(0)

    def expect(self, kind):
        packet = self.next_packet()
        if not isinstance(packet, kind):
            raise Closed(f"expected {kind.__name__}, got {packet!r}")
        return packet

    def leftover(self) -> bytes:
        if self.packets or self.parser.buffered:
            raise Closed(f"unexpected packets after setup: {self.packets!r}")
        return bytes(self.raw)


def mqtt_setup(sock, leftover: bytes, key: bytes, username: str | None, password: str | None,
               client_id: str, filters: list[str], wait_status: bool = False) -> bytes:
    """CONNECT, SUBSCRIBE `filters` at QoS 0; returns unconsumed raw bytes.

    Raises Closed unless CONNACK is 0 and every filter is granted.
    """
    connect_packet = wire.encode(wire.Connect(
        client_id=client_id, username=username,
        password=None if password is None else password.encode(),
        keep_alive=300, clean_session=True))
    subscribe = wire.encode(wire.Subscribe(1, tuple((f, 0) for f in filters)))
    sock.sendall(client_frame(connect_packet, key))
    reader = SetupReader(sock, leftover)
    connack = reader.expect(wire.Connack)
    if connack.return_code != 0:
        raise Closed(f"CONNACK {connack.return_code}")
    sock.sendall(client_frame(subscribe, key))
    suback = reader.expect(wire.Suback)
    if any(code == 0x80 for code in suback.return_codes):
        raise Closed(f"SUBACK refused: {suback.return_codes}")
    if wait_status:
        reader.expect(wire.Publish)
    return reader.leftover()


# -- measured phase: counting, no buffering ---------------------------------------


class Counter:
    """Counts PUBLISH packets equal to `expect` in a stream of server frames.

    ``feed(buf, n)`` takes the first `n` bytes of `buf` (a bytearray the
    caller reuses for recv_into) and returns how many expected packets they
    completed. Partial WebSocket headers are carried over in ``carry``; the
    caller must put those bytes in front of the next read (see :func:`pump`).
    Control frames from the server (ping) are answered by the caller through
    ``pings``. Only sizes are tracked, so nothing is copied, except the
    byte-for-byte comparison of the first `check` packets.
    """

    def __init__(self, expect: bytes, check: int = 200):
        self.expect = expect
        self.expect_len = len(expect)
        self.first = expect[0]
        self.check = check
        self.mismatch = 0
        self.other = 0  # complete MQTT packets that were not the expected echo
        self.ws_left = 0  # payload bytes left in the current data frame
        self.m_left = -1  # bytes left in the current MQTT packet; -1: at a header
        self.m_match = False
        self.m_hdr = bytearray()  # an MQTT fixed header split across frames
        self.ctrl = None  # (opcode, bytes still needed, collected) of a control frame
        self.pings: list[bytes] = []
        self.closed = None

    def feed(self, buf, n: int) -> tuple[int, int]:
        """(expected packets completed, bytes to carry to the next read)."""
        count = 0
        pos = 0
        while pos < n:
            if self.ctrl is not None:
                opcode, need, got = self.ctrl
                take = min(need, n - pos)
                got += buf[pos:pos + take]
                pos += take
                need -= take
                if need:
                    self.ctrl = (opcode, need, got)
                    continue
                self.ctrl = None
                if opcode == 0x9:
                    self.pings.append(bytes(got))
                elif opcode == 0x8:
                    self.closed = bytes(got)
                continue
            ws_left = self.ws_left
            if not ws_left:
                # A frame header: 2, 4 or 10 bytes (server frames are unmasked).
                if n - pos < 2:
                    return count, n - pos
                b0 = buf[pos]
                ln = buf[pos + 1]
                if ln & 0x80:
                    raise Closed("server sent a masked frame")
                if ln == 126:
                    if n - pos < 4:
                        return count, n - pos
                    ln = (buf[pos + 2] << 8) | buf[pos + 3]
                    pos += 4
                elif ln == 127:
                    if n - pos < 10:
                        return count, n - pos
                    ln = int.from_bytes(buf[pos + 2:pos + 10], "big")
                    pos += 10
                else:
                    pos += 2
                opcode = b0 & 0x0F
                if opcode >= 0x8:
                    self.ctrl = (opcode, ln, bytearray())
                    if not ln:
                        self.ctrl = None
                        if opcode == 0x8:
                            self.closed = b""
                        elif opcode == 0x9:
                            self.pings.append(b"")
                    continue
                if not ln:
                    continue
                ws_left = ln
            end = pos + ws_left
            if end > n:
                end = n
            self.ws_left = ws_left - (end - pos)
            # MQTT bytes buf[pos:end]
            while pos < end:
                m_left = self.m_left
                if m_left > 0:
                    if end - pos >= m_left:
                        pos += m_left
                        self.m_left = -1
                        if self.m_match:
                            count += 1
                        else:
                            self.other += 1
                    else:
                        self.m_left = m_left - (end - pos)
                        pos = end
                    continue
                # at an MQTT fixed header
                if not self.m_hdr and end - pos >= 5:
                    first = buf[pos]
                    b = buf[pos + 1]
                    if b < 128:
                        length, hl = b, 2
                    else:
                        length, hl, shift, i = b & 0x7F, 2, 7, pos + 2
                        while True:
                            b = buf[i]
                            length |= (b & 0x7F) << shift
                            i += 1
                            hl += 1
                            if b < 128 or hl == 5:
                                break
                            shift += 7
                    total = hl + length
                    match = first == self.first and total == self.expect_len
                    if match and self.check and pos + total <= end:
                        self.check -= 1
                        if buf[pos:pos + total] != self.expect:
                            self.mismatch += 1
                    pos += hl
                else:
                    # A header split across frames or reads: byte by byte.
                    h = self.m_hdr
                    h.append(buf[pos])
                    pos += 1
                    if len(h) < 2 or (h[-1] & 0x80 and len(h) < 5):
                        continue
                    first = h[0]
                    length, shift = 0, 0
                    for b in h[1:]:
                        length |= (b & 0x7F) << shift
                        shift += 7
                    match = first == self.first and len(h) + length == self.expect_len
                    self.m_hdr = bytearray()
                self.m_match = match
                if length == 0:
                    self.m_left = -1
                    if match:
                        count += 1
                    else:
                        self.other += 1
                else:
                    self.m_left = length
        return count, 0


def pump_step(sock, counter: Counter, rbuf: bytearray, rview: memoryview, carry: int) -> tuple[int, int]:
    """One recv_into + count. Returns (expected packets, carry); raises Closed at EOF."""
    n = sock.recv_into(rview[carry:])
    if not n:
        raise Closed("connection closed by the server")
    n += carry
    got, carry = counter.feed(rbuf, n)
    if carry:
        rbuf[:carry] = rbuf[n - carry:n]
    return got, carry
