"""The gateway's domain: instances and devices, their credentials and sessions.

Everything that changes an account goes through :class:`Accounts`, whatever
asks for it (the REST API today, the cluster bus or an admin tool tomorrow):
register, rotate a password, delete an instance, add, list, pair and revoke
devices.  Each operation stores the change, drops cached credentials, cuts
or tells the live sessions it concerns and writes the audit event, in that
order.  Failures are domain exceptions; the REST adapter maps them to HTTP.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass


from linchpin_common.contract.ids import is_hex_id, new_id, new_secret

from .audit import audit
from .hashing import sha256_hex


class AccountError(Exception):
    """Base of the domain's refusals."""


class Unauthorized(AccountError):
    """Missing or wrong registration token, or an instance that is gone."""


class UnknownDevice(AccountError):
    """No such device in this instance (also another instance's device)."""


class LimitReached(AccountError):
    """The instance already has as many devices (or pending devices) as allowed."""


class InvalidSetupKey(AccountError):
    """Unknown, already used or expired setup key (all look the same)."""


@dataclass(frozen=True)
class NewInstance:
    instance_id: str
    instance_password: str


@dataclass(frozen=True)
class NewDevice:
    device_id: str
    device_setup_key: str
    expires_at: int


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    state: str  # "pending" or "active"
    connected: bool


class Accounts:
    """Account operations of one gateway node.

    ``sessions`` is what knows the live sessions (the router): it must offer
    ``is_connected(id)``, ``device_paired(instance_id, device_id)``,
    ``revoke_device(instance_id, device_id)`` and ``drop_instance(instance_id)``.
    ``credentials`` is the authenticator whose cache is dropped on change.
    ``peers``, with several nodes, is the cluster: every other node is told
    of revocations, deletions and password changes (to cut its sessions and
    drop its cached credentials) and asked which devices it holds.
    """

    def __init__(self, store, hasher, credentials, sessions, clock, *, setup_key_ttl: int,
                 registration_token: str | None = None, max_devices: int | None = None,
                 max_pending_devices: int | None = None, peers=None):
        self.store = store
        self.hasher = hasher
        self.credentials = credentials
        self.sessions = sessions
        self.peers = peers
        self.clock = clock
        self.setup_key_ttl = setup_key_ttl
        self.max_devices = max_devices
        self.max_pending_devices = max_pending_devices
        self._token = registration_token.encode("utf-8") if registration_token else None

    def authorize_registration(self, token: str | None) -> None:
        """Raise :class:`Unauthorized` unless registration is open or ``token`` is right."""
        if self._token is not None and not hmac.compare_digest((token or "").encode("utf-8"), self._token):
            raise Unauthorized("registration token required")

    async def register(self, token: str | None, host: str | None = None) -> NewInstance:
        self.authorize_registration(token)
        instance_id, password = new_id(), new_secret()
        encoded = await self.hasher.hash(password)
        await self.store.create_instance(instance_id, encoded, self.clock.seconds())
        audit("instance_registered", instance_id=instance_id, host=host)
        return NewInstance(instance_id, password)

    async def rotate_password(self, instance_id: str) -> str:
        """A new instance password; the old one stops working, live sessions stay."""
        password = new_secret()
        encoded = await self.hasher.hash(password)
        if not await self.store.set_instance_password(instance_id, encoded):
            raise Unauthorized("instance deleted")
        self.credentials.forget(instance_id)
        if self.peers is not None:
            self.peers.password_changed(instance_id)
        audit("instance_password_changed", instance_id=instance_id)
        return password

    async def delete_instance(self, instance_id: str) -> None:
        device_ids = await self.store.delete_instance(instance_id)
        if device_ids is None:
            raise Unauthorized("instance deleted")
        self.credentials.forget(instance_id, *device_ids)
        self.sessions.drop_instance(instance_id)
        if self.peers is not None:
            self.peers.instance_deleted(instance_id, device_ids)
        audit("instance_deleted", instance_id=instance_id, devices=len(device_ids))

    async def add_device(self, instance_id: str) -> NewDevice:
        """Raises :class:`LimitReached` when the instance has its most devices
        (or pending devices): one tenant cannot fill the store.  The store
        counts and inserts in one transaction that holds the instance, so
        parallel calls, on this node or on several, never pass the caps."""
        device_id, setup_key = new_id(), new_secret()
        now = self.clock.seconds()
        expires_at = int(now) + self.setup_key_ttl
        full = await self.store.create_device_capped(device_id, instance_id, sha256_hex(setup_key), expires_at, now,
                                                     self.max_devices, self.max_pending_devices)
        if full == "devices":
            raise LimitReached(f"an instance may have {self.max_devices} devices")
        if full == "pending":
            raise LimitReached(f"an instance may have {self.max_pending_devices} devices waiting to be paired")
        audit("device_created", device_id=device_id, instance_id=instance_id)
        return NewDevice(device_id, setup_key, expires_at)

    async def list_devices(self, instance_id: str) -> list[DeviceRow]:
        rows = await self.store.list_devices(instance_id)
        connected = {device_id for device_id, _ in rows if self.sessions.is_connected(device_id)}
        if self.peers is not None:
            elsewhere = [device_id for device_id, state in rows if state == "active" and device_id not in connected]
            try:
                connected |= await self.peers.connected(elsewhere)
            except Exception:
                pass  # the bus is down: what this node knows
        return [DeviceRow(device_id, state, device_id in connected) for device_id, state in rows]

    async def revoke_device(self, instance_id: str, device_id: str) -> None:
        """Credentials gone, live session cut at once, connector told."""
        if not is_hex_id(device_id) or not await self.store.delete_device(instance_id, device_id):
            raise UnknownDevice(device_id)
        self.credentials.forget(device_id)
        self.sessions.revoke_device(instance_id, device_id)
        if self.peers is not None:
            self.peers.revoked(instance_id, device_id)
        audit("device_revoked", device_id=device_id, instance_id=instance_id)

    async def pair_device(self, setup_key: str, host: str | None = None) -> tuple[str, str]:
        """Trade a setup key for (device_id, device_password); the key is spent
        in the same transaction, so of two concurrent redemptions one wins."""
        key_hash = sha256_hex(setup_key)
        now = self.clock.seconds()
        found = await self.store.find_setup_key(key_hash, now)
        if found is None:
            raise InvalidSetupKey()
        device_id, _instance_id = found
        password = new_secret()
        encoded = await self.hasher.hash(password)
        instance_id = await self.store.activate_device(device_id, key_hash, encoded, now)
        if instance_id is None:  # another request spent the key meanwhile
            raise InvalidSetupKey()
        self.sessions.device_paired(instance_id, device_id)
        audit("device_paired", device_id=device_id, instance_id=instance_id, host=host)
        return device_id, password

    async def purge_expired(self) -> list[tuple[str, str]]:
        """Remove expired pending devices; returns (instance_id, device_id) pairs."""
        return await self.store.purge_expired(self.clock.seconds())
