"""Many idle sessions from one process: non-blocking sockets, one epoll loop.

    python -m bench.sessions --target gw --port P --accounts FILE --first 0 --count 500
        [--concurrency 8 | --concurrency 0] [--start-at MONOTONIC] [--retry] [--hold]

Each session: TCP connect, WebSocket opening handshake, then for ``gw``
MQTT CONNECT with a device account from --accounts (JSON list of
``[device_id, password]``) and SUBSCRIBE to ``devices/<id>/down`` and
``$gateway/status``; it is *ready* once the CONNACK 0, the SUBACK and the
first status message arrived. ``broker`` does the same anonymously (client
id ``bench-<id>``), ``bare`` stops after the handshake (path /device).

--concurrency N keeps at most N sessions in their opening phase (a gradual
ramp, for the memory figure); 0 opens all of them at once (the storm), at
--start-at (a ``time.monotonic()`` value shared by several processes).
--retry: a CONNACK other than 0, a refused or dropped connection is retried
after a window of 1 s doubling to --max-backoff seconds (default 8; the app
and the connector use 60), until --deadline; --jitter spread (the default)
draws each wait between a tenth of the window and all of it, as the app and
the connector do (gateway_client.backoff); stretch waits the window plus up
to 20 %, as they did before.

--sources N spreads the sessions over N loopback source addresses
(127.1.x.y), as phones come from many: the gateway's limits per address
(1,024 connections, 32 logins pending) would otherwise be what is measured.
--keep-alive K is the keep-alive of CONNECT (default 300); each ready
session sends a PINGREQ every K seconds from its CONNACK on, as a client
must (a ramp or a storm spreads them as a fleet's are spread).
Prints ``READY {json}`` when every session is ready or has failed for good;
with --hold it then keeps them open (and pinging) until a line (or EOF) on
stdin, and prints ``CLOSED {json}`` (pings sent, sessions the server closed)
after closing them.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import json
import random
import selectors
import socket
import sys
import time

from linchpin_common.contract import wire
from linchpin_common.gateway_client import backoff

from . import ws
from .procs import raise_nofile

CONNECTING, HANDSHAKE, MQTT, READY, WAITING, FAILED = range(6)


class Session:
    __slots__ = ("i", "user", "password", "state", "sock", "buf", "out", "parser", "t_start",
                 "t_first_connack", "first_code", "t_accepted", "t_ready", "readies", "attempts", "codes",
                 "got_suback", "got_status", "connack_ok", "retry_at", "errors")

    def __init__(self, i, user, password):
        self.i, self.user, self.password = i, user, password
        self.state = WAITING
        self.sock = None
        self.t_first_connack = self.first_code = self.t_accepted = self.t_ready = None
        self.attempts = 0
        self.readies = 0  # times it became ready (with --reconnect, more than once)
        self.codes: list = []
        self.errors: list = []
        self.retry_at = 0.0


class Runner:
    def __init__(self, args, accounts):
        self.args = args
        self.sel = selectors.DefaultSelector()
        self.sessions = [Session(i, u, p) for i, (u, p) in enumerate(accounts)]
        self.waiting = list(reversed(self.sessions))  # not started yet (pop from the end)
        self.retrying: list[Session] = []
        self.opening = 0
        self.done = 0
        self.key = ws.new_key()
        self.t0 = None
        self.pings_due: list[tuple[float, int, int]] = []  # (when, session index, its readies), a heap
        self.ping_frame = ws.client_frame(wire.encode(wire.Pingreq()), self.key)
        self.pings = 0
        self.closed_after_ready = 0

    # -- per session -------------------------------------------------------

    def start(self, s: Session, now: float) -> None:
        s.attempts += 1
        s.state = CONNECTING
        s.buf = bytearray()
        s.out = b""
        s.parser = wire.Parser(wire.MAX_REMAINING_LENGTH)
        s.got_suback = s.got_status = s.connack_ok = False
        s.t_start = now
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.args.sources > 1:
            sock.bind((source_address(s.i % self.args.sources), 0))
        s.sock = sock
        self.opening += 1
        rc = sock.connect_ex(("127.0.0.1", self.args.port))
        if rc not in (0, errno.EINPROGRESS):
            self.fail(s, f"connect: {errno.errorcode.get(rc, rc)}", now)
            return
        self.sel.register(sock, selectors.EVENT_WRITE, s)

    def send(self, s: Session, data: bytes) -> None:
        s.out += data
        self.flush(s)

    def flush(self, s: Session) -> None:
        if s.out:
            try:
                n = s.sock.send(s.out)
            except BlockingIOError:
                n = 0
            s.out = s.out[n:]
        self.sel.modify(s.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if s.out else 0), s)

    def on_writable(self, s: Session, now: float) -> None:
        if s.state == CONNECTING:
            err = s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(s, f"connect: {errno.errorcode.get(err, err)}", now)
                return
            s.state = HANDSHAKE
            path = "/device" if self.args.target == "bare" else "/mqtt"
            self.send(s, ws.handshake_request("127.0.0.1", self.args.port, path, "mqtt"))
        else:
            self.flush(s)

    def on_readable(self, s: Session, now: float) -> None:
        try:
            chunk = s.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            if s.state == READY:
                self.dropped(s)
            else:
                self.fail(s, f"recv: {e}", now)
            return
        if s.state == READY:
            if not chunk:  # an idle session the server dropped
                self.dropped(s)
            else:
                self.ready_input(s, chunk, time.monotonic())
            return
        if not chunk:
            self.fail(s, "closed by the server", now)
            return
        s.buf += chunk
        if s.state == HANDSHAKE:
            end = s.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(s.buf[:end])
            del s.buf[:end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.fail(s, f"handshake: {head[:40]!r}", now)
                return
            if self.args.target == "bare":
                self.ready(s, now)
                return
            s.state = MQTT
            user = s.user if self.args.target == "gw" else None
            password = s.password if self.args.target == "gw" else None
            client_id = "" if self.args.target == "gw" else f"bench-{s.user}"
            connect = wire.encode(wire.Connect(client_id=client_id, username=user,
                                               password=None if password is None else password.encode(),
                                               keep_alive=self.args.keep_alive, clean_session=True))
            topics = ((f"devices/{s.user}/down", 0), ("$gateway/status", 0))
            subscribe = wire.encode(wire.Subscribe(1, topics))
            # The gateway queues packets behind a CONNECT being checked, so
            # both go at once, as a pipelining client would send them.
            self.send(s, ws.client_frame(connect, self.key) + ws.client_frame(subscribe, self.key))
        if s.state == MQTT:
            self.mqtt_input(s, now)

    def mqtt_input(self, s: Session, now: float) -> None:
        for opcode, payload in ws.server_frames(s.buf):
            if opcode == 0x8:
                self.fail(s, "WebSocket closed by the server", now)
                return
            if opcode not in (0x0, 0x2):
                continue
            for packet in s.parser.feed(payload):
                if isinstance(packet, wire.Connack):
                    code = packet.return_code
                    s.codes.append(code)
                    if s.t_first_connack is None:
                        s.t_first_connack = now - self.t0
                        s.first_code = code
                    if code != 0:
                        self.fail(s, f"CONNACK {code}", now)
                        return
                    s.connack_ok = True
                    s.t_accepted = now - self.t0
                elif isinstance(packet, wire.Suback):
                    if 0x80 in packet.return_codes:
                        self.fail(s, "SUBACK refused", now, final=True)
                        return
                    s.got_suback = True
                elif isinstance(packet, wire.Publish) and packet.topic == "$gateway/status":
                    s.got_status = True
                    self.status(s, packet.payload, now)
            if s.connack_ok and s.got_suback and (s.got_status or self.args.target != "gw"):
                self.ready(s, now)
                return

    # Hooks for a runner that does more with a session (bench.e2e_sessions).

    def status(self, s: Session, payload: bytes, now: float) -> None:
        """A ``$gateway/status`` that arrived while the session was opening."""

    def ready_input(self, s: Session, chunk: bytes, now: float) -> None:
        """Bytes of a ready session: idle here (PINGRESPs, status changes), not kept."""

    def ready(self, s: Session, now: float) -> None:
        s.state = READY
        s.t_ready = now - self.t0
        self.opening -= 1
        s.readies += 1
        if s.readies == 1:
            self.done += 1
        self.sel.modify(s.sock, selectors.EVENT_READ, s)
        heapq.heappush(self.pings_due, (now + self.args.keep_alive, s.i, s.readies))

    def dropped(self, s: Session) -> None:
        """A ready session the server closed: counted; with --reconnect
        opened again after the clients' first wait, as a client does."""
        self.sel.unregister(s.sock)
        s.sock.close()
        s.sock = None
        s.errors.append("closed by the server after ready")
        self.closed_after_ready += 1
        if self.args.reconnect:
            s.state = WAITING
            s.attempts = 0  # a client's failures start again after a session
            s.retry_at = time.monotonic() + self.wait(0)
            self.retrying.append(s)
        else:
            s.state = FAILED

    def wait(self, failures: int) -> float:
        """Seconds a client waits after ``failures`` failed attempts in a row."""
        if self.args.jitter == "spread":  # as the clients wait (gateway_client.backoff)
            return backoff(failures, random.random(), 1.0, self.args.max_backoff)
        # "stretch": as they waited before, the window stretched by up to 20 %
        return min(self.args.max_backoff, 2 ** failures * (1 + 0.2 * random.random()))

    def ping(self, now: float) -> float | None:
        """Send the PINGREQs due (every --keep-alive seconds from each
        session's CONNACK, as a client must); the time of the next one."""
        due = self.pings_due
        while due and due[0][0] <= now:
            at, i, readies = heapq.heappop(due)
            s = self.sessions[i]
            if s.state != READY or s.sock is None or s.readies != readies:
                continue  # closed, or opened again since: that session has its own
            try:
                s.sock.send(self.ping_frame)
                self.pings += 1
            except OSError:
                pass
            heapq.heappush(due, (at + self.args.keep_alive, i, readies))
        return due[0][0] if due else None

    def fail(self, s: Session, why: str, now: float, final: bool = False) -> None:
        if s.sock is not None:
            try:
                self.sel.unregister(s.sock)
            except (KeyError, ValueError):
                pass
            s.sock.close()
            s.sock = None
        self.opening -= 1
        s.errors.append(why)
        if self.args.retry and not final:
            s.retry_at = now + self.wait(s.attempts - 1)
            s.state = WAITING
            self.retrying.append(s)
        else:
            s.state = FAILED
            self.done += 1

    # -- loop ----------------------------------------------------------------

    def run(self) -> dict:
        args = self.args
        if args.start_at:
            delay = args.start_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.t0 = time.monotonic()
        deadline = self.t0 + args.deadline
        total = len(self.sessions)
        self.limit = args.concurrency or total
        while self.done < total and time.monotonic() <= deadline:
            self.step(0.05)
        return self.summary()

    def step(self, timeout: float) -> bool:
        """One turn of the loop: open what may open, send the PINGREQs due,
        handle what the sockets have. True if stdin has a line (once it is
        registered, by :meth:`hold`)."""
        now = time.monotonic()
        while self.waiting and self.opening < self.limit:
            self.start(self.waiting.pop(), now)
        if self.retrying:
            due = [s for s in self.retrying if s.retry_at <= now]
            if due:
                self.retrying = [s for s in self.retrying if s.retry_at > now]
                for s in due:
                    self.start(s, now)
        next_ping = self.ping(now)
        self.tick(now)
        if next_ping is not None:
            # Wake for the next PINGREQ due, not a whole timeout later: a
            # loop that slept up to 1 s sent the pings due meanwhile in one
            # burst, and the bursts fed themselves (the PINGRESPs woke it),
            # so the idle load reached the server in lumps that real,
            # independent phones never make.
            timeout = min(timeout, max(0.0, next_ping - now))
        line = False
        for key, mask in self.sel.select(timeout):
            s = key.data
            if s is None:
                line = True
                continue
            now = time.monotonic()
            if mask & selectors.EVENT_WRITE and s.sock is not None:
                self.on_writable(s, now)
            if mask & selectors.EVENT_READ and s.sock is not None:
                self.on_readable(s, now)
        return line

    def tick(self, now: float) -> None:
        """Called each turn of the loop (bench.e2e_sessions sends HELLOs again)."""

    def summary(self) -> dict:
        ss = self.sessions
        ready = [s for s in ss if s.state == READY]
        firsts = sorted(s.t_first_connack for s in ss if s.t_first_connack is not None)
        accepted = sorted(s.t_accepted for s in ss if s.t_accepted is not None)
        codes: dict[str, int] = {}
        for s in ss:
            for c in s.codes:
                codes[str(c)] = codes.get(str(c), 0) + 1
        errors: dict[str, int] = {}
        for s in ss:
            for e in s.errors:
                errors[e] = errors.get(e, 0) + 1
        return {
            "sessions": len(ss),
            "ready": len(ready),
            "attempts": sum(s.attempts for s in ss),
            "first_connack": firsts,
            "accepted": accepted,
            "ready_times": sorted(s.t_ready for s in ready),
            "first_codes": _count(str(s.first_code) for s in ss if s.first_code is not None),
            "connack_codes": codes,
            "errors": errors,
            "elapsed": time.monotonic() - self.t0,
            "closed_after_ready": self.closed_after_ready,
        }

    def hold(self) -> dict:
        """Keep the ready sessions open, each still pinging every
        --keep-alive seconds (and, with --reconnect, opening again those the
        server closed), until a line on stdin other than ``report T`` (or
        EOF). ``report T`` prints ``REPORT {json}`` (:meth:`report`)."""
        self.sel.register(sys.stdin, selectors.EVENT_READ, None)
        while True:
            if self.step(0.05 if self.retrying or self.opening else 1.0):
                words = sys.stdin.readline().split()
                if words[:1] != ["report"]:
                    break
                print("REPORT " + json.dumps(self.report(float(words[1]) if len(words) > 1 else 0.0)), flush=True)
        return {"pings": self.pings, "closed_by_server": self.closed_after_ready}

    def report(self, since: float) -> dict:
        """The sessions ready now, and those that became ready after
        ``since`` (a ``time.monotonic()`` value of the caller's, on the same
        machine): how many, the last, how many by each 10 s."""
        back = sorted(self.t0 + s.t_ready - since for s in self.sessions
                      if s.state == READY and self.t0 + s.t_ready > since)
        by_10s = [0] * (int(back[-1] // 10) + 1 if back else 0)
        for t in back:
            by_10s[int(t // 10)] += 1
        codes: dict[str, int] = {}
        for s in self.sessions:
            for c in s.codes:
                codes[str(c)] = codes.get(str(c), 0) + 1
        return {"ready": sum(1 for s in self.sessions if s.state == READY), "back_since": len(back),
                "last_back_s": round(back[-1], 2) if back else None, "back_by_10s": by_10s,
                "attempts": sum(s.attempts for s in self.sessions), "connack_codes": codes,
                "closed_by_server": self.closed_after_ready, "errors": _count(e for s in self.sessions
                                                                               for e in s.errors)}

    def close_all(self) -> None:
        for s in self.sessions:
            if s.sock is not None:
                s.sock.close()
                s.sock = None


def source_address(k: int) -> str:
    """The k-th loopback source address: 127.1.0.1, 127.1.0.2, ... (never .0 or .255)."""
    return f"127.1.{k // 254}.{k % 254 + 1}"


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def arguments(description: str) -> argparse.ArgumentParser:
    """The options of this module (bench.e2e_sessions adds its own)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--target", choices=["gw", "bare", "broker"], required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--accounts", help="JSON file: [[device_id, password], ...]")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--start-at", type=float, default=0.0)
    p.add_argument("--retry", action="store_true")
    p.add_argument("--hold", action="store_true")
    p.add_argument("--deadline", type=float, default=300.0)
    p.add_argument("--sources", type=int, default=1)
    p.add_argument("--keep-alive", type=int, default=300)
    p.add_argument("--max-backoff", type=float, default=8.0)
    p.add_argument("--jitter", choices=["spread", "stretch"], default="spread")
    p.add_argument("--reconnect", action="store_true", help="open again a ready session the server closed")
    return p


def main(argv=None) -> None:
    args = arguments("many idle sessions (see module docstring)").parse_args(argv)
    raise_nofile(args.count + 256)
    if args.accounts:
        with open(args.accounts) as f:
            accounts = json.load(f)[args.first:args.first + args.count]
    else:
        accounts = [(f"{i:032x}", "") for i in range(args.first, args.first + args.count)]
    if len(accounts) < args.count:
        raise SystemExit(f"only {len(accounts)} accounts in {args.accounts}")
    runner = Runner(args, accounts)
    summary = runner.run()
    print("READY " + json.dumps(summary), flush=True)
    held = runner.hold() if args.hold else {}
    runner.close_all()
    print("CLOSED " + json.dumps(held), flush=True)


if __name__ == "__main__":
    main()
