"""What every daemon of ours does the same way (twistd lmgateway, lmconnector)."""

from __future__ import annotations

import signal
import sys

from twisted.logger import Logger

from . import __version__


def print_version(prog: str) -> None:
    """``PROG --version``: one line on stdout, exit status 0."""
    print(f"{prog} {__version__}")
    sys.exit(0)


def exit_zero_on_sigterm(reactor, before_stop=None) -> None:
    """Make SIGTERM a clean stop with exit status 0.

    twistd re-raises a stopping signal after shutdown (exit status 143); an
    operator's SIGTERM is the normal way to stop us, so it is not an error.
    Call this once the reactor runs (it replaces the reactor's handler).

    ``before_stop()`` (a Deferred) runs first, e.g. the connector's drain; a
    second SIGTERM while it runs stops at once.
    """
    stopping = []

    def stop(_=None):
        if reactor.running:
            reactor.stop()

    def begin():
        if stopping or before_stop is None:
            stop()
            return
        stopping.append(True)
        d = before_stop()
        d.addErrback(lambda f: Logger(namespace="lmsignal").failure("before stopping", f))
        d.addBoth(stop)

    def on_sigterm(signum, frame):
        Logger(namespace="lmsignal").info("SIGTERM received; stopping")
        reactor.callFromThread(begin)

    signal.signal(signal.SIGTERM, on_sigterm)
