"""``twistd lmgateway``: options and makeService, nothing else."""

from __future__ import annotations

from twisted.internet import reactor as default_reactor
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from .hashing import MIN_ITERATIONS
from .service import Gateway, exit_zero_on_sigterm
from .store import SQLiteStore

MIN_MESSAGE_SIZE = 512 * 1024


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Linchpin Mobile Gateway: REST API and MQTT over WebSocket (/mqtt) on one port."
    optParameters = [
        ["data-dir", None, "./var/lmgateway", "Folder of the embedded SQLite store (created 0700)."],
        ["store", None, None, "Store URL; default: SQLite in --data-dir."],
        ["bus", None, None, "Message bus URL for several gateway nodes; default: in-process."],
        ["public-url", None, None, "Base URL the gateway tells clients; default: from each request."],
        ["registration-token", None, None, "Bearer token required to register an instance."],
        ["max-message-size", None, 1048576, "MQTT packet cap in bytes (at least 524288).", int],
        ["setup-key-ttl", None, 86400, "Lifetime of a device setup key, in seconds.", int],
        ["pbkdf2-iterations", None, MIN_ITERATIONS, "PBKDF2 iterations for new hashes (at least 100000).", int],
        ["metrics", None, None, "Endpoint for Prometheus metrics."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint):
        """Server endpoint string (repeatable); default tcp:8080."""
        self["listen"].append(endpoint)

    def postOptions(self):
        if not self["listen"]:
            self["listen"] = ["tcp:8080"]
        if self["max-message-size"] < MIN_MESSAGE_SIZE:
            raise usage.UsageError(f"--max-message-size must be at least {MIN_MESSAGE_SIZE}")
        if self["setup-key-ttl"] < 1:
            raise usage.UsageError("--setup-key-ttl must be positive")
        if self["pbkdf2-iterations"] < MIN_ITERATIONS:
            raise usage.UsageError(f"--pbkdf2-iterations must be at least {MIN_ITERATIONS}")
        store = self["store"]
        if store and not store.startswith("sqlite:"):
            raise usage.UsageError("--store: only the embedded SQLite store is available in this release")
        if self["bus"]:
            raise usage.UsageError("--bus: only the in-process bus is available in this release")
        if self["metrics"]:
            raise usage.UsageError("--metrics is not available in this release")


def makeService(config, reactor=default_reactor):
    gateway = Gateway(
        reactor,
        SQLiteStore(reactor, config["data-dir"]),
        public_url=config["public-url"],
        registration_token=config["registration-token"],
        max_packet=config["max-message-size"],
        setup_key_ttl=config["setup-key-ttl"],
        iterations=config["pbkdf2-iterations"],
    )
    for description in config["listen"]:
        gateway.listen(serverFromString(reactor, description), description)
    reactor.callWhenRunning(exit_zero_on_sigterm, reactor)
    return gateway
