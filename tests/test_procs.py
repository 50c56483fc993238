"""The one subprocess runner of the tests, the demo and the benchmarks
(linchpin_common.procs)."""

import os
import select
import signal
import sys
import time

import pytest

from linchpin_common.procs import Child, ChildError


def python(code: str, **kw) -> Child:
    return Child([sys.executable, "-c", code], **kw)


def exited(pidfd: int, timeout: float = 30) -> bool:
    """True once the process behind ``pidfd`` has exited (the pidfd turns readable)."""
    return bool(select.select([pidfd], [], [], timeout)[0])


def test_wait_for_reads_lines_in_order_and_each_match_once():
    child = python("import sys\nfor i in range(3): print('line', i, flush=True)\nsys.stdin.read()",
                   stdin=__import__("subprocess").PIPE)
    try:
        assert child.wait_for(r"line (\d)").group(1) == "0"
        assert child.wait_for(r"line (\d)").group(1) == "1"
        assert child.wait_for(r"line 2")
        assert child in Child.running
    finally:
        child.proc.stdin.close()
    assert child.wait() == 0
    assert child.text() == "line 0\nline 1\nline 2\n"
    child.kill()
    assert child not in Child.running


def test_a_child_that_ends_first_fails_the_wait_with_its_output():
    child = python("print('only this')")
    with pytest.raises(ChildError, match="only this") as info:
        child.wait_for("never")
    assert isinstance(info.value, AssertionError) and isinstance(info.value, RuntimeError)
    child.kill()


def test_a_silent_child_fails_the_wait_after_the_timeout():
    child = python("import sys; sys.stdin.read()", stdin=__import__("subprocess").PIPE)
    try:
        with pytest.raises(ChildError, match="within 0.2 s"):
            child.wait_for("never", timeout=0.2)
    finally:
        child.kill()


def test_stop_ends_the_whole_group():
    child = python("import signal, subprocess, sys\n"
                   "signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild\n"
                   "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                   "print('grandchild', p.pid, flush=True)\n"
                   "p.wait()")
    grandchild = os.pidfd_open(int(child.wait_for(r"grandchild (\d+)").group(1)))
    try:
        code = child.stop(grace=0.5)  # both ignore SIGTERM: SIGKILL to the group after the grace period
        assert code == -signal.SIGKILL and exited(grandchild)
    finally:
        os.close(grandchild)


def test_terminate_returns_the_exit_status():
    child = python("import signal, sys, time\n"
                   "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
                   "print('ready', flush=True)\n"
                   "time.sleep(600)")
    child.wait_for("ready")
    assert child.terminate() == 0 and child not in Child.running


def test_log_file_modes(tmp_path):
    tee = python("print('to both', flush=True)", log=tmp_path / "tee.log")
    assert tee.wait_for("to both") and tee.wait() == 0
    tee.kill()
    assert (tmp_path / "tee.log").read_text() == "to both\n"
    direct = python("print('straight to the file', flush=True)\nimport sys; sys.stdin.read()",
                    log=tmp_path / "direct.log", pipe=False, stdin=__import__("subprocess").PIPE)
    try:
        assert direct.wait_for("straight").group(0) == "straight"
        assert direct.tail() == "straight to the file"
    finally:
        direct.proc.stdin.close()
    assert direct.wait() == 0 and direct.stop() == 0
    assert not os.path.exists(tmp_path / "missing.log")


def test_a_line_being_written_to_the_log_file_is_not_matched_half_way(tmp_path):
    # A long line (a benchmark client's summary) reaches the file in pieces;
    # the file is read every 50 ms, so a pattern ending in .* matched the
    # piece already there and the caller parsed half a line.
    code = ("import sys\nsys.stdout.write('READY {\"a\": 1'); sys.stdout.flush()\n"
            "sys.stdin.readline()\nprint(', \"b\": 2}', flush=True)\nsys.stdin.read()")
    child = python(code, log=tmp_path / "partial.log", pipe=False, stdin=__import__("subprocess").PIPE)
    try:
        deadline = time.monotonic() + 30  # a bounded poll of the file, as wait_for itself does
        while (tmp_path / "partial.log").read_text() != 'READY {"a": 1':
            assert time.monotonic() < deadline, "the half line never reached the log file"
            time.sleep(0.01)
        with pytest.raises(ChildError):  # only half the line is there, and the child waits
            child.wait_for(r"READY (.*)", timeout=0.2)
        child.proc.stdin.write(b"\n")
        child.proc.stdin.flush()
        assert child.wait_for(r"READY (.*)").group(1) == '{"a": 1, "b": 2}'
    finally:
        child.proc.stdin.close()
    assert child.wait() == 0 and child.stop() == 0
