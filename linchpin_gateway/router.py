"""Who is connected, what they may do, and where each message goes.

The router knows principals and topics, never sockets: each attached client
brings a *session handle* with ``deliver(topic, payload, qos)`` and
``close(reason)``.  Topic rules are those of PROTOCOL.md section 4:

==========================  ================================  ==============================
who                         may SUBSCRIBE                     may PUBLISH
==========================  ================================  ==============================
device D                    ``devices/D/down``,               ``devices/D/up``
                            ``$gateway/status``
connector of instance I     ``devices/+/up``,                 ``devices/X/down``, X of I
                            ``$gateway/events``
==========================  ================================  ==============================

Presence belongs to the principal: a connector is *online* while a session of
it is attached and subscribed to ``devices/+/up``.  When a connector's session
is taken over by a new one, the instance stays online for a short grace
period in which the new session is expected to subscribe again, so a
takeover never flips its devices to offline.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.logger import Logger

from linchpin_common.contract.ids import is_hex_id
from linchpin_common.contract.topics import (EVENT_CONNECTED, EVENT_DISCONNECTED, EVENT_PAIRED, EVENT_REVOKED, EVENTS,
                                             STATUS, SUBACK_FAILURE, UP_FILTER, connector_may_subscribe,
                                             device_may_subscribe, down_topic, down_topic_id, event_payload,
                                             status_payload, up_topic)

from .metrics import Stats
from .peers import LOCAL_ONLY, IClusterPeer

DEVICE = "device"
CONNECTOR = "connector"

_STATUS_TOPIC = STATUS.encode()
_EVENTS_TOPIC = EVENTS.encode()
_ONLINE = status_payload(True)
_OFFLINE = status_payload(False)

TAKEOVER_GRACE = 10.0


@dataclass(frozen=True, slots=True)
class Principal:
    role: str  # DEVICE or CONNECTOR
    id: str
    instance_id: str


class Client:
    """One attached session of a principal, as the router sees it."""

    __slots__ = ("principal", "session", "subs", "attached", "up_topic", "down_topic", "up_wire", "down_wire", "held")

    def __init__(self, principal: Principal, session):
        self.principal = principal
        self.session = session
        self.held = None  # the cluster's record of it, with several nodes
        self.subs: dict[str, int] = {}  # granted filter -> QoS
        self.attached = True
        if principal.role == DEVICE:
            self.up_topic = up_topic(principal.id)
            self.down_topic = down_topic(principal.id)
        else:
            self.up_topic = self.down_topic = None
        # The same topics as bytes, made once, so forwarding never re-encodes.
        self.up_wire = self.up_topic.encode() if self.up_topic else None
        self.down_wire = self.down_topic.encode() if self.down_topic else None


class _Instance:
    __slots__ = ("connector", "devices", "online", "grace", "blocked", "shown", "pending_status")

    def __init__(self):
        self.connector: Client | None = None
        self.devices: dict[str, Client] = {}
        self.online = False  # our own connector session is online (or in its takeover grace)
        self.shown = False  # what the devices here were last told
        self.pending_status: set[Client] = set()  # asked while the other nodes' answer is pending
        self.grace = None  # DelayedCall while a takeover is settling
        self.blocked = False  # the connector's socket is backed up: devices are not read


class Router:
    log = Logger()

    def __init__(self, clock, takeover_grace: float = TAKEOVER_GRACE, stats=None):
        self.clock = clock
        self.takeover_grace = takeover_grace
        self.stats = stats if stats is not None else Stats()
        self._clients: dict[str, Client] = {}  # principal id -> live client
        self._instances: dict[str, _Instance] = {}
        # With several nodes: the cross-node side (cluster.Cluster), told of
        # what concerns principals held elsewhere.  None: this node is alone.
        self.cluster: IClusterPeer = LOCAL_ONLY

    # -- queries -----------------------------------------------------------

    def is_connected(self, principal_id: str) -> bool:
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

    def has_connector(self, instance_id: str) -> bool:
        inst = self._instances.get(instance_id)
        return inst is not None and inst.connector is not None

    def principals(self) -> list[Principal]:
        """Who has a live session on this node."""
        return [c.principal for c in self._clients.values()]

    def count(self, role: str) -> int:
        return sum(1 for c in self._clients.values() if c.principal.role == role)

    # -- attach / detach -----------------------------------------------------

    def attach(self, principal: Principal, session) -> Client:
        """A session was accepted for ``principal``; the newest session wins."""
        old = self._clients.get(principal.id)
        if old is not None:
            self._take_over(old)
        inst = self._instances.setdefault(principal.instance_id, _Instance())
        client = Client(principal, session)
        self._clients[principal.id] = client
        self.cluster.attached(client)
        if principal.role == CONNECTOR:
            inst.connector = client
        else:
            inst.devices[principal.id] = client
            if inst.blocked:
                session.hold()
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
        if principal.role == CONNECTOR and inst.online:
            self._start_grace(principal.instance_id, inst)
        self._remove(old, takeover=True)
        old.session.close("session taken over")

    def _remove(self, client: Client, takeover: bool = False) -> None:
        client.attached = False
        principal = client.principal
        if self._clients.get(principal.id) is client:
            del self._clients[principal.id]
        inst = self._instances.get(principal.instance_id)
        if inst is None:
            self.cluster.detached(client)
            return
        if principal.role == CONNECTOR:
            if inst.connector is client:
                inst.connector = None
                self._set_blocked(inst, False)
                if not takeover:
                    self._cancel_grace(inst)
        elif inst.devices.get(principal.id) is client:
            del inst.devices[principal.id]
            inst.pending_status.discard(client)
            self._event(principal.instance_id, inst, EVENT_DISCONNECTED, principal.id, client)
        self._update_presence(principal.instance_id, inst)
        self.cluster.detached(client)

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
            self._update_presence(client.principal.instance_id, inst)
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
            self._update_presence(client.principal.instance_id, self._instances[client.principal.instance_id])

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
            target = inst.connector
            if target is not None:
                sub_qos = target.subs.get(UP_FILTER)
                if sub_qos is not None:
                    self._count(payload)
                    target.session.deliver(client.up_wire, payload, min(qos, sub_qos), raw)
            else:
                self.cluster.send_up(client, payload, qos, raw)
            return True
        device_id = down_topic_id(topic)
        target = inst.devices.get(device_id) if device_id is not None else None
        if target is not None:  # one of ours, connected: the id is well-formed
            sub_qos = target.subs.get(topic)
            if sub_qos is not None:
                self._count(payload)
                target.session.deliver(target.down_wire, payload, min(qos, sub_qos), raw)
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

    # -- back-pressure -------------------------------------------------------

    def backed_up(self, client: Client, backed_up: bool) -> None:
        """A client's socket filled (or drained).  When it is a connector, its
        devices are not read meanwhile: TCP pushes back on them instead of the
        gateway buffering what the connector cannot take."""
        if client.principal.role != CONNECTOR:
            return
        inst = self._instances.get(client.principal.instance_id)
        if inst is not None and inst.connector is client:
            self._set_blocked(inst, backed_up)

    @staticmethod
    def _set_blocked(inst: _Instance, blocked: bool) -> None:
        if inst.blocked == blocked:
            return
        inst.blocked = blocked
        for device in inst.devices.values():
            if blocked:
                device.session.hold()
            else:
                device.session.release()

    # -- lifecycle events from the API ---------------------------------------

    def device_paired(self, instance_id: str, device_id: str) -> None:
        self._event(instance_id, self._instances.get(instance_id), EVENT_PAIRED, device_id)

    def revoke_device(self, instance_id: str, device_id: str, announce: bool = True) -> None:
        """Credentials are gone: cut the live session at once and tell the
        connector (``announce``: the node where the revocation happened)."""
        client = self._clients.get(device_id)
        if client is not None and client.principal.instance_id == instance_id:
            self._remove(client)
            client.session.close("device revoked")
        if announce:
            self._event(instance_id, self._instances.get(instance_id), EVENT_REVOKED, device_id)

    def drop_instance(self, instance_id: str) -> None:
        """The instance is deleted: close its connector and every device session."""
        inst = self._instances.pop(instance_id, None)
        if inst is None:
            return
        self._cancel_grace(inst)
        victims = list(inst.devices.values())
        if inst.connector is not None:
            victims.append(inst.connector)
        inst.devices.clear()
        inst.connector = None
        for client in victims:
            client.attached = False
            self._clients.pop(client.principal.id, None)
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
        connector = inst.connector
        subscribed = connector is not None and UP_FILTER in connector.subs
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
            self.cluster.connector_presence(instance_id, online, connector)
        self._show(instance_id, inst)
        if connector is None and not inst.devices and inst.grace is None:
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
            pending = [d for d in inst.devices.values() if STATUS in d.subs]
        payload = _ONLINE if online else _OFFLINE
        for device in list(pending):
            if device.attached:
                device.session.deliver(_STATUS_TOPIC, payload, 0)

    def _event(self, instance_id: str, inst: _Instance | None, event: str, device_id: str, client=None) -> None:
        connector = inst.connector if inst is not None else None
        if connector is not None:
            if EVENTS in connector.subs:
                payload = event_payload(event, device_id)
                connector.session.deliver(_EVENTS_TOPIC, payload, 0)
        else:
            self.cluster.event(instance_id, event, device_id, client)

    # -- what the cluster brings from other nodes ----------------------------------

    def emit_event(self, instance_id: str, event: str, device_id: str) -> None:
        """An event about a device on another node, for our connector."""
        inst = self._instances.get(instance_id)
        if inst is not None and inst.connector is not None:
            self._event(instance_id, inst, event, device_id)

    def presence_changed(self, instance_id: str) -> None:
        inst = self._instances.get(instance_id)
        if inst is not None:
            self._show(instance_id, inst)

    def remote_up(self, instance_id: str, device_id: str, payload: bytes, qos: int) -> None:
        """A device's up message from another node, for our connector."""
        inst = self._instances.get(instance_id)
        target = inst.connector if inst is not None else None
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

    def remote_up_raw(self, instance_id: str, raw: bytes) -> None:
        """:meth:`remote_up` of a QoS 0 PUBLISH as the device sent it."""
        inst = self._instances.get(instance_id)
        target = inst.connector if inst is not None else None
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
        i = 1
        while raw[i] & 0x80:  # the remaining length
            i += 1
        i += 1
        stats = self.stats
        stats.messages_relayed += 1
        stats.bytes_relayed += len(raw) - i - 2 - ((raw[i] << 8) | raw[i + 1])

    def taken_over(self, client: Client) -> None:
        """A newer session of this principal was accepted by another node."""
        if client.attached:
            self._take_over(client)

