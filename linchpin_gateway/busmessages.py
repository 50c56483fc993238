"""What gateway nodes say to each other over the bus: channels, keys and
messages, one encoder and one decoder (sans-IO, like ``contract/wire.py``
for MQTT).  :mod:`.cluster` decides what to say and what to do with what it
hears; this module only turns messages into bytes and back.

Channels (a node subscribes to those of what it holds):

``lm:p:<session key>`` (:func:`principal_channel`; a device's key is its
id, a connector session's ``<instance>/<name>``)
    :class:`Up` / :class:`UpRaw` (a device's message for the connector
    session it is pinned to), :class:`Down` / :class:`DownRaw` (a
    connector's message for a device; the ``Raw`` forms carry a QoS 0
    PUBLISH exactly as received, so the receiving node writes those bytes
    unchanged), :class:`Takeover` (a newer session took the key).
``lm:p:<instance>``
    :class:`Event` (a ``$gateway/events`` event for the instance's
    connectors) and :class:`Present` (a device is here, answering
    :class:`WhoIsHere`).
``lm:i:<instance>`` (:func:`instance_channel`)
    :class:`Connector` (a connector session of the instance is ready,
    draining or gone, on a node) and :class:`WhoIsHere` (a node asks the
    others to say again what they hold of the instance).
``lm:ctl`` (:data:`CONTROL`)
    every node: :class:`Heartbeat`, :class:`Bye`, :class:`Charge` and
    :class:`Refund` (rate limits), :class:`Revoke`, :class:`Drop` (an instance
    deleted), :class:`Forget` (a password changed).

The bytes are one kind byte, then fixed fields or compact JSON;
:data:`VECTORS` in the tests pin them.  With several connectors per
instance, :class:`Connector` replaced the single connector's ``Presence``
(``O``) and its ``lm:online:`` key: nodes of the release before it and of
this one do not agree on presence, so a cluster is upgraded all at once.
"""

from __future__ import annotations

import json
from typing import NamedTuple, Union

ID_LENGTH = 32  # principal ids are 32 hex characters

CONTROL = b"lm:ctl"


def principal_channel(principal_id: str) -> bytes:
    return b"lm:p:" + principal_id.encode()


def instance_channel(instance_id: str) -> bytes:
    return b"lm:i:" + instance_id.encode()


def own_key(principal_id: str) -> bytes:
    """Which node holds the principal's session: ``b"<node> <epoch>"``."""
    return b"lm:own:" + principal_id.encode()


def epoch_key(principal_id: str) -> bytes:
    """The principal's epoch counter."""
    return b"lm:epoch:" + principal_id.encode()


def connectors_key(instance_id: str) -> bytes:
    """A hash: each connector session of the instance that is ready or
    draining, by name -> :meth:`Connector.entry`."""
    return b"lm:conns:" + instance_id.encode()


def connector_key(instance_id: str, name: str) -> str:
    """A connector session's key (its ownership, epoch and channel)."""
    return f"{instance_id}/{name}"


def node_key(node: bytes) -> bytes:
    return b"lm:node:" + node


def budget_key(name: str, key: str) -> bytes:
    """A rate-limit bucket every node charges."""
    return b"lm:rl:" + name.encode() + b":" + key.encode()


def _json(kind: bytes, fields: dict) -> bytes:
    return kind + json.dumps(fields).encode()


# -- on a principal's channel -------------------------------------------------


class UpRaw(NamedTuple):
    raw: bytes  # the device's QoS 0 PUBLISH as received

    def encode(self) -> bytes:
        return b"u" + self.raw


class DownRaw(NamedTuple):
    connector_id: str
    raw: bytes

    def encode(self) -> bytes:
        return b"d" + self.connector_id.encode() + self.raw


class Up(NamedTuple):
    qos: int
    device_id: str
    payload: bytes

    def encode(self) -> bytes:
        return b"U%d%s%s" % (self.qos, self.device_id.encode(), self.payload)


class Down(NamedTuple):
    qos: int
    connector_id: str
    payload: bytes

    def encode(self) -> bytes:
        return b"D%d%s%s" % (self.qos, self.connector_id.encode(), self.payload)


class Takeover(NamedTuple):
    epoch: int

    def encode(self) -> bytes:
        return b"T%d" % self.epoch


class Event(NamedTuple):
    event: str
    device_id: str
    node: bytes
    epoch: int

    def encode(self) -> bytes:
        return _json(b"E", {"e": self.event, "d": self.device_id, "n": self.node.decode(), "x": self.epoch})


class Present(NamedTuple):
    device_id: str
    node: bytes
    epoch: int

    def encode(self) -> bytes:
        return _json(b"P", {"d": self.device_id, "n": self.node.decode(), "x": self.epoch})


# -- on an instance's channel ------------------------------------------------


READY, DRAINING, GONE = "r", "d", "g"  # a connector session's states as nodes tell them


