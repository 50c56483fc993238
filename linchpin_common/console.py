"""Shared plumbing of the command-line tools: run a coroutine, exit with its code."""

from __future__ import annotations

from twisted.internet import defer, error, task
from twisted.web.client import ResponseFailed, ResponseNeverReceived

# What a refused, reset or timed-out connection to the gateway looks like.
UNREACHABLE = (error.ConnectError, error.DNSLookupError, error.TimeoutError, ResponseFailed,
               ResponseNeverReceived, ConnectionError)


def run(command) -> None:
    """``task.react`` a coroutine function ``command(reactor) -> int`` and exit with its result."""

    def main(reactor):
        def finish(code):
            if code:
                raise SystemExit(code)

        return defer.ensureDeferred(command(reactor)).addCallback(finish)

    task.react(main)
