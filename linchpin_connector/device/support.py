"""What the device library's modules share: its Deferred-returning API
style, blocking work on the reactor's threads, and error wording."""

from __future__ import annotations

import functools

from twisted.internet import defer, threads


def deferred_api(fn):
    """The public API returns Deferreds (usable from any Twisted code); the
    bodies are coroutines for readability."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> defer.Deferred:
        return defer.ensureDeferred(fn(*args, **kwargs))

    return wrapper


class ReactorThreads:
    """Blocking file work on the reactor's thread pool."""

    def __init__(self, reactor):
        self.reactor = reactor

    def run(self, fn, *args) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)


def error_reason(error) -> str:
    return getattr(error, "getErrorMessage", lambda: str(error) or type(error).__name__)()
