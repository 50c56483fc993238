"""A failure logged during a test fails that test (see conftest.py)."""

import gc

import pytest
from twisted.logger import globalLogPublisher


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "logged_failures(*types): the test expects failures of these exception types to be logged")


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
