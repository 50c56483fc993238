"""The gateway as one Twisted service: store, hashing pool, router, Site."""

from __future__ import annotations


from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from linchpin_common import __version__, hotpath
from linchpin_common.metrics import metrics_site

from .accounts import Accounts
from .api import ApiV1, Root
from .audit import audit
from .auth import Authenticator, LoginGuard
from .config import DEFAULTS, GatewayConfig
from .edge import GuardedSite
from .hashing import Hasher
from .metrics import GatewayCollector, Stats
from .ratelimit import RateLimiter, Unlimited
from .revalidate import SessionCheck
from .router import Router
from .session import Limits
from .websocket import MQTTWebSocketFactory

STORE_CHECK = 10.0  # seconds between store checks (the lmgateway_store_up metric)

class Gateway(service.MultiService):
    """Everything one gateway node needs; listeners are added as children.

    ``config`` is the node's :class:`~linchpin_gateway.config.GatewayConfig`
    (its defaults when omitted); each part gets only what it needs from it.
    """

    log = Logger(namespace="lmgateway")

    def __init__(self, reactor, store, config: GatewayConfig = DEFAULTS, *, hash_worker=None, bus=None):
        """``bus``: the :class:`~.bus.IBus` joining this node to others, or None (alone)."""
        super().__init__()
        self.reactor = reactor
        self.config = config
        self.store = store
        self.stats = Stats()
        self.hasher = Hasher(reactor, config.pbkdf2_iterations, worker=hash_worker, max_pending=config.hash_queue,
                             max_wait=config.hash_wait)
        # A store other nodes (or tools) write to: cached logins are checked
        # against it, and live sessions are re-validated now and then.
        shared = self.shared_store = bus is not None or bool(config.store)
        self.authenticator = Authenticator(store, self.hasher, reactor, revalidate=shared)
        self.router = Router(reactor, stats=self.stats)
        self.rest_limiter = _limiter(reactor, config.rest_limit, "rate_limit_tripped", "unauthenticated REST calls")
        self.login_limiter = _limiter(reactor, config.login_limit, "auth_failure_burst",
                                      "failed logins (MQTT and REST)")
        per_principal = GatewayConfig.per_minute(config.login_limit)
        user_limiter = RateLimiter(reactor, *per_principal) if per_principal else Unlimited()
        self.logins = LoginGuard(self.authenticator, reactor, self.login_limiter, user_limiter,
                                 in_flight=config.login_checks_per_address)
        per_instance = GatewayConfig.per_minute(config.instance_rest_limit)
        instance_limiter = RateLimiter(reactor, *per_instance) if per_instance else None
        self.cluster = None
        if bus is not None:
            from .cluster import Cluster  # only with several nodes

            self.cluster = Cluster(self.router, bus, reactor, authenticator=self.authenticator,
                                   limiters={"rest": self.rest_limiter, "login": self.login_limiter,
                                             "login-user": user_limiter,
                                             **({"instance": instance_limiter} if instance_limiter else {})})
            self.router.cluster = self.cluster
        self.session_check = SessionCheck(self.router, store, self.authenticator)
        if self.cluster is not None:
            self.cluster.on_bus_back = lambda: self.session_check.run("bus back")
        self.accounts = Accounts(store, self.hasher, self.authenticator, self.router, reactor,
                                 setup_key_ttl=config.setup_key_ttl, registration_token=config.registration_token,
                                 max_devices=config.max_devices, max_pending_devices=config.max_pending_devices,
                                 peers=self.cluster)
        self.store_up = True
        self.limits = Limits(max_packet=config.max_message_size, max_outbound=config.max_outbound,
                             connect_timeout=config.connect_timeout,
                             max_instance_sessions=config.max_instance_sessions)
        self.ws_factory = MQTTWebSocketFactory(reactor, self.router, self.logins, self.limits, self.stats,
                                               max_sessions=config.max_sessions,
                                               max_unauthenticated=config.max_pending_logins,
                                               pending_per_address=config.pending_logins_per_address)
        api = ApiV1(self.accounts, self.logins, rest_limiter=self.rest_limiter, stats=self.stats,
                    public_url=config.public_base, instance_limiter=instance_limiter,
                    shared_budget=self._rest_budget())
        probes = [("store", self._ping_store)]
        ready = probes + ([("bus", self.cluster.check)] if self.cluster is not None else [])
        self.site = GuardedSite(Root(api, self.ws_factory, live=probes, ready=ready), reactor=reactor,
                                timeout=config.http_idle_timeout, request_deadline=config.request_deadline,
                                connections_per_address=config.connections_per_address)
        purge = internet.TimerService(config.purge_interval, self.purge_expired)
        purge.clock = reactor
        purge.setServiceParent(self)
        check = internet.TimerService(STORE_CHECK, lambda: self._ping_store().addErrback(lambda f: None))
        check.clock = reactor
        check.setServiceParent(self)
        if shared:
            recheck = internet.TimerService(config.revalidate_interval, self.session_check.run)
            recheck.clock = reactor
            recheck.setServiceParent(self)

    def listen(self, endpoint, description: str, site=None) -> None:
        svc = internet.StreamServerEndpointService(_Announced(endpoint, description), site or self.site)
        svc._raiseSynchronously = True  # a port that cannot be bound stops start-up
        svc.setServiceParent(self)

    def serve_metrics(self, endpoint, description: str) -> None:
        self.listen(endpoint, f"metrics {description}", metrics_site(GatewayCollector(self)))

    def _rest_budget(self):
        if self.cluster is None or not isinstance(self.rest_limiter, RateLimiter):
            return None  # one node, or no limit
        return lambda key: self.cluster.shared_budget("rest", key)

    def _ping_store(self):
        """Deferred: the store answered (and ``store_up`` says so for metrics);
        when it answers again after failing, live sessions are re-validated."""
        d = defer.maybeDeferred(self.store.ping)

        def up(result):
            if not self.store_up and self.shared_store:
                self.session_check.run("store back")
            self.store_up = True
            return result

        def down(failure):
            self.store_up = False
            return failure

        return d.addCallbacks(up, down)

    def startService(self):
        self.log.info("lmgateway {version}, hot path {hot_path}", version=__version__, hot_path=hotpath.describe())
        self.store.start()
        self.hasher.start()
        if self.cluster is not None:
            self.cluster.start()
        super().startService()

    @defer.inlineCallbacks
    def stopService(self):
        # Listeners stop first (no new connections), then every session gets
        # a clean close, then pools finish their queued work and stop.
        yield super().stopService()
        sessions = len(self.ws_factory.live)
        yield self.ws_factory.close_all(self.config.drain_timeout)
        self.ws_factory.repeats.stop()
        self.log.info("closed {n} sessions", n=sessions)
        if self.cluster is not None:
            yield self.cluster.stop()
        self.hasher.stop()
        self.store.stop()
        self.log.info("lmgateway stopped")

    @defer.inlineCallbacks
    def purge_expired(self):
        try:
            purged = yield defer.ensureDeferred(self.accounts.purge_expired())
        except Exception:
            self.log.failure("purging expired setup keys failed")
            return
        for instance_id, device_id in purged:
            self.log.info("expired pending device {device_id} of {instance_id} purged",
                          device_id=device_id, instance_id=instance_id)


def _limiter(reactor, per_minute: int, event: str, what: str):
    """A per-address limiter of ``per_minute`` (burst the same), or none for 0."""
    limit = GatewayConfig.per_minute(per_minute)
    if limit is None:
        return Unlimited()
    return RateLimiter(reactor, *limit, on_trip=lambda host: audit(event, host=host, limit=what))


@implementer(IStreamServerEndpoint)
class _Announced:
    """Wraps an endpoint to log the address it really listens on (port 0 too)."""

    log = Logger(namespace="lmgateway")

    def __init__(self, endpoint, description: str):
        self.endpoint = endpoint
        self.description = description

    def listen(self, factory):
        d = self.endpoint.listen(factory)

        def announce(port):
            addr = port.getHost()
            self.log.info("lmgateway listening on {description} at {host}:{port}",
                          description=self.description, host=addr.host, port=addr.port)
            return port

        return d.addCallback(announce)
