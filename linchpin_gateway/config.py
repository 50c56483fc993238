"""Every setting of a gateway node, with its default, in one place.

``twistd lmgateway`` options are generated from :data:`SETTINGS` and parsed
into one :class:`GatewayConfig`; the service and its parts read that object,
so no default is written twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit

from linchpin_common.contract.wire import DEFAULT_MAX_REMAINING_LENGTH

from .proxyheader import check_listeners, parse_networks

MIN_ITERATIONS = 100_000  # PBKDF2 floor (PROTOCOL.md section 1)
MIN_MESSAGE_SIZE = 512 * 1024  # the smallest packet cap PROTOCOL.md allows
REGISTRATION_TOKEN_ENV = "LMGATEWAY_REGISTRATION_TOKEN"
STORE_ENV = "LMGATEWAY_STORE"  # keeps a database password out of ps
BUS_ENV = "LMGATEWAY_BUS"  # the same for Redis


def redact_url(url: str) -> str:
    """A store or bus URL fit for logs and errors: scheme, host, port and
    path only (a password may be in the user part or in the query)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


@dataclass(frozen=True)
class GatewayConfig:
    # Where it listens and what it tells clients.
    listen: tuple[str, ...] = ("tcp:8080:backlog=1024",)  # Twisted's backlog of 50 drops SYNs in connect storms
    public_url: str | None = None
    metrics: str | None = None
    trusted_proxies: tuple[str, ...] = ()  # load balancers whose PROXY headers haproxy: listeners believe
    # Where it keeps credentials and how it reaches other nodes.
    data_dir: str = "./var/lmgateway"
    store: str | None = field(default=None, repr=False)  # may hold a password
    bus: str | None = field(default=None, repr=False)  # may hold a password
    # Credentials.
    registration_token: str | None = field(default=None, repr=False)
    setup_key_ttl: int = 86400
    pbkdf2_iterations: int = MIN_ITERATIONS
    hash_queue: int = 1024  # PBKDF2 jobs queued or running; beyond: CONNACK 3 / HTTP 503
    hash_wait: int = 15  # seconds a new PBKDF2 job may expect to wait; beyond: CONNACK 3 / HTTP 503
    # MQTT sessions.
    max_message_size: int = DEFAULT_MAX_REMAINING_LENGTH  # 1 MiB (PROTOCOL.md section 4)
    max_outbound: int = 4 * 1024 * 1024  # bytes queued for a client that stopped reading
    max_sessions: int = 50_000
    max_pending_logins: int = 1024  # WebSocket sessions awaiting CONNACK
    connect_timeout: float = 10.0  # seconds from WebSocket open to CONNECT
    # Flood limits, per address and minute (0: off).
    rest_limit: int = 30  # unauthenticated REST calls; admits 20 a minute, trips within 100
    login_limit: int = 20  # failed logins, MQTT and REST together; admits 20, trips within 50
    # What one address may hold at once (an IPv6 /64 is one address).
    connections_per_address: int = 1024  # open sockets, HTTP and WebSocket
    pending_logins_per_address: int = 32  # WebSocket sessions awaiting CONNACK
    login_checks_per_address: int = 4  # password checks queued or running
    request_deadline: int = 20  # seconds for a whole HTTP request (line, headers, body) to arrive
    # What one tenant (instance) may use.
    max_devices: int = 5000  # devices per instance, pending and paired
    max_pending_devices: int = 100  # devices per instance not paired yet
    instance_rest_limit: int = 120  # authenticated REST calls per instance and minute (0: off)
    max_instance_sessions: int = 5000  # live device sessions per instance (its connector is never refused)
    store_queue: int = 1024  # store operations queued at most; beyond, HTTP 503 / CONNACK 3
    # Housekeeping.
    purge_interval: float = 3600.0  # seconds between purges of expired pending devices
    revalidate_interval: int = 60  # seconds between checks of live sessions against a shared store
    http_idle_timeout: int = 60  # seconds an HTTP connection may sit idle before the upgrade
    drain_timeout: float = 5.0  # seconds SIGTERM waits for sessions to close

    def __post_init__(self):
        if self.max_message_size < MIN_MESSAGE_SIZE:
            raise ValueError(f"--max-message-size must be at least {MIN_MESSAGE_SIZE}")
        if self.setup_key_ttl < 1:
            raise ValueError("--setup-key-ttl must be positive")
        if self.pbkdf2_iterations < MIN_ITERATIONS:
            raise ValueError(f"--pbkdf2-iterations must be at least {MIN_ITERATIONS}")
        for name in ("max_outbound", "max_sessions", "max_pending_logins", "hash_queue", "hash_wait",
                     "connections_per_address",
                     "pending_logins_per_address", "login_checks_per_address", "request_deadline", "max_devices",
                     "max_pending_devices", "max_instance_sessions", "store_queue", "revalidate_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        for name in ("rest_limit", "login_limit", "instance_rest_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be 0 (off) or positive")
        if self.store and not self.store.startswith(("postgresql://", "postgres://")):
            raise ValueError("--store: a postgresql:// URL (without it: SQLite in --data-dir)")
        if self.bus and not self.bus.startswith(("redis://", "rediss://")):
            raise ValueError("--bus: a redis:// or rediss:// URL (without it: this node alone)")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ValueError("--public-url must be an http:// or https:// URL")
        check_listeners(self.listen, self.trusted_networks)

    @property
    def trusted_networks(self):
        """``trusted_proxies`` as networks (checked when the config is made)."""
        return parse_networks(self.trusted_proxies)

    @property
    def public_base(self) -> str | None:
        """``public_url`` without a trailing slash (PROTOCOL.md ``gateway_url``)."""
        return self.public_url.rstrip("/") if self.public_url else None

    @staticmethod
    def per_minute(limit: int) -> tuple[int, float] | None:
        """A per-minute limit as (burst, refill per minute), or None when off."""
        return (limit, float(limit)) if limit > 0 else None


DEFAULTS = GatewayConfig()

# (option name, help) for every setting twistd takes as `--name VALUE`; the
# default and the type come from GatewayConfig.
SETTINGS: list[tuple[str, str]] = [
    ("data-dir", "Folder of the embedded SQLite store (created 0700)."),
    ("store", f"Store URL postgresql://user[:password]@host:port/db (also from ${STORE_ENV}, which keeps a "
              "password out of ps); default: SQLite in --data-dir."),
    ("bus", "Bus joining several gateway nodes: redis[s]://[user:password@]host:port/db (also from "
            f"${BUS_ENV}, which keeps a password out of ps); default: this node alone."),
    ("public-url", "Base URL the gateway tells clients; default: from each request."),
    ("registration-token", "Bearer token required to register an instance (visible in ps: prefer "
                           f"--registration-token-file or {REGISTRATION_TOKEN_ENV})."),
    ("registration-token-file", "File holding the registration token (first line)."),
    ("max-message-size", f"MQTT packet cap in bytes (at least {MIN_MESSAGE_SIZE})."),
    ("setup-key-ttl", "Lifetime of a device setup key, in seconds."),
    ("pbkdf2-iterations", f"PBKDF2 iterations for new hashes (at least {MIN_ITERATIONS})."),
    ("metrics", "Endpoint serving Prometheus metrics at /metrics, e.g. tcp:9100:interface=127.0.0.1."),
    ("max-outbound", "Bytes queued for a client that stopped reading before it is cut."),
    ("max-sessions", "Open MQTT WebSocket sessions at most."),
    ("max-pending-logins", "WebSocket sessions awaiting CONNACK at most."),
    ("rest-limit", "Unauthenticated REST calls a minute per address (burst the same); 0: no limit."),
    ("login-limit", "Failed logins a minute per address (burst the same); 0: no limit."),
    ("hash-queue", "PBKDF2 jobs queued at most; beyond, CONNACK 3 / HTTP 503 at once."),
    ("hash-wait", "Seconds a password check may expect to wait for the PBKDF2 pool (measured); beyond, "
                  "CONNACK 3 / HTTP 503 at once. Above a client's retry back-off, so a storm keeps the pool busy."),
    ("connections-per-address", "Open connections from one address (an IPv6 /64) at most; more are closed."),
    ("pending-logins-per-address", "WebSocket sessions awaiting CONNACK from one address at most; beyond, 503."),
    ("login-checks-per-address", "Password checks one address may have queued or running; beyond, CONNACK 3 / 429."),
    ("request-deadline", "Seconds for a whole HTTP request to arrive (slow-loris guard)."),
    ("max-devices", "Devices per instance, pending and paired; beyond, 403 limit_reached."),
    ("max-pending-devices", "Devices per instance not paired yet; beyond, 403 limit_reached."),
    ("instance-rest-limit", "Authenticated REST calls per instance and minute (burst the same); 0: no limit."),
    ("max-instance-sessions", "Live device sessions per instance; beyond, CONNACK 3."),
    ("store-queue", "Store operations queued at most; beyond, HTTP 503 / CONNACK 3 at once."),
    ("revalidate-interval", "With a shared store (PostgreSQL) or a bus: seconds between checks of every live "
                            "session against the store (also run when the bus or the store comes back)."),
]

_TYPES = {f.name: f.type for f in fields(GatewayConfig)}


def option_parameters() -> list[list]:
    """``optParameters`` for twisted.python.usage, defaults taken from :data:`DEFAULTS`."""
    params = []
    for name, help_text in SETTINGS:
        attr = name.replace("-", "_")
        default = getattr(DEFAULTS, attr, None)
        coerce = int if _TYPES.get(attr) == "int" else None
        params.append([name, None, default, help_text] + ([coerce] if coerce else []))
    return params


def read_registration_token(value: str | None, path: str | None, environ=os.environ) -> str | None:
    """The token from the option, else the file's first line, else the environment."""
    if value and path:
        raise ValueError("give --registration-token or --registration-token-file, not both")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as e:
            raise ValueError(f"cannot read --registration-token-file {path}: {e.strerror or e}")
        if not token:
            raise ValueError(f"--registration-token-file {path} is empty")
        return token
    return value or environ.get(REGISTRATION_TOKEN_ENV) or None


def from_options(options, environ=os.environ) -> GatewayConfig:
    """A :class:`GatewayConfig` from parsed ``twistd lmgateway`` options."""
    values = {name.replace("-", "_"): options[name] for name, _ in SETTINGS if name != "registration-token-file"}
    values["registration_token"] = read_registration_token(options["registration-token"],
                                                           options["registration-token-file"], environ)
    values["store"] = options["store"] or environ.get(STORE_ENV) or None
    values["bus"] = options["bus"] or environ.get(BUS_ENV) or None
    values["listen"] = tuple(options["listen"]) or DEFAULTS.listen
    values["trusted_proxies"] = tuple(options["trusted-proxy"])
    return GatewayConfig(**values)
