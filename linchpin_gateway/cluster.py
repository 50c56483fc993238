"""Several gateway nodes behind one load balancer, joined by a bus (Redis).

The :class:`~.router.Router` of each node still knows only its own
sessions; when a message, an event or a presence change concerns a
principal that is not here, it hands it to this node's :class:`Cluster`,
which carries it over the bus to whichever node holds that principal.

The channels, keys and messages between nodes, and their bytes, are
:mod:`.busmessages`; this module decides what to say and what to do with
what it hears.

**Newest session wins.**  Attaching a principal ``claim``s its ownership
key: an epoch from a per-principal counter (Redis INCR) plus this node's
id, with a TTL this node refreshes.  The claimant then publishes ``T`` with
its epoch; the node holding an older epoch closes its session as a
takeover.  Every message that tells about a session (events, presence)
carries its epoch, so a late message from an older session never
overrides what a newer one said.  A refresh that finds a newer epoch in
the key also closes the older session (if ``T`` was lost).

**Liveness.**  Each node publishes a heartbeat every ``HEARTBEAT`` seconds
and keeps ``lm:node:<id>`` alive with a TTL.  A node not heard for
``DEAD_AFTER`` seconds is dead: its connectors are offline for the devices
here, its devices are ``device_disconnected`` for the connectors here.

**Bus down.**  Local traffic goes on; a cross-node publish is dropped at
once; what other nodes hold is unknown, so it is treated as gone.  When
the bus is back, this node takes its ownership keys again, re-announces
its connectors' presence and its devices, and asks for the state of
instances it serves.
"""

from __future__ import annotations

import enum
import os

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from linchpin_common.machine import Transitions
from linchpin_common.contract.topics import EVENT_CONNECTED, EVENT_DISCONNECTED

from . import busmessages as bm
from .bus import NotConnected, epoch_of
from .peers import IClusterPeer
from .router import CONNECTOR, DEVICE

HEARTBEAT = 2.0
DEAD_AFTER = 7.0
OWN_TTL = 10.0
PING_TIMEOUT = 5.0

class ClusterStats:
    __slots__ = ("messages_out", "messages_in", "dropped", "rtt", "takeovers", "dead_nodes")

    def __init__(self):
        self.messages_out = 0
        self.messages_in = 0
        self.dropped = 0
        self.rtt = 0.0
        self.takeovers = 0
        self.dead_nodes = 0


class Ownership(enum.Enum):
    CLAIMING = "claiming"  # the claim is asked (or the bus was down: asked again when it is back)
    HELD = "held"  # claimed: the epoch is known, the key refreshed by every heartbeat
    RELEASED = "released"  # the session left this node; a late claim answer lets the key go


#   CLAIMING --claimed--> HELD --release--> RELEASED
#      '--------------release-----------------^   (claimed in RELEASED: stays; release again: ignored)
_OWNERSHIP = Transitions("node ownership", Ownership, {
    (Ownership.CLAIMING, "claimed"): Ownership.HELD,
    (Ownership.CLAIMING, "release"): Ownership.RELEASED,
    (Ownership.HELD, "release"): Ownership.RELEASED,
    (Ownership.RELEASED, "claimed"): Ownership.RELEASED,
}, ignored=[(Ownership.RELEASED, "release")])


class _Held:
    """A local session whose ownership this node holds (or is claiming)."""

    __slots__ = ("client", "state", "epoch", "waiters", "newest_seen", "channel", "announcing")

    def __init__(self, client):
        self.client = client
        self.state = Ownership.CLAIMING
        self.epoch = None  # known once the claim is answered (HELD)
        self.waiters = []
        self.announcing = False  # a connector: its online announcement waits for the epoch
        self.newest_seen = 0  # highest epoch of a takeover heard before that
        self.channel = bm.principal_channel(client.principal.instance_id)  # where its instance's connector listens


class _Remote:
    """What this node knows of an instance's connector on another node."""

    __slots__ = ("node", "epoch", "online", "known")

    def __init__(self):
        self.node = None
        self.epoch = 0
        self.online = False
        self.known = False


