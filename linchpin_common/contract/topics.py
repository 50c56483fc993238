"""MQTT topics and who may use them (PROTOCOL.md section 4).

The gateway enforces these predicates; the connector and the device build
their topics with the same functions, so a topic is written in one place.
"""

from __future__ import annotations

import json
import re

from .ids import is_hex_id
from .wire import SUBACK_FAILURE  # noqa: F401 (the SUBACK code a refused filter gets)

UP_FILTER = "devices/+/up"  # the connector's subscription: every device's up topic
STATUS = "$gateway/status"  # gateway -> device: is the connector online
EVENTS = "$gateway/events"  # gateway -> connector: device lifecycle events
DRAIN = "$gateway/drain"  # connector -> gateway: give me no new devices

ONLINE, OFFLINE, MOVED = "online", "offline", "moved"  # the values of a $gateway/status

EVENT_PAIRED = "device_paired"
EVENT_CONNECTED = "device_connected"
EVENT_DISCONNECTED = "device_disconnected"
EVENT_REVOKED = "device_revoked"

# Several connectors per instance: each session names itself by its MQTT
# client identifier, and at most MAX_CONNECTORS of one instance coexist.
MAX_CONNECTORS = 16
_CONNECTOR_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def is_connector_name(name: str) -> bool:
    """Whether ``name`` may be a connector's client identifier (else CONNACK 2)."""
    return _CONNECTOR_NAME.fullmatch(name) is not None


_PREFIX = "devices/"
_UP_SUFFIX = "/up"
_DOWN_SUFFIX = "/down"
_DOWN_LEN = len(_PREFIX) + 32 + len(_DOWN_SUFFIX)
_UP_LEN = len(_PREFIX) + 32 + len(_UP_SUFFIX)


def up_topic(device_id: str) -> str:
    return f"{_PREFIX}{device_id}{_UP_SUFFIX}"


def down_topic(device_id: str) -> str:
    return f"{_PREFIX}{device_id}{_DOWN_SUFFIX}"


def down_topic_id(topic: str) -> str | None:
    """The X of a ``devices/X/down`` topic with a 32-character X, else None.

    Whether X is hex is left to the caller (the router checks it only when X
    names no connected device, which keeps the hot path short)."""
    if len(topic) != _DOWN_LEN or not topic.startswith(_PREFIX) or not topic.endswith(_DOWN_SUFFIX):
        return None
    return topic[len(_PREFIX):-len(_DOWN_SUFFIX)]


def up_topic_id(topic: str) -> str | None:
    """The device_id of a ``devices/<D>/up`` topic, else None."""
    if len(topic) != _UP_LEN or not topic.startswith(_PREFIX) or not topic.endswith(_UP_SUFFIX):
        return None
    device_id = topic[len(_PREFIX):-len(_UP_SUFFIX)]
    return device_id if is_hex_id(device_id) else None


def device_may_subscribe(device_id: str, topic_filter: str) -> bool:
    return topic_filter == down_topic(device_id) or topic_filter == STATUS


def connector_may_subscribe(topic_filter: str) -> bool:
    return topic_filter == UP_FILTER or topic_filter == EVENTS


def device_subscriptions(device_id: str) -> list[str]:
    return [down_topic(device_id), STATUS]


CONNECTOR_SUBSCRIPTIONS = [UP_FILTER, EVENTS]


def status_payload(online: bool) -> bytes:
    return status_message(ONLINE if online else OFFLINE)


def status_message(value: str) -> bytes:
    """A ``$gateway/status`` payload: ``online``, ``offline`` or ``moved``."""
    return json.dumps({"connector": value}).encode()


def connector_status(payload: bytes) -> str | None:
    """``online``, ``offline`` or ``moved`` from a ``$gateway/status``
    payload; None if it is not one."""
    try:
        value = json.loads(payload).get("connector")
    except (ValueError, AttributeError):
        return None
    return value if value in (ONLINE, OFFLINE, MOVED) else None


def parse_status(payload: bytes) -> bool | None:
    """True/False for an ``online``/``offline`` status, None otherwise
    (``moved`` included: the connector is there, the device's session is not)."""
    return {ONLINE: True, OFFLINE: False}.get(connector_status(payload))


def event_payload(event: str, device_id: str) -> bytes:
    return json.dumps({"event": event, "device_id": device_id}).encode()


def parse_event(payload: bytes) -> tuple[str, str] | None:
    """(event, device_id) of a ``$gateway/events`` payload, None if malformed."""
    try:
        data = json.loads(payload)
        event, device_id = data["event"], data["device_id"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(event, str) or not is_hex_id(device_id):
        return None
    return event, device_id
