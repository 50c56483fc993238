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


def exit_zero_on_sigterm(reactor) -> None:
    """Make SIGTERM a clean stop with exit status 0.

    twistd re-raises a stopping signal after shutdown (exit status 143); an
    operator's SIGTERM is the normal way to stop us, so it is not an error.
    Call this once the reactor runs (it replaces the reactor's handler).
    """

    def on_sigterm(signum, frame):
        Logger(namespace="lmsignal").info("SIGTERM received; stopping")
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, on_sigterm)
