"""``twistd lmgateway``: options and makeService, nothing else."""

from __future__ import annotations

import os

from twisted.internet import reactor as default_reactor
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from .hashing import MIN_ITERATIONS
from linchpin_common.daemon import exit_zero_on_sigterm, print_version

from .service import Gateway
from .store import SQLiteStore

MIN_MESSAGE_SIZE = 512 * 1024


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Linchpin Mobile Gateway: REST API and MQTT over WebSocket (/mqtt) on one port."
    optParameters = [
        ["data-dir", None, "./var/lmgateway", "Folder of the embedded SQLite store (created 0700)."],
        ["store", None, None, "Store URL postgresql://user[:password]@host:port/db (also from $LMGATEWAY_STORE, "
                              "which keeps a password out of ps); default: SQLite in --data-dir."],
        ["bus", None, None, "Message bus URL for several gateway nodes; default: in-process."],
        ["public-url", None, None, "Base URL the gateway tells clients; default: from each request."],
        ["registration-token", None, None, "Bearer token required to register an instance."],
        ["max-message-size", None, 1048576, "MQTT packet cap in bytes (at least 524288).", int],
        ["setup-key-ttl", None, 86400, "Lifetime of a device setup key, in seconds.", int],
        ["pbkdf2-iterations", None, MIN_ITERATIONS, "PBKDF2 iterations for new hashes (at least 100000).", int],
        ["metrics", None, None, "Endpoint serving Prometheus metrics at /metrics, e.g. tcp:9100:interface=127.0.0.1."],
        ["max-outbound", None, 4 * 1024 * 1024, "Bytes queued for a client that stopped reading before it is cut.", int],
        ["max-sessions", None, 50_000, "Open MQTT WebSocket sessions at most.", int],
        ["max-pending-logins", None, 1024, "WebSocket sessions awaiting CONNACK at most.", int],
        ["rest-limit", None, 30, "Unauthenticated REST calls a minute per address (burst the same); 0: no limit.", int],
        ["login-limit", None, 20, "Failed logins a minute per address (burst the same); 0: no limit.", int],
        ["hash-queue", None, 256, "PBKDF2 jobs queued at most; beyond, CONNACK 3 / HTTP 503 at once.", int],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint):
        """Server endpoint string (repeatable); default tcp:8080 (with backlog=1024)."""
        self["listen"].append(endpoint)

    def opt_version(self):
        """Print the version and exit."""
        print_version("lmgateway")

    def postOptions(self):
        if not self["listen"]:
            # Twisted's own backlog of 50 drops SYNs when many devices
            # reconnect at once (docs/benchmarks.md, connect storm).
            self["listen"] = ["tcp:8080:backlog=1024"]
        if self["max-message-size"] < MIN_MESSAGE_SIZE:
            raise usage.UsageError(f"--max-message-size must be at least {MIN_MESSAGE_SIZE}")
        if self["setup-key-ttl"] < 1:
            raise usage.UsageError("--setup-key-ttl must be positive")
        if self["pbkdf2-iterations"] < MIN_ITERATIONS:
            raise usage.UsageError(f"--pbkdf2-iterations must be at least {MIN_ITERATIONS}")
        self["store"] = self["store"] or os.environ.get("LMGATEWAY_STORE") or None
        if self["store"] and not self["store"].startswith(("postgresql://", "postgres://")):
            raise usage.UsageError("--store: a postgresql:// URL (without it: SQLite in --data-dir)")
        if self["bus"]:
            raise usage.UsageError("--bus: only the in-process bus is available in this release")
        for name in ("max-outbound", "max-sessions", "max-pending-logins", "hash-queue"):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be positive")
        for name in ("rest-limit", "login-limit"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must be 0 (off) or positive")


def _limit(per_minute: int):
    return (per_minute, float(per_minute)) if per_minute > 0 else None


def _store(config, reactor):
    if config["store"]:
        from .pgstore import PostgreSQLStore  # psycopg only when asked for

        return PostgreSQLStore(reactor, config["store"])
    return SQLiteStore(reactor, config["data-dir"])


def makeService(config, reactor=default_reactor):
    gateway = Gateway(
        reactor,
        _store(config, reactor),
        public_url=config["public-url"],
        registration_token=config["registration-token"],
        max_packet=config["max-message-size"],
        setup_key_ttl=config["setup-key-ttl"],
        iterations=config["pbkdf2-iterations"],
        max_outbound=config["max-outbound"],
        max_sessions=config["max-sessions"],
        max_unauthenticated=config["max-pending-logins"],
        hash_queue=config["hash-queue"],
        rest_limit=_limit(config["rest-limit"]),
        login_limit=_limit(config["login-limit"]),
    )
    for description in config["listen"]:
        gateway.listen(serverFromString(reactor, description), description)
    if config["metrics"]:
        gateway.serve_metrics(serverFromString(reactor, config["metrics"]), config["metrics"])
    reactor.callWhenRunning(exit_zero_on_sigterm, reactor)
    return gateway
