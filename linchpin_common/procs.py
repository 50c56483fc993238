"""Child processes for the tests, the demo and the benchmarks: one runner.

A :class:`Child` runs in a process group of its own (``start_new_session``),
so stopping it stops everything it started. Its output goes one of two ways:

* through a pipe read line by line on a thread (the default), kept in memory
  and, with ``log=``, copied to a file as it arrives: :meth:`Child.wait_for`
  blocks on the next lines, never polling;
* with ``log=`` and ``pipe=False``, straight into the file, nothing in
  between (processes that write a lot while being measured): then
  :meth:`Child.wait_for` reads the file again every 50 ms.

Every child is registered until it has been stopped or killed, so a caller
can clean up after a failure (:func:`stop_all`, or a test fixture comparing
:attr:`Child.running` before and after).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

__all__ = ["Child", "ChildError", "stop_all", "TIMEOUT", "rss_kib", "cpu_seconds"]

TIMEOUT = 30.0


class ChildError(AssertionError, RuntimeError):
    """A child ended, or stayed silent, before what was waited for.

    An AssertionError for tests, a RuntimeError for tools."""


class Child:
    running: set[Child] = set()

    def __init__(self, argv, *, name: str | None = None, env=None, cwd=None, stdin=None,
                 log: str | os.PathLike | None = None, pipe: bool = True):
        self.argv = [str(a) for a in argv]
        self.name = name or os.path.basename(self.argv[0])
        self.log = Path(log) if log is not None else None
        self.output: list[str] = []  # lines read so far (pipe mode)
        self._cursor = 0  # wait_for looks at lines from here on
        self._changed = threading.Condition()
        self._eof = False
        self._file = None
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.log, "wb")
        self.piped = pipe or self.log is None
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE if self.piped else self._file, stderr=subprocess.STDOUT,
            stdin=stdin if stdin is not None else subprocess.DEVNULL, env=env,
            cwd=str(cwd) if cwd is not None else None, start_new_session=True)
        self.pid = self.proc.pid
        self._reader = None
        if self.piped:
            self._reader = threading.Thread(target=self._read, name=f"read-{self.name}", daemon=True)
            self._reader.start()
        Child.running.add(self)

    def __repr__(self) -> str:
        return f"<Child {self.name} pid={self.pid} {'running' if self.alive() else 'ended'}>"

    # -- output ------------------------------------------------------------------------

    def _read(self) -> None:
        for raw in self.proc.stdout:
            if self._file is not None:
                self._file.write(raw)
                self._file.flush()
            with self._changed:
                self.output.append(raw.decode("utf-8", "replace"))
                self._changed.notify_all()
        if self._file is not None:
            self._file.close()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _lines(self, whole: bool = False) -> list[str]:
        """The lines so far; ``whole``: without a last line still being
        written (the file may be read in the middle of a long line)."""
        if self.piped:
            return self.output
        try:
            lines = self.log.read_text(errors="replace").splitlines(keepends=True)
        except OSError:
            return []
        if whole and lines and not lines[-1].endswith(("\n", "\r")) and self.proc.poll() is None:
            lines.pop()
        return lines

    def text(self) -> str:
        """Everything printed so far; all of it once the process has ended."""
        if self.piped and self.proc.poll() is not None:
            self._reader.join(TIMEOUT)  # the last lines may still be in the pipe
        return "".join(self._lines())

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match:
        """The first line after the previous match that matches ``pattern``.

        Raises :class:`ChildError` when the process ends, or ``timeout``
        seconds pass, before such a line."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                lines = self._lines(whole=True)
                for i in range(self._cursor, len(lines)):
                    m = regex.search(lines[i])
                    if m:
                        self._cursor = i + 1
                        return m
                if self.piped:
                    self._cursor = len(lines)
                    ended = self._eof
                else:
                    ended = self.proc.poll() is not None and len(self._lines(whole=True)) == len(lines)
                left = deadline - time.monotonic()
                if ended or left <= 0:
                    break
                self._changed.wait(left if self.piped else min(left, 0.05))
        # (the message is built outside the lock: text() may wait for the reader)
        if ended:
            raise ChildError(f"{self.name} ended ({self.proc.poll()}) before {pattern!r}; output:\n{self.text()}")
        raise ChildError(f"{self.name}: no line matching {pattern!r} within {timeout:g} s; output:\n{self.text()}")

    # -- life --------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = TIMEOUT) -> int | None:
        """The exit status, or None if still running after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self, timeout: float = TIMEOUT) -> int:
        """SIGTERM to the process itself; its exit status. A process that
        does not stop within ``timeout`` is killed and :class:`ChildError` raised."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            self.kill()
            raise ChildError(f"{self.name} did not stop on SIGTERM")
        self._done()
        return code

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM to the group, SIGKILL after ``grace`` seconds; its exit status."""
        if self.alive():
            _killpg(self.pid, signal.SIGTERM)
            if self.wait(grace) is None:
                _killpg(self.pid, signal.SIGKILL)
                self.wait(TIMEOUT)
        _killpg(self.pid, signal.SIGKILL)  # anything that outlived the leader
        self._done()
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL to the whole group at once; returns once every member has
        ended (an nginx worker that outlived its master would still hold the
        listening socket)."""
        if self.alive():
            members = _group_members(self.pid)
            _killpg(self.pid, signal.SIGKILL)
            self.wait(TIMEOUT)
            _wait_ended(members, TIMEOUT)
        self._done()

    def _done(self) -> None:
        Child.running.discard(self)
        if self._file is not None and not self.piped:
            self._file.close()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_members(pgid: int) -> list[int]:
    """pidfds of the processes of group ``pgid`` other than its leader."""
    fds = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pgid:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            if int(fields[2]) == pgid:  # state, ppid, pgrp
                fds.append(os.pidfd_open(int(entry)))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return fds


def _wait_ended(pidfds: list[int], timeout: float) -> None:
    """Block until each process of ``pidfds`` has ended (a pidfd becomes
    readable then), at most ``timeout`` seconds in all; closes them."""
    import select

    deadline = time.monotonic() + timeout
    try:
        for fd in pidfds:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    finally:
        for fd in pidfds:
            os.close(fd)


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ChildError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """utime + stime of the whole process (all threads) so far, in seconds;
    with ``thread`` (a thread id: the process's own for its main thread),
    of that thread alone."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path, "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_all(grace: float = 3.0) -> None:
    """Stop every child still registered, newest first."""
    for child in sorted(Child.running, key=lambda c: c.pid, reverse=True):
        try:
            child.stop(grace)
        except Exception:  # keep cleaning up the others
            child.kill()
