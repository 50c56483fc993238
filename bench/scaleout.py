"""Several gateway nodes: ``python -m bench.scaleout [--quick]`` (part of ``make bench``).

Two ``twistd lmgateway`` nodes share a private PostgreSQL and Redis
(started here, on loopback, by the launchers the tests use:
:mod:`linchpin_common.testing_services`). All in one run:

1. **Cross-node relay.** The request/response relay of ``bench.run``
   (``bench/relayclient.py``, K = 64 in flight, 256 B, QoS 0) with the
   connector and the device on one node, then with the connector on node A
   and the device on node B. Reported: round trips/s and their ratio.
2. **Aggregate throughput.** ``--pairs`` (default 4) connector/device pairs,
   one instance each, all at once: every pair on node A, then the pairs
   spread over both nodes (pair i on node i mod 2, both ends on one node, as
   with a load balancer that happened to place them together) and spread
   with both ends apart (connector on node i mod 2, device on the other).
   Reported: total round trips/s and the ratios to one node.
3. **Failover.** A connector (paho) on node A, a device on node B. Node A
   gets ``kill -9``; the connector reconnects at once through node B.
   Reported: time from the kill to the first request relayed again. Then
   the connector on a third node that gets ``kill -9`` with no reconnection:
   time until the device sees ``{"connector": "offline"}`` (the heartbeat
   timeout).

Each throughput figure is the median over ``--reps`` repetitions. The
machine is shared and has 2 cores: 2 nodes, Redis, PostgreSQL and up to 8
client processes compete for them, which the CPU columns show.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import time
from pathlib import Path

from linchpin_common.testing_services import Paho, PostgreSQL, Redis  # the same private instances as the tests

from . import accounts
from .procs import PYTHON, VAR, Proc, exit_on_signals, stop_all

BIN = Path(PYTHON).parent


def node(name: str, store: str, bus: str) -> tuple[Proc, int]:
    env = dict(os.environ, LMGATEWAY_STORE=store, LMGATEWAY_BUS=bus)
    proc = Proc(name, [str(BIN / "twistd"), "-n", "--pidfile=", "lmgateway", "--listen",
                       "tcp:0:interface=127.0.0.1:backlog=1024", "--data-dir", str(VAR / name)], env=env)
    port = int(proc.wait_for(r"lmgateway listening on .* at 127\.0\.0\.1:(\d+)").group(1))
    proc.wait_for(r"bus up")
    return proc, port


def run_pairs(placements, args, pids) -> dict:
    """placements: [(connector port, device port, instance, device)]; all at once."""
    conns, devs = [], []
    try:
        for i, (cport, dport, inst, (dev_id, dev_pw)) in enumerate(placements):
            common = ["--target", "gw", "--device-id", dev_id, "--size", str(args.size), "--inflight", "64"]
            c = Proc(f"scale-connector-{i}", [PYTHON, "-m", "bench.relayclient", "connector", "--port", str(cport),
                                              *common, "--user", inst[0], f"--password={inst[1]}"])
            conns.append(c)
        for c in conns:
            c.wait_for(r"READY", timeout=30)
        for i, (cport, dport, inst, (dev_id, dev_pw)) in enumerate(placements):
            common = ["--target", "gw", "--device-id", dev_id, "--size", str(args.size), "--inflight", "64"]
            d = Proc(f"scale-device-{i}", [PYTHON, "-m", "bench.relayclient", "device", "--port", str(dport),
                                           *common, "--user", dev_id, f"--password={dev_pw}",
                                           "--warmup", str(args.warmup), "--duration", str(args.duration),
                                           "--pids", ",".join(str(p) for p in pids)])
            devs.append(d)
        results = []
        for d in devs:
            d.wait(args.warmup + args.duration + 60)
            out = d.text().strip().splitlines()
            if not out or not out[-1].startswith("{"):
                raise RuntimeError(f"{d.name}: {d.tail()}")
            results.append(json.loads(out[-1]))
    finally:
        for p in conns + devs:
            p.stop()
    cpu = results[0]["cpu_percent"]
    return {"rate": round(sum(r["rate"] for r in results), 1), "rates": [r["rate"] for r in results],
            "cpu": {k: v for k, v in cpu.items() if k not in ("self",)},
            "mismatch": sum(r["mismatch"] for r in results)}


def failover(ports, procs, inst, dev, start_node) -> dict:
    """Kill -9 the connector's node: (1) the connector reconnects through
    the other node at once: time until a request is relayed again; (2) on a
    third node, killed with no reconnection: time until the device hears
    the connector is offline."""
    a_port, b_port = ports
    conn = Paho(a_port, *inst)
    conn.subscribe("devices/+/up", "$gateway/events")
    device = Paho(b_port, *dev)
    device.subscribe(f"devices/{dev[0]}/down", "$gateway/status")
    device.next_matching("$gateway/status")
    t_kill = time.monotonic()
    procs[0].proc.kill()  # kill -9
    conn2 = Paho(b_port, *inst)  # the connector reconnects through the other node
    conn2.subscribe("devices/+/up", "$gateway/events")
    relayed = None
    n = 0
    while relayed is None and time.monotonic() - t_kill < 30:
        n += 1
        device.publish(f"devices/{dev[0]}/up", b"ping %d" % n, qos=0)
        try:
            topic, payload, _, _ = conn2.messages.get(timeout=0.01)
            if topic.endswith("/up"):
                relayed = time.monotonic() - t_kill
        except queue.Empty:
            pass
    conn2.close()
    conn.close()
    device.next_matching("$gateway/status")  # offline: conn2 left
    proc_c, c_port = start_node()
    conn3 = Paho(c_port, *inst)
    conn3.subscribe("devices/+/up", "$gateway/events")
    device.next_matching("$gateway/status")  # online, on node C
    t_kill = time.monotonic()
    proc_c.proc.kill()
    device.next_matching("$gateway/status", timeout=60)
    offline = time.monotonic() - t_kill
    conn3.close()
    device.close()
    return {"relaying_again_s": round(relayed, 3) if relayed else None, "offline_seen_s": round(offline, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="several gateway nodes (see the module docstring)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--pairs", type=int, default=4)
    args = p.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    exit_on_signals()
    VAR.mkdir(parents=True, exist_ok=True)
    pg, redis = PostgreSQL(), Redis()
    try:
        db = pg.create_database()
        (pa, a), (pb, b) = node("scale-node-a", pg.url(db), redis.url()), node("scale-node-b", pg.url(db), redis.url())
        pids = [pa.pid, pb.pid, redis.proc.pid]
        pairs = []
        for _ in range(max(args.pairs, 1)):
            inst = accounts.register(a)
            (dev,), _ = accounts.pair_devices(a, inst, 1)
            pairs.append((inst, dev))
        rows: dict[str, list] = {k: [] for k in ("one pair, one node", "one pair, across nodes",
                                                  f"{args.pairs} pairs, one node", f"{args.pairs} pairs, two nodes",
                                                  f"{args.pairs} pairs, two nodes, ends apart")}
        keys = list(rows)
        for rep in range(args.reps):
            inst, dev = pairs[0]
            rows[keys[0]].append(run_pairs([(a, a, inst, dev)], args, pids))
            rows[keys[1]].append(run_pairs([(a, b, inst, dev)], args, pids))
            rows[keys[2]].append(run_pairs([(a, a, i, d) for i, d in pairs], args, pids))
            rows[keys[3]].append(run_pairs([((a, b)[k % 2], (a, b)[k % 2], i, d)
                                            for k, (i, d) in enumerate(pairs)], args, pids))
            rows[keys[4]].append(run_pairs([((a, b)[k % 2], (b, a)[k % 2], i, d)
                                            for k, (i, d) in enumerate(pairs)], args, pids))
            print(f"rep {rep + 1}: " + ", ".join(f"{k}: {rows[k][-1]['rate']:.0f}" for k in keys), flush=True)
        fail = failover((a, b), (pa, pb), *pairs[0],
                        start_node=lambda: node("scale-node-c", pg.url(db), redis.url()))
    finally:
        stop_all()
        redis.destroy()
        pg.destroy()
    def us_per_rt(r):
        servers = sum(r["cpu"].get(str(pid), 0.0) for pid in pids)
        return servers / 100 / r["rate"] * 1e6 if r["rate"] else float("nan")

    def span(values, digits=0):
        return f"{min(values):.{digits}f}-{max(values):.{digits}f}"

    lines = [f"{args.size} B, 64 in flight per pair, {args.reps} x {args.duration:g} s; round trips/s median "
             "[min-max]; ratios computed within each repetition; server CPU is both nodes plus Redis, in "
             "microseconds per round trip (the figure least disturbed by other load on the machine):", "",
             "| placement | round trips/s | ratio to one node | server CPU us/rt |", "|---|---|---|---|"]
    ratio_base = {keys[1]: keys[0], keys[3]: keys[2], keys[4]: keys[2]}
    summary = {}
    for k in keys:
        rates = [r["rate"] for r in rows[k]]
        cost = [us_per_rt(r) for r in rows[k]]
        if k in ratio_base:
            ratios = [r["rate"] / base["rate"] for r, base in zip(rows[k], rows[ratio_base[k]])]
            ratio = f"{statistics.median(ratios):.2f} [{span(ratios, 2)}]"
        else:
            ratios, ratio = None, "1"
        summary[k] = {"rates": rates, "ratios": ratios, "us_per_rt": cost}
        lines.append(f"| {k} | {statistics.median(rates):.0f} [{span(rates)}] | {ratio} | "
                     f"{statistics.median(cost):.0f} [{span(cost)}] |")
    lines += ["", f"Failover after kill -9 of the connector's node: relaying again through the other node after "
              f"{fail['relaying_again_s']} s; the device saw the connector offline after {fail['offline_seen_s']} s."]
    text = "\n".join(lines)
    (VAR / "scaleout.md").write_text(text + "\n")
    (VAR / "scaleout.json").write_text(json.dumps({"rows": rows, "summary": summary, "failover": fail}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
