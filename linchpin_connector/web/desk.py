"""The pairing desk: what the self-service pairing page may do, per user.

It knows no HTTP.  A user lists, pairs and removes only their own devices;
creating and revoking go through :mod:`linchpin_connector.enrolment`, as
``lmconnector device add`` / ``revoke`` do.  Device states
come from the gateway (the device list at every connect, then
``$gateway/events``), and every change is told to the watchers of the
device's user, which is how the page updates itself.

The pairing URI of a device made here is kept in memory only, until the
device has paired, been removed or its setup key expired: it holds the
setup key, which the gateway hands out once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from twisted.logger import Logger

from linchpin_common.contract import topics

from ..enrolment import create_device, revoke_device

MAX_PENDING_PER_USER = 5
# What a gateway event (other than revoked) says about a device's state.
_EVENT_STATE = {topics.EVENT_PAIRED: "paired", topics.EVENT_CONNECTED: "connected",
                topics.EVENT_DISCONNECTED: "paired"}


class NotYourDevice(Exception):
    """Unknown, or another user's: the same answer for both."""


class TooManyPending(Exception):
    pass


@dataclass(frozen=True)
class DeviceView:
    device_id: str
    state: str  # pending, paired or connected


@dataclass(frozen=True)
class Pairing:
    device_id: str
    uri: str
    expires_at: float  # epoch seconds


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


