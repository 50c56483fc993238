"""Load clients for the request/response relay, one process per role.

    python -m bench.relayclient connector --target T --port P --device-id D --size N [creds]
    python -m bench.relayclient device    --target T --port P --device-id D --size N [creds]
        --inflight K --warmup S --duration S --pids SERVER,CONNECTOR
    python -m bench.relayclient latency   --target gw --port P --device-id D --size N
        --conn-user I --conn-pass X --user D --password Y --rate R --samples FILE

Targets: ``gw`` (the gateway: path /mqtt, MQTT CONNECT with credentials,
SUBSCRIBE), ``broker`` (mosquitto, amqtt: /mqtt, anonymous CONNECT,
SUBSCRIBE) and ``bare`` (bench/bare_relay.py: paths /device and /connector,
no MQTT exchange; the same PUBLISH bytes travel as opaque messages).

*connector* subscribes ``devices/+/up``, prints ``READY`` and answers every
``devices/D/up`` PUBLISH with a precomputed ``devices/D/down`` PUBLISH of the
same payload, until the server closes or it gets SIGTERM.

*device* subscribes ``devices/D/down``, sends K PUBLISH packets on
``devices/D/up`` and sends one more for every echo it receives (K requests
in flight, QoS 0). After --warmup seconds it snapshots its echo count and
the CPU time of itself, the server and the connector (``/proc/PID/stat``),
again after --duration seconds, and prints one JSON line.

*latency* holds both ends of a pair in one process with one request in
flight, paced at --rate requests/s, and writes (send time, round trip) pairs
of ``time.monotonic()`` seconds to --samples (array of doubles) on SIGTERM.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import random
import select
import signal
import sys
import time

from linchpin_common.contract import wire

from . import ws
from .procs import cpu_seconds, machine_busy_seconds

RBUF = 1 << 21


def payload_of(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def packets(device_id: str, size: int) -> tuple[bytes, bytes]:
    """(up PUBLISH, down PUBLISH) carrying the same payload."""
    payload = payload_of(size)
    up = wire.encode_publish(f"devices/{device_id}/up".encode(), payload)
    down = wire.encode_publish(f"devices/{device_id}/down".encode(), payload)
    return up, down


def open_session(args, role: str, key: bytes, user=None, password=None, filters=None,
                 wait_status=False):
    """A connected socket past MQTT setup, and the unconsumed bytes."""
    if args.target == "bare":
        return ws.connect(args.port, "/connector" if role == "connector" else "/device")
    sock, rest = ws.connect(args.port, "/mqtt")
    if args.target == "gw":
        client_id = f"bench-{role}"  # a connector's name; devices may use any
    else:
        user = password = None
        client_id = f"bench-{role}-{os.getpid()}"
    rest = ws.mqtt_setup(sock, rest, key, user, password, client_id, filters, wait_status)
    return sock, rest


class Pump:
    """Non-blocking send/receive loop over one socket.

    Outgoing data is always the same precomputed frame, so what is pending
    is just a byte count into ``frame * (K+1)`` (no buffers built per send).
    """

    def __init__(self, sock, counter: ws.Counter, frame: bytes, k: int, leftover: bytes):
        self.sock = sock
        self.counter = counter
        self.flen = len(frame)
        self.big = memoryview(frame * (k + 1))
        self.pending = 0
        self.off = 0
        self.rbuf = bytearray(RBUF)
        self.rview = memoryview(self.rbuf)
        self.carry = 0
        self.poll = select.poll()
        sock.setblocking(False)
        self.fd = sock.fileno()
        self.poll.register(self.fd, select.POLLIN)
        self.pollout = False
        self.got = 0
        if leftover:
            n = len(leftover)
            self.rbuf[:n] = leftover
            got, self.carry = counter.feed(self.rbuf, n)
            if self.carry:
                self.rbuf[:self.carry] = self.rbuf[n - self.carry:n]
            self.got += got

    def queue(self, frames: int) -> None:
        self.pending += frames * self.flen

    def step(self, timeout_ms: int = 1000) -> int:
        """Send what can be sent, read what is there; returns echoes received."""
        progressed = False
        got = 0
        if self.pending:
            chunk = min(self.pending, len(self.big) - self.off)
            try:
                sent = self.sock.send(self.big[self.off:self.off + chunk])
            except BlockingIOError:
                sent = 0
            if sent:
                progressed = True
                self.pending -= sent
                self.off = (self.off + sent) % self.flen
        try:
            n = self.sock.recv_into(self.rview[self.carry:])
        except BlockingIOError:
            n = -1
        if n == 0:
            raise ws.Closed("connection closed by the server")
        if n > 0:
            progressed = True
            n += self.carry
            got, self.carry = self.counter.feed(self.rbuf, n)
            if self.carry:
                self.rbuf[:self.carry] = self.rbuf[n - self.carry:n]
            if self.counter.pings:
                for ping in self.counter.pings:
                    self.sock.setblocking(True)
                    self.sock.sendall(ws.client_frame(ping, ws.new_key(), 0xA))
                    self.sock.setblocking(False)
                self.counter.pings.clear()
            if self.counter.closed is not None:
                raise ws.Closed(f"server closed the WebSocket: {self.counter.closed!r}")
        if not progressed:
            want_out = bool(self.pending)
            if want_out != self.pollout:
                self.poll.modify(self.fd, select.POLLIN | (select.POLLOUT if want_out else 0))
                self.pollout = want_out
            self.poll.poll(timeout_ms)
        return got


def run_connector(args) -> None:
    key = ws.new_key()
    up, down = packets(args.device_id, args.size)
    sock, rest = open_session(args, "connector", key, args.user, args.password, ["devices/+/up"])
    pump = Pump(sock, ws.Counter(up), ws.client_frame(down, key), args.inflight, rest)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    print("READY", flush=True)
    echoed = pump.got
    pump.queue(pump.got)
    try:
        while not stop:
            got = pump.step(200)
            if got:
                echoed += got
                pump.queue(got)
    except ws.Closed as e:
        if not stop:
            print(f"connector: {e}", file=sys.stderr, flush=True)
    print(json.dumps({"echoed": echoed, "other": pump.counter.other, "mismatch": pump.counter.mismatch}),
          flush=True)


def run_device(args) -> None:
    key = ws.new_key()
    up, down = packets(args.device_id, args.size)
    sock, rest = open_session(args, "device", key, args.user, args.password, [f"devices/{args.device_id}/down"])
    k = args.inflight
    pump = Pump(sock, ws.Counter(down), ws.client_frame(up, key), k, rest)
    pids = [int(p) for p in args.pids.split(",")] if args.pids else []
    me = os.getpid()

    def snapshot():
        cpu = {str(pid): cpu_seconds(pid) for pid in pids}
        cpu["self"] = cpu_seconds(me)
        cpu["machine"] = machine_busy_seconds()
        return time.monotonic(), count, cpu

    count = 0
    pump.queue(k)
    now = time.monotonic()
    t_warm = now + args.warmup
    t_end = t_warm + args.duration
    first = None
    deadline_idle = now + 10.0
    while True:
        got = pump.step(200)
        now = time.monotonic()
        if got:
            count += got
            pump.queue(got)
            deadline_idle = now + 10.0
        elif now > deadline_idle:
            raise SystemExit(f"device: no echo for 10 s (count {count}, other {pump.counter.other})")
        if first is None and now >= t_warm:
            first = snapshot()
        elif first is not None and now >= t_end:
            last = snapshot()
            break
    t0, c0, cpu0 = first
    t1, c1, cpu1 = last
    wall = t1 - t0
    cpu = {p: round((cpu1[p] - cpu0[p]) / wall * 100, 1) for p in cpu0}
    result = {
        "target": args.target,
        "size": args.size,
        "inflight": k,
        "wall": round(wall, 3),
        "round_trips": c1 - c0,
        "rate": round((c1 - c0) / wall, 1),
        "cpu_percent": cpu,
        "mismatch": pump.counter.mismatch,
        "other": pump.counter.other,
    }
    print(json.dumps(result), flush=True)
    sock.close()


def run_latency(args) -> None:
    """Both ends of one pair; one request in flight, paced."""
    dkey, ckey = ws.new_key(), ws.new_key()
    up, down = packets(args.device_id, args.size)
    csock, crest = open_session(args, "connector", ckey, args.conn_user, args.conn_pass,
                                ["devices/+/up", "$gateway/events"])
    dsock, drest = open_session(args, "device", dkey, args.user, args.password,
                                [f"devices/{args.device_id}/down", "$gateway/status"], wait_status=True)
    for s in (csock, dsock):
        s.settimeout(30)
    up_frame, down_frame = ws.client_frame(up, dkey), ws.client_frame(down, ckey)
    ccount, dcount = ws.Counter(up), ws.Counter(down)

    class End:
        def __init__(self, sock, counter, rest):
            self.sock, self.counter = sock, counter
            self.rbuf = bytearray(RBUF)
            self.rview = memoryview(self.rbuf)
            self.carry = 0
            self.backlog = 0
            if rest:
                self.rbuf[:len(rest)] = rest
                self.backlog, self.carry = counter.feed(self.rbuf, len(rest))
                if self.carry:
                    self.rbuf[:self.carry] = self.rbuf[len(rest) - self.carry:len(rest)]

        def wait_one(self):
            while not self.backlog:
                got, self.carry = ws.pump_step(self.sock, self.counter, self.rbuf, self.rview, self.carry)
                self.backlog += got
                for ping in self.counter.pings:
                    self.sock.sendall(ws.client_frame(ping, ws.new_key(), 0xA))
                self.counter.pings.clear()
            self.backlog -= 1

    conn, dev = End(csock, ccount, crest), End(dsock, dcount, drest)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    samples = array.array("d")
    interval = 1.0 / args.rate
    print("READY", flush=True)
    deadline = time.monotonic() + args.max_seconds
    next_t = time.monotonic()
    try:
        while not stop and time.monotonic() < deadline:
            t0 = time.monotonic()
            dsock.sendall(up_frame)
            conn.wait_one()
            csock.sendall(down_frame)
            dev.wait_one()
            t1 = time.monotonic()
            samples.append(t0)
            samples.append(t1 - t0)
            next_t += interval
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()
    except (ws.Closed, OSError) as e:
        print(f"latency: {e}", file=sys.stderr, flush=True)
    with open(args.samples, "wb") as f:
        samples.tofile(f)
    print(json.dumps({"samples": len(samples) // 2, "mismatch": ccount.mismatch + dcount.mismatch}), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="relay load clients (see module docstring)")
    p.add_argument("role", choices=["connector", "device", "latency"])
    p.add_argument("--target", choices=["gw", "bare", "broker"], required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device-id", required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--conn-user")
    p.add_argument("--conn-pass")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--pids", default="")
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--samples")
    p.add_argument("--max-seconds", type=float, default=600.0)
    args = p.parse_args(argv)
    try:
        {"connector": run_connector, "device": run_device, "latency": run_latency}[args.role](args)
    except (ws.Closed, ws.HandshakeError, OSError) as e:
        raise SystemExit(f"{args.role}: {e}")


if __name__ == "__main__":
    main()
