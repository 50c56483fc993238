"""Child processes and /proc readings for the benchmarks.

Every process the benchmarks start goes through :class:`Proc`, the shared
runner (:class:`linchpin_common.procs.Child`): it runs in a process group of
its own, its output goes straight to a log file under ``var/bench/`` (never a
pipe nobody drains, nothing in between while it is measured), and it is
registered so that :func:`stop_all` -- called from ``finally`` blocks and at
exit -- terminates every group that is still alive: SIGTERM, a grace period,
then SIGKILL.
"""

from __future__ import annotations

import atexit
import os
import resource
import signal
import socket
import sys
from pathlib import Path

from linchpin_common.procs import Child, cpu_seconds, rss_kib, stop_all  # noqa: F401  (bench imports them from here)
from linchpin_common.testing_services import free_port  # noqa: F401

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "bench"
PYTHON = sys.executable


class Proc(Child):
    def __init__(self, name: str, argv: list[str], log: Path | None = None, stdin=None, env=None,
                 cwd: Path | None = None):
        super().__init__(argv, name=name, env=env, cwd=cwd or ROOT, stdin=stdin,
                         log=log or VAR / f"{name}.log", pipe=False)


atexit.register(stop_all)


def exit_on_signals() -> None:
    """SIGTERM/SIGHUP raise SystemExit, so `finally` blocks and atexit run."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


# -- /proc ----------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU time all CPUs spent busy since boot (the cpu line of /proc/stat,
    minus idle and iowait), in seconds; deltas over a window give the load
    of the whole machine, ours and everybody else's."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    values = list(map(int, fields[:8]))  # user nice system idle iowait irq softirq steal
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def tcp_ext(*names: str) -> dict[str, int]:
    """Counters of the TcpExt line of /proc/net/netstat (e.g. ListenOverflows)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for head, values in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            table = dict(zip(head.split()[1:], map(int, values.split()[1:])))
            return {n: table.get(n, 0) for n in names}
    return {n: 0 for n in names}


def tcp_nodelay_of(pid: int) -> list[tuple[str, str, int]] | None:
    """(local, remote, TCP_NODELAY) of each connected TCP socket of `pid`,
    read from a duplicate of its descriptors (pidfd_getfd, Linux 5.6+, needs
    ptrace rights); None when that is not possible."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None
    out = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(438, pidfd, int(name), 0)  # SYS_pidfd_getfd
            if fd < 0:
                return None
            s = socket.socket(fileno=fd)
            try:
                if s.family == socket.AF_INET and s.type == socket.SOCK_STREAM:
                    try:
                        peer = "%s:%d" % s.getpeername()
                    except OSError:
                        continue  # listening
                    out.append(("%s:%d" % s.getsockname(), peer,
                                s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
            finally:
                s.close()
    finally:
        os.close(pidfd)
    return out


def raise_nofile(want: int = 8192) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(max(soft, want), hard)
    if hard == resource.RLIM_INFINITY:
        target = max(soft, want)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
