"""Whether the intranet app answers: the connector's readiness follows it.

Every ``interval`` seconds the connector sends ``GET <backend><path>`` (no
identity header, so the app sees an anonymous visitor) and waits at most
``timeout`` seconds.  Any answer below 500 (a login redirect, a 401) means the
app is up; a 5xx, a refused or failed connection or no answer in time means
it is not.  ``FALL`` failures in a row make the backend *down*, ``RISE``
answers in a row make it *up* again; :class:`BackendHealth` calls
``on_change(up)`` at each turn.  Down, the connector drains itself at the
gateway (its devices move to connectors whose app answers); up again, it
takes new devices.
"""

from __future__ import annotations

import treq
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

FALL = 3
RISE = 2
DEFAULT_INTERVAL = 10.0
TIMEOUT = 5.0


class BackendHealth(service.Service):
    log = Logger()

    def __init__(self, clock, http, url: str, on_change, *, interval: float = DEFAULT_INTERVAL,
                 timeout: float = TIMEOUT):
        """``http`` is a treq-like client (``get`` returning a Deferred response)."""
        self.clock = clock
        self.http = http
        self.url = url
        self.on_change = on_change
        self.interval = interval
        self.timeout = timeout
        self.up = True  # until FALL checks in a row say otherwise
        self.checks = 0
        self._streak = 0  # checks in a row that disagree with ``up``
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = clock

    def startService(self):
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    @defer.inlineCallbacks
    def check(self):
        """One check; the loop waits for it, so checks never overlap."""
        self.checks += 1
        d = self.http.get(self.url, allow_redirects=False)
        timer = self.clock.callLater(self.timeout, d.cancel)
        try:
            response = yield d
            answered = response.code < 500
            if hasattr(response, "deliverBody"):
                yield _discard(response)
        except Exception as e:
            answered = False
            self.log.debug("backend health check failed: {e}", e=e)
        finally:
            if timer.active():
                timer.cancel()
        self._seen(answered)

    def _seen(self, answered: bool) -> None:
        if answered == self.up:
            self._streak = 0
            return
        self._streak += 1
        if self._streak >= (RISE if answered else FALL):
            self._streak = 0
            self.up = answered
            if answered:
                self.log.info("the backend at {url} answers again", url=self.url)
            else:
                self.log.warn("the backend at {url} failed {n} health checks in a row", url=self.url, n=FALL)
            self.on_change(answered)


def _discard(response) -> defer.Deferred:
    """Read a response's body to its end (so the connection can be reused)."""
    return treq.collect(response, lambda data: None).addErrback(lambda f: None)
