"""Where the relay's time goes: py-spy on a server under the relay load.

    python -m bench.hotpath [--target gw|bare] [--size 256] [--seconds 20] [--rate 250] [--svg] [--pure]
    python -m bench.hotpath --warm-storm 500

Starts the server (the gateway as shipped, or bench/bare_relay.py), the same
connector and device clients as ``bench.run`` (K = 64 in flight, QoS 0), lets
the load settle, then runs ``py-spy record --format raw --function`` on the
server for --seconds and summarises the collapsed stacks:

* **self**: samples whose innermost Python frame is that function (where the
  CPU really is, C calls included in the caller that made them);
* **inclusive**: samples with that function anywhere on the stack.

Where the gateway's hot path is compiled (setup.py; the gateway logs which
at start), py-spy sees no frame inside ``wsframes`` or ``contract.wire``:
their time is counted in the Python function that called them
(``MQTTSession.data_received``, ``Connection._dataReceived``). ``--pure``
profiles the same gateway with its pure-Python hot path.

``--warm-storm N`` profiles the connect path instead: N paired devices
connect once (credentials get cached), disconnect, then connect all at once
while py-spy records (listen backlog 1024, so the kernel drops no SYN).

Percentages are of the samples in which the server was running Python
(py-spy leaves idle threads out: the reactor's epoll wait, the idle hashing
pool). Output: the tables on stdout, the raw stacks in
``var/bench/profile-<target>-<size>.txt`` (and a flame graph
``profile-<target>-<size>.svg`` with --svg). Needs py-spy
(``pip install py-spy``, in bench/requirements.txt) and ptrace rights over
the server (root, or kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import accounts, servers
from .procs import PYTHON, VAR, Proc, exit_on_signals, stop_all

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    exe = Path(PYTHON).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/"


def short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", _REPO, "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path}{':' + m.group('line') if m.group('line') else ''})"


# Buckets for a coarse picture: each sample goes to the first bucket (in
# this order) that has a pattern matching any frame of its stack, so the
# specific costs come first and the broad layers get what is left.
GROUPS = [
    ("Autobahn: unmasking (an NVX masker object per frame)", ("XorMasker", "create_xor_masker")),
    ("Autobahn: eager debug-log argument formatting (hltype/hlval)", ("hltype", "hlval", "_qn (")),
    ("Autobahn: 'message' event per message (fire, txaio futures)", ("ObservableMixin.fire", "txaio/")),
    ("gateway: back-pressure (pause/resume, hold/release)", ("_OutputWatch", "backed_up", "MQTTSession.hold",
                                                             "MQTTSession.release", "Producing")),
    ("gateway: MQTT parsing (wire.Parser)", ("Parser.", "_decode_", "_parse_header")),
    ("gateway: MQTT encoding (encode_publish)", ("encode_publish", "encode_remaining_length")),
    ("gateway: topic checks (_down_device, is_hex_id)", ("_down_device", "is_hex_id")),
    ("gateway: lean receive framing (wsframes: FrameReader, unmask)", ("FrameReader.", "unmask (")),
    ("Twisted: transport.write, socket writes", ("writeSomeData", "doWrite", "FileDescriptor.write",
                                                 "ConnectionMixin.write", "startWriting", "stopWriting")),
    ("Autobahn: send framing (sendMessage/sendFrame/sendData)", ("sendMessage", "sendFrame", "sendData")),
    ("gateway: routing and session dispatch (the rest)", ("Router.", "MQTTSession.", "MQTTServerProtocol.")),
    ("bare relay: onMessage (the rest)", ("RelayProtocol.",)),
    ("Autobahn: receive framing (processData, onFrame*, onMessage*)", ("processData", "consumeData", "onFrame",
                                                                       "onMessage", "_dataReceived",
                                                                       "WebSocketAdapterProtocol.")),
    ("Twisted: reactor, socket reads", ("doRead", "EPollReactor", "_doReadOrWrite", "callWithLogger",
                                        "mainLoop")),
]


def group_of(frames: list[str], groups=GROUPS) -> str:
    for name, patterns in groups:
        if any(p in frame for frame in frames for p in patterns):
            return name
    return "other"


def summarise(raw: Path, top: int = 25, buckets=GROUPS) -> dict:
    self_t: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    groups: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [short(f) for f in stack.split(";") if f and not f.startswith("process ") and
                  not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        self_t[frames[-1]] += n
        groups[group_of(frames, buckets)] += n
        for f in set(frames):
            incl[f] += n
    return {
        "samples": total,
        "groups": [(g, round(100 * n / total, 1)) for g, n in groups.most_common()],
        "self": [(f, round(100 * n / total, 1)) for f, n in self_t.most_common(top)],
        "inclusive": [(f, round(100 * n / total, 1)) for f, n in incl.most_common(top * 2)],
    }


def warm_storm(spy: str, args) -> int:
    from .run import hold_sessions, release_sessions
    n = args.warm_storm
    stem = VAR / f"profile-warm-storm-{n}"
    try:
        srv = servers.gateway("profile-gateway", VAR / "profile-gateway", "--rest-limit", "0",
                              listen="tcp:0:interface=127.0.0.1:backlog=1024")
        inst = accounts.register(srv.port)
        devices, _ = accounts.pair_devices(srv.port, inst, n, workers=8)
        accounts_file = VAR / "profile-devices.json"
        accounts_file.write_text(json.dumps(devices))
        proc, _ = hold_sessions(srv, "gw", n, accounts_file, concurrency=16, name="profile-sessions")
        release_sessions(proc)
        time.sleep(2.0)
        record = subprocess.Popen([spy, "record", "--pid", str(srv.pid), "--rate", str(args.rate), "--duration",
                                   str(int(args.seconds)), "--format", "raw", "--function", "--output",
                                   f"{stem}.txt"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        proc, summary = hold_sessions(srv, "gw", n, accounts_file, concurrency=0, name="profile-sessions")
        record.wait(timeout=args.seconds + 30)
        release_sessions(proc)
    finally:
        stop_all()
    s = summarise(Path(f"{stem}.txt"), args.top)
    print(f"# gateway, warm connect storm of {n} devices: all ready after {summary['elapsed']:.2f} s; "
          f"{s['samples']} samples (the hashing pool's idle threads show as threading.Condition.wait)\n")
    print("## self (innermost frame)\n")
    for f, pct in s["self"]:
        print(f"{pct:5.1f} %  {f}")
    print("\n## inclusive\n")
    for f, pct in s["inclusive"]:
        print(f"{pct:5.1f} %  {f}")
    return 0


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--summarise":
        s = summarise(Path(sys.argv[2]))
        for g, pct in s["groups"]:
            print(f"{pct:5.1f} %  {g}")
        return 0
    p = argparse.ArgumentParser(description="profile a relay server under load (see module docstring)")
    p.add_argument("--target", choices=["gw", "bare"], default="gw")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--svg", action="store_true", help="also record a flame graph (a second, equal run)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--warm-storm", type=int, default=0, metavar="N", help="profile N devices connecting at once")
    p.add_argument("--pure", action="store_true",
                   help="the gateway's pure-Python hot path (LINCHPIN_PURE_PYTHON=1): py-spy sees no frame "
                        "inside a compiled module, only the Python function that called into it")
    args = p.parse_args(argv)
    spy = py_spy()
    if spy is None:
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    exit_on_signals()
    VAR.mkdir(parents=True, exist_ok=True)
    if args.warm_storm:
        return warm_storm(spy, args)
    stem = VAR / f"profile-{args.target}-{args.size}"
    try:
        if args.target == "gw":
            srv = servers.gateway("profile-gateway", VAR / "profile-gateway",
                                  env={**os.environ, "LINCHPIN_PURE_PYTHON": "1"} if args.pure else None)
            inst = accounts.register(srv.port)
            (dev_id, dev_pw), = accounts.pair_devices(srv.port, inst, 1)[0]
            conn_creds = ["--user", inst[0], f"--password={inst[1]}"]
            dev_creds = ["--user", dev_id, f"--password={dev_pw}"]
        else:
            srv = servers.bare_relay("profile-bare")
            dev_id, conn_creds, dev_creds = "d" * 32, [], []
        common = ["--target", srv.target, "--port", str(srv.port), "--device-id", dev_id, "--size", str(args.size)]
        conn = Proc("profile-connector", [PYTHON, "-m", "bench.relayclient", "connector", *common, *conn_creds])
        conn.wait_for("READY")
        runs = 2 if args.svg else 1
        device = Proc("profile-device", [PYTHON, "-m", "bench.relayclient", "device", *common, *dev_creds,
                                         "--warmup", "2", "--duration", str(runs * (args.seconds + 3) + 2),
                                         "--pids", f"{srv.pid},{conn.pid}"])
        time.sleep(2.0)
        subprocess.run([spy, "record", "--pid", str(srv.pid), "--rate", str(args.rate), "--duration",
                        str(int(args.seconds)), "--format", "raw", "--function", "--output", f"{stem}.txt"],
                       check=True, capture_output=True)
        if args.svg:
            subprocess.run([spy, "record", "--pid", str(srv.pid), "--rate", str(args.rate), "--duration",
                            str(int(args.seconds)), "--output", f"{stem}.svg"], check=True, capture_output=True)
        device.wait_for(r"^\{.*\}$", timeout=runs * (args.seconds + 3) + 60)
        load = json.loads(device.text().strip().splitlines()[-1])
    finally:
        stop_all()
    s = summarise(Path(f"{stem}.txt"), args.top)
    print(f"# {srv.name}, {args.size} B payload, K = 64, QoS 0: {load['rate']:.0f} round trips/s while profiled "
          f"(server CPU {load['cpu_percent'][str(srv.pid)]} %); py-spy {args.rate} Hz for {args.seconds:g} s, "
          f"{s['samples']} samples with the server running Python\n")
    print("## by area (each sample counted once; see GROUPS)\n")
    for g, pct in s["groups"]:
        print(f"{pct:5.1f} %  {g}")
    print("\n## self (innermost frame)\n")
    for f, pct in s["self"]:
        print(f"{pct:5.1f} %  {f}")
    print("\n## inclusive\n")
    for f, pct in s["inclusive"]:
        print(f"{pct:5.1f} %  {f}")
    print(f"\nraw stacks: {stem}.txt" + (f", flame graph: {stem}.svg" if args.svg else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
