"""The connector daemon: E2E sessions with devices, and the service that runs them.

:class:`DeviceChannels` applies PROTOCOL.md section 5 for every device: it
answers HELLOs, keeps one session per device in memory, opens DATA and hands
each message to that session's :class:`~linchpin_connector.proxy.RequestProxy`.
It knows no sockets: envelopes come in through :meth:`DeviceChannels.envelope`
and go out through a ``publish(device_id, payload)`` callable.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.application import internet, service
from twisted.internet import defer, task
from twisted.logger import Logger

from linchpin_common.contract import e2e, topics
from linchpin_common.contract.channel import AnsweredHellos, ChannelEndpoint, Outcome
from linchpin_common.gateway_client import GatewayAPI, GatewayLink, make_http_client
from linchpin_common.metrics import metrics_site
from linchpin_common.slots import Slots
from linchpin_common.workers import ThreadWorker

from .config import DEFAULTS, USER_HEADER, USER_IN_FLIGHT
from .health import BackendHealth
from .proxy import RequestProxy
from .state import AsyncState, open_state

MAX_QUEUED_HELLOS = 4  # per device, behind the one being answered
# A drain resets an idle session once its device has been silent this long
# (or right after its next request ends): a RESET that crosses a request the
# device is sending fails that request at the device, though it never ran.
DRAIN_QUIET = 1.0
# Once every session is reset, how long a drain waits for a HELLO that crossed
# it (pinned here just before the gateway heard of the drain) before it ends.
DRAIN_SETTLE = 0.5
DRAIN_ROUNDS = 3


class _Channel:
    """One live E2E session with a device: its endpoint, its proxy, and how it was made."""

    __slots__ = ("endpoint", "proxy", "pending_key_id", "hello", "welcome", "heard")

    def __init__(self, endpoint: ChannelEndpoint, pending_key_id: int | None, hello: bytes, welcome: bytes):
        self.heard = 0.0  # when the device last sent on it (the clock's seconds)
        self.endpoint = endpoint
        self.proxy = None
        self.pending_key_id = pending_key_id
        self.hello = hello      # the HELLO that made it, and the WELCOME that answered it
        self.welcome = welcome

    @property
    def session(self) -> e2e.Session:
        return self.endpoint.session


class ChannelStats:
    """Plain counters of the E2E side (read by the metrics collector)."""

    __slots__ = ("envelopes_up", "envelopes_down", "bytes_up", "bytes_down", "welcomes", "rejects", "resets")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)


class DeviceChannels:
    log = Logger()

    def __init__(self, state, static_private: X25519PrivateKey, publish, make_proxy, clock=None):
        """``state`` is an :class:`AsyncState`; ``make_proxy(user, send)`` builds a RequestProxy."""
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.state = state
        self.static_private = static_private
        self.stats = ChannelStats()
        self._publish = publish
        self.make_proxy = make_proxy
        self.channels: dict[str, _Channel] = {}
        self._locks: dict[str, defer.DeferredLock] = {}
        self.answered = AnsweredHellos()
        self._draining: set[str] | None = None  # devices whose session is reset once idle
        self._drain_waiters: list[defer.Deferred] = []
        self._reset_new = False  # draining to stop: sessions made meanwhile are reset too
        self._sent_away: set[str] = set()  # devices reset by a drain to stop: no new session here

    # -- input -------------------------------------------------------------------

    def publish(self, device_id: str, payload: bytes) -> None:
        stats = self.stats
        stats.envelopes_down += 1
        stats.bytes_down += len(payload)
        kind = payload[1]
        if kind == e2e.WELCOME:
            stats.welcomes += 1
        elif kind == e2e.REJECT:
            stats.rejects += 1
        elif kind == e2e.RESET:
            stats.resets += 1
        self._publish(device_id, payload)

    def envelope(self, device_id: str, payload: bytes) -> defer.Deferred | None:
        self.stats.envelopes_up += 1
        self.stats.bytes_up += len(payload)
        env = e2e.parse_envelope(payload)
        if env is None:
            return None
        if isinstance(env, e2e.Data):
            self._data(device_id, env)
            return None
        if isinstance(env, e2e.Hello):
            return self._queue_hello(device_id, env)
        return None  # WELCOME, RESET and REJECT only travel down

    def _queue_hello(self, device_id: str, hello: e2e.Hello) -> defer.Deferred | None:
        if self._reset_new and device_id in self._sent_away:
            # Stopping, and this device's session here was reset so that it
            # goes elsewhere; it came back, so no other connector is ready.
            # A new session would only be reset again, a round trip a second
            # for every device until the drain times out: it waits instead,
            # until the gateway says a connector is online.
            self.log.debug("HELLO from {device_id} while stopping: dropped", device_id=device_id)
            return None
        lock = self._locks.get(device_id)
        if lock is None:
            lock = self._locks[device_id] = defer.DeferredLock()
        if len(lock.waiting) >= MAX_QUEUED_HELLOS:
            # A device cannot make us queue work without bound: a
            # handshake needs one HELLO, a retry a few more.
            self.log.info("HELLO flood from device {device_id}: dropped", device_id=device_id)
            return None
        d = lock.run(self._hello, device_id, hello)
        d.addErrback(lambda f: self.log.failure("HELLO from {device_id} failed", f, device_id=device_id))
        d.addBoth(self._prune_lock, device_id, lock)
        return d

    def _prune_lock(self, result, device_id: str, lock: defer.DeferredLock):
        """Forget a device's lock once nothing holds or waits for it (one
        lock per device that ever sent a HELLO would grow without bound)."""
        if not lock.locked and not lock.waiting and self._locks.get(device_id) is lock:
            del self._locks[device_id]
        return result

    @defer.inlineCallbacks
    def _hello(self, device_id: str, hello: e2e.Hello):
        if self.answered.seen(device_id, hello):
            self._replayed_hello(device_id, hello)
            return
        device = yield self.state.device(device_id)
        if device is None:
            self.log.info("HELLO from unknown device {device_id}: REJECT", device_id=device_id)
            self.publish(device_id, e2e.make_reject())
            return
        if AnsweredHellos.digest(hello) in device.answered:
            # Answered before this process started (the state remembers the
            # HELLO of each pending key): a replay, never a new key.
            self.log.info("HELLO from {device_id} already answered: dropped", device_id=device_id)
            return
        if hello.key_kind == e2e.KEY_SETUP:
            if device.setup_secret is None:
                # Pairing already proven: never answer, and never REJECT (an
                # unauthenticated REJECT must not be a way to unpair anyone).
                return
            keys = [("setup", e2e.KEY_SETUP, device.setup_secret)]
        else:
            keys = [("device", e2e.KEY_DEVICE, device.device_secret)] if device.device_secret else []
            keys += [(f"pending:{key_id}", e2e.KEY_DEVICE, key) for key_id, key in device.pending]
        accepted = e2e.accept_hello(hello, device_id, keys, self.static_private)
        if accepted is None:
            self.log.info("HELLO from {device_id} opens with none of its keys: REJECT", device_id=device_id)
            self.publish(device_id, e2e.make_reject())
            return
        # From here on this HELLO counts as answered: a byte-identical copy
        # (a replay by the relay) never makes another key or session.
        self.answered.answered(device_id, hello)
        pending_key_id = None
        if accepted.label == "setup":
            # Stored durably before the WELCOME leaves, so a crash cannot
            # lose a key the device is about to adopt. The key of the live,
            # unconfirmed session is never the one evicted to make room.
            live = self.channels.get(device_id)
            keep = live.pending_key_id if live is not None and not live.endpoint.confirmed else None
            pending_key_id = yield self.state.add_pending_key(device_id, accepted.device_secret_key, keep,
                                                              AnsweredHellos.digest(hello))
            if pending_key_id is None:
                return  # proven (or removed) meanwhile
        elif accepted.label.startswith("pending:"):
            promoted = yield self.state.promote_pending_key(device_id, int(accepted.label.split(":", 1)[1]))
            if not promoted:
                # Another key was proven, or the device removed, while we
                # worked: this key is no longer the device's. No answer.
                self.log.info("device {device_id}: its HELLO's key was dropped meanwhile; not answered",
                              device_id=device_id)
                return
            self.log.info("device {device_id} proved its key (HELLO); pairing complete", device_id=device_id)
        channel = _Channel(ChannelEndpoint(accepted.session), pending_key_id, hello.raw, accepted.welcome)
        channel.heard = self.clock.seconds()
        channel.proxy = self.make_proxy(device.user, lambda header, body=b"": self._send(device_id, channel, header, body))
        channel.proxy.on_idle = lambda: self._idle(device_id, channel)
        self._replace(device_id, channel)
        self.publish(device_id, accepted.welcome)
        if self._draining is not None and (self._reset_new or device_id in self._draining):
            self._draining.add(device_id)
            self._reset_when_quiet(device_id)
        self.log.info("E2E session with device {device_id} established", device_id=device_id)

    def _replayed_hello(self, device_id: str, hello: e2e.Hello) -> None:
        """PROTOCOL.md: the same WELCOME again while the session it made is
        live and unconfirmed (a retry after a lost WELCOME), else nothing."""
        channel = self.channels.get(device_id)
        if channel is not None and channel.hello == hello.raw and not channel.endpoint.confirmed:
            self.log.info("HELLO from {device_id} repeated: same WELCOME again", device_id=device_id)
            self.publish(device_id, channel.welcome)
        else:
            self.log.info("HELLO from {device_id} already answered: dropped", device_id=device_id)

    def _data(self, device_id: str, env: e2e.Data) -> None:
        channel = self.channels.get(device_id)
        if channel is None:
            self.publish(device_id, e2e.make_reset(env.session_id))
            return
        channel.heard = self.clock.seconds()
        received = channel.endpoint.receive(env)
        outcome = received.outcome
        if outcome is Outcome.MESSAGE:
            channel.proxy.handle(received.header, received.body)
        elif outcome is Outcome.OTHER_SESSION:
            self.publish(device_id, e2e.make_reset(env.session_id))
        elif outcome is Outcome.CONFIRMED:
            if channel.pending_key_id is not None:
                self._promote(device_id, channel)
        elif received.ends_session:
            self.log.info("device {device_id}: {reason}; ending the session", device_id=device_id,
                          reason=received.reason)
            self.end(device_id)
            self.publish(device_id, e2e.make_reset(env.session_id))
        elif outcome is Outcome.MALFORMED:
            self.log.info("bad message from device {device_id}: {error}", device_id=device_id, error=received.reason)
        # Outcome.DROPPED: a replay or a forgery, dropped silently

    def _promote(self, device_id: str, channel: _Channel) -> None:
        def promoted(ok):
            if ok:
                self.log.info("device {device_id} confirmed its new key; pairing complete", device_id=device_id)
            elif self.channels.get(device_id) is channel:
                # The key of this session was dropped meanwhile (the device
                # was removed, or another key proven): the session cannot stand.
                self.log.info("device {device_id} confirmed a key that is gone; ending the session",
                              device_id=device_id)
                self.end(device_id)
                self.publish(device_id, e2e.make_reset(channel.session.session_id))

        d = self.state.promote_pending_key(device_id, channel.pending_key_id)
        d.addCallback(promoted)
        d.addErrback(lambda f: self.log.failure("promoting a key failed", f))

    # -- output ------------------------------------------------------------------

    def _send(self, device_id: str, channel: _Channel, header: dict, body: bytes) -> None:
        if self.channels.get(device_id) is not channel:
            return  # the session ended: nothing more goes out on it
        self.publish(device_id, channel.endpoint.seal(header, body))

    # -- lifecycle ---------------------------------------------------------------

    def _replace(self, device_id: str, channel: _Channel) -> None:
        self.end(device_id, replaced=True)
        self.channels[device_id] = channel

    def end(self, device_id: str, replaced: bool = False) -> None:
        """The device's session ends (``replaced``: by a new one, which a
        drain still waits for)."""
        channel = self.channels.pop(device_id, None)
        if channel is not None:
            channel.endpoint.end()
            if channel.proxy is not None:
                channel.proxy.close()
        if self._draining is not None and device_id in self._draining and not replaced:
            self._draining.discard(device_id)
            self._check_drained()

    # -- drain -------------------------------------------------------------------

    def drain(self, stopping: bool = True) -> defer.Deferred:
        """Send RESET to each device with a session now, each as soon as it
        has no request in flight (right after its last one ended, or once it
        has been silent ``DRAIN_QUIET`` seconds), so that its next HELLO goes
        to another connector (the gateway no longer pins anyone here).
        Fires once every one has had its RESET (at once if none is left);
        :meth:`cut` resets those still busy.  ``stopping``: sessions made
        meanwhile (a HELLO answered as the drain began) are reset too, so
        none is left for the exit to cut; else (the backend is down) only
        the sessions of now are."""
        self._reset_new = self._reset_new or stopping
        if self._draining is None:
            self._draining = set(self.channels)
            for device_id in list(self._draining):
                self._reset_when_quiet(device_id)
        d = defer.Deferred()
        self._drain_waiters.append(d)
        self._check_drained()
        return d

    def cut(self) -> int:
        """The drain's time is up: reset the sessions still busy (their
        requests fail at the device).  Returns how many were cut."""
        busy = list(self._draining or ())
        for device_id in busy:
            self._reset(device_id)
        return len(busy)

    def undrain(self) -> None:
        """Take new sessions as before (the health check found the backend back)."""
        self._draining = None
        self._reset_new = False
        self._sent_away.clear()

    def _reset_when_quiet(self, device_id: str) -> None:
        channel = self.channels.get(device_id)
        if self._draining is None or device_id not in self._draining:
            return
        if channel is None:
            self.end(device_id)
            return
        if getattr(channel.proxy, "in_flight", 0):
            return  # reset when its last request ends (_idle)
        quiet_for = self.clock.seconds() - channel.heard
        if quiet_for >= DRAIN_QUIET:
            self._reset(device_id)
        else:
            self.clock.callLater(DRAIN_QUIET - quiet_for, self._reset_when_quiet, device_id)

    def _idle(self, device_id: str, channel: _Channel) -> None:
        if self._draining is not None and device_id in self._draining and self.channels.get(device_id) is channel:
            self._reset(device_id)

    def _reset(self, device_id: str) -> None:
        channel = self.channels.get(device_id)
        if channel is not None:
            self.publish(device_id, e2e.make_reset(channel.session.session_id))
            if self._reset_new:
                self._sent_away.add(device_id)
        self.end(device_id)

    def _check_drained(self) -> None:
        if self._draining is not None and not self._draining:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)

    def forget(self, device_id: str) -> None:
        """The device is gone for good (revoked): end its session, drop what we remember of it."""
        self.end(device_id)
        self.answered.forget(device_id)

    def end_all(self) -> None:
        for device_id in list(self.channels):
            self.end(device_id)


class ConnectorService(service.MultiService):
    """``twistd lmconnector``: the gateway link, the E2E channels and the proxy."""

    log = Logger()

    def __init__(self, reactor, data_dir: str, backend_url: str, *, user_header: str = USER_HEADER,
                 allow_paths=("/",), ca_file: str | None = None, keep_alive: int = 30,
                 response_timeout: float = 60.0, metrics_endpoint=None, proxy=None, connect=None,
                 gateway_http=None, worker=None, public_host: str | None = None,
                 user_in_flight: int = USER_IN_FLIGHT, backend_http=None, name: str = DEFAULTS.name,
                 health_path: str = DEFAULTS.health_path, health_interval: float = DEFAULTS.health_interval,
                 store: str | None = None):
        """``proxy`` (a :class:`~linchpin_common.http_proxy.ProxyConfig`, None: direct) is
        for the gateway only; the backend is always reached directly.

        ``connect`` (the MQTT connect function), ``gateway_http`` and
        ``backend_http`` (treq-like clients of the gateway's REST API and of
        the backend) and ``worker`` (where state file work runs) are for
        in-memory tests; by default the real ones are built when the service
        starts."""
        super().__init__()
        self.name = name  # the MQTT client identifier: distinct per connector of an instance
        self.health_path = health_path
        self.health_interval = health_interval  # 0: no health check
        self.health: BackendHealth | None = None
        self.draining = False  # stopping: no new devices, sessions reset as they become idle
        self.public_host = public_host
        self.user_slots = Slots(user_in_flight)  # shared by every device of a user
        self.proxy = proxy
        self.reactor = reactor
        self.data_dir = data_dir
        self.store = store  # postgresql://...: the state shared with the instance's other connectors
        self.backend_url = backend_url.rstrip("/")
        self.user_header = user_header
        self.allow_paths = tuple(allow_paths)
        self.ca_file = ca_file
        self.keep_alive = keep_alive
        self.response_timeout = response_timeout
        self.link: GatewayLink | None = None
        self.channels: DeviceChannels | None = None
        self._connect = connect
        self._gateway_http = gateway_http
        self._backend_http = backend_http
        self.worker = worker
        # Told of device changes: gateway_event(name, device_id), gateway_devices(listed), gateway_lost().
        self.observers: list = []
        if metrics_endpoint is not None:
            internet.StreamServerEndpointService(metrics_endpoint, metrics_site(ConnectorCollector(self))
                                                 ).setServiceParent(self)

    def startService(self):
        state = open_state(self.data_dir, self.store)  # fails start-up early if not registered
        registration = state.registration()
        if self.worker is None:
            self.worker = ThreadWorker(self.reactor, "lmconnector-state", 1)
        self.worker.start()
        self.state = AsyncState(state, self.worker)
        self._sync_state = state
        # A backend read becomes one body message: read as much as one may carry.
        self.backend_http = self._backend_http or make_http_client(self.reactor, read_size=e2e.MAX_BODY_CHUNK)
        self.api = GatewayAPI(self._gateway_http or make_http_client(self.reactor, self.ca_file, proxy=self.proxy),
                              registration["gateway_url"],
                              registration["instance_id"], registration["instance_password"])
        static = X25519PrivateKey.from_private_bytes(registration["static_private_key"])
        self.channels = DeviceChannels(self.state, static, self._publish, self._make_proxy, self.reactor)
        self.link = GatewayLink(self.reactor, registration["gateway_url"], registration["instance_id"],
                                registration["instance_password"], topics.CONNECTOR_SUBSCRIPTIONS, self._on_message,
                                on_connected=self._resync, on_disconnected=self._gateway_lost,
                                ca_file=self.ca_file, keep_alive=self.keep_alive, proxy=self.proxy,
                                client_id=self.name,
                                **({"connect": self._connect} if self._connect is not None else {}))
        self.link.setServiceParent(self)
        if self.health_interval > 0:
            self.health = BackendHealth(self.reactor, self.backend_http, self.backend_url + self.health_path,
                                        self._backend_changed, interval=self.health_interval)
            self.health.setServiceParent(self)
        self.log.info("lmconnector for instance {instance_id} proxying to {backend}",
                      instance_id=registration["instance_id"], backend=_without_userinfo(self.backend_url))
        via = self.proxy.for_url(registration["gateway_url"]) if self.proxy else None
        if via is not None:
            self.log.info("reaching the gateway through the HTTP proxy {proxy}", proxy=str(via))
        super().startService()

    @defer.inlineCallbacks
    def stopService(self):
        yield super().stopService()
        if self.channels is not None:
            self.channels.end_all()
        self.worker.stop()
        self._sync_state.close()
        self.log.info("lmconnector stopped")

    # -- drain ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether this connector takes new devices (it tells the gateway when not)."""
        return not self.draining and (self.health is None or self.health.up)

    def drain(self, timeout: float = DEFAULTS.drain_timeout) -> defer.Deferred:
        """Before stopping (SIGTERM): the gateway pins no new device here,
        the requests in flight finish (for at most ``timeout`` seconds), and
        each device gets RESET once it has none left, so its next HELLO goes
        to another connector.  Fires when every session is reset."""
        if self.channels is None:
            return defer.succeed(None)
        if not self.draining:
            self.draining = True
            self.log.info("draining: no new devices; {n} sessions reset as their requests finish "
                          "(at most {t} s)", n=len(self.channels.channels), t=timeout)
            self._say_drain()
        timer = self.reactor.callLater(timeout, self._drain_time_up)

        async def drained():
            # A HELLO that crossed the drain may still make a session here:
            # settle, and reset those too, before saying drained.  A few
            # rounds at most: with no other connector ready, devices keep
            # coming back here, and waiting longer serves no one.
            for _ in range(DRAIN_ROUNDS):
                await self.channels.drain()
                await task.deferLater(self.reactor, DRAIN_SETTLE, lambda: None)
                if not self.channels.channels or not timer.active():
                    break
            if timer.active():
                timer.cancel()
            self.log.info("drained")

        return defer.ensureDeferred(drained())

    def _drain_time_up(self) -> None:
        cut = self.channels.cut()
        if cut:
            self.log.warn("drain timeout: {n} sessions with requests in flight reset", n=cut)

    def _say_drain(self) -> None:
        client = self.link.client if self.link is not None else None
        if client is not None and client.is_open:
            client.publish(topics.DRAIN, b"", qos=1).addErrback(lambda f: None)

    def _backend_changed(self, up: bool) -> None:
        if self.draining:
            return
        if not up:
            self.log.warn("draining until the backend answers again: its devices go to other connectors")
            self._say_drain()
            self.channels.drain(stopping=False)
        else:
            # A drained session stays drained: a new one takes devices again.
            self.log.info("the backend answers: taking devices again")
            self.channels.undrain()
            self.link.restart()

    def _make_proxy(self, user: str, send) -> RequestProxy:
        return RequestProxy(http_client=self.backend_http, backend_url=self.backend_url, user=user, send=send,
                            clock=self.reactor, allow_paths=self.allow_paths, user_header=self.user_header,
                            response_timeout=self.response_timeout, user_slots=self.user_slots,
                            public_host=self.public_host)

    def _gateway_lost(self) -> None:
        self.channels.end_all()
        for observer in self.observers:
            observer.gateway_lost()

    def _publish(self, device_id: str, payload: bytes) -> None:
        client = self.link.client if self.link is not None else None
        if client is not None and client.is_open:
            client.publish(topics.down_topic(device_id), payload)

    def _on_message(self, topic: str, payload: bytes) -> None:
        device_id = topics.up_topic_id(topic)
        if device_id is not None:
            self.channels.envelope(device_id, payload)
        elif topic == topics.EVENTS:
            self._on_event(payload)

    def _on_event(self, payload: bytes) -> None:
        event = topics.parse_event(payload)
        if event is None:
            self.log.warn("unreadable gateway event ignored")
            return
        name, device_id = event
        for observer in self.observers:
            observer.gateway_event(name, device_id)
        if name == topics.EVENT_REVOKED:
            self.channels.forget(device_id)
            self.state.remove_device(device_id).addCallbacks(
                lambda removed: removed and self.log.info("device {device_id} revoked at the gateway; keys removed",
                                                          device_id=device_id),
                lambda f: self.log.failure("device {device_id} revoked at the gateway; removing its keys failed",
                                           f, device_id=device_id))
        elif name == topics.EVENT_DISCONNECTED:
            self.channels.end(device_id)
        else:
            self.log.debug("gateway event {name} for {device_id}", name=name, device_id=device_id)

    async def _resync(self, client) -> None:
        """Devices revoked at the gateway while we were away lose their keys here too.

        Only devices that were in the local state before the gateway's list
        was fetched can be judged by it: ``lmconnector device add`` creates a
        device at the gateway first and locally second, so one added while
        the list is on its way is missing from it and must stay.
        """
        if not self.ready:
            self._say_drain()  # a new session is ready until told otherwise
        before = {device.device_id for device in await self.state.devices()}
        try:
            listed = await self.api.list_devices()
        except Exception as e:
            self.log.warn("could not list devices at the gateway: {error}", error=str(e))
            return
        for observer in self.observers:
            observer.gateway_devices(listed)
        known = {d["device_id"] for d in listed}
        for device_id in sorted(before - known):
            if await self.state.remove_device(device_id):
                self.log.info("device {device_id} is gone at the gateway; keys removed", device_id=device_id)
            self.channels.forget(device_id)


