"""Capacity of one gateway node: ``python -m bench.capacity [--sessions N]
[--only ...]`` (``make bench-capacity``; not in CI). The default,
``--only one,restart``, takes about 10 minutes on a 2-core machine at
10,000 sessions; ``many``, ``two-nodes`` and ``node-spread,node-stretch``
are runs of their own (about 4, 5 and 11 minutes).

``one`` / ``many``: scenario 1, ten thousand live device sessions on one
node, with the N devices in one instance (one connector's company), or
spread as 1,000 instances of 10 (``--sessions`` / 10 instances; a hosted
gateway). Each run:

1. Seeds a fresh gateway store with the accounts (:mod:`bench.seed`, a
   bench-only fixture: rows written straight into SQLite, one password per
   run) plus one instance of 100 devices for the latency pairs, and starts
   ``twistd lmgateway`` as shipped (the per-address limits raised as in every
   benchmark, :data:`bench.servers.PER_ADDRESS_LIMITS_OFF`, and
   ``--max-instance-sessions`` above N).
2. Latency with no idle session: 100 pairs (:mod:`bench.pairs`), each
   device sending 256 B five times a second, the connector echoing.
3. Logs all N devices in from cold: two light client processes
   (:mod:`bench.sessions`, one epoll loop each, 50 loopback source
   addresses) through the real CONNECT path, 128 logins under way at a time
   (enough to keep the hashing threads busy; refusals retried with the
   clients' back-off). Reported: the time until the last one was accepted,
   against the PBKDF2 floor (N x one PBKDF2 run / the hashing threads), and
   how long the PBKDF2 pool had an idle thread while logins waited (the
   gateway's queue-depth metric, 10 samples a second).
4. Gateway RSS: after start-up, and with the N sessions open; the difference
   per session.
5. CPU of the gateway over ``--idle-seconds`` while the N sessions sit idle,
   each sending a PINGREQ every 30 s (the default keep-alive of the device
   library and the app).
6. Latency again, the N sessions idle: its p99 against step 2's.

``restart``: scenarios 2 and 3 on one fleet. One company of N devices that
keep an end-to-end session (:mod:`bench.e2e_sessions`; its connector's state
seeded with them paired, :func:`bench.seed.seed_connector`) logs in; its
connector is killed (-9) and started, then stopped with SIGTERM (a drain)
and started: each time, until every device has a new session, with the RSS
peaks of every process. Then the node is killed and started on its port:
until every device is logged in again, the arrival curve and the PBKDF2
pool's idle time. ``two-nodes`` (scenario 4) restarts the connector of
such a company whose devices are spread over two nodes on PostgreSQL and
Redis (:func:`bench.seed.seed_gateway_postgres`). ``node-spread`` and
``node-stretch`` restart a node under idle sessions whose clients wait as
the app and the connector do, and as they did before (the comparison).

For 50,000 sessions on a bigger machine: ``ulimit -n`` above 55,000 for the
gateway and the clients (this machine's limit is 20,000),
``--sessions 50000``; the clients spread over more source addresses by
themselves (``--sources``), and the gateway's ``--max-sessions`` default is
50,000.

Prints a Markdown table; writes ``var/bench/capacity.json`` and the logs of
every process under ``var/bench/``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import servers
from .procs import PYTHON, VAR, Proc, cpu_seconds, exit_on_signals, free_port, machine_busy_seconds, raise_nofile, \
    rss_kib, stop_all
from .run import QueueWatch, environment, log, pbkdf2_seconds, release_sessions, settle_rss, storm_once
from .seed import seed_connector, seed_gateway, seed_gateway_postgres

LATENCY_PAIRS = 100
KEEP_ALIVE = 30  # seconds: the device library's and the app's default
SOURCES = 50
MAX_BACKOFF = 60  # seconds: the reconnect policy of the device library, the app and the connector
# Logins opening at once: enough to keep every PBKDF2 thread busy, never so
# many that the gateway refuses (the storm, all at once, is scenario 3's).
RAMP = 128


def run_pairs(gw: servers.Server, accounts_file, connector, name: str, duration: float) -> dict:
    proc = Proc(name, [PYTHON, "-m", "bench.pairs", "--port", str(gw.port), "--accounts", str(accounts_file),
                       "--pairs", str(LATENCY_PAIRS), "--connector", f"{connector[0]}:{connector[1]}",
                       "--duration", str(duration)])
    line = proc.wait_for(r"^(\{.*\})$", timeout=duration + 120).group(1)
    proc.wait(30)
    return json.loads(line)


def scenario_one(label: str, sizes: list[int], args, pbkdf2: float, latency: bool) -> dict:
    n = sum(sizes)
    data = VAR / f"capacity-{label}"
    if data.exists():
        shutil.rmtree(data)
    t = time.monotonic()
    seeded = seed_gateway(str(data), sizes + [LATENCY_PAIRS])
    idle = [d[:2] for d in seeded["devices"] if d[2] < len(sizes)]
    pairs = [d[:2] for d in seeded["devices"] if d[2] == len(sizes)]
    # The idle devices log in in two halves, so that the RSS between them
    # gives the marginal cost of a session too.
    halves = [VAR / f"capacity-{label}-devices-{k}.json" for k in (1, 2)]
    halves[0].write_text(json.dumps(idle[:n // 2]))
    halves[1].write_text(json.dumps(idle[n // 2:]))
    pairs_file = VAR / f"capacity-{label}-pairs.json"
    pairs_file.write_text(json.dumps(pairs))
    connector = seeded["instances"][-1]
    log(f"[{label}] seeded {len(seeded['instances'])} instances, {len(seeded['devices'])} devices "
        f"in {time.monotonic() - t:.1f} s")
    metrics = free_port()
    gw = servers.gateway(f"capacity-{label}-gateway", data, "--metrics", f"tcp:{metrics}:interface=127.0.0.1",
                         "--max-instance-sessions", str(max(sizes) + LATENCY_PAIRS), keep=True,
                         listen="tcp:0:interface=127.0.0.1:backlog=4096")
    out: dict = {"label": label, "sessions": n, "instances": len(sizes)}
    clients: list[Proc] = []
    watch = QueueWatch(metrics)
    try:
        out["rss_start_kib"] = settle_rss(gw.pid)
        if latency:
            log(f"[{label}] latency, no idle session")
            out["latency_alone"] = run_pairs(gw, pairs_file, connector, f"capacity-{label}-pairs-alone",
                                             args.latency_seconds)
            log(f"[{label}]   {out['latency_alone']}")
        rss_before = settle_rss(gw.pid)
        log(f"[{label}] {n} devices log in from cold, {RAMP} at a time, in two halves")
        halves_done, rss_half = [], None
        for k, half in enumerate(halves):
            count = n // 2 if k == 0 else n - n // 2
            done, procs = storm_once(gw, count, half, procs=2, concurrency=RAMP // 2, name=f"{label}-half{k + 1}",
                                     extra=("--sources", str(SOURCES), "--keep-alive", str(KEEP_ALIVE),
                                            "--max-backoff", str(MAX_BACKOFF)))
            clients += procs
            halves_done.append(done)
            if k == 0:
                rss_half = settle_rss(gw.pid, 3.0)
        first, second = halves_done
        accepted = first["accepted"] + second["accepted"]
        # The two halves' times added: the pause between them (an RSS reading) is left out.
        wall = (first["end"] - first["start"]) + (second["end"] - second["start"]) if accepted == n else None
        floor = n * pbkdf2 / (os.cpu_count() or 1)
        login = {"accepted": accepted, "all_accepted_s": round(wall, 1) if wall else None,
                 "pbkdf2_floor_s": round(floor, 1), "ratio_to_floor": round(wall / floor, 2) if wall else None,
                 "attempts": first["attempts"] + second["attempts"],
                 "connack_codes": [first["connack_codes"], second["connack_codes"]],
                 "errors": [first["errors"], second["errors"]], "cpu": [first["cpu"], second["cpu"]],
                 "gap_between_halves_s": round(second["start"] - first["end"], 1)}
        idle = [watch.idle(h["start"], h["end"], os.cpu_count() or 1) for h in halves_done]
        login.update({key: round(sum(i[key] for i in idle), 2) for key in ("pool_idle_s", "watched_s")})
        watch.stop()  # its scrapes of /metrics would count as idle CPU
        out["login"] = login
        log(f"[{label}]   {login}")
        rss_after = settle_rss(gw.pid, 3.0)
        out["rss_before_kib"], out["rss_half_kib"], out["rss_after_kib"] = rss_before, rss_half, rss_after
        out["kib_per_session"] = round((rss_after - rss_before) / max(1, accepted), 2)
        out["kib_per_session_second_half"] = round((rss_after - rss_half) / max(1, second["accepted"]), 2)
        log(f"[{label}] RSS {rss_before} -> {rss_half} -> {rss_after} KiB: {out['kib_per_session']} KiB a session, "
            f"{out['kib_per_session_second_half']} KiB a session of the second half")
        log(f"[{label}] {args.idle_seconds:.0f} s idle, a PINGREQ every {KEEP_ALIVE} s per session")
        c0, b0, t0 = cpu_seconds(gw.pid), machine_busy_seconds(), time.monotonic()
        time.sleep(args.idle_seconds)
        c1, b1, t1 = cpu_seconds(gw.pid), machine_busy_seconds(), time.monotonic()
        out["idle"] = {"seconds": round(t1 - t0, 1), "gateway_cpu_pct_of_a_core": round((c1 - c0) / (t1 - t0) * 100, 2),
                       "machine_busy_pct": round((b1 - b0) / (t1 - t0) / (os.cpu_count() or 1) * 100, 1),
                       "pings_per_s": round(accepted / KEEP_ALIVE, 1)}
        log(f"[{label}]   {out['idle']}")
        if latency:
            log(f"[{label}] latency, {n} sessions idle")
            out["latency_busy"] = run_pairs(gw, pairs_file, connector, f"capacity-{label}-pairs-idle",
                                            args.latency_seconds)
            log(f"[{label}]   {out['latency_busy']}")
            alone, busy = out["latency_alone"]["p99_ms"], out["latency_busy"]["p99_ms"]
            out["p99_ratio"] = round(busy / alone, 2) if alone and busy else None
        held = []
        for c in clients:
            c.proc.stdin.write(b"\n")
            c.proc.stdin.flush()
            m = c.wait_for(r"CLOSED (.*)", timeout=60)
            held.append(json.loads(m.group(1)))
            c.stop()
        clients = []
        out["held"] = {"pings": sum(h["pings"] for h in held),
                       "closed_by_server": sum(h["closed_by_server"] for h in held)}
    finally:
        for c in clients:
            release_sessions(c)
        watch.stop()
        gw.stop()
    return out


RESTART_DEADLINE = 120.0  # seconds the devices get to come back after the connector stopped


def ask(clients: list[Proc], since: float) -> list[dict]:
    """Each client's REPORT of its sessions since ``since``."""
    for c in clients:
        c.proc.stdin.write(f"report {since!r}\n".encode())
        c.proc.stdin.flush()
    return [json.loads(c.wait_for(r"^REPORT (.*)", timeout=60).group(1)) for c in clients]


