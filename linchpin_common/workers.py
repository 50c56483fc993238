"""Where blocking work runs: a thread pool in production, inline in tests.

SQLite and PBKDF2 block; the gateway runs them through a worker so the
reactor thread never does.  :class:`InlineWorker` runs the same code on the
caller's thread so in-memory tests stay deterministic.
"""

from __future__ import annotations

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool


class ThreadWorker:
    def __init__(self, reactor, name: str, size: int = 1):
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=size, name=name)

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()  # joins the threads: queued work finishes first

    def run(self, fn, *args) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self.pool, fn, *args)


class InlineWorker:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, fn, *args) -> defer.Deferred:
        return defer.maybeDeferred(fn, *args)
