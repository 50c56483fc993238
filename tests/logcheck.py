"""A failure logged during a test fails that test (see conftest.py): in the
test's own process, and in the real processes it runs (their tracebacks)."""

import gc
import re

import pytest
from twisted.logger import globalLogPublisher


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "logged_failures(*types): the test expects failures of these exception types to be logged")
    config.addinivalue_line(
        "markers", "child_tracebacks(pattern): the test expects a real process to print a traceback matching this")


# What twistd's text log and Python print for a failure: a log.failure, an
# unhandled error in a Deferred, an uncaught exception.
TRACEBACK = re.compile(r"Traceback \((?:most recent call last|failure with no frames)\)")


def no_traceback(what: str, stderr: bytes) -> None:
    """For a command run to its end (``lmconnector``, ``lmdevice``): whatever
    its exit status, a traceback on its stderr is a failure it logged."""
    text = stderr.decode(errors="replace")
    if TRACEBACK.search(text):
        raise AssertionError(f"{what} printed a traceback:\n{text}")


def children_logged_failures(request, offsets) -> None:
    """Fail the test if a real process (tests.support.Process) printed a
    traceback while it ran: ``offsets`` maps each process to the number of its
    output lines printed before the test began. A test that provokes one on
    purpose declares it with ``@pytest.mark.child_tracebacks(PATTERN)``; a
    declared one must happen."""
    found = []
    for proc in offsets:
        if proc.piped:
            proc.text()  # an ended process: wait for the reader to have read everything
        text = "".join(proc.output[offsets[proc]:])
        if TRACEBACK.search(text):
            found.append((proc, text))
    marker = request.node.get_closest_marker("child_tracebacks")
    expected = re.compile(marker.args[0]) if marker else None
    unexpected = [(p, t) for p, t in found if not (expected and expected.search(t))]
    if unexpected:
        details = "\n".join(f"--- {p.name} (pid {p.pid}):\n{t[-6000:]}" for p, t in unexpected)
        pytest.fail(f"{len(unexpected)} real process(es) printed a traceback during the test:\n{details}",
                    pytrace=False)
    if expected and not found:
        pytest.fail(f"expected a real process to print a traceback matching {expected.pattern!r}, none did",
                    pytrace=False)


@pytest.fixture(autouse=True)
def logged_failures_fail_the_test(request):
    """A failure logged while a test runs (``log.failure``, an unhandled error
    in a Deferred) fails that test, unless the test declares it with
    ``@pytest.mark.logged_failures.with_args(SomeError)``; a declared one must
    happen."""
    failures = []

    def observe(event):
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield failures
        gc.collect()  # Deferreds dropped with an error log it when collected
    finally:
        globalLogPublisher.removeObserver(observe)
    marker = request.node.get_closest_marker("logged_failures")
    expected = tuple(marker.args) if marker else ()
    unexpected = [e for e in failures if not (expected and e["log_failure"].check(*expected))]
    if unexpected:
        details = "\n".join(f"{e.get('log_format')}: {e['log_failure'].getTraceback()}" for e in unexpected)
        pytest.fail(f"{len(unexpected)} failure(s) logged during the test:\n{details}", pytrace=False)
    if expected and not failures:
        pytest.fail(f"expected a logged failure of {expected}, none was logged", pytrace=False)