def merged(reports: list[dict]) -> dict:
    """The clients' reports as one: counts added, histograms (``back_by_*``)
    added bucket by bucket, counts by kind (dicts) added, the last of the
    last."""
    out: dict = {}
    for key, value in reports[0].items():
        if key == "mqtt":
            continue  # an e2e client's sessions.Runner report: merged on its own
        values = [r[key] for r in reports]
        if key.startswith("back_by_"):
            width = max(len(v) for v in values)
            out[key] = [sum(v[k] for v in values if k < len(v)) for k in range(width)]
        elif isinstance(value, dict):
            out[key] = {}
            for v in values:
                for k, n in v.items():
                    out[key][k] = out[key].get(k, 0) + n
        elif key.startswith("last_"):
            present = [v for v in values if v is not None]
            out[key] = max(present) if present else None
        elif isinstance(value, int):
            out[key] = sum(values)
    if "back_by_second" in out:
        for name, share in (("p50_back_s", 0.5), ("p90_back_s", 0.9)):  # to the second: the histogram's
            seen, out[name] = 0, None
            for k, count in enumerate(out["back_by_second"]):
                seen += count
                if count and seen >= share * out["back_since"]:
                    out[name] = k + 1
                    break
    return out


class RestartingNode:
    """One ``twistd lmgateway`` that can be killed and started again, always
    on the same port (its devices come back where they were): ``server``,
    the one running now."""

    def __init__(self, label: str, data, n: int, extra=()):
        self.label, self.data, self.n, self.extra = label, data, n, tuple(extra)
        self.metrics, self.port = free_port(), free_port()
        self.runs = 0
        self.server = self._start()

    def _start(self) -> servers.Server:
        self.runs += 1
        return servers.gateway(f"capacity-{self.label}-gateway-{self.runs}", self.data, "--metrics",
                               f"tcp:{self.metrics}:interface=127.0.0.1", "--max-instance-sessions",
                               str(self.n + 100), *self.extra, keep=True,
                               listen=f"tcp:{self.port}:interface=127.0.0.1:backlog=4096")

    def restart(self) -> int:
        """kill -9, then start again; the new process's pid."""
        self.server.proc.kill()
        self.server = self._start()
        return self.server.pid