def _without_userinfo(url: str) -> str:
    """A URL fit for a log line: any ``user:password@`` taken out."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class ConnectorCollector:
    """``lmconnector_*`` metrics, read from the live service when scraped."""

    def __init__(self, service: ConnectorService):
        self.service = service

    def collect(self):
        svc = self.service
        link, channels = svc.link, svc.channels
        connected = link is not None and link.client is not None and link.client.is_open
        yield GaugeMetricFamily("lmconnector_gateway_connected", "1 while the gateway session is up",
                                value=int(connected))
        yield CounterMetricFamily("lmconnector_gateway_connects", "Gateway sessions opened",
                                  value=link.connects if link is not None else 0)
        yield GaugeMetricFamily("lmconnector_ready", "1 while this connector takes new devices (not draining, its "
                                "backend answering its health check)", value=int(svc.ready))
        yield GaugeMetricFamily("lmconnector_backend_up", "1 while the backend answers its health check",
                                value=int(svc.health is None or svc.health.up))
        if channels is None:
            return
        stats = channels.stats
        yield GaugeMetricFamily("lmconnector_e2e_sessions", "Live end-to-end sessions with devices",
                                value=len(channels.channels))
        yield GaugeMetricFamily("lmconnector_requests_in_flight", "Device requests being proxied",
                                value=sum(ch.proxy.in_flight for ch in channels.channels.values()
                                          if ch.proxy is not None))
        envelopes = CounterMetricFamily("lmconnector_envelopes", "E2E envelopes", labels=["direction"])
        envelopes.add_metric(["up"], stats.envelopes_up)
        envelopes.add_metric(["down"], stats.envelopes_down)
        yield envelopes
        octets = CounterMetricFamily("lmconnector_envelope_bytes", "E2E envelope bytes", labels=["direction"])
        octets.add_metric(["up"], stats.bytes_up)
        octets.add_metric(["down"], stats.bytes_down)
        yield octets
        answers = CounterMetricFamily("lmconnector_handshake_answers", "Answers to HELLOs and stray DATA",
                                      labels=["kind"])
        for kind in ("welcomes", "rejects", "resets"):
            answers.add_metric([kind[:-1]], getattr(stats, kind))
        yield answers
