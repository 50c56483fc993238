"""The connector daemon's settings, each default and each rule in one place.

``twistd lmconnector`` parses its options into one :class:`ConnectorConfig`
(the gateway's ``GatewayConfig`` is the model); the proxy, the pairing page
and the service take their defaults from :data:`DEFAULTS`, so no default
or rule is written twice.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field

from linchpin_common.contract.topics import is_connector_name

from .state import DEFAULT_DATA_DIR

USER_HEADER = "X-Forwarded-User"  # names the paired user to the backend, and the SSO's user to the pairing page
USER_IN_FLIGHT = 32  # requests in flight per user across that user's devices
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token (RFC 9110): methods, header names
_PUBLIC_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def check_public_host(value: str | None) -> str | None:
    """``--public-host``: a host name or address, optionally with :port."""
    if value is not None and not _PUBLIC_HOST.fullmatch(value):
        raise ValueError("--public-host must be a host name, optionally with :port")
    return value


def default_name() -> str:
    """``--name`` when none is given: this host's name, as far as a
    connector's name allows (PROTOCOL.md section 4)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", platform.node())[:64]
    return name if is_connector_name(name) else "connector"


def check_name(name: str) -> str:
    if not is_connector_name(name):
        raise ValueError("--name must be 1-64 of A-Z a-z 0-9 . _ -")
    return name


def check_allow_path(prefix: str) -> str:
    if not prefix.startswith("/") or "?" in prefix or "\\" in prefix:
        raise ValueError(f"--allow-path {prefix!r}: a path prefix starts with / and has no query")
    return prefix


@dataclass(frozen=True)
class ConnectorConfig:
    backend: str = ""
    data_dir: str = DEFAULT_DATA_DIR
    user_header: str = USER_HEADER
    allow_paths: tuple[str, ...] = ("/",)
    ca_file: str | None = None
    keep_alive: int = 30
    response_timeout: float = 60.0
    public_host: str | None = None
    user_in_flight: int = USER_IN_FLIGHT
    metrics: str | None = None
    web: str | None = None
    web_user_header: str = USER_HEADER
    web_hosts: tuple[str, ...] = ()
    name: str = field(default_factory=default_name)
    drain_timeout: float = 30.0
    health_path: str = "/"
    health_interval: float = 10.0
    store: str | None = None  # postgresql://...: the state shared by several connectors

    def __post_init__(self):
        if not self.backend:
            raise ValueError("--backend URL is required")
        if not self.backend.startswith(("http://", "https://")):
            raise ValueError("--backend must be an http:// or https:// URL")
        for option, value in (("user-header", self.user_header), ("web-user-header", self.web_user_header)):
            if not TOKEN.fullmatch(value):
                raise ValueError(f"--{option} must be an HTTP header name")
        if not 1 <= self.keep_alive <= 300:
            raise ValueError("--keep-alive must be 1-300 seconds")
        if self.user_in_flight < 1:
            raise ValueError("--user-in-flight must be positive")
        check_public_host(self.public_host)
        check_name(self.name)
        if self.drain_timeout < 0:
            raise ValueError("--drain-timeout must not be negative")
        if self.health_interval < 0:
            raise ValueError("--health-interval must not be negative (0 turns the check off)")
        check_allow_path(self.health_path)
        if self.store and not self.store.startswith(("postgresql://", "postgres://")):
            raise ValueError("--store must be a postgresql:// URL (the default is the SQLite file in --data-dir)")
        for prefix in self.allow_paths:
            check_allow_path(prefix)


DEFAULTS = ConnectorConfig(backend="http://defaults.invalid")
