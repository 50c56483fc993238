"""Several connectors for one instance: ``python -m bench.failover [--quick]``
(``make bench-failover``, part of ``make bench``).

One ``twistd lmgateway`` (SQLite), the sample app, a private PostgreSQL
holding the connectors' shared state, and ``--devices`` (default 20) real
devices under steady load in one process (:mod:`bench.fleet`: GETs, a
256 KiB POST every 4th request, a 1 MiB download every 7th).  Scenarios,
each on fresh connectors and devices:

1. **Rolling restart** of two connectors (SIGTERM: drain; start again;
   then the other): failed GETs and POSTs.
2. **kill -9** of one of two connectors: for each device it served, the
   time from the kill to its ``moved``, and from ``moved`` to its next
   successful request; what failed (only what was in flight may).
3. **SIGSTOP** of one of two (``--keep-alive`` 4 s): the time until its
   devices hear ``moved`` (the gateway cuts a silent session after 1.5 x
   its keep-alive).
4. **A connector joining** one that serves every device: devices moved
   (none should), and where ``--devices`` new devices land.
5. **Spread**: devices per connector, here and for 10,000 random device
   ids through the same rendezvous hash.

Figures go to stdout as a table for docs/benchmarks.md and to
``var/bench/failover.json``.  Times are from this machine's monotonic clock,
which every process here shares.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import time
from pathlib import Path

from linchpin_common.testing_services import PostgreSQL
from linchpin_gateway.router import rank

from .procs import PYTHON, VAR, Proc, exit_on_signals, stop_all

BIN = Path(PYTHON).parent
TIMEOUT = 60


class Fleet(Proc):
    def __init__(self, name, states: Path, uris: Path):
        super().__init__(name, [PYTHON, "-m", "bench.fleet", "--states", str(states), "--uris", str(uris),
                                "--pause", "0.05", "--post-every", "4", "--post-bytes", str(256 * 1024),
                                "--download-every", "7", "--download-bytes", str(1024 * 1024)],
                         stdin=subprocess.PIPE)
        self.ids = json.loads(self.wait_for(r'"ev": "ready"', timeout=TIMEOUT * 3).string)["ids"]

    def events(self, kind=None) -> list[dict]:
        out = []
        for line in self._lines(whole=True):
            if line.startswith("{"):
                event = json.loads(line)
                if kind is None or event["ev"] == kind:
                    out.append(event)
        return out

    def run_for(self, seconds: float) -> None:
        """Let the load run (the fleet works meanwhile; this process only waits)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.wait_for(r'"ev": "req"', timeout=end - time.monotonic())
            except AssertionError:
                break

    def stop(self) -> list[dict]:
        self.proc.stdin.write(b"stop\n")
        self.proc.stdin.flush()
        self.wait_for(r'"ev": "done"', timeout=TIMEOUT)
        return self.events("req")


class Rig:
    def __init__(self, pg: PostgreSQL, gateway_url: str, app_url: str, tag: str):
        db = pg.create_database()
        self.store = f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{db}"
        self.env = dict(os.environ, PGPASSWORD=pg.password)
        self.app_url = app_url
        self.dir = VAR / f"failover-{tag}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tag = tag
        self.cli("register", "--gateway", gateway_url)
        self.connectors: dict[str, Proc] = {}
        self.n = 0

    def cli(self, *args) -> str:
        done = subprocess.run([str(BIN / "lmconnector"), "--store", self.store, *args], capture_output=True,
                              text=True, env=self.env, timeout=TIMEOUT)
        if done.returncode:
            raise RuntimeError(done.stderr)
        return done.stdout.strip()

    def start(self, name: str, keep_alive: int = 30) -> Proc:
        proc = Proc(f"failover-{self.tag}-{name}-{len(self.connectors)}",
                    [str(BIN / "twistd"), "-n", "--pidfile=", "lmconnector", "--store", self.store, "--data-dir",
                     str(self.dir / name), "--name", name, "--backend", self.app_url, "--keep-alive",
                     str(keep_alive)], env=self.env)
        proc.wait_for(r"connected to the gateway", timeout=TIMEOUT)
        self.connectors[name] = proc
        return proc

    def fleet(self, n: int) -> Fleet:
        uris = [self.cli("device", "add", f"user{self.n + i}") for i in range(n)]
        self.n += n
        path = self.dir / f"uris-{self.n}.txt"
        path.write_text("\n".join(uris) + "\n")
        states = self.dir / f"fleet-{self.n}"
        states.mkdir(exist_ok=True)
        return Fleet(f"failover-{self.tag}-fleet-{self.n}", states, path)

    def sessions(self, name: str) -> set[str]:
        return set(re.findall(r"E2E session with device ([0-9a-f]{32}) established",
                              self.connectors[name].text()))