class PairingDesk:
    log = Logger()

    def __init__(self, state, api, connector_public_key: bytes, clock):
        """``state`` is the connector's AsyncState; ``api`` a GatewayAPI;
        ``clock.seconds()`` the time (pairing codes expire)."""
        self.state = state
        self.api = api
        self.connector_public_key = connector_public_key
        self.clock = clock
        self.gateway_state: dict[str, str] = {}  # device_id -> pending / paired / connected
        self.pairings: dict[str, Pairing] = {}  # device_id -> pairing shown until paired
        self.owners: dict[str, str] = {}  # device_id -> user, for telling the right watchers
        self.watchers: dict[str, set] = {}
        self._creating: dict[str, int] = {}  # user -> pairs being made (not yet in the state)

    # -- what a user sees and does ---------------------------------------------------

    async def devices(self, user: str) -> list[DeviceView]:
        views = []
        for device in await self.state.devices(user):
            self.owners[device.device_id] = user
            state = self.gateway_state.get(device.device_id) or device.state  # pending / paired
            views.append(DeviceView(device.device_id, state))
        return views

    def pairing(self, devices: list[DeviceView]) -> Pairing | None:
        """The newest pairing code still to be scanned of these devices (one
        user's, from :meth:`devices`), if any."""
        now = self.clock.seconds()
        for device_id, pairing in list(self.pairings.items()):
            if pairing.expires_at <= now:
                del self.pairings[device_id]
        pending = {d.device_id for d in devices if d.state == "pending"}
        shown = [p for p in self.pairings.values() if p.device_id in pending]
        return shown[-1] if shown else None

    async def pair(self, user: str) -> Pairing:
        """Create a device for ``user`` at the gateway and here; returns its pairing code."""
        # Counted before the first wait: pairs of one user that overlap
        # (the gateway is slow) each count the others still being made.
        self._creating[user] = self._creating.get(user, 0) + 1
        try:
            pending = [d for d in await self.devices(user) if d.state == "pending"]
            waiting = len(pending) + self._creating[user] - 1
            if waiting >= MAX_PENDING_PER_USER:
                raise TooManyPending(f"{waiting} devices are waiting to be paired: remove one first")
            device = await create_device(self.api, self.state, user, self.connector_public_key)
        finally:
            left = self._creating.pop(user) - 1
            if left:
                self._creating[user] = left
        device_id = device.device_id
        pairing = Pairing(device_id, device.uri, _epoch(device.expires_at))
        self.pairings[device_id] = pairing
        self.gateway_state[device_id] = "pending"
        self.owners[device_id] = user
        self.log.info("device {device_id} created for {user} on the pairing page", device_id=device_id, user=user)
        self._changed(device_id)
        return pairing

    def linked(self) -> set[str]:
        """The pending devices whose pairing link this process holds."""
        now = self.clock.seconds()
        return {device_id for device_id, p in self.pairings.items() if p.expires_at > now}

    async def replace(self, user: str, device_id: str) -> Pairing:
        """A pending device of ``user`` whose link is not here (made by another
        connector of the instance, or before a restart): removed, and a new
        device made in its place, whose link is shown."""
        device = await self.state.device(device_id)
        if device is None or device.user != user or device.state != "pending":
            raise NotYourDevice(device_id)
        await self.remove(user, device_id)
        return await self.pair(user)

    async def remove(self, user: str, device_id: str) -> None:
        """Revoke one of ``user``'s devices at the gateway at once, then forget it here."""
        device = await self.state.device(device_id)
        if device is None or device.user != user:
            raise NotYourDevice(device_id)
        await revoke_device(self.api, self.state, device_id)
        self.log.info("device {device_id} of {user} removed on the pairing page", device_id=device_id, user=user)
        self._forget(device_id)

    # -- watchers ------------------------------------------------------------------------

    def watch(self, user: str, notify) -> callable:
        """Call ``notify()`` whenever a device of ``user`` changes; returns the way to stop."""
        self.watchers.setdefault(user, set()).add(notify)

        def stop():
            watchers = self.watchers.get(user)
            if watchers is not None:
                watchers.discard(notify)
                if not watchers:
                    del self.watchers[user]

        return stop

    def _tell(self, user: str | None) -> None:
        for notify in list(self.watchers.get(user, ()) if user is not None else ()):
            try:
                notify()
            except Exception:
                self.log.failure("a pairing page watcher failed")

    def _changed(self, device_id: str) -> None:
        self._tell(self.owners.get(device_id))

    def _forget(self, device_id: str) -> None:
        owner = self.owners.pop(device_id, None)
        self.gateway_state.pop(device_id, None)
        self.pairings.pop(device_id, None)
        self._tell(owner)

    # -- from the gateway (ConnectorService observers) ----------------------------------

    def gateway_event(self, name: str, device_id: str) -> None:
        if name == topics.EVENT_REVOKED:
            self._forget(device_id)
            return
        state = _EVENT_STATE.get(name)
        if state is None:
            return
        self.gateway_state[device_id] = state
        self.pairings.pop(device_id, None)  # paired: its code is spent
        if device_id in self.owners:
            self._changed(device_id)
        else:  # made by the CLI: look its user up
            d = self.state.device(device_id)
            d.addCallback(lambda device: device is not None and self._tell(device.user))
            d.addErrback(lambda f: self.log.failure("looking up a device failed", f))

    def gateway_lost(self) -> None:
        """The connector lost the gateway: whether a device is connected is
        unknown until the next device list, so none is shown as connected."""
        for device_id, state in self.gateway_state.items():
            if state == "connected":
                self.gateway_state[device_id] = "paired"
        for user in list(self.watchers):
            self._tell(user)

    def gateway_devices(self, listed: list) -> None:
        """The gateway's device list (at every connect) replaces what events said."""
        fresh = {}
        for item in listed:
            if item.get("state") == "active":
                fresh[item["device_id"]] = "connected" if item.get("connected") else "paired"
            else:
                fresh[item["device_id"]] = "pending"
        self.gateway_state = fresh
        for device_id in [d for d in self.pairings if fresh.get(d) != "pending"]:
            del self.pairings[device_id]
        # Devices gone at the gateway while the connector was away had no
        # event: their owners go too (one still being made is looked up again).
        for device_id in [d for d in self.owners if d not in fresh]:
            del self.owners[device_id]
        for user in list(self.watchers):
            self._tell(user)
