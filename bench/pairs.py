"""Relay latency of many active pairs at once, from one process:
``python -m bench.pairs --port P --accounts FILE --connector ID:PASSWORD``.

One connector session (subscribed to ``devices/+/up``) and ``--pairs``
device sessions of its instance (accounts ``[[device_id, password], ...]``
from --accounts, from --first). Each device sends a ``--size`` byte PUBLISH
on its up topic ``--rate`` times a second (at a random phase, one in flight
at most: a device whose answer is late skips its turn), the connector
answers each on that device's down topic with the same payload, and the
device notes the round trip. After ``--warmup`` seconds it measures for
``--duration`` seconds and prints one JSON line: samples, p50, p99 and max
in milliseconds, turns skipped. QoS 0; sessions are set up one after the
other before anything is measured.
"""

from __future__ import annotations

import argparse
import json
import random
import selectors
import time

from linchpin_common.contract import wire

from . import ws
from .procs import raise_nofile


class Frames:
    """Server frames (never masked) off a byte stream: payloads of binary frames."""

    def __init__(self, leftover: bytes = b""):
        self.buf = bytearray(leftover)

    def feed(self, data: bytes):
        self.buf += data
        for opcode, payload in ws.server_frames(self.buf):
            if opcode in (0x0, 0x2):
                yield payload
            elif opcode == 0x8:
                raise ws.Closed("closed by the server")


class Device:
    __slots__ = ("i", "sock", "frames", "parser", "up", "sent_at", "next_at")

    def __init__(self, i, sock, leftover, up, next_at):
        self.i, self.sock, self.up, self.next_at = i, sock, up, next_at
        self.frames = Frames(leftover)
        self.parser = wire.Parser(wire.MAX_REMAINING_LENGTH)
        self.sent_at = None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="latency of many pairs (see module docstring)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--accounts", required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--connector", required=True, help="INSTANCE_ID:PASSWORD")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rate", type=float, default=5.0, help="requests a second per device")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=20.0)
    args = p.parse_args(argv)
    raise_nofile(args.pairs + 64)
    with open(args.accounts) as f:
        accounts = json.load(f)[args.first:args.first + args.pairs]
    payload = random.Random(args.size).randbytes(args.size)
    key = ws.new_key()
    user, _, password = args.connector.partition(":")
    csock, crest = ws.connect(args.port, "/mqtt")
    crest = ws.mqtt_setup(csock, crest, key, user, password, "bench-pairs", ["devices/+/up"])
    downs = {}
    devices = []
    period = 1.0 / args.rate
    for i, (device_id, device_password) in enumerate(accounts):
        sock, rest = ws.connect(args.port, "/mqtt")
        rest = ws.mqtt_setup(sock, rest, key, device_id, device_password, "",
                             [f"devices/{device_id}/down", "$gateway/status"], wait_status=True)
        up = ws.client_frame(wire.encode_publish(f"devices/{device_id}/up".encode(), payload), key)
        downs[f"devices/{device_id}/up"] = ws.client_frame(
            wire.encode_publish(f"devices/{device_id}/down".encode(), payload), key)
        devices.append(Device(i, sock, rest, up, 0.0))
    sel = selectors.DefaultSelector()
    cframes, cparser = Frames(crest), wire.Parser(wire.MAX_REMAINING_LENGTH)
    csock.setblocking(False)
    sel.register(csock, selectors.EVENT_READ, None)
    start = time.monotonic() + 0.2
    for d in devices:
        d.sock.setblocking(False)
        d.next_at = start + random.uniform(0, period)
        sel.register(d.sock, selectors.EVENT_READ, d)
    t0, t1 = start + args.warmup, start + args.warmup + args.duration
    rtts: list[float] = []
    skipped = 0
    while True:
        now = time.monotonic()
        if now >= t1:
            break
        for d in devices:
            if d.next_at <= now:
                d.next_at += period
                if d.sent_at is not None:
                    skipped += now >= t0
                    continue
                d.sent_at = now
                d.sock.sendall(d.up)
        timeout = max(0.0, min(d.next_at for d in devices) - time.monotonic())
        for k, _ in sel.select(timeout):
            d = k.data
            sock = csock if d is None else d.sock
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise SystemExit("pairs: a session was closed by the server")
            if d is None:  # the connector: answer each request on its device's down topic
                out = []
                for payload_bytes in cframes.feed(chunk):
                    for packet in cparser.feed(payload_bytes):
                        if isinstance(packet, wire.Publish):
                            out.append(downs[packet.topic])
                if out:
                    csock.setblocking(True)
                    csock.sendall(b"".join(out))
                    csock.setblocking(False)
                continue
            for payload_bytes in d.frames.feed(chunk):
                for packet in d.parser.feed(payload_bytes):
                    if isinstance(packet, wire.Publish) and packet.topic.endswith("/down") and d.sent_at is not None:
                        now = time.monotonic()
                        if now >= t0:
                            rtts.append(now - d.sent_at)
                        d.sent_at = None
    rtts.sort()

    def pct(q):
        return round(rtts[min(len(rtts) - 1, int(q / 100 * len(rtts)))] * 1000, 2) if rtts else None

    print(json.dumps({"pairs": len(devices), "rate_per_pair": args.rate, "size": args.size, "samples": len(rtts),
                      "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": round(rtts[-1] * 1000, 2) if rtts else None,
                      "skipped": skipped}), flush=True)
    for d in devices:
        d.sock.close()
    csock.close()


if __name__ == "__main__":
    main()