@implementer(IClusterPeer)
class Cluster:
    log = Logger(namespace="lmgateway")

    def __init__(self, router, bus, clock, authenticator=None, limiters=None, node: bytes | None = None):
        self.router = router
        self.bus = bus
        self.clock = clock
        self.authenticator = authenticator
        self.limiters = limiters or {}
        self.node = node or os.urandom(8).hex().encode()
        self.stats = ClusterStats()
        self.on_bus_back = None  # called when the bus is back after being away
        self.held: dict[str, _Held] = {}
        self.remote: dict[str, _Remote] = {}  # instance -> its connector elsewhere (instances of our devices)
        self.interest: dict[str, set[str]] = {}  # instance -> ids of its devices held here
        self.remote_devices: dict[str, dict[str, tuple[bytes, int]]] = {}  # for our connectors
        self.lost: dict[str, set[str]] = {}  # devices reported gone with their node, per instance
        self.online_here: dict[str, bytes] = {}  # instance -> value of its online key
        self.last_seen: dict[bytes, float] = {}
        self._pinging = None
        self._beat = task.LoopingCall(self.heartbeat)
        self._beat.clock = clock
        for name, limiter in self.limiters.items():
            limiter.on_charge = lambda key, name=name: self._broadcast(bm.Charge(self.node, name, key))
            limiter.on_refund = lambda key, name=name: self._broadcast(bm.Refund(self.node, name, key))

    # -- lifecycle -----------------------------------------------------------

    def start(self):
        self.bus.start(self._received, self._bus_state)
        self.bus.subscribe(bm.CONTROL)
        self._beat.start(HEARTBEAT, now=False)

    def stop(self):
        if self._beat.running:
            self._beat.stop()
        self._broadcast(bm.Bye(self.node))  # a clean stop: no one waits for this node's heartbeats
        return self.bus.stop()

    @property
    def up(self) -> bool:
        return self.bus.connected

    def check(self) -> defer.Deferred:
        """For ``/readyz``: fires while the bus is connected, fails otherwise
        (no round trip: a hung Redis is cut by the heartbeat's ping timeout)."""
        if self.bus.connected:
            return defer.succeed(None)
        return defer.fail(ConnectionError("bus unreachable"))

    # -- hooks the router calls ------------------------------------------------

    def attached(self, client) -> None:
        principal = client.principal
        h = _Held(client)
        client.held = h
        older = self.held.get(principal.id)
        if older is not None:  # (the router detaches an older session first)
            self._release(older)
        self.held[principal.id] = h
        self.bus.subscribe(bm.principal_channel(principal.id))
        if principal.role == DEVICE:
            self._interest_add(principal.instance_id, principal.id)
            known = self.remote_devices.get(principal.instance_id, {}).pop(principal.id, None)
            if known is not None:
                # It was on another node: that session ended before this one.
                self.router.emit_event(principal.instance_id, EVENT_DISCONNECTED, principal.id)
        self._claim(h)

    def _claim(self, h: _Held) -> None:
        pid = h.client.principal.id
        d = self.bus.claim(bm.own_key(pid), bm.epoch_key(pid), self.node, int(OWN_TTL * 1000))
        d.addCallbacks(self._claimed, self._claim_failed, callbackArgs=(h,), errbackArgs=(h,))

    def _claimed(self, answer, h: _Held) -> None:
        epoch, old = answer
        h.epoch = epoch
        h.state = _OWNERSHIP.next(h.state, "claimed")
        pid = h.client.principal.id
        if old is not None and old.split(b" ", 1)[0] != self.node:
            self.bus.publish(bm.principal_channel(pid), bm.Takeover(epoch).encode())
        waiters, h.waiters = h.waiters, []
        if h.state is Ownership.RELEASED:  # gone meanwhile: tell what it said, then let go
            for fn in waiters:
                fn(epoch)
            self.bus.release(bm.own_key(pid), self._value(epoch)).addErrback(lambda f: None)
            return
        if h.newest_seen > epoch:
            self._taken_over(h)
            return
        for fn in waiters:
            fn(epoch)

    def _claim_failed(self, failure, h: _Held) -> None:
        # The bus is down: claimed again when it is back, and what waits for
        # the epoch (its device_connected, its connector's presence) goes then.
        self.log.debug("claim failed for {id}: {e}", id=h.client.principal.id, e=failure.getErrorMessage())

    def _value(self, epoch: int) -> bytes:
        return b"%s %d" % (self.node, epoch)

    def _after_claim(self, client, fn) -> None:
        h = getattr(client, "held", None)
        if h is None:
            return
        if h.state is Ownership.HELD:
            fn(h.epoch)
        elif h.state is Ownership.CLAIMING:
            h.waiters.append(fn)

    def _release(self, h: _Held) -> None:
        if _OWNERSHIP.ignores(h.state, "release"):
            return
        before, h.state = h.state, _OWNERSHIP.next(h.state, "release")
        if before is Ownership.HELD:
            self.bus.release(bm.own_key(h.client.principal.id), self._value(h.epoch)).addErrback(lambda f: None)

    def detached(self, client) -> None:
        principal = client.principal
        h = self.held.get(principal.id)
        if h is None or h.client is not client:
            return
        del self.held[principal.id]
        self.bus.unsubscribe(bm.principal_channel(principal.id))
        self._release(h)
        if principal.role == DEVICE:
            self._interest_remove(principal.instance_id, principal.id)
        else:
            self.remote_devices.pop(principal.instance_id, None)
            self.lost.pop(principal.instance_id, None)

    def send_up(self, client, payload: bytes, qos: int, raw: bytes | None = None) -> None:
        """A device's message for its connector, which is not here; ``raw``:
        the QoS 0 PUBLISH as received, which the connector gets unchanged."""
        if raw is not None:
            message = bm.UpRaw(raw).encode()
        else:
            message = bm.Up(qos, client.principal.id, payload).encode()
        if self.bus.publish(client.held.channel, message):
            self.stats.messages_out += 1
        else:
            self.stats.dropped += 1

    def send_down(self, client, device_id: str, payload: bytes, qos: int, raw: bytes | None = None) -> None:
        """A connector's message for a device that is not here (``raw`` as
        for :meth:`send_up`)."""
        if raw is not None:
            message = bm.DownRaw(client.principal.id, raw).encode()
        else:
            message = bm.Down(qos, client.principal.id, payload).encode()
        if self.bus.publish(bm.principal_channel(device_id), message):
            self.stats.messages_out += 1
        else:
            self.stats.dropped += 1

    def event(self, instance_id: str, event: str, device_id: str, client=None) -> None:
        """A ``$gateway/events`` event for a connector that is not here."""
        def send(epoch):
            self.bus.publish(bm.principal_channel(instance_id), bm.Event(event, device_id, self.node, epoch).encode())

        if client is not None:
            self._after_claim(client, send)
        else:
            send(0)

    def connector_presence(self, instance_id: str, online: bool, client) -> None:
        """Our connector of ``instance_id`` went online or offline."""
        if online:
            h = getattr(client, "held", None)
            if h is None or h.announcing:
                return  # one announcement waits at most, however often it toggled
            h.announcing = True

            def announce(epoch):
                h.announcing = False
                # Checked when the epoch is known: it may be offline or gone by then.
                if self.held.get(instance_id) is not h or not self.router.is_online(instance_id):
                    return
                value = self._value(epoch)
                self.online_here[instance_id] = value
                self.bus.set(bm.online_key(instance_id), value, int(OWN_TTL * 1000)).addErrback(lambda f: None)
                self._announce(instance_id, True, epoch)
                self.bus.publish(bm.instance_channel(instance_id), bm.WhoIsHere().encode())

            self._after_claim(client, announce)
        else:
            value = self.online_here.pop(instance_id, None)
            if value is not None:
                self.bus.release(bm.online_key(instance_id), value).addErrback(lambda f: None)
                self._announce(instance_id, False, epoch_of(value))

    def _announce(self, instance_id, online, epoch):
        self.bus.publish(bm.instance_channel(instance_id), bm.Presence(self.node, epoch, online).encode())

    def remote_online(self, instance_id: str):
        """True/False: whether the instance's connector is online on another
        node; None while not known yet."""
        r = self.remote.get(instance_id)
        if r is None or not r.known:
            return None
        return r.online

    def connectors_elsewhere(self, instance_id: str) -> int:
        """Connector sessions of the instance that other nodes hold, as far as
        this node knows (those whose presence it has heard)."""
        r = self.remote.get(instance_id)
        return 1 if r is not None and r.online else 0

    # -- what devices here need to know of their connector elsewhere ----------------

    def _interest_add(self, instance_id: str, device_id: str) -> None:
        devices = self.interest.get(instance_id)
        if devices is None:
            devices = self.interest[instance_id] = set()
            self.remote[instance_id] = _Remote()
            self.bus.subscribe(bm.instance_channel(instance_id))
            self._learn(instance_id)
        devices.add(device_id)

    def _interest_remove(self, instance_id: str, device_id: str) -> None:
        devices = self.interest.get(instance_id)
        if devices is None:
            return
        devices.discard(device_id)
        if not devices:
            del self.interest[instance_id]
            self.remote.pop(instance_id, None)
            self.bus.unsubscribe(bm.instance_channel(instance_id))

    def _learn(self, instance_id: str) -> None:
        r = self.remote[instance_id]
        if not self.bus.connected:
            self._set_remote(instance_id, r, None, 0, False, force=True)
            return

        def got(value):
            if self.remote.get(instance_id) is not r:
                return
            if value is None or value.split(b" ", 1)[0] == self.node:
                if not r.known:
                    self._set_remote(instance_id, r, None, 0, False, force=True)
                return
            node, epoch = value.split(b" ", 1)
            self._set_remote(instance_id, r, node, int(epoch), True)

        def failed(f):
            if self.remote.get(instance_id) is r and not r.known:
                self._set_remote(instance_id, r, None, 0, False, force=True)

        self.bus.get(bm.online_key(instance_id)).addCallbacks(got, failed)

    def _set_remote(self, instance_id, r: _Remote, node, epoch, online, force=False) -> None:
        if not force and r.known and epoch < r.epoch:
            return  # older news
        if node is not None:
            self.last_seen.setdefault(node, self.clock.seconds())
        changed = (not r.known) or r.online != online
        r.node, r.epoch, r.online, r.known = node, epoch, online, True
        if changed:
            self.router.presence_changed(instance_id)

    # -- the bus -----------------------------------------------------------------

    def _received(self, channel: bytes, data: bytes) -> None:
        try:
            if channel.startswith(b"lm:p:"):
                self._for_principal(channel[5:].decode(), bm.decode_principal(data))
            elif channel.startswith(b"lm:i:"):
                self._for_instance(channel[5:].decode(), bm.decode_instance(data))
            elif channel == bm.CONTROL:
                self._control(bm.decode_control(data))
        except Exception:
            self.log.failure("bad bus message on {channel}", channel=channel[:5])

    def _for_principal(self, pid: str, m) -> None:
        kind = type(m)
        if kind is bm.UpRaw:  # the hot path: no more than this
            self.stats.messages_in += 1
            self.router.remote_up_raw(pid, m.raw)
        elif kind is bm.DownRaw:
            self.stats.messages_in += 1
            self.router.remote_down_raw(pid, m.connector_id, m.raw)
        elif kind is bm.Up:
            self.stats.messages_in += 1
            self.router.remote_up(pid, m.device_id, m.payload, m.qos)
        elif kind is bm.Down:
            self.stats.messages_in += 1
            self.router.remote_down(pid, m.connector_id, m.payload, m.qos)
        elif kind is bm.Takeover:
            self._takeover_heard(pid, m.epoch)
        elif kind is bm.Event:
            self._remote_event(pid, m)
        elif kind is bm.Present:
            self._remote_present(pid, m.device_id, m.node, m.epoch)

    def _takeover_heard(self, pid: str, epoch: int) -> None:
        h = self.held.get(pid)
        if h is None:
            return
        if h.state is Ownership.CLAIMING:
            h.newest_seen = max(h.newest_seen, epoch)
        elif h.epoch < epoch:
            self._taken_over(h)

    def _taken_over(self, h: _Held) -> None:
        self.stats.takeovers += 1
        self.log.info("{role} {id} taken over by a newer session on another node",
                      role=h.client.principal.role, id=h.client.principal.id)
        self.router.taken_over(h.client)

    def _remote_event(self, instance_id: str, m: bm.Event) -> None:
        event, device_id, node, epoch = m
        if not self.router.has_connector(instance_id):
            return  # our connector has just gone
        devices = self.remote_devices.setdefault(instance_id, {})
        if event == EVENT_CONNECTED:
            known = devices.get(device_id)
            if known is not None and known[1] >= epoch:
                return
            if known is not None:
                self.router.emit_event(instance_id, EVENT_DISCONNECTED, device_id)
            self.last_seen.setdefault(node, self.clock.seconds())
            devices[device_id] = (node, epoch)
            self.lost.get(instance_id, set()).discard(device_id)
        elif event == EVENT_DISCONNECTED:
            known = devices.get(device_id)
            if known is not None and known[1] > epoch:
                return  # a newer session of it is connected
            if known is None and self.router.is_connected(device_id):
                return  # it is here now
            devices.pop(device_id, None)
        self.router.emit_event(instance_id, event, device_id)

    def _remote_present(self, instance_id: str, device_id: str, node: bytes, epoch: int) -> None:
        if not self.router.has_connector(instance_id):
            return
        value = self.online_here.get(instance_id)
        if value is not None:  # that node may have missed it (it was cut off from the bus)
            self._announce(instance_id, True, epoch_of(value))
        devices = self.remote_devices.setdefault(instance_id, {})
        known = devices.get(device_id)
        if known is not None and known[1] >= epoch:
            return
        devices[device_id] = (node, epoch)
        self.last_seen.setdefault(node, self.clock.seconds())
        lost = self.lost.get(instance_id)
        if lost is not None and device_id in lost:
            lost.discard(device_id)
            self.router.emit_event(instance_id, EVENT_CONNECTED, device_id)

    def _for_instance(self, instance_id: str, m) -> None:
        if type(m) is bm.Presence:
            r = self.remote.get(instance_id)
            if r is None or m.node == self.node:
                return
            self._set_remote(instance_id, r, m.node, m.epoch, m.online)
        else:  # WhoIsHere
            self._present(instance_id)

    def _present(self, instance_id: str) -> None:
        for device_id in self.interest.get(instance_id, ()):
            h = self.held.get(device_id)
            if h is not None and h.state is Ownership.HELD:
                self.bus.publish(bm.principal_channel(instance_id), bm.Present(device_id, self.node, h.epoch).encode())

    # -- control: what every node must do ------------------------------------------

    def _broadcast(self, message) -> None:
        self.bus.publish(bm.CONTROL, message.encode())

    def shared_budget(self, name: str, key: str) -> defer.Deferred:
        """Deferred[bool]: a token of ``key`` from the budget ``name`` that
        every node charges (the limiter's burst and rate).  While the bus is
        down each node is on its own, as for everything else, so the answer
        is then this node's."""
        limiter = self.limiters[name]
        d = self.bus.take(bm.budget_key(name, key), int(limiter.burst), limiter.rate)

        def unavailable(failure):
            if not failure.check(NotConnected):  # down is expected; anything else is worth a line
                self.log.warn("shared {name} budget unavailable ({error}); this node's own decides",
                              name=name, error=failure.getErrorMessage())
            return True

        return d.addErrback(unavailable)

    def revoked(self, instance_id: str, device_id: str) -> None:
        self._broadcast(bm.Revoke(self.node, instance_id, device_id))
        self._forget_epochs([device_id])

    def instance_deleted(self, instance_id: str, device_ids) -> None:
        self._broadcast(bm.Drop(self.node, instance_id, tuple(device_ids)))
        self._forget_epochs([instance_id, *device_ids])

    def _forget_epochs(self, principal_ids) -> None:
        """The epoch counters of principals that are gone (they would
        otherwise expire a day after their last use)."""
        if self.bus.connected:
            self.bus.delete([bm.epoch_key(pid) for pid in principal_ids]).addErrback(lambda f: None)

    def password_changed(self, instance_id: str) -> None:
        self._broadcast(bm.Forget(self.node, instance_id))

    def _control(self, m) -> None:
        if m.node == self.node:
            return
        kind = type(m)
        if kind is bm.Heartbeat:
            self.last_seen[m.node] = self.clock.seconds()
        elif kind is bm.Bye:
            self.last_seen.pop(m.node, None)
        elif kind in (bm.Charge, bm.Refund):
            limiter = self.limiters.get(m.limiter)
            if limiter is not None:
                (limiter.charge if kind is bm.Charge else limiter.refund)(m.key, remote=True)
        elif kind is bm.Revoke:
            if self.authenticator is not None:
                self.authenticator.forget(m.device_id)
            self.router.revoke_device(m.instance_id, m.device_id, announce=False)
        elif kind is bm.Drop:
            if self.authenticator is not None:
                self.authenticator.forget(m.instance_id, *m.device_ids)
            self.router.drop_instance(m.instance_id)
        elif kind is bm.Forget:
            if self.authenticator is not None:
                self.authenticator.forget(m.instance_id)

    # -- heartbeat, liveness, ownership refresh --------------------------------------

    def heartbeat(self) -> None:
        now = self.clock.seconds()
        for node, seen in list(self.last_seen.items()):
            if now - seen > DEAD_AFTER:
                self._node_dead(node)
        if not self.bus.connected:
            return
        self._broadcast(bm.Heartbeat(self.node))
        self.bus.set(bm.node_key(self.node), b"1", int(3 * HEARTBEAT * 1000)).addErrback(lambda f: None)
        self._ping(now)
        self._hold()

    def _ping(self, now) -> None:
        if self._pinging is not None:
            if now - self._pinging > PING_TIMEOUT:
                # Connected but not answering: cut it, the reconnect logic takes over.
                self.log.warn("bus did not answer a PING for {n} s: reconnecting", n=PING_TIMEOUT)
                self._pinging = None
                self.bus.reset()
            return
        self._pinging = now

        def done(_):
            self.stats.rtt = self.clock.seconds() - now
            self._pinging = None

        def failed(_):
            self._pinging = None

        self.bus.ping().addCallbacks(done, failed)

    def _hold(self) -> defer.Deferred:
        entries, owners = [], []
        for pid, h in self.held.items():
            if h.state is Ownership.HELD:
                entries.append((bm.own_key(pid), bm.epoch_key(pid), self._value(h.epoch)))
                owners.append(("session", pid, h))
        for instance_id, value in self.online_here.items():
            entries.append((bm.online_key(instance_id), bm.epoch_key(instance_id), value))
            owners.append(("online", instance_id, value))
        if not entries:
            return defer.succeed(None)

        def lost(indices):
            for i in indices:
                what, key, h = owners[i]
                if what == "session":
                    if self.held.get(key) is h:
                        self._taken_over(h)
                elif self.online_here.get(key) == h:
                    del self.online_here[key]

        return self.bus.hold(entries, int(OWN_TTL * 1000)).addCallbacks(lost, lambda f: None)

    def _node_dead(self, node: bytes) -> None:
        del self.last_seen[node]
        self.stats.dead_nodes += 1
        self.log.warn("gateway node {node} not heard for {n} s: its sessions are gone", node=node.decode(),
                      n=DEAD_AFTER)
        self._forget_remote(lambda n: n == node)

    def _forget_remote(self, matches) -> None:
        for instance_id, r in list(self.remote.items()):
            if r.node is not None and matches(r.node) and r.online:
                r.online = False
                self.router.presence_changed(instance_id)
        for instance_id, devices in list(self.remote_devices.items()):
            for device_id, (node, _) in list(devices.items()):
                if matches(node):
                    del devices[device_id]
                    self.lost.setdefault(instance_id, set()).add(device_id)
                    self.router.emit_event(instance_id, EVENT_DISCONNECTED, device_id)

    def _bus_state(self, up: bool) -> None:
        if not up:
            self.last_seen.clear()
            self._forget_remote(lambda n: True)
            return
        # Back: take what we hold again, say what we have, ask what others have.
        for h in list(self.held.values()):
            if h.state is Ownership.CLAIMING:
                self._claim(h)
        self._hold()
        self._broadcast(bm.Heartbeat(self.node))
        for instance_id, value in self.online_here.items():
            self._announce(instance_id, True, epoch_of(value))
            self.bus.publish(bm.instance_channel(instance_id), bm.WhoIsHere().encode())
        for instance_id in list(self.interest):
            self._present(instance_id)
            if instance_id in self.remote:
                self._learn(instance_id)
        # What happened elsewhere while the bus was away did not reach here.
        if self.on_bus_back is not None:
            self.on_bus_back()

    # -- queries ----------------------------------------------------------------

    def connected(self, principal_ids) -> defer.Deferred:
        """Deferred[set]: which of these principals have a session on some node."""
        ids = list(principal_ids)
        d = self.bus.exists([bm.own_key(pid) for pid in ids])
        return d.addCallback(lambda flags: {pid for pid, yes in zip(ids, flags) if yes})


__all__ = ["Cluster", "CONNECTOR", "DEVICE"]
