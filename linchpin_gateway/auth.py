"""Checking credentials: store lookups plus PBKDF2 on the hashing pool.

An unknown id, a pending device and a wrong password all cost one PBKDF2
verification and give the same answer, so timing tells nothing.
"""

from __future__ import annotations

from twisted.internet import defer

from .router import CONNECTOR, DEVICE, Principal, is_hex_id


class Authenticator:
    def __init__(self, store, hasher):
        self.store = store
        self.hasher = hasher

    @defer.inlineCallbacks
    def check_instance(self, instance_id: str, password: str):
        """Deferred[bool]. Raises hashing.Overloaded when the pool is full."""
        encoded = None
        if is_hex_id(instance_id):
            encoded = yield self.store.instance_hash(instance_id)
        ok = yield self.hasher.verify(password, encoded)
        return bool(ok and encoded is not None)

    @defer.inlineCallbacks
    def authenticate(self, username: str, password: str):
        """Deferred[Principal | None] for an MQTT CONNECT.

        Instance ids and device ids share one random 128-bit space, so the
        username alone tells which table to look in.
        """
        if not is_hex_id(username):
            yield self.hasher.verify(password, None)
            return None
        encoded = yield self.store.instance_hash(username)
        if encoded is not None:
            ok = yield self.hasher.verify(password, encoded)
            return Principal(CONNECTOR, username, username) if ok else None
        row = yield self.store.device_auth(username)
        if row is None or row[1] != "active":
            yield self.hasher.verify(password, None)
            return None
        instance_id, _state, encoded = row
        ok = yield self.hasher.verify(password, encoded)
        return Principal(DEVICE, username, instance_id) if ok else None
