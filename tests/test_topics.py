"""The topic table of PROTOCOL.md section 4, as the contract package states it."""

from linchpin_common.contract import topics

D = "0123456789abcdef0123456789abcdef"


def test_topic_builders_and_parsers():
    assert topics.up_topic(D) == f"devices/{D}/up" and topics.down_topic(D) == f"devices/{D}/down"
    assert topics.up_topic_id(f"devices/{D}/up") == D and topics.down_topic_id(f"devices/{D}/down") == D
    assert topics.up_topic_id(f"devices/{D.upper()}/up") is None  # ids are lowercase hex
    assert topics.up_topic_id(f"devices/{D}/down") is None and topics.down_topic_id(f"devices/{D}/up") is None
    assert topics.down_topic_id("devices/short/down") is None


def test_acl_predicates_match_exactly_as_written():
    assert topics.device_may_subscribe(D, f"devices/{D}/down") and topics.device_may_subscribe(D, "$gateway/status")
    for refused in (f"devices/{D}/up", "devices/+/down", "#", "$gateway/events", f"devices/{'0' * 32}/down"):
        assert not topics.device_may_subscribe(D, refused)
    assert topics.connector_may_subscribe("devices/+/up") and topics.connector_may_subscribe("$gateway/events")
    for refused in ("devices/#", "devices/+/down", "$gateway/status", f"devices/{D}/up"):
        assert not topics.connector_may_subscribe(refused)


def test_gateway_payloads_round_trip():
    assert topics.status_payload(True) == b'{"connector": "online"}'
    assert topics.parse_status(topics.status_payload(False)) is False
    assert topics.parse_status(b"junk") is None and topics.parse_status(b'{"connector": "maybe"}') is None
    assert topics.parse_event(topics.event_payload(topics.EVENT_REVOKED, D)) == ("device_revoked", D)
    assert topics.parse_event(b'{"event": "device_paired", "device_id": "nothex"}') is None
