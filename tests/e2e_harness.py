"""Connector and device wired together in memory, with a wire the test pumps.

The "gateway" here is a queue of envelopes in each direction. Nothing moves
until the test calls :meth:`Wire.pump`, and the test may drop, duplicate or
alter envelopes on the way, which is how lost WELCOMEs, replays and
tampering are played.
"""

from __future__ import annotations

import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.internet import defer
from twisted.internet.task import Clock

from linchpin_common.contract import e2e
from linchpin_connector.connector import DeviceChannels
from linchpin_connector.device import Device, DeviceState
from linchpin_connector.state import AsyncState, ConnectorState
from linchpin_common.workers import InlineWorker

DEVICE_ID = "d" * 32


class Wire:
    def __init__(self):
        self.up: list[bytes] = []  # device -> connector
        self.down: list[bytes] = []  # connector -> device
        self.filter_up = None  # payload -> payload | None (dropped)
        self.filter_down = None
        self.log: list[tuple[str, bytes]] = []
        self.connector = None
        self.device_deliver = None

    def pump(self, limit: int = 10000) -> None:
        for _ in range(limit):
            if self.up:
                payload = self.up.pop(0)
                self.log.append(("up", payload))
                if self.filter_up is not None:
                    payload = self.filter_up(payload)
                if payload is not None and self.connector is not None:
                    self.connector(payload)
            elif self.down:
                payload = self.down.pop(0)
                self.log.append(("down", payload))
                if self.filter_down is not None:
                    payload = self.filter_down(payload)
                if payload is not None and self.device_deliver is not None:
                    self.device_deliver(f"devices/{DEVICE_ID}/down", payload)
            else:
                return
        raise AssertionError("wire never went quiet")

    def kinds(self, direction: str) -> list[int]:
        return [p[1] for d, p in self.log if d == direction and len(p) > 1]


class FakeMQTT:
    """What Device needs of an MQTT client: publish, subscribe, closed."""

    def __init__(self, wire: Wire, on_message, online: bool):
        self.wire = wire
        self.on_message = on_message
        self.online = online
        self.is_open = True
        self.closed = defer.Deferred()
        wire.device_deliver = on_message

    def publish(self, topic, payload, qos=0):
        self.wire.up.append(payload)
        return defer.succeed(None)

    def subscribe(self, topics):
        status = json.dumps({"connector": "online" if self.online else "offline"}).encode()
        self.on_message("$gateway/status", status)
        return defer.succeed([0 for _ in topics])

    def close(self):
        self.is_open = False


class RecordingProxy:
    """Stands in for the backend proxy: records messages, answers on demand."""

    def __init__(self, user, send):
        self.user = user
        self.send = send
        self.handled: list[tuple[dict, bytes]] = []
        self.closed = False

    def handle(self, header, body):
        self.handled.append((header, body))

    def close(self):
        self.closed = True


class Pair:
    """One connector, one device, one wire."""

    def __init__(self, tmp_path, user="alice"):
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.wire = Wire()
        self.static = X25519PrivateKey.generate()
        self.setup_secret = bytes(range(32))
        self.cstate = ConnectorState(str(tmp_path / "connector"))
        self.cstate.save_registration("http://127.0.0.1:1", "a" * 32, "pw", self.static.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))
        self.cstate.add_device(DEVICE_ID, user, self.setup_secret)
        self.proxies: list[RecordingProxy] = []
        self.restart_connector()
        self.dstate = DeviceState(
            path=str(tmp_path / "device.json"), gateway_url="http://127.0.0.1:1", device_id=DEVICE_ID,
            device_password="pw", connector_key=e2e.b64u_encode(self.static.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)),
            setup_secret=e2e.b64u_encode(self.setup_secret))
        self.dstate.save()
        self.online = True

    def restart_connector(self):
        """A new connector process: same durable state, no sessions in memory."""
        self.channels = DeviceChannels(AsyncState(self.cstate, InlineWorker()), self.static,
                                       lambda device_id, payload: self.wire.down.append(payload),
                                       self._make_proxy, self.clock)
        self.wire.connector = lambda payload: self.channels.envelope(DEVICE_ID, payload)

    def _make_proxy(self, user, send):
        proxy = RecordingProxy(user, send)
        self.proxies.append(proxy)
        return proxy

    def new_device(self, timeout=30.0) -> Device:
        """A device process (state reloaded from its file), connected."""
        state = DeviceState.load(self.dstate.path)

        def connect(reactor, url, username, password, on_message, **kw):
            return defer.succeed(FakeMQTT(self.wire, on_message, self.online))

        device = Device(self.clock, state, timeout=timeout, connect=connect, worker=InlineWorker())
        opened = defer.ensureDeferred(device.open())
        self.wire.pump()
        assert opened.called
        return device

    def run(self, coroutine):
        """Start a device operation, pump the wire, return its Deferred."""
        d = defer.ensureDeferred(coroutine)
        self.wire.pump()
        return d

    def connector_device(self):
        return self.cstate.device(DEVICE_ID)


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]