class Connector(NamedTuple):
    node: bytes
    name: str
    epoch: int
    state: str  # READY, DRAINING or GONE

    def encode(self) -> bytes:
        return _json(b"C", {"n": self.node.decode(), "c": self.name, "x": self.epoch, "s": self.state})

    def entry(self) -> bytes:
        """Its value in :func:`connectors_key`."""
        return b"%s %s %d" % (self.node, self.state.encode(), self.epoch)

    @classmethod
    def from_entry(cls, name: str, entry: bytes) -> "Connector":
        node, state, epoch = entry.split(b" ")
        if state.decode() not in (READY, DRAINING):
            raise BadMessage(f"connector state {state!r}")
        return cls(node, name, int(epoch), state.decode())


class WhoIsHere(NamedTuple):
    def encode(self) -> bytes:
        return b"W"


# -- on the control channel ------------------------------------------------------


class Heartbeat(NamedTuple):
    node: bytes

    def encode(self) -> bytes:
        return _json(b"", {"op": "hb", "n": self.node.decode()})


class Bye(NamedTuple):
    node: bytes

    def encode(self) -> bytes:
        return _json(b"", {"op": "bye", "n": self.node.decode()})


class Charge(NamedTuple):
    node: bytes
    limiter: str
    key: str

    def encode(self) -> bytes:
        return _json(b"", {"op": "charge", "l": self.limiter, "h": self.key, "n": self.node.decode()})


class Refund(NamedTuple):
    node: bytes
    limiter: str
    key: str

    def encode(self) -> bytes:
        return _json(b"", {"op": "refund", "l": self.limiter, "h": self.key, "n": self.node.decode()})


class Revoke(NamedTuple):
    node: bytes
    instance_id: str
    device_id: str

    def encode(self) -> bytes:
        return _json(b"", {"op": "revoke", "i": self.instance_id, "d": self.device_id, "n": self.node.decode()})


class Drop(NamedTuple):
    node: bytes
    instance_id: str
    device_ids: tuple[str, ...]

    def encode(self) -> bytes:
        return _json(b"", {"op": "drop", "i": self.instance_id, "d": list(self.device_ids), "n": self.node.decode()})


class Forget(NamedTuple):
    node: bytes
    instance_id: str

    def encode(self) -> bytes:
        return _json(b"", {"op": "forget", "i": self.instance_id, "n": self.node.decode()})


PrincipalMessage = Union[UpRaw, DownRaw, Up, Down, Takeover, Event, Present]
InstanceMessage = Union[Connector, WhoIsHere]
ControlMessage = Union[Heartbeat, Bye, Charge, Refund, Revoke, Drop, Forget]


class BadMessage(ValueError):
    """Bytes no node sends."""


def decode_principal(data: bytes) -> PrincipalMessage:
    kind = data[:1]
    if kind == b"u":  # the hot path first
        return UpRaw(data[1:])
    if kind == b"d":
        return DownRaw(data[1:1 + ID_LENGTH].decode(), data[1 + ID_LENGTH:])
    if kind in (b"U", b"D"):
        qos = data[1] - 48
        if qos not in (0, 1):
            raise BadMessage(f"QoS {qos}")
        peer, payload = data[2:2 + ID_LENGTH].decode(), data[2 + ID_LENGTH:]
        return Up(qos, peer, payload) if kind == b"U" else Down(qos, peer, payload)
    if kind == b"T":
        return Takeover(int(data[1:]))
    if kind == b"E":
        m = json.loads(data[1:])
        return Event(m["e"], m["d"], m["n"].encode(), m["x"])
    if kind == b"P":
        m = json.loads(data[1:])
        return Present(m["d"], m["n"].encode(), m["x"])
    raise BadMessage(f"kind {kind!r} on a principal's channel")


def decode_instance(data: bytes) -> InstanceMessage:
    kind = data[:1]
    if kind == b"C":
        m = json.loads(data[1:])
        if m["s"] not in (READY, DRAINING, GONE):
            raise BadMessage(f"connector state {m['s']!r}")
        return Connector(m["n"].encode(), m["c"], m["x"], m["s"])
    if kind == b"W":
        return WhoIsHere()
    raise BadMessage(f"kind {kind!r} on an instance's channel")


_CONTROL = {
    "hb": lambda m, n: Heartbeat(n),
    "bye": lambda m, n: Bye(n),
    "charge": lambda m, n: Charge(n, m["l"], m["h"]),
    "refund": lambda m, n: Refund(n, m["l"], m["h"]),
    "revoke": lambda m, n: Revoke(n, m["i"], m["d"]),
    "drop": lambda m, n: Drop(n, m["i"], tuple(m["d"])),
    "forget": lambda m, n: Forget(n, m["i"]),
}


def decode_control(data: bytes) -> ControlMessage:
    m = json.loads(data)
    make = _CONTROL.get(m.get("op"))
    if make is None:
        raise BadMessage(f"control op {m.get('op')!r}")
    return make(m, m["n"].encode())
