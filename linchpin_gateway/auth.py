"""Checking credentials: store lookups plus PBKDF2 on the hashing pool.

An unknown id, a pending device and a wrong password all cost one PBKDF2
verification and give the same answer, so timing tells nothing.

Verified credentials are remembered in memory for a short time, keyed by an
HMAC of id and password under a key made at start-up (never written
anywhere), so a reconnecting client costs a dictionary lookup instead of a
PBKDF2 run.  Revocation, password change and instance deletion forget the
entries of that principal at once.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from twisted.internet import defer

from linchpin_common.contract.ids import is_hex_id
from linchpin_common.slots import Slots

from .config import DEFAULTS
from .ratelimit import address_key
from .router import CONNECTOR, DEVICE, Principal

CACHE_TTL = 300.0
CACHE_MAX = 100_000


class Authenticator:
    def __init__(self, store, hasher, clock, cache_ttl: float = CACHE_TTL, cache_max: int = CACHE_MAX,
                 revalidate: bool = False):
        """``revalidate``: the store is shared with other nodes, whose password
        changes and revocations reach this cache over the bus a moment later;
        so a cached login is only taken after one store read shows the stored
        credential is still the one that was verified (no PBKDF2 either way)."""
        self.revalidate = revalidate
        self.store = store
        self.hasher = hasher
        self.clock = clock
        self.cache_ttl = cache_ttl
        self.cache_max = cache_max
        self._key = os.urandom(32)
        # key -> (principal, expiry, with revalidate: the stored credential that was verified)
        self._cache: dict[bytes, tuple[Principal, float, object]] = {}
        self._by_id: dict[str, set[bytes]] = {}

    # -- the cache -----------------------------------------------------------------

    def _cache_key(self, principal_id: str, password: str) -> bytes:
        return hmac.new(self._key, f"{principal_id}\0{password}".encode("utf-8", "surrogatepass"),
                        hashlib.sha256).digest()

    def _entry(self, key: bytes):
        """The live cache entry under ``key``, or None."""
        entry = self._cache.get(key)
        if entry is not None and self.clock.seconds() >= entry[1]:
            self._drop(key, entry[0].id)
            return None
        return entry

    def _cached(self, principal_id: str, password: str) -> Principal | None:
        entry = self._entry(self._cache_key(principal_id, password))
        return entry[0] if entry is not None else None

    def _remember(self, principal: Principal, password: str, stamp=None) -> None:
        key = self._cache_key(principal.id, password)
        self._drop(key, principal.id)  # remembered again: it moves to the end
        # Every entry lives cache_ttl from when it was added, so the oldest
        # (first) expire first: sweeping costs what it removes, never a scan
        # of a cache full of live entries.
        now = self.clock.seconds()
        while self._cache:
            oldest = next(iter(self._cache))
            p, expires, _ = self._cache[oldest]
            if expires > now:
                break
            self._drop(oldest, p.id)
        if len(self._cache) >= self.cache_max:
            return  # full of live entries: verify the slow way
        self._cache[key] = (principal, now + self.cache_ttl, stamp if self.revalidate else None)
        self._by_id.setdefault(principal.id, set()).add(key)

    def _drop(self, key: bytes, principal_id: str) -> None:
        self._cache.pop(key, None)
        keys = self._by_id.get(principal_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_id[principal_id]

    def forget(self, *principal_ids: str) -> None:
        """Credentials of these principals changed or are gone."""
        for principal_id in principal_ids:
            for key in self._by_id.pop(principal_id, ()):
                self._cache.pop(key, None)

    # -- checks ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def authenticate(self, username: str, password: str):
        """Deferred[Principal | None].

        Instance ids and device ids share one random 128-bit space, so the
        username alone tells which table to look in.
        """
        key = self._cache_key(username, password)
        entry = self._entry(key)
        if entry is not None:
            cached, _, stamp = entry
            if not self.revalidate:
                return cached
            if stamp is not None and (yield self._stamp(cached)) == stamp:
                return cached
            self._drop(key, username)  # changed on another node: check it the slow way
        result = yield self._verify(username, password)
        if result is None:
            return None
        principal, stamp = result
        self._remember(principal, password, stamp)
        return principal

    def _stamp(self, principal: Principal):
        """Deferred: the stored credential of ``principal`` as it is now."""
        if principal.role == CONNECTOR:
            return self.store.instance_hash(principal.id)
        return self.store.device_auth(principal.id)

    @defer.inlineCallbacks
    def _verify(self, username: str, password: str):
        """Deferred[(Principal, the stored credential verified) | None]."""
        if not is_hex_id(username):
            yield self.hasher.verify(password, None)
            return None
        encoded = yield self.store.instance_hash(username)
        if encoded is not None:
            ok = yield self.hasher.verify(password, encoded)
            # Re-read after the slow part: a password change or deletion
            # committed meanwhile must win over this check.
            if not ok or (yield self.store.instance_hash(username)) != encoded:
                return None
            return Principal(CONNECTOR, username, username), encoded
        row = yield self.store.device_auth(username)
        if row is None or row[1] != "active":
            yield self.hasher.verify(password, None)
            return None
        ok = yield self.hasher.verify(password, row[2])
        if not ok or (yield self.store.device_auth(username)) != row:
            return None
        return Principal(DEVICE, username, row[0]), row

    def cached(self, username: str, password: str) -> Principal | None:
        """The principal of credentials verified recently, without any hashing."""
        return self._cached(username, password)


# -- who may spend a password check --------------------------------------------------

MAX_USERNAME = 64  # ids are 32 characters
MAX_PASSWORD = 256  # passwords are 22; longer ones cannot be right
REMEMBER_SUCCESS = 86400.0  # a principal's login from an address exempts it from others' failures there
REMEMBER_MAX = 100_000


class LoginRefused(Exception):
    """A login turned away before any password check."""

    def __init__(self, retry_after: int, reason: str):
        super().__init__(reason)
        self.retry_after = retry_after
        self.reason = reason


class TooManyFailures(LoginRefused):
    """The failed-login budget of the address (or address and username) is spent."""


class TooManyInFlight(LoginRefused):
    """The address already has its share of password checks queued or running."""


class LoginGuard:
    """Decides which logins may cost a PBKDF2 run, per address.

    * A token of the failed-login budget is **reserved before** the check and
      given back when the credentials were right, so failures from one
      address never cost more runs than the budget plus what it may have in
      flight (``in_flight``, which also keeps one address from filling the
      shared hashing queue).
    * Failures count twice: per address (:func:`~.ratelimit.address_key`)
      and per address and username.  A principal that logged in from an
      address within ``remember`` seconds is judged only by its own
      (address, username) budget there, so others' failures behind the same
      NAT do not lock it out, while a guesser of its password is still slowed.
    * Credentials verified recently (the authenticator's cache) cost no
      check and are never refused: they prove themselves for free.
    """

    def __init__(self, authenticator: Authenticator, clock, limiter, user_limiter, *,
                 in_flight: int = DEFAULTS.login_checks_per_address, remember: float = REMEMBER_SUCCESS,
                 remember_max: int = REMEMBER_MAX):
        self.authenticator = authenticator
        self.clock = clock
        self.limiter = limiter
        self.user_limiter = user_limiter
        self.in_flight = Slots(in_flight)
        self.remember = remember
        self.remember_max = remember_max
        self._recent: dict[str, float] = {}  # "address username" -> last success
        self.checks = 0  # logins that reached a password check

    def login(self, host: str, username: str, password: str) -> defer.Deferred:
        """Deferred[Principal | None]; raises :class:`LoginRefused` at once
        (before any hashing) when the address must wait.  The Deferred fails
        with :class:`~.hashing.Overloaded` when the hashing queue is full."""
        key = address_key(host)
        user_key = f"{key} {username[:MAX_USERNAME]}"
        cached = self.authenticator.cached(username, password)
        if cached is not None and self.authenticator.revalidate:
            # Shared store: confirm it is still the stored credential (one
            # read, no hashing); a changed one is checked the slow way.
            def known(principal):
                if principal is not None:
                    self._remember(user_key)
                return principal

            return self.authenticator.authenticate(username, password).addCallback(known)
        if cached is not None:
            self._remember(user_key)
            return defer.succeed(cached)
        known = self._known(user_key)
        if not self.user_limiter.allowed(user_key):
            raise TooManyFailures(self.user_limiter.retry_after(user_key), "too many failed logins")
        if not known and not self.limiter.allowed(key):
            raise TooManyFailures(self.limiter.retry_after(key), "too many failed logins")
        if not username or len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
            # No id is empty, no id or password that long: a failure, known
            # without hashing (and telling nothing about which ids exist).
            self.user_limiter.charge(user_key)
            self.limiter.charge(key)
            return defer.succeed(None)
        if not self.in_flight.acquire(key):
            raise TooManyInFlight(1, "too many logins in progress from this address")
        self.user_limiter.charge(user_key, quiet=True)
        if not known:
            self.limiter.charge(key, quiet=True)
        self.checks += 1

        def done(principal):
            self.in_flight.release(key)
            if principal is not None:
                self._refund(key, user_key, known)
                self._remember(user_key)
            else:
                self.user_limiter.confirm(user_key)
                if not known:
                    self.limiter.confirm(key)
            return principal

        def failed(failure):
            self.in_flight.release(key)
            self._refund(key, user_key, known)  # not a wrong password: the check did not happen
            return failure

        return defer.maybeDeferred(self.authenticator.authenticate, username, password).addCallbacks(done, failed)

    def _refund(self, key: str, user_key: str, known: bool) -> None:
        self.user_limiter.refund(user_key)
        if not known:
            self.limiter.refund(key)

    def _known(self, user_key: str) -> bool:
        at = self._recent.get(user_key)
        if at is None:
            return False
        if self.clock.seconds() - at < self.remember:
            return True
        del self._recent[user_key]
        return False

    def _remember(self, user_key: str) -> None:
        self._recent.pop(user_key, None)
        self._recent[user_key] = self.clock.seconds()  # newest last
        while len(self._recent) > self.remember_max:
            del self._recent[next(iter(self._recent))]
