"""The self-service pairing page of the connector (``twistd lmconnector --web ENDPOINT``).

:mod:`.desk` decides what a user may see and do; :mod:`.site` is the HTTP
side; :class:`PairingWebService` runs them next to the connector's gateway
link, from which it hears of device changes.
"""

from __future__ import annotations

from twisted.application import service
from twisted.logger import Logger

from linchpin_common.contract import e2e

from ..config import USER_HEADER
from .desk import PairingDesk
from .site import make_site

__all__ = ["PairingDesk", "PairingWebService", "make_site"]


class PairingWebService(service.Service):
    """Serves the pairing page on ``endpoint``; a child of the ConnectorService,
    started once the connector has its state and gateway client."""

    log = Logger()

    def __init__(self, connector, endpoint, user_header: str = USER_HEADER, hosts: tuple[str, ...] = ()):
        self.connector = connector
        self.endpoint = endpoint
        self.user_header = user_header
        self.hosts = hosts
        self.desk: PairingDesk | None = None
        self.port = None
        self._listening = None

    def startService(self):
        super().startService()
        connector = self.connector
        public_key = e2e.public_raw(connector.channels.static_private)
        self.desk = PairingDesk(connector.state, connector.api, public_key, connector.reactor)
        connector.observers.append(self.desk)
        d = self._listening = self.endpoint.listen(make_site(self.desk, self.user_header, connector.reactor,
                                                                   self.hosts))

        def listening(port):
            self._listening = None
            self.port = port
            address = port.getHost()
            self.log.info("pairing page listening on {host}:{port}", host=address.host, port=address.port)

        d.addCallback(listening)
        d.addErrback(lambda f: self.log.failure("the pairing page cannot listen", f))

    def stopService(self):
        super().stopService()
        if self.desk in self.connector.observers:
            self.connector.observers.remove(self.desk)
        if self._listening is not None:
            self._listening.cancel()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
