"""Launchers for the servers under test, each a :class:`~bench.procs.Proc`.

* :func:`gateway`: ``twistd -n --pidfile= lmgateway --listen
  tcp:0:interface=127.0.0.1 --data-dir DIR``; the port is read from the
  ``lmgateway listening on ... at 127.0.0.1:PORT`` line, as tests/support.py
  does.
* :func:`bare_relay`: ``python -m bench.bare_relay`` (the ceiling).
* :func:`mosquitto`: Debian's mosquitto with one ``protocol websockets``
  listener on 127.0.0.1, anonymous, no persistence, config written to
  ``var/bench/mosquitto.conf``. Optional: :func:`mosquitto_path` is None when
  it is not installed (``apt-get install mosquitto``).
* :func:`amqtt`: amqtt from its own virtualenv ``var/bench/amqtt-venv``
  (made by ``bench/install-brokers.sh``) with one ``ws`` listener on
  127.0.0.1, anonymous, no plugins beyond authentication. Optional too.

mosquitto and amqtt cannot report a port they chose, so they get one that
was free a moment earlier (:func:`~bench.procs.free_port`).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

from .procs import PYTHON, VAR, Proc, free_port

BIN = Path(PYTHON).parent
AMQTT_VENV = VAR / "amqtt-venv"


class Server:
    def __init__(self, name: str, proc: Proc, port: int, target: str):
        self.name = name  # shown in tables
        self.proc = proc
        self.port = port
        self.target = target  # relayclient --target
        self.pid = proc.pid

    def stop(self):
        self.proc.stop()


def _wait_port(proc: Proc, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode}):\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name}: port {port} not open within {timeout} s:\n{proc.tail()}")
            time.sleep(0.05)


# Every benchmark client connects from 127.0.0.1, so the per-address login
# limits (4 password checks, 32 sessions awaiting CONNACK, 1,024 sockets by
# default) would turn a benchmark into a test of those limits: only a few
# dozen of 100 idle sessions came up. The same holds for the failed-login
# budget (20 a minute), since a token of it is reserved before every password
# check and refunded after a right one: a cold storm from one address had at
# most 20 checks under way and 87 % of its first CONNACKs were 5. The
# benchmarks measure the relay and the node-wide limits (hash queue, pending
# logins), so each address may use the whole of them here; bench.abuse measures the per-address limits. One
# instance also adds all 1,001 devices, beyond its 120 REST calls a minute.
PER_ADDRESS_LIMITS_OFF = ("--pending-logins-per-address", "100000", "--login-checks-per-address", "100000",
                          "--connections-per-address", "100000", "--login-limit", "0", "--instance-rest-limit", "0")


def gateway(name: str, data_dir: Path, *extra: str, keep: bool = False,
            listen: str = "tcp:0:interface=127.0.0.1", env: dict | None = None, label: str = "gateway") -> Server:
    """``twistd lmgateway`` as shipped but for the per-address limits (see
    :data:`PER_ADDRESS_LIMITS_OFF`); the data directory starts empty unless
    ``keep``; ``env``: its environment (a store URL with its password goes
    there, not on the command line; ``LINCHPIN_PURE_PYTHON=1`` for the
    pure-Python hot path); ``label``: its name in the results."""
    if data_dir.exists() and not keep:
        shutil.rmtree(data_dir)
    proc = Proc(name, [str(BIN / "twistd"), "-n", "--pidfile=", "lmgateway",
                       "--listen", listen, "--data-dir", str(data_dir), *PER_ADDRESS_LIMITS_OFF, *extra], env=env)
    m = proc.wait_for(r"lmgateway listening on .* at 127\.0\.0\.1:(\d+)")
    return Server(label, proc, int(m.group(1)), "gw")


def bare_relay(name: str = "bare", nagle: bool = False) -> Server:
    """The ceiling; ``nagle`` leaves TCP_NODELAY off (diagnostic)."""
    proc = Proc(name, [PYTHON, "-m", "bench.bare_relay", "--listen", "tcp:0:interface=127.0.0.1",
                       *(["--nagle"] if nagle else [])])
    m = proc.wait_for(r"bare relay listening at 127\.0\.0\.1:(\d+)")
    return Server("bare autobahn (nagle)" if nagle else "bare autobahn", proc, int(m.group(1)), "bare")


def mosquitto_path() -> str | None:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def mosquitto_version() -> str:
    import subprocess
    try:
        out = subprocess.run([mosquitto_path(), "-h"], capture_output=True, text=True, timeout=5).stdout
    except Exception:
        return "?"
    first = out.splitlines()[0] if out else ""
    return first.replace("mosquitto version ", "").strip() or "?"


def mosquitto(name: str = "mosquitto") -> Server:
    exe = mosquitto_path()
    if exe is None:
        raise FileNotFoundError("mosquitto is not installed")
    port = free_port()
    conf = VAR / f"{name}.conf"
    conf.write_text(
        "# written by bench/servers.py\n"
        "per_listener_settings false\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "log_dest stdout\n"
        "log_type error\n"
        "log_type warning\n"
        "max_queued_messages 0\n"
        # mosquitto 2.0.11 refuses to start with websockets listeners only
        # ("Unable to start any listening sockets"), so a plain MQTT listener
        # comes first; nothing connects to it.
        f"listener {free_port()} 127.0.0.1\n"
        f"listener {port} 127.0.0.1\n"
        # Without this libwebsockets ignores the address and binds [::].
        "socket_domain ipv4\n"
        "protocol websockets\n"
    )
    argv = [exe, "-c", str(conf)]
    if os.geteuid() == 0:
        # mosquitto drops root for its "mosquitto" user; it must still read the config.
        os.chmod(VAR, 0o755)
        os.chmod(conf, 0o644)
    proc = Proc(name, argv)
    _wait_port(proc, port)
    return Server("mosquitto", proc, port, "broker")


def amqtt_path() -> Path | None:
    exe = AMQTT_VENV / "bin" / "amqtt"
    return exe if exe.exists() else None


def amqtt_version() -> str:
    for dist in (AMQTT_VENV / "lib").glob("python*/site-packages/amqtt-*.dist-info"):
        return dist.name.removesuffix(".dist-info").split("-", 1)[1]
    return "?"


def amqtt(name: str = "amqtt") -> Server:
    exe = amqtt_path()
    if exe is None:
        raise FileNotFoundError(f"amqtt is not installed in {AMQTT_VENV}")
    port = free_port()
    conf = VAR / f"{name}.yaml"
    conf.write_text(
        "# written by bench/servers.py\n"
        "listeners:\n"
        "  default:\n"
        "    type: ws\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n"
        "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = Proc(name, [str(exe), "-c", str(conf)], env=env, cwd=VAR)
    _wait_port(proc, port, timeout=60.0)
    return Server("amqtt", proc, port, "broker")


__all__ = ["Server", "gateway", "bare_relay", "mosquitto", "amqtt", "mosquitto_path", "amqtt_path"]
