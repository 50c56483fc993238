"""The figures of docs/security.md "Measured": what the login attacks of
issue 10 cost a real ``twistd lmgateway`` on loopback.

    python -m bench.abuse [--twistd PATH] [--only burst|tenant|memory|fragments]

1. burst: four bursts of 300 wrong CONNECTs from one address within 12 s;
   PBKDF2 runs spent on them (lmgateway_auth_failures_total: one run per
   wrong password that was checked) and the CONNACK codes they got.
2. latency: during those bursts, fresh devices log in from another address;
   how long each waits for its CONNACK, and which codes they get.
3. tenant: one instance adds devices as fast as 16 clients can while
   another lists its own; what the flood got, and the other's latency.
4. memory: connections whose password checks are held up (a slow PBKDF2
   count) send a CONNECT and then pipeline 1 MiB packets; gateway RSS
   growth per pending login.
5. fragments: connections that never send CONNECT, and one logged-in
   session, open a WebSocket message and send nothing but empty
   continuation frames (6 bytes each); gateway RSS at its peak, and how
   much each got to send before the gateway closed it.
6. proxy-spoof: wrong CONNECTs sent straight to a ``haproxy:`` listener,
   each behind a PROXY header naming a new client address, to escape the
   per-address login budget; PBKDF2 runs spent and the answers.

``--twistd`` lets the same run measure an older checkout (its own venv's
twistd).  Client addresses are spread over 127/8, so per-address limits see
many addresses where the attack needs them.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from linchpin_common.contract import wire
from linchpin_common.rawws import client_frame, mask, new_key

from .procs import Proc, exit_on_signals, free_port, rss_kib

TIMEOUT = 60


class Gateway:
    """``twistd lmgateway`` (``twistd`` given, so an older checkout can be
    measured) with its per-address limits as shipped and metrics on a port of
    its own; a :class:`~bench.procs.Proc`, so it is stopped on any exit."""

    def __init__(self, twistd: str, data_dir: str, *extra: str,
                 listen: str = "tcp:0:interface=127.0.0.1:backlog=4096"):
        self.metrics_port = free_port()
        name = "abuse-" + os.path.basename(data_dir)
        self.proc = Proc(name, [twistd, "-n", "--pidfile=", "lmgateway", "--listen", listen,
                                "--data-dir", data_dir, "--metrics",
                                f"tcp:{self.metrics_port}:interface=127.0.0.1", *extra])
        self.port = int(self.proc.wait_for(rf"lmgateway listening on {re.escape(listen)} at [\d.]+:(\d+)",
                                           TIMEOUT).group(1))
        self.proc.wait_for(rf"listening on .* at 127\.0\.0\.1:{self.metrics_port}", TIMEOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def rest(self, method, path, body=None, auth=None):
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(), method=method,
                                     headers=headers)
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read())

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=TIMEOUT).read()
        for line in text.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    def stop(self):
        self.proc.stop(grace=TIMEOUT)


def open_ws(port: int, source: str, preamble: bytes = b"") -> tuple[socket.socket, bytes] | None:
    """A WebSocket on /mqtt from ``source`` (``preamble``, e.g. a PROXY
    header, sent first); None when the upgrade is refused."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0))
    except OSError:
        return None
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(preamble + (f"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
                  ).encode())
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                sock.close()
                return None
            buf += chunk
    except OSError:
        sock.close()
        return None
    head, _, rest = buf.partition(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        sock.close()
        return None
    return sock, rest


def send(sock, payload: bytes) -> None:
    sock.sendall(client_frame(payload, new_key()))


def connect_packet(username: str, password: str) -> bytes:
    return wire.encode(wire.Connect(client_id="abuse", username=username, password=password.encode(),
                                    keep_alive=60, clean_session=True))


def connack(sock, rest: bytes) -> int | None:
    """The CONNACK return code, or None when the connection closed first."""
    buf = rest
    try:
        while len(buf) < 2 or len(buf) < 2 + (buf[1] & 0x7F):
            chunk = sock.recv(4096)
            if not chunk:
                return None
            buf += chunk
    except OSError:
        return None
    n = buf[1] & 0x7F
    if buf[0] & 0x0F == 0x8:  # a WebSocket close frame
        return None
    packets = wire.Parser().feed(buf[2:2 + n])
    return packets[0].return_code if packets and isinstance(packets[0], wire.Connack) else None


def attempt(port: int, source: str, username: str, password: str, preamble: bytes = b"") -> int | None:
    opened = open_ws(port, source, preamble)
    if opened is None:
        return -503  # upgrade refused
    sock, rest = opened
    try:
        send(sock, connect_packet(username, password))
        return connack(sock, rest)
    finally:
        sock.close()


def burst_and_latency(twistd: str, workdir: str) -> dict:
    # (--rest-limit 0 only so that setting up 30 devices from one address is
    # not itself limited; logins keep their default limits)
    gw = Gateway(twistd, os.path.join(workdir, "burst"), "--rest-limit", "0")
    try:
        inst = gw.rest("POST", "/api/v1/instances")
        creds = (inst["instance_id"], inst["instance_password"])
        fresh = []
        for _ in range(30):
            dev = gw.rest("POST", "/api/v1/devices", auth=creds)
            paired = gw.rest("POST", "/api/v1/devices/setup", {"device_setup_key": dev["device_setup_key"]})
            fresh.append((paired["device_id"], paired["device_password"]))
        before = gw.metric("lmgateway_auth_failures_total")
        codes: list = []
        lock = threading.Lock()

        def one(i):
            code = attempt(gw.port, "127.0.0.2", f"{i:032x}", "wrong-password-xx")
            with lock:
                codes.append(code)

        latencies, legit_codes = [], []

        def legit():
            for username, password in fresh:
                started = time.monotonic()
                legit_codes.append(attempt(gw.port, "127.0.0.3", username, password))
                latencies.append(time.monotonic() - started)

        started = time.monotonic()
        legit_thread = None
        for burst in range(4):
            threads = [threading.Thread(target=one, args=(burst * 300 + i,)) for i in range(300)]
            for t in threads:
                t.start()
            if legit_thread is None:
                legit_thread = threading.Thread(target=legit)
                legit_thread.start()
            for t in threads:
                t.join(TIMEOUT)
            wait = started + 3 * (burst + 1) - time.monotonic()
            if wait > 0 and burst < 3:
                time.sleep(wait)  # a benchmark paces its attack; tests never sleep
        legit_thread.join(TIMEOUT * 4)
        elapsed = time.monotonic() - started
        runs = gw.metric("lmgateway_auth_failures_total") - before
        return {
            "bursts": "4 x 300 wrong CONNECTs from 127.0.0.2",
            "seconds": round(elapsed, 1),
            "pbkdf2_runs_for_failures": int(runs),
            "connack_codes": {str(c): codes.count(c) for c in sorted(set(codes), key=str)},
            "legit_logins": len(legit_codes),
            "legit_connack_codes": {str(c): legit_codes.count(c) for c in sorted(set(legit_codes), key=str)},
            "legit_latency_median_ms": round(statistics.median(latencies) * 1000),
            "legit_latency_p90_ms": round(statistics.quantiles(latencies, n=10)[-1] * 1000),
            "legit_latency_max_ms": round(max(latencies) * 1000),
        }
    finally:
        gw.stop()


def tenant(twistd: str, workdir: str, seconds: float = 8.0, threads: int = 16) -> dict:
    """One instance adds devices flat out; another lists its devices meanwhile."""
    gw = Gateway(twistd, os.path.join(workdir, "tenant"))
    try:
        greedy = gw.rest("POST", "/api/v1/instances")
        polite = gw.rest("POST", "/api/v1/instances")
        greedy_auth = (greedy["instance_id"], greedy["instance_password"])
        polite_auth = (polite["instance_id"], polite["instance_password"])
        for auth in (greedy_auth, polite_auth):  # both logins cached: the flood is all store work,
            gw.rest("GET", "/api/v1/devices", auth=auth)  # and no PBKDF2 lands in the other's latency
        statuses: dict = {}
        lock = threading.Lock()
        stop = time.monotonic() + seconds

        def flood():
            while time.monotonic() < stop:
                try:
                    gw.rest("POST", "/api/v1/devices", auth=greedy_auth)
                    code = 201
                except urllib.error.HTTPError as e:
                    code = e.code
                with lock:
                    statuses[code] = statuses.get(code, 0) + 1

        workers = [threading.Thread(target=flood) for _ in range(threads)]
        for t in workers:
            t.start()
        latencies = []
        while time.monotonic() < stop:
            started = time.monotonic()
            gw.rest("GET", "/api/v1/devices", auth=polite_auth)
            latencies.append(time.monotonic() - started)
            time.sleep(0.2)  # a well-behaved tenant's pace
        for t in workers:
            t.join(TIMEOUT)
        return {
            "flood": f"{threads} clients adding devices to one instance for {seconds:g} s",
            "greedy_statuses": {str(k): v for k, v in sorted(statuses.items())},
            "other_tenant_calls": len(latencies),
            "other_tenant_latency_median_ms": round(statistics.median(latencies) * 1000),
            "other_tenant_latency_max_ms": round(max(latencies) * 1000),
        }
    finally:
        gw.stop()


def memory(twistd: str, workdir: str, connections: int, packets: int) -> dict:
    # 3,000,000 iterations: each check takes about a second, so with the hash
    # queue's workers busy the logins stay pending while we measure.
    gw = Gateway(twistd, os.path.join(workdir, "memory"), "--pbkdf2-iterations", "3000000")
    socks = []
    try:
        inst = gw.rest("POST", "/api/v1/instances")
        blocker = [open_ws(gw.port, f"127.0.3.{i + 1}") for i in range(8)]
        for sock, _ in filter(None, blocker):  # occupy the hashing threads
            send(sock, connect_packet(inst["instance_id"], "wrong-password-xx"))
        time.sleep(0.5)
        before = gw.rss_kib()
        junk = wire.encode_publish(b"devices/" + b"0" * 32 + b"/up", b"\xee" * (1024 * 1024 - 64))
        frame = client_frame(junk, new_key())
        kept = 0
        for i in range(connections):
            opened = open_ws(gw.port, f"127.0.{4 + i // 200}.{i % 200 + 1}")
            if opened is None:
                continue
            sock, _ = opened
            socks.append(sock)
            send(sock, connect_packet(f"{i:032x}", "wrong-password-xx"))
            sock.settimeout(0.2)
            try:
                for _ in range(packets):
                    sock.sendall(frame)
                kept += 1
            except OSError:
                pass  # the gateway stopped reading, or closed: the point
        time.sleep(2.0)  # let the gateway read what it will
        peak = gw.rss_kib()
        growth = (peak - before) / 1024
        return {
            "pending_logins": connections,
            "pipelined_per_connection_mib": packets,
            "connections_that_took_it_all": kept,
            "rss_growth_mib": round(growth, 1),
            "rss_growth_per_pending_login_kib": round((peak - before) / connections),
        }
    finally:
        for sock in socks:
            sock.close()
        gw.stop()


def fragments(twistd: str, workdir: str, connections: int, mib: int) -> dict:
    gw = Gateway(twistd, os.path.join(workdir, "fragments"))
    try:
        inst = gw.rest("POST", "/api/v1/instances")
        time.sleep(0.5)
        before = gw.rss_kib()
        key = new_key()
        start = bytes([0x02, 0x81]) + key + mask(b"x", key)  # a binary message begins, not final
        flood = (bytes([0x00, 0x80]) + key) * (mib * 1024 * 1024 // 6)  # empty continuation frames
        sent = {}

        def one(name: str, source: str, login: bool) -> None:
            opened = open_ws(gw.port, source)
            if opened is None:
                sent[name] = None
                return
            sock, rest = opened
            n = 0
            try:
                if login:
                    send(sock, connect_packet(inst["instance_id"], inst["instance_password"]))
                    if connack(sock, rest) != 0:
                        sent[name] = None
                        return
                sock.sendall(start)
                for i in range(0, len(flood), 1 << 20):
                    sock.sendall(flood[i:i + (1 << 20)])
                    n += min(1 << 20, len(flood) - i)
            except OSError:
                pass  # closed by the gateway: the point
            finally:
                sent[name] = round(n / 1024 / 1024, 1)
                sock.close()

        peak = [before]
        done = threading.Event()

        def watch():
            while not done.wait(0.05):
                peak[0] = max(peak[0], gw.rss_kib())

        watcher = threading.Thread(target=watch)
        watcher.start()
        threads = [threading.Thread(target=one, args=(f"before CONNECT {i}", f"127.0.6.{i + 1}", False))
                   for i in range(connections)]
        threads.append(threading.Thread(target=one, args=("logged in", "127.0.7.1", True)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1.0)
        done.set()
        watcher.join()
        return {
            "connections_before_connect": connections,
            "flood_per_connection_mib": mib,
            "mib_sent_before_closed": sent,
            "rss_peak_growth_mib": round((peak[0] - before) / 1024, 1),
            "rss_growth_after_mib": round((gw.rss_kib() - before) / 1024, 1),
        }
    finally:
        gw.stop()


def proxy_spoof(twistd: str, workdir: str, attempts: int, trusted: bool) -> dict:
    """Wrong CONNECTs straight to a haproxy: listener, each behind a PROXY
    header naming a new client address; ``trusted`` gives the listener a
    --trusted-proxy that is not the attacker (a checkout without that option
    is run with ``trusted`` False)."""
    extra = ("--trusted-proxy", "127.0.9.1") if trusted else ()
    gw = Gateway(twistd, os.path.join(workdir, "spoof"), *extra, listen="haproxy:tcp:0:interface=0.0.0.0")
    try:
        before = gw.metric("lmgateway_auth_failures_total")
        codes: list = []
        lock = threading.Lock()

        def one(i):
            header = f"PROXY TCP4 198.18.{i // 250}.{i % 250 + 1} 127.0.0.1 40000 443\r\n".encode()
            code = attempt(gw.port, "127.0.8.1", f"{i:032x}", "wrong-password-xx", header)
            with lock:
                codes.append(code)

        started = time.monotonic()
        for first in range(0, attempts, 50):
            threads = [threading.Thread(target=one, args=(i,)) for i in range(first, min(attempts, first + 50))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(TIMEOUT)
        return {
            "attempts": f"{attempts} wrong CONNECTs from 127.0.8.1, each naming a new address in a PROXY header",
            "trusted_proxy_option": trusted,
            "seconds": round(time.monotonic() - started, 1),
            "pbkdf2_runs_for_failures": int(gw.metric("lmgateway_auth_failures_total") - before),
            "connack_codes": {str(c): codes.count(c) for c in sorted(set(codes), key=str)},
        }
    finally:
        gw.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twistd", default=os.path.join(os.path.dirname(sys.executable), "twistd"))
    parser.add_argument("--only", choices=["burst", "memory", "tenant", "fragments", "proxy-spoof"])
    parser.add_argument("--no-trusted-proxy", action="store_true",
                        help="proxy-spoof: run the listener without --trusted-proxy (a checkout without it)")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--packets", type=int, default=32, help="1 MiB packets pipelined behind each CONNECT")
    parser.add_argument("--fragment-mib", type=int, default=20,
                        help="MiB of empty continuation frames each fragments connection sends")
    args = parser.parse_args(argv)
    exit_on_signals()
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        if args.only in (None, "burst"):
            results["burst"] = burst_and_latency(args.twistd, workdir)
        if args.only in (None, "tenant"):
            results["tenant"] = tenant(args.twistd, workdir)
        if args.only in (None, "memory"):
            results["memory"] = memory(args.twistd, workdir, args.connections, args.packets)
        if args.only in (None, "fragments"):
            results["fragments"] = fragments(args.twistd, workdir, 8, args.fragment_mib)
        if args.only in (None, "proxy-spoof"):
            results["proxy_spoof"] = proxy_spoof(args.twistd, workdir, 300, not args.no_trusted_proxy)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
