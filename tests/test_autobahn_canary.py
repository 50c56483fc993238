"""The Autobahn names the lean WebSocket path relies on (linchpin_common/wsframes.py,
linchpin_gateway/websocket.py, linchpin_common/mqtt_client.py) still exist.

Those modules override or read Autobahn internals that no release promises
to keep; setup.py bounds Autobahn below its next major version, and this
test says at once, by name, what a newer release no longer has."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
from autobahn.twisted.websocket import WebSocketClientProtocol, WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.testing import StringTransport
from linchpin_gateway.websocket import HANDSHAKE_LEFTOVERS

AUTOBAHN = version("autobahn")

# (class, name, parameters it must take after self, or None for an attribute)
METHODS = [
    (WebSocketServerProtocol, "_fail_connection", ("code", "reason")),
    (WebSocketServerProtocol, "_protocol_violation", ("reason",)),
    (WebSocketServerProtocol, "_onPing", ("payload",)),
    (WebSocketServerProtocol, "_onPong", ("payload",)),
    (WebSocketServerProtocol, "onCloseFrame", ("code", "reasonRaw")),
    (WebSocketServerProtocol, "sendPong", ("payload",)),
    (WebSocketServerProtocol, "dataReceived", ("data",)),
    (WebSocketClientProtocol, "_fail_connection", ("code", "reason")),
    (WebSocketClientProtocol, "_protocol_violation", ("reason",)),
    (WebSocketClientProtocol, "dataReceived", ("data",)),
]
CONSTANTS = ["STATE_CLOSED", "STATE_OPEN"]
# Set on a connection by the opening handshake, and replaced or cleared by
# start_lean_receive: ``data`` (bytes after the handshake), ``send_queue``
# (a deque with popleft), the handshake's buffers and the UTF-8 validator.
INSTANCE = ["data", "send_queue", "http_request_data", "http_headers", "utf8validator", "maxFramePayloadSize",
            "maxMessagePayloadSize", "state"]
# Left by the handshake and dropped or shared by the gateway's onOpen, to
# keep an idle session small (linchpin_gateway/websocket.py): a rename in
# Autobahn would silently undo that.
INSTANCE += ["trafficStats", *HANDSHAKE_LEFTOVERS]


def _missing(what: str) -> str:
    return (f"Autobahn {AUTOBAHN} no longer has {what}, which the lean WebSocket path "
            "(linchpin_common/wsframes.py) relies on: check that release's changes before raising the bound "
            "in setup.py")


@pytest.mark.parametrize("cls, name, params", METHODS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_the_private_methods_we_override_or_call_are_there(cls, name, params):
    method = getattr(cls, name, None)
    assert callable(method), _missing(f"{cls.__name__}.{name}")
    names = tuple(inspect.signature(method).parameters)[1:1 + len(params)]
    assert names == params, _missing(f"{cls.__name__}.{name}{params} (it takes {names})")


def test_the_state_constants_are_there():
    for name in CONSTANTS:
        assert hasattr(WebSocketServerProtocol, name), _missing(f"WebSocketProtocol.{name}")


def test_a_connection_has_what_the_lean_path_takes_over_after_the_handshake():
    factory = WebSocketServerFactory("ws://gw.test/mqtt")
    factory.protocol = WebSocketServerProtocol
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(b"GET /mqtt HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert protocol.state == protocol.STATE_OPEN
    for name in INSTANCE:
        assert hasattr(protocol, name), _missing(f"the connection attribute {name}")
    assert hasattr(protocol.send_queue, "popleft"), _missing("a send_queue with popleft()")


def test_the_compiled_masker_names_are_there_when_it_is():
    from autobahn.websocket import xormasker

    assert hasattr(xormasker, "create_xor_masker") and hasattr(xormasker, "USES_NVX"), \
        _missing("autobahn.websocket.xormasker.create_xor_masker / USES_NVX")
