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

from .router import CONNECTOR, DEVICE, Principal

CACHE_TTL = 300.0
CACHE_MAX = 100_000


class Authenticator:
    def __init__(self, store, hasher, clock, cache_ttl: float = CACHE_TTL, cache_max: int = CACHE_MAX):
        self.store = store
        self.hasher = hasher
        self.clock = clock
        self.cache_ttl = cache_ttl
        self.cache_max = cache_max
        self._key = os.urandom(32)
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._by_id: dict[str, set[bytes]] = {}

    # -- the cache -----------------------------------------------------------------

    def _cache_key(self, principal_id: str, password: str) -> bytes:
        return hmac.new(self._key, f"{principal_id}\0{password}".encode("utf-8", "surrogatepass"),
                        hashlib.sha256).digest()

    def _cached(self, principal_id: str, password: str) -> Principal | None:
        key = self._cache_key(principal_id, password)
        entry = self._cache.get(key)
        if entry is None:
            return None
        principal, expires = entry
        if self.clock.seconds() >= expires:
            self._drop(key, principal.id)
            return None
        return principal

    def _remember(self, principal: Principal, password: str) -> None:
        if len(self._cache) >= self.cache_max:
            now = self.clock.seconds()
            for key, (p, expires) in list(self._cache.items()):
                if expires <= now:
                    self._drop(key, p.id)
            if len(self._cache) >= self.cache_max:
                return  # full of live entries: verify the slow way
        key = self._cache_key(principal.id, password)
        self._cache[key] = (principal, self.clock.seconds() + self.cache_ttl)
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
    def check_instance(self, instance_id: str, password: str):
        """Deferred[bool]. Raises hashing.Overloaded when the pool is full."""
        principal = yield self.authenticate(instance_id, password)
        return principal is not None and principal.role == CONNECTOR

    @defer.inlineCallbacks
    def authenticate(self, username: str, password: str):
        """Deferred[Principal | None].

        Instance ids and device ids share one random 128-bit space, so the
        username alone tells which table to look in.
        """
        cached = self._cached(username, password)
        if cached is not None:
            return cached
        principal = yield self._verify(username, password)
        if principal is not None:
            self._remember(principal, password)
        return principal

    @defer.inlineCallbacks
    def _verify(self, username: str, password: str):
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
            return Principal(CONNECTOR, username, username)
        row = yield self.store.device_auth(username)
        if row is None or row[1] != "active":
            yield self.hasher.verify(password, None)
            return None
        ok = yield self.hasher.verify(password, row[2])
        if not ok or (yield self.store.device_auth(username)) != row:
            return None
        return Principal(DEVICE, username, row[0])
