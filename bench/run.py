"""Benchmarks of the Linchpin Mobile Gateway: ``python -m bench.run [--quick]``.

``make bench`` (7-9 minutes on the 2-core development machine) and ``make
bench-quick`` (about 1 minute) run this driver; it prints tables (Markdown)
and writes them, with every raw measurement, to ``var/bench/results.md`` and
``var/bench/results.json``; logs of every process are in ``var/bench/``.
docs/benchmarks.md explains the method and discusses a run. Profiling is
``python -m bench.hotpath`` (py-spy); ``python -m bench.selftest`` checks
the clients' echo counter (run first by this driver too).

What is measured
================

1. **Request/response relay.** One device publishes on ``devices/<D>/up``;
   one connector, subscribed to ``devices/+/up``, answers every message with
   the same payload on ``devices/<D>/down``; the device, subscribed to its
   down topic, keeps K = 64 requests in flight and counts round trips.
   QoS 0, payloads of 256 B and 16 KiB. The device and the connector are two
   processes of ``bench/relayclient.py``: raw RFC 6455 over plain sockets,
   every frame precomputed and pre-masked, nothing received is copied
   (``bench/ws.py``), so the clients stay cheap; their CPU is reported next to
   the server's (``/proc/PID/stat`` utime+stime over the measured window), as
   is the CPU that *other* processes used meanwhile (this machine is shared).
   Servers, all started once and measured in turn, repetition after
   repetition (A B C D, D C B A, A B C D), after a warm-up of 1 s:

   * ``bare autobahn``: ``bench/bare_relay.py``, Twisted + Autobahn with the
     gateway's options, no MQTT, no routing: the ceiling. The clients send it
     the same bytes (MQTT PUBLISH packets) as opaque messages.
   * ``gateway``: ``twistd -n --pidfile= lmgateway`` as shipped, with an
     instance (the connector) and a paired device made through the REST API.
   * ``mosquitto`` and ``amqtt`` with a WebSocket listener, anonymous, same
     clients and topics; optional, skipped with a note when not installed
     (``bench/install-brokers.sh``).

   Reported per server and payload: round trips/s (median and min-max over
   the repetitions), server and client CPU, server CPU microseconds per
   round trip (the figure least disturbed by other load), and the ratios of
   the gateway to the others, computed within each repetition.

2. **Idle memory.** RSS growth (VmRSS) of a fresh gateway per idle
   authenticated device session: WebSocket + CONNECT + SUBSCRIBE to
   ``devices/<D>/down`` and ``$gateway/status`` (``bench/sessions.py``, a
   gradual ramp of 8 at a time, after a warm-up of 20 sessions); the same for
   the bare relay (WebSocket only) and, for context, mosquitto and amqtt.
   1,000 sessions (100 with --quick).

3. **Connect storm** (skipped with --quick). 1,000 paired devices (made once
   per run through the REST API, 8 requests in parallel; the time is
   reported) connect at once, from 2 processes, to a freshly started gateway
   (cold credential cache), retrying refusals (CONNACK 3 when the PBKDF2
   queue is full) after 1 s doubling to 8 s, +20 % jitter. Reported: time
   until every device had a first CONNACK, until every device was accepted,
   the CONNACK codes, listen-queue overflows, against 1,000 x one PBKDF2
   (timed in-process) / cores, and the CPU seconds the gateway, the storm
   clients and everybody else on the machine used meanwhile. Then the same devices disconnect and storm
   again while their credentials are cached (warm). An established
   connector/device pair meanwhile sends one request at a time (200/s) and
   its round-trip p50/p99 is compared before and during each storm. All of
   this twice: with the prescribed ``--listen tcp:0:interface=127.0.0.1``
   (Twisted's listen backlog of 50) and with ``...:backlog=1024``. The
   gateway that makes the accounts runs with ``--rest-limit 0``: 2,000
   unauthenticated REST calls from one address would trip the rate limit.

Everything listens on and connects to 127.0.0.1 only. Every process is in a
process group of its own and is stopped at the end, on errors and on
SIGINT/SIGTERM (``bench/procs.py``). Options: ``--quick``, ``--reps N``,
``--duration S``, ``--only relay,memory,storm``, ``--sessions N``,
``--no-brokers``, ``--charts DIR``, ``--storm-backlogs 50,1024``,
``--storm-gateway-args 'OPTIONS'``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from array import array
from pathlib import Path

from linchpin_common import hotpath

from . import accounts, charts, selftest, servers
from .procs import (PYTHON, ROOT, VAR, Proc, cpu_seconds, exit_on_signals, free_port, machine_busy_seconds,
                    raise_nofile, rss_kib, stop_all, tcp_ext, tcp_nodelay_of)

SIZES = (256, 16384)
INFLIGHT = 64
DEVICE_HEX = "d" * 32  # topic id for the brokers and the bare relay


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- environment ----------------------------------------------------------------


def python_build() -> str:
    """How this Python was built, which moves the gateway's CPU per message
    (and so its ratio to mosquitto, which is C) between machines: a static
    interpreter built with profile-guided and link-time optimisation (as
    Debian's) runs the gateway's pure-Python code about a fifth faster than
    a plain build with a shared libpython (as pyenv's default); the build
    options are not always in sysconfig, so :func:`python_speed` measures."""
    try:
        with open("/proc/self/maps") as f:
            shared = "libpython" in f.read()
    except OSError:
        shared = None
    linked = {True: "shared libpython", False: "static libpython", None: "libpython ?"}[shared]
    return f"{platform.python_implementation()} {platform.python_version()}, {platform.python_compiler()}, {linked}"


def python_speed(seconds: float = 0.5) -> float:
    """Microseconds this interpreter takes to parse and re-encode a 256 B
    MQTT PUBLISH with the gateway's codec in pure Python (its ``.py``, even
    where the installed one is compiled): a yardstick that makes runs on
    other machines and interpreters comparable."""
    from linchpin_common.hotpath import load_pure

    wire = load_pure("linchpin_common.contract.wire", "bench_pure_wire")

    packet = wire.encode_publish(b"devices/0123456789abcdef0123456789abcdef/up", b"x" * 256)
    parser = wire.Parser(1 << 20)
    runs = []
    for _ in range(3):
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 3:
            for _ in range(200):
                for p in parser.feed(packet):
                    wire.encode_publish(p.topic.encode(), p.payload)
            n += 200
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return round(statistics.median(runs), 2)


def environment() -> dict:
    def version(mod):
        try:
            return __import__(mod).__version__
        except Exception:
            return "?"

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return "?"

    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "python": platform.python_version(),
        "python_build": python_build(),
        "python_speed_us": python_speed(),
        "hot_path": hotpath.describe(),
        "twisted": version("twisted"),
        "autobahn": version("autobahn"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "tree_dirty": bool(git("status", "--porcelain", "--", "linchpin_gateway")),
        "mosquitto": servers.mosquitto_version() if servers.mosquitto_path() else None,
        "amqtt": servers.amqtt_version() if servers.amqtt_path() else None,
    }


def gateway_code() -> str:
    """HEAD and whether linchpin_gateway/ differs from it: the code a gateway
    started now would run (others may commit while a run goes on)."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return "?"
    dirty = git("status", "--porcelain", "--", "linchpin_gateway")
    return git("rev-parse", "--short", "HEAD") + ("+modified" if dirty else "")


def pbkdf2_seconds(runs: int = 5) -> float:
    from linchpin_gateway.hashing import MIN_ITERATIONS, hash_password
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        hash_password("x" * 22, MIN_ITERATIONS)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# -- 1. relay ---------------------------------------------------------------------


PURE_GATEWAY = "gateway, pure Python"


class Target:
    """A running server plus the credentials its clients use."""

    def __init__(self, server: servers.Server, device_id: str = DEVICE_HEX, conn=None, dev=None):
        self.server = server
        self.name = server.name
        self.device_id = device_id
        self.conn_creds = conn or []
        self.dev_creds = dev or []


def start_relay_targets(args, notes: list[str]) -> list[Target]:
    targets = [Target(servers.bare_relay("relay-bare"))]
    # The gateway as installed (its hot path compiled where setup.py could),
    # and the same code with its pure-Python hot path, side by side.
    for label, env in [("gateway", None), (PURE_GATEWAY, {**os.environ, "LINCHPIN_PURE_PYTHON": "1"})]:
        name = "relay-gateway" if env is None else "relay-gateway-pure"
        gw = servers.gateway(name, VAR / name, env=env, label=label)
        inst = accounts.register(gw.port)
        (dev_id, dev_pw), = accounts.pair_devices(gw.port, inst, 1)[0]
        targets.append(Target(gw, dev_id, ["--user", inst[0], f"--password={inst[1]}"],
                              ["--user", dev_id, f"--password={dev_pw}"]))
    if args.no_brokers:
        notes.append("mosquitto and amqtt skipped (--no-brokers).")
        return targets
    for name, path, start in (("mosquitto", servers.mosquitto_path(), servers.mosquitto),
                              ("amqtt", servers.amqtt_path(), servers.amqtt)):
        if path is None:
            notes.append(f"{name} not installed: skipped (bench/install-brokers.sh installs it).")
            continue
        try:
            targets.append(Target(start(f"relay-{name}")))
        except Exception as e:
            notes.append(f"{name} did not start: {e}")
    return targets


def measure_relay(t: Target, size: int, args) -> dict:
    common = ["--target", t.server.target, "--port", str(t.server.port), "--device-id", t.device_id,
              "--size", str(size), "--inflight", str(INFLIGHT)]
    conn = Proc("relay-connector", [PYTHON, "-m", "bench.relayclient", "connector", *common, *t.conn_creds])
    try:
        conn.wait_for(r"READY", timeout=30)
        dev = Proc("relay-device", [PYTHON, "-m", "bench.relayclient", "device", *common, *t.dev_creds,
                                    "--warmup", str(args.warmup), "--duration", str(args.duration),
                                    "--pids", f"{t.server.pid},{conn.pid}"])
        code = dev.wait(args.warmup + args.duration + 60)
        dev.stop()
        out = dev.text().strip()
        if code != 0 or not out.endswith("}"):
            return {"target": t.name, "size": size, "error": out[-300:] or f"device exited {code}"}
        r = json.loads(out.splitlines()[-1])
        nodelay = None
        if t.server.target in ("gw", "bare"):
            socks = tcp_nodelay_of(t.server.pid)
            if socks:
                nodelay = sorted({flag for _, _, flag in socks})
    finally:
        conn.stop()
    cpu = r["cpu_percent"]
    server = cpu[str(t.server.pid)]
    client = cpu["self"] + cpu[str(conn.pid)]
    return {
        "target": t.name, "size": size, "rate": r["rate"], "round_trips": r["round_trips"], "wall": r["wall"],
        "server_cpu": server, "client_cpu": round(client, 1),
        "others_cpu": round(max(0.0, cpu["machine"] - server - client), 1),
        "server_us_per_rt": round(server / 100 / r["rate"] * 1e6, 1) if r["rate"] else None,
        "mismatch": r["mismatch"], "other_packets": r["other"], "server_nodelay": nodelay,
    }


def run_relay(args, notes: list[str]) -> dict:
    targets = start_relay_targets(args, notes)
    log("relay: " + ", ".join(t.name for t in targets))
    runs = []
    for rep in range(args.reps):
        order = targets if rep % 2 == 0 else list(reversed(targets))
        for size in SIZES:
            for t in order:
                if not t.server.proc.alive():
                    runs.append({"target": t.name, "size": size, "rep": rep, "error": "server died"})
                    continue
                r = measure_relay(t, size, args)
                r["rep"] = rep
                runs.append(r)
                log(f"relay rep {rep + 1}/{args.reps} {t.name:18} {size:>6} B: "
                    + (f"{r['rate']:>8.0f} rt/s, server {r['server_cpu']}%, clients {r['client_cpu']}%, "
                       f"others {r['others_cpu']}%" if "rate" in r else f"ERROR {r['error']}"))
    for t in targets:
        t.server.stop()
    return {"targets": [t.name for t in targets], "runs": runs}


# -- 2. memory ------------------------------------------------------------------------


def hold_sessions(server: servers.Server, target: str, count: int, accounts_file: Path | None,
                  first: int = 0, concurrency: int = 8, name: str = "sessions") -> tuple[Proc, dict]:
    argv = [PYTHON, "-m", "bench.sessions", "--target", target, "--port", str(server.port),
            "--count", str(count), "--first", str(first), "--concurrency", str(concurrency), "--hold",
            "--deadline", "400"]
    if accounts_file is not None:
        argv += ["--accounts", str(accounts_file)]
    proc = Proc(name, argv, stdin=subprocess.PIPE)
    m = proc.wait_for(r"READY (.*)", timeout=420)
    return proc, json.loads(m.group(1))


def release_sessions(proc: Proc) -> None:
    try:
        proc.proc.stdin.write(b"\n")
        proc.proc.stdin.flush()
        proc.wait_for(r"CLOSED", timeout=30)
    except (OSError, RuntimeError):
        pass
    proc.stop()


def settle_rss(pid: int, seconds: float = 1.5) -> int:
    time.sleep(seconds)
    return rss_kib(pid)


def memory_of(server: servers.Server, target: str, n: int, accounts_file: Path | None) -> dict:
    warm, summary = hold_sessions(server, target, 20, accounts_file, name=f"mem-warmup-{target}")
    release_sessions(warm)
    before = settle_rss(server.pid)
    proc, summary = hold_sessions(server, target, n, accounts_file, name=f"mem-{target}")
    try:
        after = settle_rss(server.pid)
    finally:
        release_sessions(proc)
    ready = summary["ready"]
    return {"server": server.name, "sessions": n, "ready": ready, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_session": round((after - before) / ready, 2) if ready else None,
            "open_seconds": round(summary["elapsed"], 1), "errors": summary["errors"]}


def make_devices(port: int, n: int) -> tuple[tuple[str, str], list, dict]:
    inst = accounts.register(port)
    devices, stats = accounts.pair_devices(port, inst, n, workers=8)
    return inst, devices, stats


def run_memory(args, notes: list[str], state: dict) -> dict:
    n = args.sessions
    out: dict = {"sessions": n, "results": []}
    gw = servers.gateway("mem-gateway", VAR / "mem-gateway", "--rest-limit", "0")
    log(f"memory: making {n + 1} paired devices through the REST API")
    inst, devices, stats = make_devices(gw.port, n + 1)
    out["accounts"] = stats
    log(f"memory: {stats['devices']} devices in {stats['seconds']} s")
    accounts_file = VAR / "devices.json"
    accounts_file.write_text(json.dumps(devices))
    state.update(instance=inst, devices=devices, accounts_file=accounts_file, gateway=gw)
    out["results"].append(memory_of(gw, "gw", n, accounts_file))
    log(f"memory: {out['results'][-1]}")
    starters = [("bare", lambda: servers.bare_relay("mem-bare"))]
    if not args.no_brokers:
        if servers.mosquitto_path():
            starters.append(("broker", lambda: servers.mosquitto("mem-mosquitto")))
        if servers.amqtt_path():
            starters.append(("broker", lambda: servers.amqtt("mem-amqtt")))
    for target, start in starters:
        try:
            srv = start()
        except Exception as e:
            notes.append(f"memory: a server did not start: {e}")
            continue
        try:
            out["results"].append(memory_of(srv, target, n, None))
            log(f"memory: {out['results'][-1]}")
        finally:
            srv.stop()
    return out


# -- 3. storm ---------------------------------------------------------------------------


class QueueWatch:
    """Polls the gateway's ``lmgateway_pbkdf2_queue_depth`` (10 times a
    second, on a thread) to tell how long the PBKDF2 pool had an idle thread
    while devices were still waiting: the gaps between hashes, a figure
    other load on the machine does not change."""

    def __init__(self, metrics_port: int):
        self.url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue
            m = re.search(r"^lmgateway_pbkdf2_queue_depth (\S+)$", text, re.M)
            if m:
                self.samples.append((time.monotonic(), float(m.group(1))))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def idle(self, t0: float, t1: float, threads: int) -> dict:
        """Seconds within [t0, t1) in which fewer jobs than threads were queued or running."""
        idle = seen = 0.0
        for (t, depth), (t_next, _) in zip(self.samples, self.samples[1:]):
            if t0 <= t < t1:
                dt = min(t_next, t1) - t
                seen += dt
                if depth < threads:
                    idle += dt
        return {"pool_idle_s": round(idle, 2), "watched_s": round(seen, 2)}


def storm_once(gw: servers.Server, n: int, accounts_file: Path, procs: int = 2,
               extra: tuple[str, ...] = (), concurrency: int = 0, name: str = "storm",
               deadline: float = 240.0) -> tuple[dict, list[Proc]]:
    """``n`` devices of ``accounts_file`` connect at once (``procs`` client
    processes, each retrying with back-off), then hold their sessions;
    ``concurrency`` > 0 ramps instead (so many opening at a time in each
    process); ``extra``: more options of bench.sessions."""
    before = tcp_ext("ListenOverflows", "ListenDrops")
    cpu_before = cpu_seconds(gw.proc.pid), machine_busy_seconds()
    cpu_before_t = time.monotonic()
    start_at = time.monotonic() + 1.0
    per = (n + procs - 1) // procs
    clients = []
    for i in range(procs):
        first, count = i * per, min(per, n - i * per)
        clients.append(Proc(f"{name}-{i}", [
            PYTHON, "-m", "bench.sessions", "--target", "gw", "--port", str(gw.port), "--accounts",
            str(accounts_file), "--first", str(first), "--count", str(count), "--concurrency", str(concurrency),
            "--start-at", repr(start_at), "--retry", "--hold", "--deadline", str(deadline), *extra],
            stdin=subprocess.PIPE))
    summaries = [json.loads(c.wait_for(r"READY (.*)", timeout=deadline + 60).group(1)) for c in clients]
    after = tcp_ext("ListenOverflows", "ListenDrops")
    gw_cpu, busy = cpu_seconds(gw.proc.pid) - cpu_before[0], machine_busy_seconds() - cpu_before[1]
    clients_cpu = sum(cpu_seconds(c.pid) for c in clients)
    firsts = sorted(t for s in summaries for t in s["first_connack"])
    accepted = sorted(t for s in summaries for t in s["accepted"])
    codes: dict = {}
    first_codes: dict = {}
    errors: dict = {}
    for s in summaries:
        for k, v in s["connack_codes"].items():
            codes[k] = codes.get(k, 0) + v
        for k, v in s["first_codes"].items():
            first_codes[k] = first_codes.get(k, 0) + v
        for k, v in s["errors"].items():
            errors[k] = errors.get(k, 0) + v
    result = {
        "devices": n,
        "accepted": len(accepted),
        "accepted_times": accepted,
        "attempts": sum(s["attempts"] for s in summaries),
        "all_first_connack_s": round(firsts[-1], 2) if len(firsts) == n else None,
        "all_accepted_s": round(accepted[-1], 2) if len(accepted) == n else None,
        "half_accepted_s": round(accepted[len(accepted) // 2], 2) if accepted else None,
        "first_connack_codes": first_codes,
        "connack_codes": codes,
        "errors": errors,
        "listen_overflows": after["ListenOverflows"] - before["ListenOverflows"],
        "listen_drops": after["ListenDrops"] - before["ListenDrops"],
        # CPU seconds from the start of the storm until both clients were
        # done: the gateway's (PBKDF2 threads and reactor), the storm
        # clients', and everybody else's on this shared machine (the
        # latency pair included), out of cores x the wall time.
        "cpu": {"gateway_s": round(gw_cpu, 1), "clients_s": round(clients_cpu, 1),
                "others_s": round(max(0.0, busy - gw_cpu - clients_cpu), 1),
                "available_s": round((time.monotonic() - cpu_before_t) * (os.cpu_count() or 1), 1)},
        "start": start_at,
        "end": start_at + (accepted[-1] if accepted else 0.0),
    }
    return result, clients


def latency_stats(samples: list[tuple[float, float]], t0: float, t1: float) -> dict:
    rtts = sorted(r for t, r in samples if t0 <= t < t1)
    if not rtts:
        return {"samples": 0}

    def pct(p):
        return round(rtts[min(len(rtts) - 1, int(p / 100 * len(rtts)))] * 1000, 2)

    return {"samples": len(rtts), "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": round(rtts[-1] * 1000, 2)}


STORM_LISTENS = {"50": ("default backlog (50)", "tcp:0:interface=127.0.0.1"),
                 "1024": ("backlog=1024", "tcp:0:interface=127.0.0.1:backlog=1024")}


def run_storm(args, notes: list[str], state: dict, pbkdf2: float) -> dict:
    n = args.sessions
    if "accounts_file" not in state:
        gw = servers.gateway("storm-gateway", VAR / "mem-gateway", "--rest-limit", "0")
        log(f"storm: making {n + 1} paired devices through the REST API")
        inst, devices, stats = make_devices(gw.port, n + 1)
        accounts_file = VAR / "devices.json"
        accounts_file.write_text(json.dumps(devices))
        state.update(instance=inst, devices=devices, accounts_file=accounts_file)
        notes.append(f"storm: {stats['devices']} paired devices made through the REST API in {stats['seconds']} s.")
        gw.stop()
    else:
        state["gateway"].stop()
    out: dict = {"devices": n, "pbkdf2_s": round(pbkdf2, 4), "cores": os.cpu_count(),
                 "ideal_s": round(n * pbkdf2 / (os.cpu_count() or 1), 1), "configs": []}
    if args.storm_gateway_args:
        notes.append(f"storm: the storm gateways ran with {args.storm_gateway_args}.")
    for i, backlog in enumerate(args.storm_backlogs.split(",")):
        label, listen = STORM_LISTENS[backlog]
        out["configs"].append(storm_config(label, listen, n, state, notes, f"storm-gateway-{i + 1}",
                                           shlex.split(args.storm_gateway_args)))
    return out


def storm_config(label: str, listen: str, n: int, state: dict, notes: list[str], name: str,
                 extra: list[str] = ()) -> dict:
    """Cold then warm storm on a freshly started gateway listening on `listen`."""
    inst, devices, accounts_file = state["instance"], state["devices"], state["accounts_file"]
    # A fresh process: nothing cached, as after a gateway restart.
    metrics_port = free_port()
    gw = servers.gateway(name, VAR / "mem-gateway", "--rest-limit", "0", "--metrics",
                         f"tcp:{metrics_port}:interface=127.0.0.1", *extra, keep=True, listen=listen)
    watch = QueueWatch(metrics_port)
    out: dict = {"label": label, "listen": listen}
    samples_file = VAR / "latency.bin"
    lat_dev, lat_pw = devices[n]  # the extra device, not part of the storm
    lat = Proc("storm-latency", [
        PYTHON, "-m", "bench.relayclient", "latency", "--target", "gw", "--port", str(gw.port),
        "--device-id", lat_dev, "--size", "256", "--conn-user", inst[0], f"--conn-pass={inst[1]}",
        "--user", lat_dev, f"--password={lat_pw}", "--rate", "200", "--samples", str(samples_file),
        "--max-seconds", "900"])
    clients: list[Proc] = []
    try:
        lat.wait_for(r"READY", timeout=60)
        t_quiet = time.monotonic()
        time.sleep(5.0)
        log(f"storm [{label}]: {n} devices connect at once (cold credential cache)")
        cold, clients = storm_once(gw, n, accounts_file)
        log(f"storm [{label}]: cold {cold}")
        for c in clients:
            release_sessions(c)
        time.sleep(3.0)
        log(f"storm [{label}]: {n} devices connect at once again (credentials cached)")
        warm, clients = storm_once(gw, n, accounts_file)
        log(f"storm [{label}]: warm {warm}")
        for c in clients:
            release_sessions(c)
        clients = []
    finally:
        for c in clients:
            c.stop()
        lat.stop(grace=10.0)
        watch.stop()
        gw.stop()
    gw_log = gw.proc.text()
    out["gateway_log"] = {"connack_3_overloaded": gw_log.count("password checking overloaded"),
                          "closed_by_connect_timer": gw_log.count("keep-alive expired")}
    raw = array("d")
    try:
        with open(samples_file, "rb") as f:
            raw.frombytes(f.read())
    except OSError:
        notes.append(f"storm [{label}]: no latency samples were written")
    samples = list(zip(raw[::2], raw[1::2]))
    out["latency_quiet"] = latency_stats(samples, t_quiet + 0.5, t_quiet + 5.0)
    out["cold"] = cold
    out["cold"]["latency"] = latency_stats(samples, cold["start"], cold["end"])
    out["cold"]["pool"] = watch.idle(cold["start"], cold["end"], os.cpu_count() or 1)
    out["warm"] = warm
    out["warm"]["latency"] = latency_stats(samples, warm["start"], max(warm["end"], warm["start"] + 0.5))
    return out


# -- tables ----------------------------------------------------------------------------------


def _med(values):
    return statistics.median(values) if values else None


def _fmt(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def _span(values, digits=0):
    if not values:
        return "-"
    med = _med(values)
    if len(values) == 1:
        return _fmt(med, digits)
    return f"{_fmt(med, digits)} [{_fmt(min(values), digits)}-{_fmt(max(values), digits)}]"


def relay_tables(relay: dict, args) -> tuple[str, dict]:
    runs = [r for r in relay["runs"] if "rate" in r]
    lines = [f"### Relay: K = {INFLIGHT} requests in flight, QoS 0, {args.reps} x {args.duration:g} s per server "
             "and payload, interleaved; median [min-max]", "",
             "| server | payload | round trips/s | server CPU % | clients CPU % | others CPU % | "
             "server CPU us / round trip |",
             "|---|---|---|---|---|---|---|"]
    summary: dict = {}
    for size in SIZES:
        for name in relay["targets"]:
            rs = [r for r in runs if r["target"] == name and r["size"] == size]
            errs = [r for r in relay["runs"] if r["target"] == name and r["size"] == size and "error" in r]
            if not rs:
                lines.append(f"| {name} | {_size(size)} | error: {errs[0]['error'][:60] if errs else '-'} | | | | |")
                continue
            summary[(name, size)] = rs
            lines.append(f"| {name} | {_size(size)} | {_span([r['rate'] for r in rs])} | "
                         f"{_fmt(_med([r['server_cpu'] for r in rs]))} | {_fmt(_med([r['client_cpu'] for r in rs]))} | "
                         f"{_fmt(_med([r['others_cpu'] for r in rs]))} | "
                         f"{_span([r['server_us_per_rt'] for r in rs])} |")
    lines += ["", "### Ratios, computed within each repetition; median [min-max]", "",
              "| ratio | payload | throughput | CPU efficiency (inverse us / round trip) | target | met? |",
              "|---|---|---|---|---|---|"]
    verdicts = {}
    # (a, b, goal on the median throughput ratio or, for mosquitto, on the
    # CPU efficiency ratio, label, goal as printed); the pure-Python rows
    # show what a gateway built without a C compiler gives up.
    checks = [("gateway", "bare autobahn", 0.6, "gateway / bare autobahn", ">= 0.6 (stretch 0.8)"),
              ("gateway", "amqtt", 5.0, "gateway / amqtt", ">= 5"),
              ("gateway", "mosquitto", 0.8, "gateway / mosquitto", "efficiency >= 0.8 at 256 B"),
              (PURE_GATEWAY, "mosquitto", None, f"{PURE_GATEWAY} / mosquitto", "-"),
              ("gateway", PURE_GATEWAY, None, f"gateway / {PURE_GATEWAY}", "-")]
    for a, b, goal, label, goal_text in checks:
        for size in SIZES:
            if goal is not None and b == "mosquitto" and size != 256:
                goal_here = None
            else:
                goal_here = goal
            ra = {r["rep"]: r for r in runs if r["target"] == a and r["size"] == size}
            rb = {r["rep"]: r for r in runs if r["target"] == b and r["size"] == size}
            reps = sorted(set(ra) & set(rb))
            if not reps:
                continue
            thr = [ra[i]["rate"] / rb[i]["rate"] for i in reps if rb[i]["rate"]]
            eff = [rb[i]["server_us_per_rt"] / ra[i]["server_us_per_rt"] for i in reps
                   if ra[i]["server_us_per_rt"] and rb[i]["server_us_per_rt"]]
            met = "-"
            measure = eff if b == "mosquitto" else thr
            if goal_here is not None and measure:
                m = _med(measure)
                met = "yes" if m >= goal_here else "no"
                if b == "bare autobahn" and m >= 0.8:
                    met = "yes (stretch too)"
            verdicts[(label, size)] = met
            lines.append(f"| {label} | {_size(size)} | {_span(thr, 2)} | {_span(eff, 2)} | "
                         f"{goal_text if goal_here is not None or goal is None else 'n/a at 16 KiB'} | {met} |")
    bad = [r for r in runs if r.get("mismatch")]
    if bad:
        lines.append(f"\nWARNING: {len(bad)} runs received corrupted echoes.")
    seen = []
    for name in ("gateway", "bare autobahn"):
        flags = sorted({str(r.get("server_nodelay")) for r in runs if r["target"] == name})
        seen.append(f"{name} {', '.join(flags)}")
    lines.append(f"\nTCP_NODELAY read back from the servers' client sockets (pidfd_getfd): {'; '.join(seen)}.")
    return "\n".join(lines), verdicts


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def memory_table(memory: dict) -> str:
    lines = [f"### Idle sessions: RSS growth for {memory['sessions']} sessions", "",
             "| server | what a session is | ready | RSS before (KiB) | RSS after (KiB) | KiB / session | "
             "target |", "|---|---|---|---|---|---|---|"]
    what = {"gateway": "WebSocket + CONNECT + SUBSCRIBE (down, $gateway/status)",
            "bare autobahn": "WebSocket only", "mosquitto": "WebSocket + CONNECT + SUBSCRIBE",
            "amqtt": "WebSocket + CONNECT + SUBSCRIBE"}
    for r in memory["results"]:
        target = ""
        if r["server"] == "gateway":
            target = "<= 16: " + ("met" if r["kib_per_session"] is not None and r["kib_per_session"] <= 16
                                  else "NOT met")
        lines.append(f"| {r['server']} | {what.get(r['server'], '')} | {r['ready']}/{r['sessions']} | "
                     f"{r['rss_before_kib']:,} | {r['rss_after_kib']:,} | {_fmt(r['kib_per_session'], 1)} | "
                     f"{target} |")
    acc = memory.get("accounts")
    if acc:
        lines.append(f"\nAccounts: {acc['devices']} paired devices through the REST API in {acc['seconds']} s "
                     f"({acc['workers']} parallel clients, {acc['retries']} retries).")
    return "\n".join(lines)


def storm_table(storm: dict) -> str:
    n = storm["devices"]
    lines = [f"### Connect storm: {n} devices at once", "",
             f"One PBKDF2 (100,000 iterations) in-process: {storm['pbkdf2_s'] * 1000:.1f} ms; "
             f"{n} x that / {storm['cores']} cores = **{storm['ideal_s']} s** (the floor for a cold storm).", "",
             "| listen | storm | all had a CONNACK (s) | all accepted (s) | half accepted (s) | connection attempts | "
             "first CONNACK codes | listen overflows | relay p50 / p99 / max (ms) during | "
             "CPU s: gateway / storm clients / others / available |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for cfg in storm["configs"]:
        for kind in ("cold", "warm"):
            s = cfg[kind]
            lat = s["latency"]
            cpu = s.get("cpu", {})
            codes = ", ".join(f"{k}: {v}" for k, v in sorted(s["first_connack_codes"].items()))
            ratio = (f", **{s['all_accepted_s'] / storm['ideal_s']:.2f}x floor**"
                     if kind == "cold" and s["all_accepted_s"] and storm["ideal_s"] else "")
            pool = s.get("pool")
            if pool:
                ratio += f"; PBKDF2 pool short of jobs {pool['pool_idle_s']} s"
            lines.append(f"| {cfg['label']} | {kind} | {_fmt(s['all_first_connack_s'], 2)} | "
                         f"{_fmt(s['all_accepted_s'], 2)} ({s['accepted']}/{n}{ratio}) | "
                         f"{_fmt(s['half_accepted_s'], 2)} | "
                         f"{s['attempts']} | {codes} | {s['listen_overflows']} | {lat.get('p50_ms', '-')} / "
                         f"{lat.get('p99_ms', '-')} / {lat.get('max_ms', '-')} ({lat.get('samples', 0)}) | "
                         f"{cpu.get('gateway_s', '-')} / {cpu.get('clients_s', '-')} / {cpu.get('others_s', '-')} / "
                         f"{cpu.get('available_s', '-')} |")
    for cfg in storm["configs"]:
        g = cfg.get("gateway_log", {})
        lines.append(f"\nGateway log [{cfg['label']}], both storms: {g.get('connack_3_overloaded', '?')} CONNACK 3 "
                     f"(PBKDF2 queue full), {g.get('closed_by_connect_timer', '?')} sessions closed without a CONNACK "
                     "by the connect timer while their CONNECT waited for PBKDF2 (\"keep-alive expired\").")
    for cfg in storm["configs"]:
        q = cfg["latency_quiet"]
        lines.append(f"\nRelay round trip of the established pair before the storms [{cfg['label']}] (one request "
                     f"in flight, 200/s, 256 B): p50 {q.get('p50_ms', '-')} ms, p99 {q.get('p99_ms', '-')} ms, "
                     f"max {q.get('max_ms', '-')} ms ({q.get('samples', 0)} samples).")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="gateway benchmarks (see the module docstring)")
    p.add_argument("--quick", action="store_true", help="1 x 2 s relay runs, 100 idle sessions, no storm")
    p.add_argument("--reps", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--warmup", type=float)
    p.add_argument("--sessions", type=int)
    p.add_argument("--only", default="relay,memory,storm")
    p.add_argument("--no-brokers", action="store_true")
    p.add_argument("--charts", help="also write the SVG charts here (make bench: docs/benchmarks)")
    p.add_argument("--storm-backlogs", default="50,1024",
                   help="listen backlogs of the storm gateways: 50, 1024 or both")
    p.add_argument("--storm-gateway-args", default="",
                   help="more lmgateway options for the storm gateways, e.g. '--hash-queue 256 --hash-wait 100000' "
                        "(the queue bound of before round two)")
    args = p.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.sessions = args.sessions or (100 if args.quick else 1000)
    parts = set(args.only.split(","))
    if args.quick:
        parts.discard("storm")

    exit_on_signals()
    selftest.run_all()  # the clients' echo counter, before trusting any count
    VAR.mkdir(parents=True, exist_ok=True)
    raise_nofile(4 * args.sessions + 1024)
    t_start = time.monotonic()
    env = environment()
    log(f"{env['cpus']} x {env['cpu_model']}; {env['python_build']}; {env['python_speed_us']} us per PUBLISH "
        f"parsed and encoded; gateway hot path {env['hot_path']}; load average {' '.join(env['loadavg_at_start'])}")
    notes: list[str] = []
    if args.quick:
        notes.append(f"--quick: relay {args.reps} x {args.duration:g} s; idle memory with {args.sessions} "
                     "sessions (less precise per session); connect storm skipped.")
    results: dict = {"env": env, "args": vars(args), "notes": notes}
    state: dict = {}
    sections = []
    try:
        results["pbkdf2_s"] = pbkdf2 = pbkdf2_seconds()
        codes = results["gateway_code"] = {}
        if "relay" in parts:
            codes["relay"] = gateway_code()
            results["relay"] = run_relay(args, notes)
            text, verdicts = relay_tables(results["relay"], args)
            sections.append(text)
        if "memory" in parts:
            codes["memory"] = gateway_code()
            results["memory"] = run_memory(args, notes, state)
            sections.append(memory_table(results["memory"]))
        if "storm" in parts:
            codes["storm"] = gateway_code()
            results["storm"] = run_storm(args, notes, state, pbkdf2)
            sections.append(storm_table(results["storm"]))
        codes["end"] = gateway_code()
        if len(set(codes.values())) > 1:
            notes.append("the gateway code changed during this run (someone committed or edited it): "
                         + ", ".join(f"{k} {v}" for k, v in codes.items()) + ".")
    finally:
        stop_all()
        results["seconds"] = round(time.monotonic() - t_start, 1)
        (VAR / "results.json").write_text(json.dumps(results, indent=1, default=str))
    head = (f"## Benchmark run {env['date']} (commit {env['commit']}{', gateway tree modified' if env['tree_dirty'] else ''})\n\n"
            f"{env['cpus']} x {env['cpu_model']}, {env['python_build']} ({env['python_speed_us']} us per "
            f"PUBLISH parsed and encoded in pure Python), gateway hot path {env['hot_path']}, Twisted {env['twisted']}, "
            f"Autobahn {env['autobahn']}, mosquitto {env['mosquitto'] or '-'}, amqtt {env['amqtt'] or '-'}; "
            f"load average at start {' '.join(env['loadavg_at_start'])}; took {results['seconds']} s.")
    text = "\n\n".join([head, *sections, *(["Notes:\n" + "\n".join(f"- {n}" for n in notes)] if notes else [])])
    (VAR / "results.md").write_text(text + "\n")
    print(text)
    for directory in [VAR] + ([Path(args.charts)] if args.charts else []):
        for path in charts.write_all(results, directory):
            log(f"chart {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