def failed(requests, method=None):
    return [r for r in requests if not r["ok"] and (method is None or r["m"] == method)]


def rolling_restart(rig: Rig, args) -> dict:
    for name in ("c1", "c2"):
        rig.start(name)
    fleet = rig.fleet(args.devices)
    fleet.run_for(args.settle)
    drains = {}
    for name in ("c1", "c2"):
        start = time.monotonic()
        rig.connectors[name].proc.send_signal(signal.SIGTERM)
        code = rig.connectors[name].proc.wait(timeout=TIMEOUT)
        drains[name] = {"exit": code, "drain_s": round(time.monotonic() - start, 2)}
        fleet.run_for(args.settle)
        rig.start(name)
        fleet.run_for(args.settle)
    requests = fleet.stop()
    return {"requests": len(requests), "failed_gets": len(failed(requests, "GET")),
            "failed_posts": len(failed(requests, "POST")), "drains": drains,
            "errors": sorted({r["err"] for r in failed(requests)})[:5]}


def killed(rig: Rig, args, how: str) -> dict:
    keep_alive = 4 if how == "stop" else 30
    for name in ("c1", "c2"):
        rig.start(name, keep_alive=keep_alive)
    fleet = rig.fleet(args.devices)
    fleet.run_for(args.settle)
    victim = max(("c1", "c2"), key=lambda n: len(rig.sessions(n)))
    victims = {fleet.ids.index(d) for d in rig.sessions(victim)}
    start = time.monotonic()
    proc = rig.connectors[victim].proc
    proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    moved: dict[int, float] = {}
    deadline = start + TIMEOUT
    while set(moved) != victims and time.monotonic() < deadline:
        try:
            fleet.wait_for(r'"s": "moved"', timeout=deadline - time.monotonic())
        except AssertionError:
            break
        moved = {e["dev"]: e["t"] for e in fleet.events("status") if e["s"] == "moved" and e["t"] >= start}
    fleet.run_for(args.settle)
    requests = fleet.stop()
    if how == "stop":
        proc.send_signal(signal.SIGCONT)
    to_moved = sorted(t - start for t in moved.values())
    next_ok = []
    for dev, t in moved.items():
        after = [r["t"] for r in requests if r["dev"] == dev and r["ok"] and r["t"] > t]
        if after:
            next_ok.append(min(after) - t)
    out = {"devices_on_victim": len(victims), "moved": len(moved), "keep_alive_s": keep_alive,
           "to_moved_s": {"max": round(max(to_moved), 3), "median": round(statistics.median(to_moved), 3)}
           if to_moved else None,
           "moved_to_next_ok_s": {"max": round(max(next_ok), 3), "median": round(statistics.median(next_ok), 3)}
           if next_ok else None,
           "requests": len(requests), "failed_gets": len(failed(requests, "GET")),
           "failed_small_gets": len([r for r in failed(requests, "GET") if r["p"] != "/download"]),
           "failed_posts": len(failed(requests, "POST")),
           "errors": sorted({r["err"].split(":")[0] for r in failed(requests)})}
    return out


def joining(rig: Rig, args) -> dict:
    rig.start("c1")
    old = rig.fleet(args.devices)
    old.run_for(args.settle)
    rig.start("c2")
    old.run_for(args.settle)
    new = rig.fleet(args.devices)
    new.run_for(args.settle)
    moved = [e for e in old.events("status") if e["s"] == "moved"]
    old_requests, new_requests = old.stop(), new.stop()
    on_c2 = rig.sessions("c2")
    return {"old_devices_moved": len(moved), "old_devices_on_new_connector": len(on_c2 & set(old.ids)),
            "new_devices_on_new_connector": len(on_c2 & set(new.ids)), "new_devices": len(new.ids),
            "failed": len(failed(old_requests)) + len(failed(new_requests))}


