"""The gateway as one Twisted service: store, hashing pool, router, Site."""

from __future__ import annotations


from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from .api import GatewaySite, Root
from .auth import Authenticator, LoginGuard
from .audit import audit
from .hashing import MIN_ITERATIONS, Hasher
from linchpin_common.metrics import metrics_site

from .metrics import GatewayCollector, Stats
from .ratelimit import RateLimiter, Unlimited
from .router import Router
from .session import MAX_OUTBOUND, Limits, MQTTWebSocketFactory

PURGE_INTERVAL = 3600.0
HTTP_IDLE_TIMEOUT = 60  # seconds an HTTP connection may sit idle before the upgrade
# (burst, per minute) for one address.  REST: every call that is not
# authenticated.  Logins: failed CONNECTs only.  Both admit a well-behaved
# client's 20 a minute and trip within 100 (REST) and 50 (logins).
REST_LIMIT = (30, 30.0)
LOGIN_LIMIT = (20, 20.0)


class Gateway(service.MultiService):
    """Everything one gateway node needs; listeners are added as children."""

    log = Logger(namespace="lmgateway")

    def __init__(self, reactor, store, *, public_url: str | None = None,
                 registration_token: str | None = None, max_packet: int = 1048576,
                 setup_key_ttl: int = 86400, iterations: int = MIN_ITERATIONS, hash_worker=None,
                 max_outbound: int = MAX_OUTBOUND, max_sessions: int = 50_000, max_unauthenticated: int = 1024,
                 hash_queue: int = 256, rest_limit: tuple[int, float] | None = REST_LIMIT,
                 login_limit: tuple[int, float] | None = LOGIN_LIMIT, drain_timeout: float = 5.0):
        super().__init__()
        self.reactor = reactor
        self.clock = reactor
        self.store = store
        self.stats = Stats()
        self.hasher = Hasher(reactor, iterations, worker=hash_worker, max_pending=hash_queue)
        self.authenticator = Authenticator(store, self.hasher, reactor)
        self.router = Router(reactor, stats=self.stats)
        self.public_url = public_url.rstrip("/") if public_url else None
        self.registration_token = registration_token
        self.setup_key_ttl = setup_key_ttl
        self.drain_timeout = drain_timeout
        self.rest_limiter = (RateLimiter(reactor, *rest_limit, on_trip=lambda host: audit(
            "rate_limit_tripped", host=host, limit="unauthenticated REST calls")) if rest_limit else Unlimited())
        self.login_limiter = (RateLimiter(reactor, *login_limit, on_trip=lambda host: audit(
            "auth_failure_burst", host=host, limit="failed logins (MQTT and REST)")) if login_limit else Unlimited())
        self.logins = LoginGuard(self.authenticator, reactor, self.login_limiter,
                                 RateLimiter(reactor, *login_limit) if login_limit else Unlimited())
        self.limits = Limits(max_packet=max_packet, max_outbound=max_outbound)
        self.ws_factory = MQTTWebSocketFactory(self, reactor, max_sessions=max_sessions,
                                               max_unauthenticated=max_unauthenticated)
        self.site = GatewaySite(Root(self, self.ws_factory), reactor=reactor, timeout=HTTP_IDLE_TIMEOUT)
        purge = internet.TimerService(PURGE_INTERVAL, self.purge_expired)
        purge.clock = reactor
        purge.setServiceParent(self)

    def listen(self, endpoint, description: str, site=None) -> None:
        svc = internet.StreamServerEndpointService(_Announced(endpoint, description), site or self.site)
        svc._raiseSynchronously = True  # a port that cannot be bound stops start-up
        svc.setServiceParent(self)

    def serve_metrics(self, endpoint, description: str) -> None:
        self.listen(endpoint, f"metrics {description}", metrics_site(GatewayCollector(self)))

    def startService(self):
        self.store.start()
        self.hasher.start()
        super().startService()

    @defer.inlineCallbacks
    def stopService(self):
        # Listeners stop first (no new connections), then every session gets
        # a clean close, then pools finish their queued work and stop.
        yield super().stopService()
        sessions = len(self.ws_factory.live)
        yield self.ws_factory.close_all(self.drain_timeout)
        self.log.info("closed {n} sessions", n=sessions)
        self.hasher.stop()
        self.store.stop()
        self.log.info("lmgateway stopped")

    @defer.inlineCallbacks
    def not_ready(self):
        """Deferred[str | None]: why this node cannot serve now, or None."""
        try:
            yield self.store.ping()
        except Exception:
            return "store unreachable"
        return None

    @defer.inlineCallbacks
    def purge_expired(self):
        try:
            purged = yield self.store.purge_expired(self.clock.seconds())
        except Exception:
            self.log.failure("purging expired setup keys failed")
            return
        for instance_id, device_id in purged:
            self.log.info("expired pending device {device_id} of {instance_id} purged",
                          device_id=device_id, instance_id=instance_id)


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
