"""Per-address token buckets, on an injected clock.

A bucket holds up to ``burst`` tokens and refills at ``per_minute`` tokens a
minute.  :meth:`RateLimiter.allowed` only looks; :meth:`RateLimiter.charge`
spends a token, so a limiter can count failures only (failed logins) or
every call (unauthenticated REST).  Full buckets carry no information and
are swept, so memory follows the number of addresses recently misbehaving.

Every per-address limit keys on :func:`address_key`: an IPv4 address as it
is, an IPv6 address by its /64 (one subscriber's whole allocation), so
hopping through the addresses of one network buys nothing.
:class:`~linchpin_common.slots.Slots` caps how many of something
(connections, logins awaiting an answer, password checks) one address holds
at once.
"""

from __future__ import annotations

import ipaddress
import math


def address_key(host: str) -> str:
    """The key per-address limits use for ``host``."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an IP address (a UNIX socket, a test's name)
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return host


class RateLimiter:
    SWEEP_EVERY = 1024  # charges between sweeps of refilled buckets

    def __init__(self, clock, burst: int, per_minute: float, on_trip=None):
        """``on_trip(key)`` is called once each time a charge empties a bucket."""
        if burst < 1 or per_minute <= 0:
            raise ValueError("a rate limit needs burst >= 1 and a positive rate")
        self.clock = clock
        self.on_trip = on_trip
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        # Keys whose last token a quiet charge took, until it is confirmed or
        # refunded: of parallel failures, only the one that emptied trips.
        self._emptying: set[str] = set()
        self._charges = 0
        # Told of every local charge: with several nodes, the other nodes
        # charge the same key, so spreading over nodes earns no budget.
        self.on_charge = None
        self.on_refund = None

    def _tokens(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return self.burst
        tokens, at = entry
        return min(self.burst, tokens + (now - at) * self.rate)

    def allowed(self, key: str) -> bool:
        """True while ``key`` has at least one token left."""
        return self._tokens(key, self.clock.seconds()) >= 1.0

    def charge(self, key: str, remote: bool = False, quiet: bool = False) -> bool:
        """Spend a token; False (and nothing spent) when none was left.
        ``remote``: the charge happened on another node.  ``quiet``: a
        reservation that may be refunded; the caller calls :meth:`confirm`
        once it stands, so a refunded one never trips the audit event."""
        now = self.clock.seconds()
        tokens = self._tokens(key, now)
        if tokens < 1.0:
            return False
        if not remote and self.on_charge is not None:
            self.on_charge(key)
        self._buckets[key] = (tokens - 1.0, now)
        if tokens < 2.0 and self.on_trip is not None and not remote:
            if quiet:
                self._emptying.add(key)
            else:
                self.on_trip(key)
        self._charges += 1
        if self._charges % self.SWEEP_EVERY == 0:
            self._sweep(now)
        return True

    def confirm(self, key: str) -> None:
        """A quiet charge stands: trip now if one emptied the bucket and it
        is still empty (once, however many were in flight)."""
        if key in self._emptying:
            self._emptying.discard(key)
            if self._tokens(key, self.clock.seconds()) < 1.0:
                self.on_trip(key)

    def refund(self, key: str, remote: bool = False) -> None:
        """Give back a token charged for something that turned out fine."""
        if not remote:
            self._emptying.discard(key)  # the bucket is no longer empty
            if self.on_refund is not None:
                self.on_refund(key)
        entry = self._buckets.get(key)
        if entry is not None:
            now = self.clock.seconds()
            self._buckets[key] = (min(self.burst, self._tokens(key, now) + 1.0), now)

    def retry_after(self, key: str) -> int:
        """Whole seconds until ``key`` has a token again (at least 1)."""
        missing = 1.0 - self._tokens(key, self.clock.seconds())
        return max(1, math.ceil(missing / self.rate))

    def _sweep(self, now: float) -> None:
        self._buckets = {k: v for k, v in self._buckets.items() if self._tokens(k, now) < self.burst}

    def __len__(self) -> int:
        return len(self._buckets)


class Unlimited:
    """A limiter that never limits (rate limits switched off)."""

    def allowed(self, key: str) -> bool:
        return True

    on_charge = on_refund = None

    def charge(self, key: str, remote: bool = False, quiet: bool = False) -> bool:
        return True

    def confirm(self, key: str) -> None:
        pass

    def refund(self, key: str, remote: bool = False) -> None:
        pass

    def retry_after(self, key: str) -> int:
        return 0