# Buckets of the restarted node's profile (--profile-restart): each sample
# goes to the first whose pattern matches a frame of its stack.
RESTART_BUCKETS = [
    ("PBKDF2 (the hashing threads)", ("pbkdf2", "verify_password", "hash_password")),
    ("store (its thread)", ("store.py", "sqlite3", "psycopg")),
    ("Autobahn's debug-line pretty-printing (pformat)", ("pformat (",)),
    ("logging (the access log included)", ("twisted/logger/", "LoggingFile.", "HTTPFactory.log", "Repeats.")),
    ("HTTP: the /mqtt resource and refusals before the upgrade", ("twisted/web/", "MQTTResource")),
    ("WebSocket opening handshake (Autobahn)", ("processHandshake", "succeedHandshake", "failHandshake",
                                                "processProxyConnect", "_connectionMade")),
    ("MQTT CONNECT, login guard, CONNACK", ("_on_connect", "LoginGuard", "Authenticator", "_connack",
                                            "MQTTSession.")),
    ("accepting and closing connections", ("doAccept", "connectionLost", "_closeSocket", "loseConnection",
                                           "connectionMade", "buildProtocol")),
    ("reactor: the rest", ("doRead", "doWrite", "EPollReactor", "mainLoop", "runUntilCurrent")),
]
PROFILE_RESTART = 0.0  # seconds of py-spy on the restarted node (main's --profile-restart)


