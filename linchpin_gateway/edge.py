"""The HTTP edge's own limits: connections per address and a request deadline.

Twisted's HTTP idle timeout restarts on every byte, so a client sending one
header byte a minute (slow-loris) keeps a connection for ever, and nothing
stops one address from opening thousands.  :class:`GuardedChannel` adds:

* an **absolute deadline** for each request to arrive in full (request line,
  headers and body): from the accept, and for the next request on a
  keep-alive connection from the end of the previous response.  A WebSocket
  upgrade request is complete once its headers are in; the MQTT session then
  counts its CONNECT deadline from the same accept time.
* a **cap on connections per address** (an IPv6 /64 counts as one).  The
  address is read at the first byte, so behind an ``haproxy:`` endpoint it
  is the client's.  A socket that becomes a WebSocket keeps its slot until
  it closes.
"""

from __future__ import annotations

from twisted.logger import Logger

from linchpin_common.slots import Slots

from .api import GatewaySite, KeepAliveChannel
from .config import DEFAULTS
from .ratelimit import address_key


class GuardedChannel(KeepAliveChannel):
    log = Logger(namespace="lmgateway")

    accepted_at: float | None = None
    _slot: str | None = None  # the address whose connection slot this socket holds
    _deadline = None

    def connectionMade(self):
        super().connectionMade()
        self.accepted_at = self.site.reactor.seconds()
        self._arm_deadline()

    def dataReceived(self, data):
        if self._slot is None and self.transport is not None:
            if not self._take_slot():
                return
        super().dataReceived(data)

    def _take_slot(self) -> bool:
        peer = self.transport.getPeer()
        key = address_key(getattr(peer, "host", str(peer)))
        if not self.site.connections.acquire(key):
            self.site.refused_connections += 1
            self.log.info("{host} has {n} connections open; closing a new one", host=key,
                          n=self.site.connections.per_key)
            self._stop_deadline()
            self.transport.abortConnection()
            return False
        self._slot = key
        return True

    def _arm_deadline(self) -> None:
        self._stop_deadline()
        self._deadline = self.site.reactor.callLater(self.site.request_deadline, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport is not None:
            self.log.info("request from {peer} not complete within {n:g} s; closing", peer=self.transport.getPeer(),
                          n=self.site.request_deadline)
            self.transport.abortConnection()

    def allContentReceived(self):
        self._stop_deadline()
        super().allContentReceived()

    def requestDone(self, request):
        # Armed first: a pipelined request already buffered is handled
        # inside requestDone, and its allContentReceived must stop this
        # deadline, not be followed by it.
        if self.persistent and self.transport is not None:
            self._arm_deadline()  # for the next request on this connection
        super().requestDone(request)

    def hand_over_slot(self):
        """The socket becomes a WebSocket: returns what gives its slot back."""
        key, self._slot = self._slot, None
        self._stop_deadline()
        if key is None:
            return None
        connections = self.site.connections
        return lambda: connections.release(key)

    def connectionLost(self, reason):
        self._stop_deadline()
        if self._slot is not None:
            self.site.connections.release(self._slot)
            self._slot = None
        super().connectionLost(reason)


class GuardedSite(GatewaySite):
    protocol = GuardedChannel

    def __init__(self, resource, *, reactor, timeout, request_deadline: float = DEFAULTS.request_deadline,
                 connections_per_address: int = DEFAULTS.connections_per_address):
        super().__init__(resource, reactor=reactor, timeout=timeout)
        self.request_deadline = request_deadline
        self.connections = Slots(connections_per_address)
        self.refused_connections = 0
