"""``make demo``: the whole system on loopback, step by step.

Starts a gateway, the sample intranet app and a connector (each its own
process, state under ./var/demo), pairs a device for ``alice`` with the real
commands, fetches pages and a large download through the relay, measures
them next to direct requests to the app, then stops everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

from linchpin_common.procs import Child, ChildError, cpu_seconds, rss_kib
from linchpin_common.malloc import keep_large_buffers

BIN = os.path.dirname(sys.executable)
ROOT = os.path.join("var", "demo")
DOWNLOAD = 32 * 1024 * 1024
TIMEOUT = 60
REQUESTS = 500  # small requests timed, relayed and direct (CPU to 20 us: /proc counts 10 ms ticks)


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


class Service(Child):
    """A long-running child writing its output to a log file.

    Not a pipe read on a thread: the device runs in this process, and a
    thread woken for every line the connector logs took the GIL from it in
    the middle of the measured round trips."""

    def __init__(self, name: str, argv: list[str], ready: str):
        super().__init__(argv, name=name, log=os.path.join(ROOT, f"{name}.log"), pipe=False)
        try:
            self.match = self.wait_for(ready, TIMEOUT)
        except ChildError:
            self.stop()
            raise SystemExit(f"{name} did not start; see {self.log}")

    def stop(self) -> int:
        return super().stop(grace=15)


def run(argv: list[str], stdin: str | None = None) -> str:
    shown = " ".join(a if len(a) < 60 else a[:40] + "..." for a in argv[1:] if not a.startswith("linchpin-mobile:"))
    print(f"$ {os.path.basename(argv[0])} {shown}", flush=True)
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    if done.stderr.strip():
        print("  " + done.stderr.strip().replace("\n", "\n  "), flush=True)
    if done.returncode != 0:
        raise SystemExit(f"{os.path.basename(argv[0])} failed with exit code {done.returncode}")
    return done.stdout


def run_bytes(argv: list[str]) -> tuple[bytes, float]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=TIMEOUT)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"request failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout, elapsed


def rss_mib(pid: int) -> float:
    return rss_kib(pid) / 1024


def measure(state: str, app_url: str, download: int, watch: dict[str, int]) -> dict:
    """Round trips and throughput through the relay (device library, one
    session) and direct to the app; peak RSS growth of the ``watch`` processes
    during the download. Prints them and returns them (``--results``)."""
    from .device import Device, DeviceState

    keep_large_buffers()  # as lmdevice does: the device runs in this process
    before = {name: rss_mib(pid) for name, pid in watch.items()}
    peak = dict(before)
    cpu_before: dict[str, float] = {}
    cpu_used: dict[str, float] = {}
    cpu_per_request: dict[str, float] = {}

    def sample():
        for name, pid in watch.items():
            peak[name] = max(peak[name], rss_mib(pid))

    async def main(reactor):
        device = Device(reactor, DeviceState.load(state))
        await device.open()
        await device.handshake()
        relay = []
        cpu_before.update({name: cpu_seconds(pid) for name, pid in watch.items()}, device=cpu_seconds(os.getpid()))
        for _ in range(REQUESTS):
            start = time.perf_counter()
            response = await device.request("GET", "/api/whoami")
            await response.content()
            relay.append(time.perf_counter() - start)
        cpu_per_request.update({name: cpu_seconds(pid) - cpu_before[name] for name, pid in watch.items()},
                               device=cpu_seconds(os.getpid()) - cpu_before["device"])
        start = time.perf_counter()
        cpu_before.update({name: cpu_seconds(pid) for name, pid in watch.items()}, device=cpu_seconds(os.getpid()))
        response = await device.request("GET", f"/download?size={download}")
        digest = hashlib.sha256()
        seen = [0]

        def consume(part):
            digest.update(part)
            seen[0] += len(part)
            if seen[0] % (4 << 20) < len(part):
                sample()

        await response.deliver(consume)
        relay_seconds = time.perf_counter() - start
        cpu_used.update({name: cpu_seconds(pid) - cpu_before[name] for name, pid in watch.items()},
                        device=cpu_seconds(os.getpid()) - cpu_before["device"])
        device.close()
        return relay, relay_seconds, digest.hexdigest()

    relay, relay_seconds, relay_digest = _react(main)
    direct = []
    for _ in range(REQUESTS):
        start = time.perf_counter()
        with urllib.request.urlopen(app_url + "/api/whoami", timeout=TIMEOUT) as r:
            r.read()
        direct.append(time.perf_counter() - start)
    start = time.perf_counter()
    digest = hashlib.sha256()
    with urllib.request.urlopen(f"{app_url}/download?size={download}", timeout=TIMEOUT) as r:
        while chunk := r.read(1 << 20):
            digest.update(chunk)
    direct_seconds = time.perf_counter() - start
    if digest.hexdigest() != relay_digest:
        raise SystemExit("the download through the relay differs from the direct one")
    mib = download / (1 << 20)
    relay_rate, direct_rate = mib / relay_seconds, mib / direct_seconds
    print(f"  request round trip, median of {REQUESTS}:  relay {statistics.median(relay) * 1000:.2f} ms"
          f"   direct {statistics.median(direct) * 1000:.2f} ms"
          f"   (added {(statistics.median(relay) - statistics.median(direct)) * 1000:.2f} ms)")
    print("  CPU per relayed request:          "
          + "   ".join(f"{name} {cpu_per_request[name] * 1e6 / REQUESTS:.0f} us" for name in cpu_per_request))
    print(f"  {mib:.0f} MiB download (same sha256):    relay {relay_rate:.1f} MiB/s"
          f"   direct {direct_rate:.1f} MiB/s   ({relay_rate / direct_rate:.0%} of direct)")
    print("  RSS growth during the download:   "
          + "   ".join(f"{name} {peak[name] - before[name]:+.1f} MiB" for name in watch))
    print("  CPU per MiB relayed:              "
          + "   ".join(f"{name} {cpu_used[name] * 1000 / mib:.1f} ms" for name in cpu_used)
          + f"   (2 cores: {2 * relay_seconds * 1000 / mib:.1f} core-ms per MiB available)")
    return {"requests": REQUESTS, "download_mib": mib,
            "round_trip_ms": {"relay": statistics.median(relay) * 1000, "direct": statistics.median(direct) * 1000},
            "mib_per_s": {"relay": relay_rate, "direct": direct_rate},
            "cpu_us_per_request": {name: used * 1e6 / REQUESTS for name, used in cpu_per_request.items()},
            "cpu_ms_per_mib": {name: used * 1000 / mib for name, used in cpu_used.items()},
            "rss_growth_mib": {name: peak[name] - before[name] for name in watch}}


def write_results(path: str, figures: dict) -> None:
    """The figures as JSON, with the commit measured (``bench.charts`` draws them)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:  # no git: an installed copy
        commit = ""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"e2e": figures, "env": {"commit": commit or "unknown"}}, f, indent=1)


