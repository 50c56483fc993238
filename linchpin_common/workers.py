"""Where blocking work runs: a thread pool in production, inline in tests.

SQLite and PBKDF2 block; the gateway runs them through a worker so the
reactor thread never does.  :class:`InlineWorker` runs the same code on the
caller's thread so in-memory tests stay deterministic.
"""

from __future__ import annotations

import os

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool


def cores() -> int:
    """The CPUs this process may run on (its affinity mask, which a container
    or ``taskset`` may narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class ThreadWorker:
    def __init__(self, reactor, name: str, size: int = 1):
        self.reactor = reactor
        self.size = size
        self.pool = ThreadPool(minthreads=1, maxthreads=size, name=name)

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()  # joins the threads: queued work finishes first

    def run(self, fn, *args) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self.pool, fn, *args)


class BoundedWorker:
    """A worker whose queue holds at most ``max_pending`` jobs (queued or
    running); past it :meth:`run` fails at once with ``overflow()``, so a
    flood becomes quick refusals instead of an ever-growing queue."""

    def __init__(self, worker, max_pending: int, overflow):
        self.worker = worker
        self.max_pending = max_pending
        self.overflow = overflow
        self.pending = 0

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    def run(self, fn, *args) -> defer.Deferred:
        if self.pending >= self.max_pending:
            return defer.fail(self.overflow())
        self.pending += 1

        def done(result):
            self.pending -= 1
            return result

        return self.worker.run(fn, *args).addBoth(done)


class InlineWorker:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def run(self, fn, *args) -> defer.Deferred:
        return defer.maybeDeferred(fn, *args)
