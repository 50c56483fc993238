"""The ceiling: a bare Twisted + Autobahn WebSocket relay, no MQTT, no routing.

    python -m bench.bare_relay [--listen tcp:0:interface=127.0.0.1]

A WebSocket opened on path ``/connector`` is *the* connector; any other path
is a device (the newest one is *the* device). Every binary message from a
device is sent unchanged, as one message, to the connector, and every message
from the connector to the device. The load clients send it the very same
bytes as to the gateway (MQTT PUBLISH packets), which it treats as opaque.

Autobahn options are the gateway's (``linchpin_gateway.websocket``): no
auto-fragmentation, no UTF-8 validation, TCP_NODELAY, no compression, no
WebSocket pings, the same frame/message caps. TCP_NODELAY is set on the
socket here explicitly, because Autobahn's ``tcpNoDelay`` option is silently
lost (see RelayProtocol.connectionMade); the gateway gets TCP_NODELAY from
twisted.web's HTTPChannel, which accepts its sockets before the upgrade.
``--nagle`` leaves it off (what a plain Autobahn factory really runs with). Prints one line
``bare relay listening at 127.0.0.1:PORT`` once it listens; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

from linchpin_gateway.websocket import websocket_options

MAX_PACKET = 1048576  # the gateway's default --max-message-size


class RelayProtocol(WebSocketServerProtocol):
    is_connector = False

    def connectionMade(self):
        super().connectionMade()
        # Autobahn's own tcpNoDelay option never reaches the socket: its
        # connectionMade reads self.tcpNoDelay before _connectionMade copies
        # the factory options onto the protocol, gets AttributeError and
        # swallows it. So the option is applied here, as the gateway means to.
        if self.factory.nodelay:
            self.transport.setTcpNoDelay(True)

    def onConnect(self, request):
        self.is_connector = request.path == "/connector"
        return "mqtt" if "mqtt" in request.protocols else None

    def onOpen(self):
        f = self.factory
        if self.is_connector:
            f.connector = self
        else:
            f.devices.add(self)
            f.device = self

    def onMessage(self, payload, isBinary):
        f = self.factory
        peer = f.device if self.is_connector else f.connector
        if peer is not None:
            peer.sendMessage(payload, isBinary=True)

    def onClose(self, wasClean, code, reason):
        f = self.factory
        if f.connector is self:
            f.connector = None
        f.devices.discard(self)
        if f.device is self:
            f.device = None


class RelayFactory(WebSocketServerFactory):
    protocol = RelayProtocol

    def __init__(self, reactor, nodelay: bool = True):
        super().__init__("ws://127.0.0.1/", protocols=["mqtt"], reactor=reactor)
        self.nodelay = nodelay
        self.connector = None
        self.device = None
        self.devices: set = set()
        # The same options as the gateway's factory.
        self.setProtocolOptions(**websocket_options(MAX_PACKET))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="tcp:0:interface=127.0.0.1")
    parser.add_argument("--nagle", action="store_true",
                        help="leave Nagle on, as Autobahn's lost tcpNoDelay option does (diagnostic)")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    factory = RelayFactory(reactor, nodelay=not args.nagle)

    def listening(port):
        addr = port.getHost()
        print(f"bare relay listening at {addr.host}:{addr.port}", flush=True)

    def failed(failure):
        print(f"bare relay cannot listen: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        reactor.stop()

    serverFromString(reactor, args.listen).listen(factory).addCallbacks(listening, failed)
    reactor.run()


if __name__ == "__main__":
    main()
