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
from .proxy import TOKEN, USER_IN_FLIGHT
from .state import DB_NAME, DEFAULT_DATA_DIR
from .web import PairingWebService


class Options(usage.Options):
    synopsis = "--backend URL [options]"
    longdesc = "Linchpin connector: keeps one session to the gateway and proxies paired devices to the backend."
    optParameters = [
        ["data-dir", None, DEFAULT_DATA_DIR, "Connector state folder (made by 'lmconnector register')."],
        ["backend", None, None, "Base URL of the intranet app, e.g. http://intranet.local:8090."],
        ["user-header", None, "X-Forwarded-User", "Header that carries the paired user to the backend."],
        ["ca-file", None, None, "PEM file of a private CA that signed the gateway's certificate."],
        ["keep-alive", None, 30, "MQTT keep-alive in seconds (1-300).", int],
        ["response-timeout", None, 60.0, "Seconds a proxied request may make no progress (response headers, "
                                         "request or response body).", float],
        ["public-host", None, None, "Host (and :port) the backend should build links for: sent as "
                                    "X-Forwarded-Host. Device-sent forwarding headers are always dropped."],
        ["user-in-flight", None, USER_IN_FLIGHT, "Requests in flight per user across all of that user's "
                                                 "devices.", int],
        ["metrics", None, None, "Endpoint serving Prometheus metrics (lmconnector_*) at /metrics."],
        ["proxy", None, None, "HTTP proxy to the gateway, http://[user@]host:port ('' for none); "
                              "default: https_proxy/http_proxy/no_proxy as curl reads them."],
        ["proxy-password-file", None, None, "File whose first line is the proxy password "
                                            "(or set LINCHPIN_PROXY_PASSWORD)."],
        ["web", None, None, "Endpoint of the self-service pairing page, e.g. tcp:8091:interface=127.0.0.1 "
                            "(put it behind the SSO reverse proxy)."],
        ["web-user-header", None, "X-Forwarded-User", "Header in which the SSO proxy names the pairing page's user."],
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
        if not self["backend"]:
            raise usage.UsageError("--backend URL is required")
        if not self["backend"].startswith(("http://", "https://")):
            raise usage.UsageError("--backend must be an http:// or https:// URL")
        for option in ("user-header", "web-user-header"):
            if not TOKEN.fullmatch(self[option]):
                raise usage.UsageError(f"--{option} must be an HTTP header name")
        if not 1 <= self["keep-alive"] <= 300:
            raise usage.UsageError("--keep-alive must be 1-300 seconds")
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
        if self["public-host"] is not None and not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", self["public-host"]):
            raise usage.UsageError("--public-host must be a host name, optionally with :port")
        if self["user-in-flight"] < 1:
            raise usage.UsageError("--user-in-flight must be positive")
        self["allow-path"] = self["allow-path"] or ["/"]
        for prefix in self["allow-path"]:
            if not prefix.startswith("/") or "?" in prefix or "\\" in prefix:
                raise usage.UsageError(f"--allow-path {prefix!r}: a path prefix starts with / and has no query")


def makeService(config, reactor=default_reactor):
    if not os.path.exists(os.path.join(config["data-dir"], DB_NAME)):
        # One line saying what to do, rather than a traceback from startService.
        sys.exit(f"lmconnector: no connector registered in {config['data-dir']}: run "
                 f"'lmconnector --data-dir {config['data-dir']} register --gateway URL' first")
    reactor.callWhenRunning(exit_zero_on_sigterm, reactor)
    keep_large_buffers()
    connector = ConnectorService(
        reactor,
        config["data-dir"],
        config["backend"],
        user_header=config["user-header"],
        allow_paths=config["allow-path"],
        ca_file=config["ca-file"],
        keep_alive=config["keep-alive"],
        response_timeout=config["response-timeout"],
        public_host=config["public-host"],
        user_in_flight=config["user-in-flight"],
        metrics_endpoint=serverFromString(reactor, config["metrics"]) if config["metrics"] else None,
        proxy=config.get("proxy-config"),
    )
    if config["web"]:
        PairingWebService(connector, serverFromString(reactor, config["web"]), config["web-user-header"],
                          tuple(config["web-host"])).setServiceParent(connector)
    return connector
