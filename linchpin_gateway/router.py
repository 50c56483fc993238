"""Who is connected, what they may do, and where each message goes.

The router knows principals and topics, never sockets: each attached client
brings a *session handle* with ``deliver(topic, payload, qos)`` and
``close(reason)``.  Topic rules are those of PROTOCOL.md section 4:

==========================  ================================  ==============================
who                         may SUBSCRIBE                     may PUBLISH
==========================  ================================  ==============================
device D                    ``devices/D/down``,               ``devices/D/up``
                            ``$gateway/status``
connector of instance I     ``devices/+/up``,                 ``devices/X/down``, X of I;
                            ``$gateway/events``               ``$gateway/drain``
==========================  ================================  ==============================

Several connectors per instance: connector sessions are keyed by instance
and client identifier (their *name*); a new session of the same name takes
the old one over, sessions of other names coexist (at most
``MAX_CONNECTORS``).  A connector session is *ready* while it is subscribed
to ``devices/+/up`` and has not drained.  Each device is *pinned* to one
connector name: on a HELLO, or on any up message while it has none, to the
ready name that ranks first for it by rendezvous hashing (:func:`rank`);
every other up message follows the pin.  When the pinned session goes (or
unsubscribes), the device is told ``moved`` if another is ready, else
``offline``.

Presence belongs to the instance: it is *online* while one of its connector
sessions is attached and subscribed to ``devices/+/up``, draining or not.
When a connector's session is taken over by a new one, the instance stays
online for a short grace period in which the new session is expected to
subscribe again, so a takeover never flips its devices to offline, and the
devices pinned to that name stay pinned.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from twisted.logger import Logger

from linchpin_common.contract.e2e import HELLO, VERSION
from linchpin_common.contract.ids import is_hex_id
from linchpin_common.contract.topics import (DRAIN, EVENT_CONNECTED, EVENT_DISCONNECTED, EVENT_PAIRED, EVENT_REVOKED,
                                             EVENTS, MAX_CONNECTORS, MOVED, STATUS, SUBACK_FAILURE, UP_FILTER,
                                             connector_may_subscribe, device_may_subscribe, down_topic, down_topic_id,
                                             event_payload, status_message, status_payload, up_topic)

from .metrics import Stats
from .peers import LOCAL_ONLY, IClusterPeer

DEVICE = "device"
CONNECTOR = "connector"

_STATUS_TOPIC = STATUS.encode()
_EVENTS_TOPIC = EVENTS.encode()
_ONLINE = status_payload(True)
_OFFLINE = status_payload(False)
_MOVED = status_message(MOVED)

TAKEOVER_GRACE = 10.0


@dataclass(frozen=True, slots=True)
class Principal:
    role: str  # DEVICE or CONNECTOR
    id: str
    instance_id: str


def rank(name: str, device_id: str) -> bytes:
    """The rendezvous (highest random weight) score of connector ``name`` for
    ``device_id``: every node computes the same, so a device lands on the same
    connector while the set of ready names is unchanged, and only the devices
    of a connector that leaves move."""
    return hashlib.sha256(f"{name}\n{device_id}".encode()).digest()[:8]


def session_key(principal: Principal, name: str = "") -> str:
    """What identifies one live session slot: a device by its id, a
    connector by its instance and name."""
    return principal.id if principal.role == DEVICE else f"{principal.id}/{name}"


class Client:
    """One attached session of a principal, as the router sees it."""

    __slots__ = ("principal", "session", "subs", "attached", "up_topic", "down_topic", "up_wire", "down_wire", "held",
                 "key", "name", "drained", "blocked", "pin", "held_back")

    def __init__(self, principal: Principal, session, name: str = ""):
        self.principal = principal
        self.session = session
        self.name = name  # a connector's client identifier
        self.key = session_key(principal, name)
        self.held = None  # the cluster's record of it, with several nodes
        self.subs: dict[str, int] = {}  # granted filter -> QoS
        self.attached = True
        self.drained = False  # a connector that published $gateway/drain
        self.blocked = False  # a connector whose socket is backed up
        self.pin: str | None = None  # a device: the name of its connector
        self.held_back = False  # a device not read while its connector is backed up
        if principal.role == DEVICE:
            self.up_topic = up_topic(principal.id)
            self.down_topic = down_topic(principal.id)
        else:
            self.up_topic = self.down_topic = None
        # The same topics as bytes, made once, so forwarding never re-encodes.
        self.up_wire = self.up_topic.encode() if self.up_topic else None
        self.down_wire = self.down_topic.encode() if self.down_topic else None

    @property
    def ready(self) -> bool:
        """A connector session that takes new devices."""
        return UP_FILTER in self.subs and not self.drained


class _Instance:
    __slots__ = ("connectors", "devices", "online", "grace", "shown", "pending_status", "stranded")

    def __init__(self):
        self.connectors: dict[str, Client] = {}  # name -> its live session here
        self.devices: dict[str, Client] = {}
        self.online = False  # one of our own connector sessions is online (or in its takeover grace)
        self.shown = False  # what the devices here were last told
        self.pending_status: set[Client] = set()  # asked while the other nodes' answer is pending
        self.grace = None  # DelayedCall while a takeover is settling
        self.stranded: set[Client] = set()  # told offline when their connector left and none was ready

    def ready_here(self) -> list[str]:
        return [name for name, c in self.connectors.items() if c.ready]

    def subscribed(self) -> bool:
        return any(UP_FILTER in c.subs for c in self.connectors.values())


class Router:
    log = Logger()

    def __init__(self, clock, takeover_grace: float = TAKEOVER_GRACE, stats=None):
        self.clock = clock
        self.takeover_grace = takeover_grace
        self.stats = stats if stats is not None else Stats()
        self._clients: dict[str, Client] = {}  # session key -> live client
        self._by_role = {CONNECTOR: 0, DEVICE: 0}  # live clients of each role: /metrics reads it every scrape
        self._instances: dict[str, _Instance] = {}
        # With several nodes: the cross-node side (cluster.Cluster), told of
        # what concerns principals held elsewhere.  LOCAL_ONLY: this node is alone.
        self.cluster: IClusterPeer = LOCAL_ONLY

    # -- queries -----------------------------------------------------------

    def is_connected(self, principal_id: str) -> bool:
        """Whether device ``principal_id`` has a live session here."""
        return principal_id in self._clients

    def is_online(self, instance_id: str) -> bool:
        inst = self._instances.get(instance_id)
        return bool(inst and inst.online)

    def may_attach(self, principal: Principal, max_devices: int) -> bool:
        """Whether a device session of ``principal`` fits in its instance's
        ``max_devices`` live device sessions (a takeover always does)."""
        if principal.id in self._clients:
            return True
        inst = self._instances.get(principal.instance_id)
        return inst is None or len(inst.devices) < max_devices

    def connector_room(self, principal: Principal, name: str):
        """Deferred[bool]: whether a connector session named ``name`` fits in
        the instance's ``MAX_CONNECTORS``, here and on the other nodes (a
        takeover of the same name always does)."""

        def fits(elsewhere) -> bool:
            inst = self._instances.get(principal.instance_id)
            names = set(elsewhere).union(inst.connectors if inst is not None else ())
            return name in names or len(names) < MAX_CONNECTORS

        return self.cluster.connectors_elsewhere(principal.instance_id).addCallback(fits)

    def has_connector(self, instance_id: str) -> bool:
        inst = self._instances.get(instance_id)
        return inst is not None and bool(inst.connectors)

    def principals(self) -> list[Principal]:
        """Who has a live session on this node."""
        return [c.principal for c in self._clients.values()]

    def count(self, role: str) -> int:
        return self._by_role[role]

    def connectors_per_instance(self) -> dict[int, int]:
        """How many instances have n connector sessions here, by n."""
        spread: dict[int, int] = {}
        for inst in self._instances.values():
            if inst.connectors:
                n = len(inst.connectors)
                spread[n] = spread.get(n, 0) + 1
        return spread

    def pinned_to(self, device_id: str) -> str | None:
        """The name of the connector device ``device_id`` is pinned to, if any."""
        client = self._clients.get(device_id)
        return client.pin if client is not None else None

    # -- attach / detach -----------------------------------------------------

    def attach(self, principal: Principal, session, name: str = "") -> Client:
        """A session was accepted for ``principal`` (a connector's under its
        ``name``); the newest session of a key wins."""
        client = Client(principal, session, name)
        old = self._clients.get(client.key)
        if old is not None:
            self._take_over(old)
        inst = self._instances.setdefault(principal.instance_id, _Instance())
        self._clients[client.key] = client
        self._by_role[principal.role] += 1
        self.cluster.attached(client)
        if principal.role == CONNECTOR:
            inst.connectors[name] = client
        else:
            inst.devices[principal.id] = client
            self._event(principal.instance_id, inst, EVENT_CONNECTED, principal.id, client)
        return client

    def detach(self, client: Client) -> None:
        """The client's connection ended (no-op if the router already removed it)."""
        if client.attached:
            self._remove(client)

    def _take_over(self, old: Client) -> None:
        principal = old.principal
        self.log.info("session takeover for {role} {id}", role=principal.role, id=principal.id)
        inst = self._instances[principal.instance_id]
        if principal.role == CONNECTOR:
            if inst.online:
                self._start_grace(principal.instance_id, inst)
            # Its devices stay pinned to the name for the new session, which
            # must take up messages within the grace, or they move.
            self.clock.callLater(self.takeover_grace, self._takeover_settled, principal.instance_id, old.name)
        self._remove(old, takeover=True)
        old.session.close("session taken over")

    def _takeover_settled(self, instance_id: str, name: str) -> None:
        inst = self._instances.get(instance_id)
        connector = inst.connectors.get(name) if inst is not None else None
        if inst is not None and (connector is None or UP_FILTER not in connector.subs):
            self._connector_left(inst, name)

    def _forget(self, client: Client) -> None:
        """``client`` is no longer the live session of its key (if it still was)."""
        if self._clients.get(client.key) is client:
            del self._clients[client.key]
            self._by_role[client.principal.role] -= 1

    def _remove(self, client: Client, takeover: bool = False) -> None:
        client.attached = False
        principal = client.principal
        self._forget(client)
        inst = self._instances.get(principal.instance_id)
        if inst is None:
            self.cluster.detached(client, takeover)
            return
        if principal.role == CONNECTOR:
            if inst.connectors.get(client.name) is client:
                del inst.connectors[client.name]
                if client.blocked:
                    client.blocked = False
                    self._hold_pinned(inst, client.name, False)
                if not takeover:
                    self._connector_left(inst, client.name)
                    if not inst.connectors:
                        self._cancel_grace(inst)
        elif inst.devices.get(principal.id) is client:
            del inst.devices[principal.id]
            inst.pending_status.discard(client)
            inst.stranded.discard(client)
            self._event(principal.instance_id, inst, EVENT_DISCONNECTED, principal.id, client)
        self._update_presence(principal.instance_id, inst)
        self.cluster.detached(client, takeover)

    # -- subscriptions -------------------------------------------------------

    def subscribe(self, client: Client, topics) -> list[int]:
        """Grant or refuse each ``(filter, qos)``; returns SUBACK return codes.

        Call :meth:`subscribed` after the SUBACK has been written.
        """
        codes = []
        for topic_filter, qos in topics:
            if self._may_subscribe(client, topic_filter):
                granted = min(qos, 1)
                client.subs[topic_filter] = granted
                codes.append(granted)
            else:
                codes.append(SUBACK_FAILURE)
        return codes

    def subscribed(self, client: Client, topics) -> None:
        """Follow-ups of a SUBACK: presence and the status announcement."""
        if not client.attached:
            return
        inst = self._instances[client.principal.instance_id]
        filters = {t for t, _ in topics}
        if client.principal.role == CONNECTOR and UP_FILTER in filters and UP_FILTER in client.subs:
            self.cluster.connector_state(client)
            self._update_presence(client.principal.instance_id, inst)
            if client.ready:
                self._unstrand(inst)
        if client.principal.role == DEVICE and STATUS in filters and STATUS in client.subs:
            online = inst.online or self.cluster.remote_online(client.principal.instance_id)
            if online is None:  # the other nodes have not answered yet
                inst.pending_status.add(client)
                return
            inst.shown = online
            client.session.deliver(_STATUS_TOPIC, _ONLINE if online else _OFFLINE, 0)

    def unsubscribe(self, client: Client, filters) -> None:
        for topic_filter in filters:
            client.subs.pop(topic_filter, None)
        if client.attached and client.principal.role == CONNECTOR:
            inst = self._instances[client.principal.instance_id]
            if UP_FILTER not in client.subs:
                self._connector_left(inst, client.name)
                self.cluster.connector_state(client)
            self._update_presence(client.principal.instance_id, inst)

    @staticmethod
    def _may_subscribe(client: Client, topic_filter: str) -> bool:
        if client.principal.role == DEVICE:
            return device_may_subscribe(client.principal.id, topic_filter)
        return connector_may_subscribe(topic_filter)

    # -- publishing ----------------------------------------------------------

    def publish(self, client: Client, topic: str, payload: bytes, qos: int, raw: bytes | None = None) -> bool:
        """Route one PUBLISH.  False means the sender broke the rules and
        must be disconnected; True means delivered or dropped.  ``raw`` is
        the packet as received when it can be forwarded as it is (QoS 0)."""
        principal = client.principal
        inst = self._instances[principal.instance_id]
        if principal.role == DEVICE:
            if topic != client.up_topic:
                self.log.info("device {id} published to a foreign topic; closing", id=principal.id)
                return False
            pin = client.pin
            if pin is None or (len(payload) > 1 and payload[1] == HELLO and payload[0] == VERSION):
                pin = self._pin(inst, client)
            target = inst.connectors.get(pin) if pin is not None else None
            if target is not None:
                sub_qos = target.subs.get(UP_FILTER)
                if sub_qos is not None:
                    self._count(payload)
                    target.session.deliver(client.up_wire, payload, min(qos, sub_qos), raw)
            else:  # on another node, or nowhere (dropped there)
                self.cluster.send_up(client, payload, qos, raw, pin)
            return True
        device_id = down_topic_id(topic)
        target = inst.devices.get(device_id) if device_id is not None else None
        if target is not None:  # one of ours, connected: the id is well-formed
            sub_qos = target.subs.get(topic)
            if sub_qos is not None:
                self._count(payload)
                target.session.deliver(target.down_wire, payload, min(qos, sub_qos), raw)
            return True
        if topic == DRAIN:
            self._drain(inst, client)
            return True
        if device_id is None or not is_hex_id(device_id):
            self.log.info("connector {id} published to a forbidden topic; closing", id=principal.id)
            return False
        # perhaps on another node (which checks it is this instance's)
        self.cluster.send_down(client, device_id, payload, qos, raw)
        return True  # not (or no longer) its device, or absent: dropped

    def _count(self, payload: bytes) -> None:
        stats = self.stats
        stats.messages_relayed += 1
        stats.bytes_relayed += len(payload)

    # -- pins ----------------------------------------------------------------

    def _ready_names(self, instance_id: str, inst: _Instance) -> set[str]:
        """The instance's ready connector names, here and on other nodes."""
        return set(inst.ready_here()).union(self.cluster.remote_ready(instance_id))

    def _pin(self, inst: _Instance, device: Client) -> str | None:
        """Pin ``device`` to the ready connector that ranks first for it, here
        or on another node; a device with no ready connector keeps its pin."""
        names = self._ready_names(device.principal.instance_id, inst)
        if not names:
            return device.pin
        device_id = device.principal.id
        best = max(names, key=lambda name: rank(name, device_id))
        if best != device.pin:
            self._set_pin(inst, device, best)
        return best

    def _set_pin(self, inst: _Instance, device: Client, name: str | None) -> None:
        device.pin = name
        connector = inst.connectors.get(name) if name is not None else None
        self._hold(device, connector is not None and connector.blocked)

    @staticmethod
    def _hold(device: Client, held: bool) -> None:
        if device.held_back != held:
            device.held_back = held
            if held:
                device.session.hold()
            else:
                device.session.release()

    def _hold_pinned(self, inst: _Instance, name: str, held: bool) -> None:
        for device in inst.devices.values():
            if device.pin == name:
                self._hold(device, held)

    def _connector_left(self, inst: _Instance, name: str) -> None:
        """Connector ``name`` closed or stopped taking up messages: its devices
        are told ``moved`` when another connector is ready (their next HELLO
        pins them there), else ``offline``."""
        if not inst.devices:
            return
        instance_id = next(iter(inst.devices.values())).principal.instance_id
        ready = bool(self._ready_names(instance_id, inst))
        for device in list(inst.devices.values()):
            if device.pin != name:
                continue
            self._set_pin(inst, device, None)
            if STATUS not in device.subs:
                continue
            if ready:
                self.stats.devices_moved += 1
                device.session.deliver(_STATUS_TOPIC, _MOVED, 0)
            elif inst.subscribed() or self.cluster.remote_online(instance_id):  # online through a draining one
                inst.stranded.add(device)
                device.session.deliver(_STATUS_TOPIC, _OFFLINE, 0)
            # else: the instance goes offline, which every device is told

    def _unstrand(self, inst: _Instance) -> None:
        """A connector is ready again: the devices told offline when theirs
        left learn that one is there."""
        stranded, inst.stranded = inst.stranded, set()
        for device in stranded:
            if device.attached and inst.shown:
                device.session.deliver(_STATUS_TOPIC, _ONLINE, 0)

    def _drain(self, inst: _Instance, connector: Client) -> None:
        if not connector.drained:
            self.log.info("connector {name} of instance {id} drains", name=connector.name,
                          id=connector.principal.instance_id)
            connector.drained = True
            self.cluster.connector_state(connector)

    # -- back-pressure -------------------------------------------------------

    def backed_up(self, client: Client, backed_up: bool) -> None:
        """A client's socket filled (or drained).  When it is a connector, the
        devices pinned to it are not read meanwhile: TCP pushes back on them
        instead of the gateway buffering what the connector cannot take."""
        if client.principal.role != CONNECTOR or client.blocked == backed_up:
            return
        inst = self._instances.get(client.principal.instance_id)
        if inst is not None and inst.connectors.get(client.name) is client:
            client.blocked = backed_up
            self._hold_pinned(inst, client.name, backed_up)

    # -- lifecycle events from the API ---------------------------------------

    def device_paired(self, instance_id: str, device_id: str) -> None:
        self._event(instance_id, self._instances.get(instance_id), EVENT_PAIRED, device_id)

    def revoke_device(self, instance_id: str, device_id: str, announce: bool = True) -> None:
        """Credentials are gone: cut the live session at once and tell the
        connectors (``announce``: the node where the revocation happened)."""
        client = self._clients.get(device_id)
        if client is not None and client.principal.instance_id == instance_id:
            self._remove(client)
            client.session.close("device revoked")
        if announce:
            self._event(instance_id, self._instances.get(instance_id), EVENT_REVOKED, device_id)

    def drop_instance(self, instance_id: str) -> None:
        """The instance is deleted: close its connectors and every device session."""
        inst = self._instances.pop(instance_id, None)
        if inst is None:
            return
        self._cancel_grace(inst)
        victims = list(inst.devices.values()) + list(inst.connectors.values())
        inst.devices.clear()
        inst.connectors.clear()
        for client in victims:
            client.attached = False
            self._forget(client)
            self.cluster.detached(client)
            client.session.close("instance deleted")

    def close_all(self, reason: str) -> None:
        for client in list(self._clients.values()):
            self._remove(client)
            client.session.close(reason)

    # -- presence and events -------------------------------------------------

    @staticmethod
    def _cancel_grace(inst: _Instance) -> None:
        if inst.grace is not None:
            if inst.grace.active():
                inst.grace.cancel()
            inst.grace = None

    def _start_grace(self, instance_id: str, inst: _Instance) -> None:
        self._cancel_grace(inst)

        def expire():
            inst.grace = None
            self._update_presence(instance_id, inst)

        inst.grace = self.clock.callLater(self.takeover_grace, expire)

    def _update_presence(self, instance_id: str, inst: _Instance) -> None:
        subscribed = inst.subscribed()
        if subscribed:
            self._cancel_grace(inst)
        online = subscribed or inst.grace is not None
        if online != inst.online:
            inst.online = online
            self.log.info(
                "instance {instance_id} connector {state}",
                instance_id=instance_id,
                state="online" if online else "offline",
            )
        self._show(instance_id, inst)
        if not inst.connectors and not inst.devices and inst.grace is None:
            self._instances.pop(instance_id, None)

    def _show(self, instance_id: str, inst: _Instance) -> None:
        """Tell this node's devices when their connector's presence, here or
        on another node, changed (and those still waiting for it)."""
        online = inst.online
        if not online:
            online = self.cluster.remote_online(instance_id)
            if online is None:
                return  # not known yet
        pending, inst.pending_status = inst.pending_status, set()
        if online != inst.shown:
            inst.shown = online
            inst.stranded.clear()
            pending = [d for d in inst.devices.values() if STATUS in d.subs]
        payload = _ONLINE if online else _OFFLINE
        for device in list(pending):
            if device.attached:
                device.session.deliver(_STATUS_TOPIC, payload, 0)

    def _event(self, instance_id: str, inst: _Instance | None, event: str, device_id: str, client=None) -> None:
        """To the instance's connectors here and on the other nodes."""
        self._event_here(inst, event, device_id)
        self.cluster.event(instance_id, event, device_id, client)

    @staticmethod
    def _event_here(inst: _Instance | None, event: str, device_id: str) -> None:
        if inst is None or not inst.connectors:
            return
        payload = event_payload(event, device_id)
        for connector in list(inst.connectors.values()):
            if EVENTS in connector.subs:
                connector.session.deliver(_EVENTS_TOPIC, payload, 0)

    # -- what the cluster brings from other nodes ----------------------------------

    def emit_event(self, instance_id: str, event: str, device_id: str) -> None:
        """An event about a device on another node, for our connectors."""
        self._event_here(self._instances.get(instance_id), event, device_id)

    def remote_connectors_changed(self, instance_id: str, left=()) -> None:
        """The instance's connector sessions on other nodes changed (or became
        known): ``left`` are the names that are gone or no longer take up
        messages; their devices here are told ``moved`` or ``offline``."""
        inst = self._instances.get(instance_id)
        if inst is None:
            return
        for name in left:
            if name not in inst.connectors:
                self._connector_left(inst, name)
        self._show(instance_id, inst)
        if self.cluster.remote_ready(instance_id):
            self._unstrand(inst)

    def presence_changed(self, instance_id: str) -> None:
        inst = self._instances.get(instance_id)
        if inst is not None:
            self._show(instance_id, inst)

    def _connector_named(self, instance_id: str, name: str) -> Client | None:
        inst = self._instances.get(instance_id)
        return inst.connectors.get(name) if inst is not None else None

    def remote_up(self, instance_id: str, name: str, device_id: str, payload: bytes, qos: int) -> None:
        """A device's up message from another node, for our connector ``name``."""
        target = self._connector_named(instance_id, name)
        if target is not None:
            sub_qos = target.subs.get(UP_FILTER)
            if sub_qos is not None:
                self._count(payload)
                target.session.deliver(up_topic(device_id).encode(), payload, min(qos, sub_qos))

    def remote_down(self, device_id: str, instance_id: str, payload: bytes, qos: int) -> None:
        """A connector's down message from another node, for our device."""
        target = self._clients.get(device_id)
        if target is not None and target.principal.role == DEVICE and target.principal.instance_id == instance_id:
            sub_qos = target.subs.get(target.down_topic)
            if sub_qos is not None:
                self._count(payload)
                target.session.deliver(target.down_wire, payload, min(qos, sub_qos))

    def remote_up_raw(self, instance_id: str, name: str, raw: bytes) -> None:
        """:meth:`remote_up` of a QoS 0 PUBLISH as the device sent it."""
        target = self._connector_named(instance_id, name)
        if target is not None and UP_FILTER in target.subs:
            self._count_raw(raw)
            target.session.deliver(None, None, 0, raw)

    def remote_down_raw(self, device_id: str, instance_id: str, raw: bytes) -> None:
        """:meth:`remote_down` of a QoS 0 PUBLISH as the connector sent it."""
        target = self._clients.get(device_id)
        if (target is not None and target.principal.role == DEVICE and target.principal.instance_id == instance_id
                and target.down_topic in target.subs):
            self._count_raw(raw)
            target.session.deliver(None, None, 0, raw)

    def _count_raw(self, raw: bytes) -> None:
        """:meth:`_count` of a QoS 0 PUBLISH packet's payload."""
        stats = self.stats
        stats.messages_relayed += 1
        stats.bytes_relayed += len(raw) - _payload_start(raw)

    def taken_over(self, client: Client) -> None:
        """A newer session of this principal was accepted by another node."""
        if client.attached:
            self._take_over(client)


def _payload_start(raw: bytes) -> int:
    """Where the payload of a QoS 0 PUBLISH packet starts (after the fixed
    header, its remaining length and the topic)."""
    i = 1
    while raw[i] & 0x80:  # the remaining length
        i += 1
    i += 1
    return i + 2 + ((raw[i] << 8) | raw[i + 1])