def profile_node(pid: int, label: str) -> tuple[subprocess.Popen, Path] | None:
    """py-spy recording the restarted node's first PROFILE_RESTART seconds."""
    from .hotpath import py_spy

    spy = py_spy()
    if not PROFILE_RESTART or spy is None:
        if PROFILE_RESTART:
            log("py-spy is not installed: no profile of the restart (.venv/bin/pip install py-spy)")
        return None
    raw = VAR / f"profile-restart-{label}.txt"
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "100", "--duration",
                             str(int(PROFILE_RESTART)), "--format", "raw", "--function", "--output", str(raw)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), raw


def profile_summary(recording: tuple[subprocess.Popen, Path] | None) -> dict | None:
    from .hotpath import summarise

    if recording is None:
        return None
    proc, raw = recording
    try:
        proc.wait(timeout=PROFILE_RESTART + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
    if not raw.exists():
        return None
    s = summarise(raw, top=20, buckets=RESTART_BUCKETS)
    return {"seconds": PROFILE_RESTART, "samples": s["samples"], "buckets": s["groups"], "self": s["self"],
            "raw": str(raw)}


def node_restart(label: str, clients: list[Proc], restart, watch: QueueWatch, logged_in: int, codes_before: dict,
                 deadline: float) -> dict:
    """Scenario 3: ``restart()`` kills the node (-9), starts it again and
    returns its pid; the clients reconnect as the app and the connector do.
    Until every device is back: the arrival curve, how long the PBKDF2 pool
    had an idle thread while devices waited, and the CPU of the node's
    reactor thread and of its other threads in the first 40 s and after;
    with --profile-restart, where the node's threads spent its first seconds
    (py-spy, all threads, idle ones left out)."""
    t_stop = time.monotonic()
    pid = restart()
    t_up = time.monotonic()
    recording = profile_node(pid, label)
    log(f"[{label}] node killed and started again in {t_up - t_stop:.1f} s; waiting for the devices")
    # CPU of the reactor's thread (the main one) and of the whole node, by phase: where the time goes
    cpu = [(t_up, cpu_seconds(pid, pid), cpu_seconds(pid))]
    while True:
        report = merged([r.get("mqtt", r) for r in ask(clients, t_stop)])
        now = time.monotonic()
        if len(cpu) == 1 and now - t_up >= 40:
            cpu.append((now, cpu_seconds(pid, pid), cpu_seconds(pid)))
        if report["back_since"] >= logged_in or now - t_stop > deadline:
            break
        time.sleep(2.0)
    cpu.append((time.monotonic(), cpu_seconds(pid, pid), cpu_seconds(pid)))
    phases = [{"seconds": round(b[0] - a[0], 1), "reactor_thread_s": round(b[1] - a[1], 1),
               "other_threads_s": round((b[2] - a[2]) - (b[1] - a[1]), 1)} for a, b in zip(cpu, cpu[1:])]
    t_end = t_stop + (report["last_back_s"] or 0.0)
    codes = {k: v - codes_before.get(k, 0) for k, v in report["connack_codes"].items() if v - codes_before.get(k, 0)}
    out = {"restart_s": round(t_up - t_stop, 2), "back": report["back_since"], "logged_in": logged_in,
           "all_back_s": report["last_back_s"] if report["back_since"] >= logged_in else None,
           "back_by_10s": list(itertools.accumulate(report["back_by_10s"])),
           "attempts": report["attempts"], "connack_codes": codes,  # attempts start again at 0 on a drop
           "cpu_by_phase": phases, **watch.idle(t_up, max(t_end, t_up), os.cpu_count() or 1)}
    profile = profile_summary(recording)
    if profile is not None:
        out["profile"] = profile
    log(f"[{label}]   {out}")
    return out


def gateway_restart(args, pbkdf2: float, jitter: str) -> dict:
    """Scenario 3 alone, with idle sessions (:mod:`bench.sessions`) waiting
    as the clients do (``jitter``: ``spread``) or as they did before
    (``stretch``), for the comparison."""
    n = args.sessions
    label = f"node-{jitter}"
    data = VAR / f"capacity-{label}"
    if data.exists():
        shutil.rmtree(data)
    seeded = seed_gateway(str(data), [n])
    accounts = VAR / f"capacity-{label}-devices.json"
    accounts.write_text(json.dumps([d[:2] for d in seeded["devices"]]))
    node = RestartingNode(label, data, n, args.gateway_args.split())
    clients: list[Proc] = []
    watch = QueueWatch(node.metrics)

    try:
        log(f"[{label}] {n} devices log in, {RAMP} at a time")
        login, clients = storm_once(node.server, n, accounts, procs=2, concurrency=RAMP // 2, name=label,
                                    extra=("--sources", str(SOURCES), "--keep-alive", str(KEEP_ALIVE), "--max-backoff",
                                           str(MAX_BACKOFF), "--jitter", jitter, "--reconnect"), deadline=600)
        out = node_restart(label, clients, node.restart, watch, login["accepted"], login["connack_codes"],
                           args.storm_deadline)
        out.update(sessions=n, jitter=jitter, pbkdf2_floor_s=round(n * pbkdf2 / (os.cpu_count() or 1), 1))
    finally:
        watch.stop()
        for c in clients:
            release_sessions(c)
        node.server.stop()
    return out


def connector_restart(args, pbkdf2: float) -> dict:
    """Scenarios 2 and 3 on one fleet: one company of N devices on one node;
    its connector restarted (-9, then SIGTERM), then the node."""
    n = args.sessions
    data = VAR / "capacity-restart"
    if data.exists():
        shutil.rmtree(data)
    seeded = seed_gateway(str(data / "gateway"), [n])
    node = RestartingNode("restart", data / "gateway", n, args.gateway_args.split())
    watch = QueueWatch(node.metrics)
    try:
        out = restart_company_connector("restart", [node.server], seeded, data, restart_node=node.restart,
                                        watch=watch, deadline=args.storm_deadline)
        out["node"]["pbkdf2_floor_s"] = round(n * pbkdf2 / (os.cpu_count() or 1), 1)
        return out
    finally:
        watch.stop()
        node.server.stop()


def two_nodes_connector_restart(args) -> dict:
    """Scenario 4: the same company on two nodes sharing PostgreSQL and
    Redis (the private instances the tests start), half of its devices on
    each, its connector on the first."""
    from linchpin_common.testing_services import PostgreSQL, Redis

    n = args.sessions
    data = VAR / "capacity-two-nodes"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    pg, redis = PostgreSQL(), Redis()
    nodes: list[servers.Server] = []
    try:
        store, bus = pg.url(pg.create_database()), redis.url()
        for k in ("a", "b"):  # the first makes the schema the seed writes into
            nodes.append(servers.gateway(f"capacity-two-nodes-{k}", data / f"node-{k}", "--max-instance-sessions",
                                         str(n + 100), listen="tcp:0:interface=127.0.0.1:backlog=4096",
                                         env=dict(os.environ, LMGATEWAY_STORE=store, LMGATEWAY_BUS=bus)))
            nodes[-1].proc.wait_for(r"bus up")
        seeded = seed_gateway_postgres(store, [n])
        out = restart_company_connector("two-nodes", nodes, seeded, data)
        out["postgresql_rss_kib"], out["redis_rss_kib"] = pg_rss(pg), rss_kib(redis.proc.pid)
        return out
    finally:
        for node in nodes:
            node.stop()
        redis.destroy()
        pg.destroy()


def pg_rss(pg) -> int:
    """RSS of the PostgreSQL server's processes (the postmaster and its children), in KiB."""
    with open(os.path.join(pg.data, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    total = rss_kib(postmaster)
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rpartition(")")[2].split()[1]) == postmaster:
                    total += rss_kib(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return total


def restart_company_connector(label: str, gateways: list[servers.Server], seeded: dict, data, restart_node=None,
                              watch: QueueWatch | None = None, deadline: float = 300.0) -> dict:
    """One company of N devices, each with an end-to-end session
    (:mod:`bench.e2e_sessions`, the devices spread over ``gateways``, its
    connector on the first): the connector is killed (-9) and started again,
    then stopped with SIGTERM (drain) and started again. Each time: until
    every device has a new session, with the RSS peaks of the gateways, the
    connector and the clients. Then, with ``restart_node``, the node
    (:func:`node_restart`)."""
    n = len(seeded["devices"])
    url = f"http://127.0.0.1:{gateways[0].port}"
    key, secrets_hex = seed_connector(str(data / "connector"), url, seeded["instances"][0],
                                      [d[0] for d in seeded["devices"]])
    accounts = VAR / f"capacity-{label}-devices.json"
    accounts.write_text(json.dumps([[d[0], d[1], secret] for d, secret in zip(seeded["devices"], secrets_hex)]))
    # A backend that answers: the connector's health check would drain it otherwise.
    app = Proc(f"capacity-{label}-app", [PYTHON, "-m", "linchpin_connector.sample_app", "--listen",
                                         "tcp:0:interface=127.0.0.1"])
    backend = "http://127.0.0.1:" + app.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
    runs = 0

    def connector() -> Proc:
        nonlocal runs
        runs += 1
        proc = Proc(f"capacity-{label}-connector-{runs}",
                    [str(servers.BIN / "twistd"), "-n", "--pidfile=", "lmconnector", "--data-dir",
                     str(data / "connector"), "--backend", backend])
        proc.wait_for(r"connected to the gateway", timeout=60)
        return proc

    out: dict = {"sessions": n, "nodes": len(gateways)}
    clients: list[Proc] = []
    conn = connector()
    try:
        log(f"[{label}] {n} devices log in and make their end-to-end sessions")
        per = (n + 1) // 2
        for i in range(2):  # client i on gateway i (mod how many there are)
            clients.append(Proc(f"capacity-{label}-devices-{i}", [
                PYTHON, "-m", "bench.e2e_sessions", "--target", "gw", "--port", str(gateways[i % len(gateways)].port),
                "--accounts", str(accounts), "--first", str(i * per), "--count", str(min(per, n - i * per)),
                "--concurrency", str(RAMP // 2), "--retry", "--hold", "--deadline", "600", "--sources", str(SOURCES),
                "--keep-alive", str(KEEP_ALIVE), "--max-backoff", str(MAX_BACKOFF), "--connector-key", key,
                "--reconnect"], stdin=subprocess.PIPE))
        logins = [json.loads(c.wait_for(r"READY (.*)", timeout=660).group(1)) for c in clients]
        out["logged_in"] = sum(s["ready"] for s in logins)
        t = time.monotonic()
        while (now := merged(ask(clients, 0.0)))["with_session"] < out["logged_in"] \
                and time.monotonic() - t < RESTART_DEADLINE:
            time.sleep(1.0)
        out["sessions_before"] = now["with_session"]
        log(f"[{label}]   {out['logged_in']} logged in, {now['with_session']} with a session")
        for how in ("kill", "term"):
            peaks = {f"gateway-{k}": rss_kib(g.pid) for k, g in enumerate(gateways)}
            peaks.update(connector=rss_kib(conn.pid), clients=sum(rss_kib(c.pid) for c in clients))
            t_stop = time.monotonic()
            if how == "kill":
                conn.kill()
            else:
                conn.terminate(timeout=120)
            t_stopped = time.monotonic()
            conn = connector()
            t_started = time.monotonic()
            while True:
                report = merged(ask(clients, t_stop))
                for k, g in enumerate(gateways):
                    peaks[f"gateway-{k}"] = max(peaks[f"gateway-{k}"], rss_kib(g.pid))
                peaks["connector"] = max(peaks["connector"], rss_kib(conn.pid))
                peaks["clients"] = max(peaks["clients"], sum(rss_kib(c.pid) for c in clients))
                if report["back_since"] >= out["logged_in"] or time.monotonic() - t_stop > RESTART_DEADLINE:
                    break
                time.sleep(1.0)
            result = {"stop_s": round(t_stopped - t_stop, 2), "started_s": round(t_started - t_stop, 2),
                      "back": report["back_since"], "all_back_s": report["last_back_s"]
                      if report["back_since"] >= out["logged_in"] else None,
                      "p50_back_s": report["p50_back_s"], "p90_back_s": report["p90_back_s"],
                      "back_by_second": report["back_by_second"],
                      "rss_peak_kib": peaks, **{k: report[k] for k in ("hellos", "hello_again", "resets", "rejects",
                                                                      "offline", "moved", "closed_by_server")}}
            out[how] = result
            log(f"[{label}] {how}: {result}")
        if restart_node is not None:
            codes: dict = {}
            for login in logins:
                for k, v in login["connack_codes"].items():
                    codes[k] = codes.get(k, 0) + v
            out["node"] = node_restart(label, clients, restart_node, watch, out["logged_in"], codes, deadline)
    finally:
        for c in clients:
            release_sessions(c)
        conn.stop()
        app.stop()
    return out


def table(results: list[dict], pbkdf2: float) -> str:
    rows = ["| run | sessions | log-in from cold | PBKDF2 floor | ratio | pool idle while waiting "
            "| RSS per session (second half) | idle CPU (pings/s) | latency p50/p99 alone "
            "| latency p50/p99 with the idle sessions | p99 ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        login = r["login"]
        lat_a, lat_b = r.get("latency_alone") or {}, r.get("latency_busy") or {}
        rows.append(
            f"| {r['label']} ({r['instances']} instances) | {login['accepted']:,} of {r['sessions']:,} "
            f"| {login['all_accepted_s']} s | {login['pbkdf2_floor_s']} s | {login.get('ratio_to_floor')} "
            f"| {login['pool_idle_s']} s of {login['watched_s']} s "
            f"| {r['kib_per_session']} KiB ({r['kib_per_session_second_half']} KiB) "
            f"| {r['idle']['gateway_cpu_pct_of_a_core']} % of a core ({r['idle']['pings_per_s']}) "
            f"| {lat_a.get('p50_ms', '-')} / {lat_a.get('p99_ms', '-')} ms "
            f"| {lat_b.get('p50_ms', '-')} / {lat_b.get('p99_ms', '-')} ms | {r.get('p99_ratio', '-')} |")
    return "\n".join(rows) + f"\n\nOne PBKDF2 run (100,000 iterations) took {pbkdf2 * 1000:.1f} ms here.\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="capacity of one gateway node (see module docstring)")
    p.add_argument("--sessions", type=int, default=10_000)
    p.add_argument("--idle-seconds", type=float, default=45.0)
    p.add_argument("--latency-seconds", type=float, default=15.0)
    p.add_argument("--only", default="one,restart",
                   help="one: 10,000 idle sessions of one instance (scenario 1); restart: a 10,000-device company's "
                   "connector restarted, then the node (scenarios 2 and 3); many: idle sessions of 1,000 instances of "
                   "10; two-nodes: a company's connector restarted, its devices on two nodes (scenario 4); "
                   "node-spread, node-stretch: the node restarted under idle sessions waiting as the clients do, "
                   "or as they did before")
    p.add_argument("--storm-deadline", type=float, default=300.0, help="seconds the devices get to come back "
                   "after a node restart")
    p.add_argument("--gateway-args", default="", help="more options of the node that restarts, to try them")
    p.add_argument("--profile-restart", type=float, default=0.0, metavar="S",
                   help="py-spy on the restarted node for its first S seconds (needs py-spy and ptrace rights)")
    args = p.parse_args(argv)
    global PROFILE_RESTART
    PROFILE_RESTART = args.profile_restart
    exit_on_signals()
    VAR.mkdir(parents=True, exist_ok=True)
    limit = raise_nofile(args.sessions + 1024)
    if limit < args.sessions + 200:
        raise SystemExit(f"open files limit {limit} is too low for {args.sessions} sessions (ulimit -n)")
    env = environment()
    log(f"capacity: {env['cpus']} CPUs ({env['cpu_model']}), Python {env['python']}, load {env['loadavg_at_start']}")
    pbkdf2 = pbkdf2_seconds()
    results = []
    try:
        if "one" in args.only:
            results.append(scenario_one("one-instance", [args.sessions], args, pbkdf2, latency=True))
        if "many" in args.only:
            results.append(scenario_one("many-instances", [10] * (args.sessions // 10), args, pbkdf2,
                                        latency=False))
        restart_result = two_nodes_result = None
        if "restart" in args.only.split(","):
            restart_result = connector_restart(args, pbkdf2)
        if "two-nodes" in args.only.split(","):
            two_nodes_result = two_nodes_connector_restart(args)
        node_restarts = [gateway_restart(args, pbkdf2, jitter) for jitter in ("spread", "stretch")
                         if f"node-{jitter}" in args.only.split(",")]
    finally:
        stop_all()
    text = table([r for r in results], pbkdf2) if results else ""
    print(text)
    for result in (restart_result, two_nodes_result):
        for how in ("kill", "term"):
            r = (result or {}).get(how)
            if r:
                print(f"Connector restart, {result['nodes']} node(s) ({how}): {r['back']:,} of {result['logged_in']:,} "
                      f"devices with a new "
                      f"session, the last {r['all_back_s']} s after the stop (half by {r['p50_back_s']} s, 90 % by "
                      f"{r['p90_back_s']} s; the "
                      f"connector stopped in {r['stop_s']} s and was connected again at {r['started_s']} s); "
                      f"HELLOs {r['hellos']:,}, sent again {r['hello_again']:,}, RESETs {r['resets']:,}, sessions "
                      f"closed by the gateway {r['closed_by_server']}; RSS peaks {r['rss_peak_kib']} KiB")
    for r in ([restart_result["node"]] if restart_result else []) + node_restarts:
        print(f"Node restart ({r.get('jitter', 'spread')} waits): {r['back']:,} of {r['logged_in']:,} back, the last "
              f"{r['all_back_s']} s after the kill (PBKDF2 floor {r['pbkdf2_floor_s']} s; node up again at "
              f"{r['restart_s']} s), {r['attempts']:,} attempts, CONNACKs {r['connack_codes']}, PBKDF2 pool idle "
              f"{r['pool_idle_s']} s of {r['watched_s']} s; back by each 10 s: {r['back_by_10s']}")
        if r.get("profile"):
            prof = r["profile"]
            print(f"  where the restarted node's threads were in its first {prof['seconds']:g} s "
                  f"({prof['samples']:,} samples; {prof['raw']}):")
            for name, pct in prof["buckets"]:
                print(f"    {pct:5.1f} %  {name}")
            print("  innermost frames:")
            for name, pct in prof["self"][:12]:
                print(f"    {pct:5.1f} %  {name}")
    (VAR / "capacity.json").write_text(json.dumps({"environment": env, "pbkdf2_s": pbkdf2, "results": results,
                                                   "restart": restart_result,
                                                   "two_nodes": two_nodes_result,
                                                   "node_restarts": node_restarts}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
