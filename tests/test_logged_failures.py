"""The suite's own guard: a failure logged during a test fails that test."""

import os

import pytest
from twisted.internet import defer
from twisted.logger import Logger

pytest_plugins = ["pytester"]


def test_a_logged_failure_fails_the_test(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    pytester.makeconftest("from tests.logcheck import logged_failures_fail_the_test, pytest_configure  # noqa")
    pytester.makepyfile(test_inner="""
        from twisted.internet import defer
        from twisted.logger import Logger

        def test_logs_failure():
            try:
                1 / 0
            except ZeroDivisionError:
                Logger().failure("handler broke")

        def test_drops_a_failed_deferred():
            defer.fail(ValueError("nobody handled me"))

        def test_clean():
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=2)  # the two fail in teardown, where the log is checked
    result.stdout.fnmatch_lines(["*handler broke*", "*ZeroDivisionError*"])


@pytest.mark.logged_failures.with_args(ZeroDivisionError)
def test_a_declared_failure_is_allowed():
    try:
        1 / 0
    except ZeroDivisionError:
        Logger().failure("expected")


def test_handled_errors_are_not_failures():
    d = defer.fail(ValueError("handled"))
    d.addErrback(lambda f: None)


def test_a_traceback_in_a_real_process_fails_the_test_it_ran_in(pytester, monkeypatch):
    """Loopback tests run the real daemons: a failure they log (twistd prints
    its traceback) fails the test during which it was printed, also when the
    process belongs to a module-wide fixture and was started before."""
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    pytester.makeconftest("from tests.conftest import no_process_left, pytest_configure  # noqa\n"
                          "from tests.logcheck import logged_failures_fail_the_test  # noqa")
    pytester.makepyfile(test_inner="""
        import sys

        import pytest

        from tests.support import Process

        CRASH = [sys.executable, "-c", "print('ready', flush=True); 1 / 0"]
        HANGING = [sys.executable, "-c", "import signal, traceback\\n"
                   "try:\\n    1 / 0\\nexcept ZeroDivisionError:\\n    traceback.print_exc()\\n"
                   "print('printed', flush=True)\\nsignal.pause()"]

        def test_crashing_child():
            child = Process(CRASH)
            child.wait_for("ready")
            assert child.wait() == 1

        def test_crashing_child_left_running():
            Process(HANGING).wait_for("printed")  # and left running: conftest.py kills it

        @pytest.mark.child_tracebacks("ZeroDivisionError")
        def test_declared():
            assert Process(CRASH).wait() == 1

        @pytest.mark.child_tracebacks("ZeroDivisionError")
        def test_declared_but_missing():
            assert Process([sys.executable, "-c", "pass"]).wait() == 0

        def test_clean_child():
            child = Process([sys.executable, "-c", "print('no trouble')"])
            assert child.wait() == 0
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, errors=3)  # the three fail in teardown
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_crashing_child *", "*printed a traceback*",
                                 "*ZeroDivisionError*"])
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_crashing_child_left_running*"])
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_declared_but_missing*", "*none did*"])


def test_a_module_wide_process_counts_against_the_test_it_printed_in(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    pytester.makeconftest("from tests.conftest import no_process_left, pytest_configure  # noqa\n"
                          "from tests.logcheck import logged_failures_fail_the_test  # noqa")
    pytester.makepyfile(test_inner="""
        import os
        import sys

        import pytest

        from tests.support import Process

        # prints each line written to the FIFO, "tb" as a traceback's first line
        ECHO = ("import sys\\n"
                "for line in open(sys.argv[1]):\\n"
                "    print(line.strip().replace('tb', 'Traceback (most recent call last):'), flush=True)\\n")

        @pytest.fixture(scope="module")
        def daemon(tmp_path_factory):
            fifo = str(tmp_path_factory.mktemp("fifo") / "in")
            os.mkfifo(fifo)
            proc = Process([sys.executable, "-u", "-c", ECHO, fifo])
            proc.fifo = open(fifo, "w")
            yield proc
            proc.fifo.close()
            proc.kill()

        def say(daemon, text):
            daemon.fifo.write(text + "\\n")
            daemon.fifo.flush()
            daemon.wait_for(text if text != "tb" else "Traceback")

        def test_before(daemon):
            say(daemon, "fine")

        def test_during(daemon):
            say(daemon, "tb")

        def test_after(daemon):
            say(daemon, "fine again")
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_during*"])


def test_a_traceback_from_a_command_fails_even_when_it_exits_0():
    import subprocess
    import sys

    from tests.logcheck import no_traceback

    code = "import traceback\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n    traceback.print_exc()\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert done.returncode == 0
    with pytest.raises(AssertionError, match="(?s)printed a traceback:\n.*ZeroDivisionError"):
        no_traceback("the command", done.stderr)
    no_traceback("the command", b"lmdevice: gateway unreachable at http://127.0.0.1:9\n")
