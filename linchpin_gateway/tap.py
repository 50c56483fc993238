"""``twistd lmgateway``: options and makeService, nothing else."""

from __future__ import annotations


from twisted.internet import reactor as default_reactor
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from linchpin_common.daemon import exit_zero_on_sigterm, print_version
from linchpin_common.malloc import keep_large_buffers

from .config import DEFAULTS, from_options, option_parameters
from .proxyheader import server_endpoint
from .service import Gateway
from .store import SQLiteStore


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Linchpin Mobile Gateway: REST API, /healthz, /readyz and MQTT over WebSocket (/mqtt) on one "
                "port. Stores only hashes of credentials; relays end-to-end-encrypted messages it cannot read.")
    optParameters = option_parameters()

    def __init__(self):
        super().__init__()
        self["listen"] = []
        self["trusted-proxy"] = []

    def opt_listen(self, endpoint):
        """Server endpoint string (repeatable); default tcp:8080 (with backlog=1024)."""
        self["listen"].append(endpoint)

    def opt_trusted_proxy(self, network):
        """Load balancer (ADDRESS[/PREFIX], repeatable) whose PROXY headers haproxy: listeners believe."""
        self["trusted-proxy"].append(network)

    def opt_version(self):
        """Print the version and exit."""
        print_version("lmgateway")

    def postOptions(self):
        try:
            self.config = from_options(self)
            if self.config.bus:
                from .bus import parse_url

                parse_url(self.config.bus)
        except ValueError as e:
            raise usage.UsageError(str(e))


def _store(config, reactor):
    if config.store:
        from .pgstore import PostgreSQLStore  # psycopg only when asked for

        return PostgreSQLStore(reactor, config.store, max_queue=config.store_queue)
    return SQLiteStore(reactor, config.data_dir, max_queue=config.store_queue)


def _bus(config, reactor):
    if not config.bus:
        return None
    from .bus import RedisBus  # no Redis code on a single node

    return RedisBus(reactor, config.bus)


def makeService(options, reactor=default_reactor):
    config = options.config
    keep_large_buffers()
    gateway = Gateway(reactor, _store(config, reactor), config, bus=_bus(config, reactor))
    for description in config.listen:
        endpoint = server_endpoint(reactor, description, config.trusted_networks, serverFromString, gateway.stats)
        gateway.listen(endpoint, description)
    if config.metrics:
        gateway.serve_metrics(serverFromString(reactor, config.metrics), config.metrics)
    reactor.callWhenRunning(exit_zero_on_sigterm, reactor)
    return gateway


__all__ = ["DEFAULTS", "Options", "makeService"]