def spread(rig: Rig, args) -> dict:
    for name in ("c1", "c2"):
        rig.start(name)
    fleet = rig.fleet(args.devices)
    fleet.stop()
    counts = [len(rig.sessions(name) & set(fleet.ids)) for name in ("c1", "c2")]
    even = args.devices / 2
    sample = [max(("c1", "c2"), key=lambda n, d=secrets.token_hex(16): rank(n, d)) for _ in range(10_000)]
    return {"devices": args.devices, "per_connector": counts,
            "worst_off_even_percent": round(100 * max(abs(c - even) for c in counts) / even, 1),
            "random_10000_per_connector": [sample.count("c1"), sample.count("c2")]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="several connectors for one instance (see the module docstring)")
    p.add_argument("--quick", action="store_true", help="fewer devices, shorter runs")
    p.add_argument("--devices", type=int)
    p.add_argument("--settle", type=float, help="seconds of load between steps")
    args = p.parse_args(argv)
    args.devices = args.devices or (8 if args.quick else 20)
    args.settle = args.settle or (2.0 if args.quick else 5.0)
    exit_on_signals()
    VAR.mkdir(parents=True, exist_ok=True)
    pg = PostgreSQL()
    results = {}
    try:
        # Every device here comes from one address, which real phones do not:
        # the per-address and per-instance REST limits are off for this run.
        gateway = Proc("failover-gateway", [str(BIN / "twistd"), "-n", "--pidfile=", "lmgateway", "--listen",
                                            "tcp:0:interface=127.0.0.1", "--data-dir", str(VAR / "failover-gw"),
                                            "--rest-limit", "0", "--instance-rest-limit", "0"])
        port = int(gateway.wait_for(r"lmgateway listening on .* at 127\.0\.0\.1:(\d+)").group(1))
        app = Proc("failover-app", [PYTHON, "-m", "linchpin_connector.sample_app", "--listen",
                                    "tcp:0:interface=127.0.0.1"])
        app_port = int(app.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        app_url = f"http://127.0.0.1:{app_port}"
        url = f"http://127.0.0.1:{port}"
        for tag, run in [("rolling", rolling_restart), ("kill", lambda r, a: killed(r, a, "kill")),
                         ("sigstop", lambda r, a: killed(r, a, "stop")), ("joining", joining),
                         ("spread", spread)]:
            rig = Rig(pg, url, app_url, tag)
            results[tag] = run(rig, args)
            for proc in rig.connectors.values():
                proc.stop()
            print(f"{tag}: {json.dumps(results[tag])}", flush=True)
    finally:
        stop_all()
        pg.destroy()
    (VAR / "failover.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results, args))
    return 0


def table(r: dict, args) -> str:
    k, s, roll, j, sp = r["kill"], r["sigstop"], r["rolling"], r["joining"], r["spread"]
    rows = [
        ("Rolling restart of 2 connectors, SIGTERM each", "0 failed GETs, 0 failed POSTs",
         f"{roll['failed_gets']} failed GETs, {roll['failed_posts']} failed POSTs of {roll['requests']} requests"),
        ("kill -9 of 1 of 2: its devices hear `moved`", "within 2 s",
         f"max {k['to_moved_s']['max']} s, median {k['to_moved_s']['median']} s ({k['moved']} devices)"),
        ("... then their next request succeeds", "within 1 s",
         f"max {k['moved_to_next_ok_s']['max']} s, median {k['moved_to_next_ok_s']['median']} s"),
        ("... failed meanwhile (only what was in flight may)", "no small GET",
         f"{k['failed_small_gets']} small GETs; {k['failed_gets'] - k['failed_small_gets']} downloads already "
         f"streaming, {k['failed_posts']} POSTs"),
        ("SIGSTOP of 1 of 2 (keep-alive 4 s): `moved`", "within 1.5 x keep-alive = 6 s",
         f"max {s['to_moved_s']['max']} s" if s["to_moved_s"] else "none"),
        ("A connector joining: devices moved off the healthy one", "0",
         f"{j['old_devices_moved']} moved; {j['new_devices_on_new_connector']} of {j['new_devices']} new devices "
         f"on the new connector"),
        (f"Spread of {sp['devices']} devices over 2 connectors", "within ±30 % of even",
         f"{sp['per_connector']} ({sp['worst_off_even_percent']} % off); 10,000 random ids: "
         f"{sp['random_10000_per_connector']}"),
    ]
    lines = [f"Devices: {args.devices}; load per device: a request every 50 ms (GETs, 256 KiB POSTs, 1 MiB "
             f"downloads).", "", "| scenario | target | measured |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
