"""Several gateway nodes behind one load balancer, joined by a bus (Redis).

The :class:`~.router.Router` of each node still knows only its own
sessions; when a message, an event or a connector's state concerns a
session that is not here, it hands it to this node's :class:`Cluster`,
which carries it over the bus to whichever node holds that session.

The channels, keys and messages between nodes, and their bytes, are
:mod:`.busmessages`; this module decides what to say and what to do with
what it hears.

**Newest session wins.**  Attaching a session ``claim``s its ownership key
(a device's by its id, a connector session's by instance and name): an
epoch from a per-key counter (Redis INCR) plus this node's id, with a TTL
this node refreshes.  The claimant then publishes ``T`` with its epoch; the
node holding an older epoch closes its session as a takeover.  Every
message that tells about a session (events, connector states) carries its
epoch, so a late message from an older session never overrides what a
newer one said.  A refresh that finds a newer epoch in the key also closes
the older session (if ``T`` was lost).

**Connectors of an instance.**  Each node tells the others, on the
instance's channel and in the instance's registry hash, which of its
connector sessions are ready or draining, and when one is gone.  Every node
with devices or connectors of the instance keeps that view: it decides the
instance's presence for the devices here, the names a device may be pinned
to (the router pins by rendezvous hashing over the ready ones, here and
elsewhere, so every node pins alike), and which devices to tell ``moved``.
A session taken over is said gone only after the takeover grace, and only
if no newer session of that name has spoken by then: a connector restarting
under its name through another node keeps its devices.

**Liveness.**  Each node publishes a heartbeat every ``HEARTBEAT`` seconds
and keeps ``lm:node:<id>`` alive with a TTL.  A node not heard for
``DEAD_AFTER`` seconds is dead: its connector sessions are gone for the
devices here (``moved`` or ``offline``), its devices are
``device_disconnected`` for the connectors here.

**Bus down.**  Local traffic goes on; a cross-node publish is dropped at
once; what other nodes hold is unknown, so it is treated as gone.  When
the bus is back, this node takes its ownership keys again, says again what
its connectors are and which devices it has, and asks the others to do the
same for the instances it serves.
"""

from __future__ import annotations

import enum
import os

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from linchpin_common.machine import Transitions
from linchpin_common.contract.topics import EVENT_CONNECTED, EVENT_DISCONNECTED, UP_FILTER

from . import busmessages as bm
from .bus import NotConnected
from .peers import IClusterPeer
from .router import CONNECTOR, DEVICE, TAKEOVER_GRACE

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

    __slots__ = ("client", "key", "state", "epoch", "waiters", "newest_seen", "told")

    def __init__(self, client):
        self.client = client
        self.key = client.key
        self.state = Ownership.CLAIMING
        self.epoch = None  # known once the claim is answered (HELD)
        self.waiters = []
        self.newest_seen = 0  # highest epoch of a takeover heard before that
        self.told: bm.Connector | None = None  # a connector: what the other nodes were last told of it