def _react(main):
    """Run ``main(reactor)`` once on a fresh reactor and return its result."""
    from twisted.internet import defer, task

    out = []

    def go(reactor):
        return defer.ensureDeferred(main(reactor)).addCallback(out.append)

    try:
        task.react(go)
    except SystemExit as e:
        if e.code:
            raise
    return out[0]


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m linchpin_connector.demo")
    parser.add_argument("--download-mib", type=int, default=DOWNLOAD >> 20,
                        help="size of the measured download (default %(default)s)")
    parser.add_argument("--results", metavar="FILE",
                        help="also write the measured figures to FILE as JSON (make bench draws them)")
    args = parser.parse_args(argv)
    download = args.download_mib << 20
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(ROOT, mode=0o700)
    twistd = os.path.join(BIN, "twistd")
    lmconnector = os.path.join(BIN, "lmconnector")
    lmdevice = os.path.join(BIN, "lmdevice")
    connector_dir = os.path.join(ROOT, "connector")
    state = os.path.join(ROOT, "alice-phone.json")
    services: list[Service] = []
    try:
        step("Starting the gateway (twistd lmgateway, SQLite store in var/demo/gateway)")
        gateway = Service("gateway", [twistd, "-n", "--pidfile=", "lmgateway", "--listen",
                                      "tcp:0:interface=127.0.0.1", "--data-dir", os.path.join(ROOT, "gateway")],
                          r"lmgateway listening on .* at 127\.0\.0\.1:(\d+)")
        services.append(gateway)
        gateway_url = f"http://127.0.0.1:{gateway.match.group(1)}"
        print(f"  gateway at {gateway_url}")

        step("Starting the sample intranet app")
        app = Service("intranet", [sys.executable, "-m", "linchpin_connector.sample_app", "--listen",
                                   "tcp:0:interface=127.0.0.1"], r"listening on 127\.0\.0\.1:(\d+)")
        services.append(app)
        app_url = f"http://127.0.0.1:{app.match.group(1)}"
        print(f"  intranet app at {app_url}")

        step("Registering the connector with the gateway")
        run([lmconnector, "--data-dir", connector_dir, "register", "--gateway", gateway_url])

        step("Starting the connector (twistd lmconnector)")
        connector = Service("connector", [twistd, "-n", "--pidfile=", "lmconnector", "--data-dir",
                                          connector_dir, "--backend", app_url], r"connected to the gateway")
        services.append(connector)
        print("  connector online")

        step("Adding a device for alice (the URI is what the QR code holds)")
        uri = run([lmconnector, "--data-dir", connector_dir, "device", "add", "alice", "--qr-png",
                   os.path.join(ROOT, "alice-qr.png")]).strip()
        print(f"  pairing URI: {uri[:60]}... (QR code in {ROOT}/alice-qr.png)")

        step("Pairing the phone (lmdevice pair -, URI on stdin)")
        run([lmdevice, "--state", state, "pair", "-"], stdin=uri + "\n")
        print("  " + run([lmconnector, "--data-dir", connector_dir, "device", "list"]).strip())

        step("Fetching the intranet home page through the relay")
        page, _ = run_bytes([lmdevice, "--state", state, "request", "-i", "/"])
        print("  " + page.decode(errors="replace").strip().replace("\n", "\n  "))

        step("Calling a JSON endpoint through the relay")
        body, _ = run_bytes([lmdevice, "--state", state, "request", "/api/whoami?from=demo"])
        print("  " + body.decode().strip())
        if b'"alice"' not in body:
            raise SystemExit("the app did not see alice as the user")

        step(f"Downloading {DOWNLOAD >> 20} MiB through the relay with lmdevice")
        body, seconds = run_bytes([lmdevice, "--state", state, "request", f"/download?size={DOWNLOAD}"])
        if len(body) != DOWNLOAD:
            raise SystemExit(f"download truncated: {len(body)} of {DOWNLOAD} bytes")
        print(f"  {len(body)} bytes in {seconds:.2f} s (including process start and handshake)")

        step("Measuring: relay vs. direct (one device session, in-process)")
        figures = measure(state, app_url, download, {"gateway": gateway.proc.pid, "connector": connector.proc.pid})
        if args.results:
            write_results(args.results, figures)
    finally:
        step("Stopping everything")
        for service in reversed(services):
            code = service.stop()
            print(f"  {service.name} exited with {code}")
    print("\nDemo complete.")


if __name__ == "__main__":
    main()
