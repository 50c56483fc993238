"""``twistd lmconnector``: options and makeService, nothing else."""

from __future__ import annotations

import os
import re
import sys
from types import SimpleNamespace

from twisted.internet import reactor as default_reactor
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from linchpin_common.daemon import exit_zero_on_sigterm, print_version
from linchpin_common.malloc import keep_large_buffers
from linchpin_common.console import proxy_config
from linchpin_common.http_proxy import ProxySettingsError
from linchpin_common.tls import CAFileError, trust_root

from .connector import ConnectorService
from .config import DEFAULTS, ConnectorConfig
from .state import DB_NAME
from .web import PairingWebService


class Options(usage.Options):
    synopsis = "--backend URL [options]"
    longdesc = "Linchpin connector: keeps one session to the gateway and proxies paired devices to the backend."
    optParameters = [
        ["data-dir", None, DEFAULTS.data_dir, "Connector state folder (made by 'lmconnector register')."],
        ["store", None, None, "postgresql://user@host:port/db: the state shared by every connector of the "
                              "instance (password from PGPASSWORD); default the SQLite file in --data-dir."],
        ["backend", None, None, "Base URL of the intranet app, e.g. http://intranet.local:8090."],
        ["user-header", None, DEFAULTS.user_header, "Header that carries the paired user to the backend."],
        ["ca-file", None, None, "PEM file of a private CA that signed the gateway's certificate."],
        ["keep-alive", None, DEFAULTS.keep_alive, "MQTT keep-alive in seconds (1-300).", int],
        ["response-timeout", None, DEFAULTS.response_timeout, "Seconds a proxied request may make no progress (response headers, "
                                         "request or response body).", float],
        ["public-host", None, None, "Host (and :port) the backend should build links for: sent as "
                                    "X-Forwarded-Host. Device-sent forwarding headers are always dropped."],
        ["user-in-flight", None, DEFAULTS.user_in_flight, "Requests in flight per user across all of that user's "
                                                 "devices.", int],
        ["metrics", None, None, "Endpoint serving Prometheus metrics (lmconnector_*) at /metrics."],
        ["proxy", None, None, "HTTP proxy to the gateway, http://[user@]host:port ('' for none); "
                              "default: https_proxy/http_proxy/no_proxy as curl reads them."],
        ["proxy-password-file", None, None, "File whose first line is the proxy password "
                                            "(or set LINCHPIN_PROXY_PASSWORD)."],
        ["web", None, None, "Endpoint of the self-service pairing page, e.g. tcp:8091:interface=127.0.0.1 "
                            "(put it behind the SSO reverse proxy)."],
        ["web-user-header", None, DEFAULTS.web_user_header, "Header in which the SSO proxy names the pairing page's user."],
        ["drain-timeout", None, DEFAULTS.drain_timeout, "On SIGTERM, seconds the requests in flight may take "
                                                        "before the connector exits (it drains first).", float],
        ["health-path", None, DEFAULTS.health_path, "Path of the backend the connector GETs every --health-interval "
                                                    "seconds; below 500 is up. Down (3 in a row), it drains."],
        ["health-interval", None, DEFAULTS.health_interval, "Seconds between backend health checks (0: none).",
         float],
        ["name", None, DEFAULTS.name, "This connector's name at the gateway (its MQTT client identifier): distinct "
                                      "for each connector of an instance; default the host name."],
    ]

    def __init__(self):
        super().__init__()
        self["allow-path"] = []
        self["web-host"] = []

    def opt_web_host(self, name):
        """Host name the pairing page answers besides its listening address and localhost (repeatable): the
        name the SSO proxy forwards. Any other Host gets 421."""
        if not re.fullmatch(r"[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]", name):
            raise usage.UsageError(f"--web-host {name!r}: a host name, without port or scheme")
        self["web-host"].append(name.strip("[]"))

    def opt_allow_path(self, prefix):
        """Path prefix devices may reach, matched on whole segments (repeatable); default /."""
        self["allow-path"].append(prefix)

    def opt_version(self):
        """Print the version and exit."""
        print_version("lmconnector")

    def postOptions(self):
        try:
            self.config = ConnectorConfig(
                backend=self["backend"] or "", data_dir=self["data-dir"], user_header=self["user-header"],
                allow_paths=tuple(self["allow-path"]) or DEFAULTS.allow_paths, ca_file=self["ca-file"],
                keep_alive=self["keep-alive"], response_timeout=self["response-timeout"],
                public_host=self["public-host"], user_in_flight=self["user-in-flight"], metrics=self["metrics"],
                web=self["web"], web_user_header=self["web-user-header"], web_hosts=tuple(self["web-host"]),
                name=self["name"], drain_timeout=self["drain-timeout"], health_path=self["health-path"],
                health_interval=self["health-interval"], store=self["store"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        self["allow-path"] = list(self.config.allow_paths)
        if self["ca-file"]:
            try:
                trust_root(self["ca-file"])
            except CAFileError as e:
                raise usage.UsageError(f"--ca-file: {e}")
        try:
            self["proxy-config"] = proxy_config(SimpleNamespace(proxy=self["proxy"],
                                                                proxy_password_file=self["proxy-password-file"]))
        except ProxySettingsError as e:
            raise usage.UsageError(str(e))


def makeService(options, reactor=default_reactor):
    config: ConnectorConfig = options.config
    if not config.store and not os.path.exists(os.path.join(config.data_dir, DB_NAME)):
        # One line saying what to do, rather than a traceback from startService.
        sys.exit(f"lmconnector: no connector registered in {config.data_dir}: run "
                 f"'lmconnector --data-dir {config.data_dir} register --gateway URL' first")
    keep_large_buffers()
    connector = ConnectorService(
        reactor,
        config.data_dir,
        config.backend,
        user_header=config.user_header,
        allow_paths=list(config.allow_paths),
        ca_file=config.ca_file,
        keep_alive=config.keep_alive,
        response_timeout=config.response_timeout,
        public_host=config.public_host,
        user_in_flight=config.user_in_flight,
        metrics_endpoint=serverFromString(reactor, config.metrics) if config.metrics else None,
        proxy=options.get("proxy-config"),
        name=config.name,
        health_path=config.health_path,
        health_interval=config.health_interval,
        store=config.store,
    )
    reactor.callWhenRunning(exit_zero_on_sigterm, reactor, lambda: connector.drain(config.drain_timeout))
    if config.web:
        PairingWebService(connector, serverFromString(reactor, config.web), config.web_user_header,
                          config.web_hosts).setServiceParent(connector)
    return connector
