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