class _View:
    """What this node knows of an instance's connector sessions on other nodes."""

    __slots__ = ("known", "sessions")

    def __init__(self):
        self.known = False  # the registry has been read (or the bus is down: nothing is known elsewhere)
        self.sessions: dict[str, bm.Connector] = {}  # name -> its latest state, ready or draining

    def subscribed(self) -> bool:
        return bool(self.sessions)

    def ready(self) -> list[str]:
        return [name for name, c in self.sessions.items() if c.state == bm.READY]


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
        self.held: dict[str, _Held] = {}  # session key -> its ownership
        self.views: dict[str, _View] = {}  # instance -> its connectors elsewhere (instances served here)
        self.watchers: dict[str, int] = {}  # instance -> sessions here of it (devices and connectors)
        self.interest: dict[str, set[str]] = {}  # instance -> ids of its devices held here
        self.connectors_here: dict[str, int] = {}  # instance -> its connector sessions held here
        self.remote_devices: dict[str, dict[str, tuple[bytes, int]]] = {}  # for our connectors
        self.lost: dict[str, set[str]] = {}  # devices reported gone with their node, per instance
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
        older = self.held.get(h.key)
        if older is not None:  # (the router detaches an older session first)
            self._release(older)
        self.held[h.key] = h
        self.bus.subscribe(bm.principal_channel(h.key))
        self._watch(principal.instance_id)
        if principal.role == DEVICE:
            self._interest_add(principal.instance_id, principal.id)
            known = self.remote_devices.get(principal.instance_id, {}).pop(principal.id, None)
            if known is not None:
                # It was on another node: that session ended before this one.
                self.router.emit_event(principal.instance_id, EVENT_DISCONNECTED, principal.id)
        else:
            n = self.connectors_here.get(principal.instance_id, 0)
            self.connectors_here[principal.instance_id] = n + 1
            if n == 0:  # events and device presence for the instance's connectors here
                self.bus.subscribe(bm.principal_channel(principal.instance_id))
                self.bus.publish(bm.instance_channel(principal.instance_id), bm.WhoIsHere().encode())
        self._claim(h)

    def _claim(self, h: _Held) -> None:
        d = self.bus.claim(bm.own_key(h.key), bm.epoch_key(h.key), self.node, int(OWN_TTL * 1000))
        d.addCallbacks(self._claimed, self._claim_failed, callbackArgs=(h,), errbackArgs=(h,))

    def _claimed(self, answer, h: _Held) -> None:
        epoch, old = answer
        h.epoch = epoch
        h.state = _OWNERSHIP.next(h.state, "claimed")
        if old is not None and old.split(b" ", 1)[0] != self.node:
            self.bus.publish(bm.principal_channel(h.key), bm.Takeover(epoch).encode())
        waiters, h.waiters = h.waiters, []
        if h.state is Ownership.RELEASED:  # gone meanwhile: tell what it said, then let go
            for fn in waiters:
                fn(epoch)
            self.bus.release(bm.own_key(h.key), self._value(epoch)).addErrback(lambda f: None)
            return
        if h.newest_seen > epoch:
            self._taken_over(h)
            return
        for fn in waiters:
            fn(epoch)
        if h.client.principal.role == CONNECTOR:
            self.connector_state(h.client)

    def _claim_failed(self, failure, h: _Held) -> None:
        # The bus is down: claimed again when it is back, and what waits for
        # the epoch (its device_connected, its connector's state) goes then.
        self.log.debug("claim failed for {id}: {e}", id=h.key, e=failure.getErrorMessage())

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
            self.bus.release(bm.own_key(h.key), self._value(h.epoch)).addErrback(lambda f: None)

    def detached(self, client, replaced: bool = False) -> None:
        principal = client.principal
        h = self.held.get(client.key)
        if h is None or h.client is not client:
            return
        del self.held[h.key]
        self.bus.unsubscribe(bm.principal_channel(h.key))
        self._release(h)
        if principal.role == DEVICE:
            self._interest_remove(principal.instance_id, principal.id)
        else:
            self._connector_gone(h, replaced)
            n = self.connectors_here.pop(principal.instance_id, 1) - 1
            if n:
                self.connectors_here[principal.instance_id] = n
            else:
                self.bus.unsubscribe(bm.principal_channel(principal.instance_id))
                self.remote_devices.pop(principal.instance_id, None)
                self.lost.pop(principal.instance_id, None)
        self._unwatch(principal.instance_id)

    # -- connector sessions: what this node says of its own ----------------------------

    def connector_state(self, client) -> None:
        """A connector session here subscribed, drained or unsubscribed: the
        other nodes are told once its epoch is known."""
        h = getattr(client, "held", None)
        if h is None or h.state is not Ownership.HELD or self.held.get(h.key) is not h:
            return  # told when its claim is answered
        if UP_FILTER not in client.subs:
            state = bm.GONE
        else:
            state = bm.READY if client.ready else bm.DRAINING
        said = bm.Connector(self.node, client.name, h.epoch, state)
        if said == h.told:
            return
        if state == bm.GONE and h.told is None:
            return  # never said to be there
        h.told = said
        self._tell(client.principal.instance_id, said)

    def _tell(self, instance_id: str, said: bm.Connector) -> None:
        key = bm.connectors_key(instance_id)
        if said.state == bm.GONE:
            self.bus.hdel_if(key, said.name.encode(), said._replace(state=bm.READY).entry()).addErrback(
                lambda f: None)
            self.bus.hdel_if(key, said.name.encode(), said._replace(state=bm.DRAINING).entry()).addErrback(
                lambda f: None)
        else:
            self.bus.hset_newer(key, said.name.encode(), said.entry()).addErrback(lambda f: None)
        self.bus.publish(bm.instance_channel(instance_id), said.encode())

    def _connector_gone(self, h: _Held, replaced: bool) -> None:
        told = h.told
        if told is None or told.state == bm.GONE:
            return
        gone = told._replace(state=bm.GONE)
        instance_id = h.client.principal.instance_id
        if not replaced:
            self._tell(instance_id, gone)
            return
        # Taken over: the newer session (here or elsewhere) speaks for the
        # name; if it has not by the end of the grace, the name is gone.
        self.clock.callLater(TAKEOVER_GRACE, self._tell, instance_id, gone)

    def _retell(self, instance_id: str | None = None) -> None:
        """Say again what our connector sessions are (the bus came back, or a node asked)."""
        for h in list(self.held.values()):
            client = h.client
            if client.principal.role != CONNECTOR or h.told is None or h.told.state == bm.GONE:
                continue
            if instance_id is None or client.principal.instance_id == instance_id:
                self._tell(client.principal.instance_id, h.told)

    # -- what this node knows of the connectors elsewhere -----------------------------

    def _watch(self, instance_id: str) -> None:
        n = self.watchers.get(instance_id, 0)
        self.watchers[instance_id] = n + 1
        if n == 0:
            self.views[instance_id] = _View()
            self.bus.subscribe(bm.instance_channel(instance_id))
            self._learn(instance_id)

    def _unwatch(self, instance_id: str) -> None:
        n = self.watchers.get(instance_id, 1) - 1
        if n > 0:
            self.watchers[instance_id] = n
            return
        self.watchers.pop(instance_id, None)
        self.views.pop(instance_id, None)
        self.bus.unsubscribe(bm.instance_channel(instance_id))

    def _learn(self, instance_id: str) -> None:
        view = self.views[instance_id]
        if not self.bus.connected:
            self._known(instance_id, view)
            return

        def got(entries):
            if self.views.get(instance_id) is not view:
                return
            for field, entry in entries.items():
                try:
                    said = bm.Connector.from_entry(field.decode(), entry)
                except (ValueError, bm.BadMessage):
                    continue
                self._heard(instance_id, said, announce=False)
            self._known(instance_id, view)

        def failed(f):
            if self.views.get(instance_id) is view:
                self._known(instance_id, view)

        self.bus.hgetall(bm.connectors_key(instance_id)).addCallbacks(got, failed)

    def _known(self, instance_id: str, view: _View) -> None:
        if not view.known:
            view.known = True
            self.router.remote_connectors_changed(instance_id, ())

    def _heard(self, instance_id: str, said: bm.Connector, announce: bool = True) -> None:
        """A connector session of the instance on another node is ready,
        draining or gone (``announce``: tell the router now)."""
        view = self.views.get(instance_id)
        if view is None or said.node == self.node:
            return
        known = view.sessions.get(said.name)
        if known is not None and known.epoch > said.epoch:
            return  # older news of that name
        self.last_seen.setdefault(said.node, self.clock.seconds())
        left = ()
        if said.state == bm.GONE:
            if known is None or known.epoch != said.epoch:
                return  # a newer session of that name spoke already, or nothing was known
            del view.sessions[said.name]
            left = (said.name,)
        else:  # ready, or draining (which keeps its devices)
            view.sessions[said.name] = said
        if announce and view.known:
            self.router.remote_connectors_changed(instance_id, left)

    def remote_online(self, instance_id: str):
        """True/False: whether a connector of the instance is online on
        another node; None while not known yet."""
        view = self.views.get(instance_id)
        if view is None or not view.known:
            return None
        return view.subscribed()

    def remote_ready(self, instance_id: str) -> list[str]:
        """The names of the instance's ready connector sessions on other nodes."""
        view = self.views.get(instance_id)
        return view.ready() if view is not None else []

    def connectors_elsewhere(self, instance_id: str) -> defer.Deferred:
        """Deferred[set]: from the view when this node has one, else from
        the registry (the bus down: none known)."""
        view = self.views.get(instance_id)
        if view is not None and view.known:
            return defer.succeed(set(view.sessions))

        def names(entries):
            return {field.decode() for field, entry in entries.items() if not entry.startswith(self.node + b" ")}

        d = self.bus.hgetall(bm.connectors_key(instance_id)).addCallback(names)
        return d.addErrback(lambda f: set())

    # -- messages for sessions elsewhere ---------------------------------------------

    def send_up(self, client, payload: bytes, qos: int, raw: bytes | None = None, to: str | None = None) -> None:
        """A device's message for the connector session ``to`` of its
        instance, on another node (None: no connector to take it, dropped);
        ``raw``: the QoS 0 PUBLISH as received, which the connector gets
        unchanged."""
        if to is None:
            self.stats.dropped += 1
            return
        if raw is not None:
            message = bm.UpRaw(raw).encode()
        else:
            message = bm.Up(qos, client.principal.id, payload).encode()
        channel = bm.principal_channel(bm.connector_key(client.principal.instance_id, to))
        if self.bus.publish(channel, message):
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
        """A ``$gateway/events`` event for the instance's connectors on other nodes."""
        def send(epoch):
            self.bus.publish(bm.principal_channel(instance_id), bm.Event(event, device_id, self.node, epoch).encode())

        if client is not None:
            self._after_claim(client, send)
        else:
            send(0)

    # -- what devices here need to know of the connectors' nodes ----------------------

    def _interest_add(self, instance_id: str, device_id: str) -> None:
        self.interest.setdefault(instance_id, set()).add(device_id)

    def _interest_remove(self, instance_id: str, device_id: str) -> None:
        devices = self.interest.get(instance_id)
        if devices is not None:
            devices.discard(device_id)
            if not devices:
                del self.interest[instance_id]

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

    def _for_principal(self, key: str, m) -> None:
        kind = type(m)
        if kind is bm.UpRaw:  # the hot path: no more than this
            self.stats.messages_in += 1
            instance_id, _, name = key.partition("/")
            self.router.remote_up_raw(instance_id, name, m.raw)
        elif kind is bm.DownRaw:
            self.stats.messages_in += 1
            self.router.remote_down_raw(key, m.connector_id, m.raw)
        elif kind is bm.Up:
            self.stats.messages_in += 1
            instance_id, _, name = key.partition("/")
            self.router.remote_up(instance_id, name, m.device_id, m.payload, m.qos)
        elif kind is bm.Down:
            self.stats.messages_in += 1
            self.router.remote_down(key, m.connector_id, m.payload, m.qos)
        elif kind is bm.Takeover:
            self._takeover_heard(key, m.epoch)
        elif kind is bm.Event:
            self._remote_event(key, m)
        elif kind is bm.Present:
            self._remote_present(key, m.device_id, m.node, m.epoch)

    def _takeover_heard(self, key: str, epoch: int) -> None:
        h = self.held.get(key)
        if h is None:
            return
        if h.state is Ownership.CLAIMING:
            h.newest_seen = max(h.newest_seen, epoch)
        elif h.epoch < epoch:
            self._taken_over(h)

    def _taken_over(self, h: _Held) -> None:
        self.stats.takeovers += 1
        self.log.info("{role} {id} taken over by a newer session on another node",
                      role=h.client.principal.role, id=h.key)
        self.router.taken_over(h.client)

    def _remote_event(self, instance_id: str, m: bm.Event) -> None:
        event, device_id, node, epoch = m
        if node == self.node or not self.router.has_connector(instance_id):
            return  # ours (our connectors had it), or our connectors have just gone
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
        if node == self.node or not self.router.has_connector(instance_id):
            return
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
        if type(m) is bm.Connector:
            self._heard(instance_id, m)
        else:  # WhoIsHere: say again what we hold of the instance
            self._present(instance_id)
            self._retell(instance_id)

    def _present(self, instance_id: str) -> None:
        for device_id in self.interest.get(instance_id, ()):
            h = self.held.get(device_id)
            if h is not None and h.state is Ownership.HELD:
                self.bus.publish(bm.principal_channel(instance_id), bm.Present(device_id, self.node, h.epoch).encode())

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
        if self.bus.connected:
            self.bus.delete([bm.connectors_key(instance_id)]).addErrback(lambda f: None)

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
        for key, h in self.held.items():
            if h.state is Ownership.HELD:
                entries.append((bm.own_key(key), bm.epoch_key(key), self._value(h.epoch)))
                owners.append((key, h))
        if not entries:
            return defer.succeed(None)

        def lost(indices):
            for i in indices:
                key, h = owners[i]
                if self.held.get(key) is h:
                    self._taken_over(h)

        return self.bus.hold(entries, int(OWN_TTL * 1000)).addCallbacks(lost, lambda f: None)

    def _node_dead(self, node: bytes) -> None:
        del self.last_seen[node]
        self.stats.dead_nodes += 1
        self.log.warn("gateway node {node} not heard for {n} s: its sessions are gone", node=node.decode(),
                      n=DEAD_AFTER)
        self._forget_remote(lambda n: n == node)

    def _forget_remote(self, matches) -> None:
        """What nodes that ``matches`` held is gone: their connector sessions
        (their devices here are told ``moved`` or ``offline``) and their devices."""
        for instance_id, view in list(self.views.items()):
            left = [name for name, said in view.sessions.items() if matches(said.node)]
            for name in left:
                said = view.sessions.pop(name)
                if self.bus.connected:  # nobody else will remove what a dead node wrote
                    self.bus.hdel_if(bm.connectors_key(instance_id), name.encode(), said.entry()).addErrback(
                        lambda f: None)
            if left:
                self.router.remote_connectors_changed(instance_id, left)
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
        self._retell()
        for instance_id, view in list(self.views.items()):
            self._present(instance_id)
            self.bus.publish(bm.instance_channel(instance_id), bm.WhoIsHere().encode())
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
