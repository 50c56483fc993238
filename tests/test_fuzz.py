"""Fuzzing that stays (issue 10, "Also"): REST bodies and headers, the E2E
envelope and message, and the proxy's path and header rules.

Each property says what must hold for *any* input, not only the ones a
reviewer thought of: the gateway answers every request with a defined JSON
error and logs no failure; E2E parsing drops garbage without raising and
never accepts a tampered envelope; the proxy lets through only paths the
allow-list covers, and never lets a device choose the identity or
forwarding headers.
"""

from __future__ import annotations

import base64
import json
import string
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import task

from linchpin_common.contract import e2e
from linchpin_connector.proxy_policy import FORWARDING, path_allowed
from tests.doubles import Client
from tests.test_e2e import D, flipped, random_handshake_cached
from tests.test_proxy import USER, Device, held_proxy, req

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- REST ----------------------------------------------------------------------------


@pytest.fixture
def failures(logged_failures_fail_the_test):
    """Every log event of this test that carries a failure (tests/logcheck.py),
    so that a property names the example that logged one."""
    return logged_failures_fail_the_test


@pytest.fixture
def api(make_gateway):
    return Client(make_gateway(rest_limit=0, login_limit=0))


def nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "dict":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"device_setup_key":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("kind", ["list", "dict", "field"])
@pytest.mark.parametrize("path", ["/api/v1/devices/setup", "/api/v1/instances"])
def test_deeply_nested_json_is_a_bad_request_not_a_crash(api, failures, kind, path):
    """Before: RecursionError escaped as a 500 with a traceback, without
    authentication."""
    body = nested(20_000, kind)
    assert len(body) <= 64 * 1024 or kind == "dict"
    resp, parsed = api.call("POST", path, raw=body[:64 * 1024], headers={"Content-Type": "application/json"})
    assert resp.code == 400 and parsed["error"] == "bad_request"
    assert failures == []


STATUSES = {200, 201, 204, 400, 401, 404, 405, 413, 415}
ERRORS = {"bad_request", "unauthorized", "invalid_setup_key", "not_found", "method_not_allowed",
          "payload_too_large", "unsupported_media_type"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=10,
)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(nested, st.integers(1, 30_000), st.sampled_from(["list", "dict", "field"])).map(lambda b: b[:65536]),
    st.text(alphabet="[]{}\":,0123456789tfn ul\\", max_size=300).map(str.encode),
)
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
authorizations = st.one_of(  # (a header value with control characters is refused by the HTTP layer itself)
    st.none(),
    header_text,
    st.binary(max_size=60).map(lambda b: "Basic " + base64.b64encode(b).decode()),
    st.tuples(st.text(max_size=40), st.text(max_size=40)).map(
        lambda p: "Basic " + base64.b64encode(f"{p[0]}:{p[1]}".encode("utf-8", "surrogatepass")).decode()),
    header_text.map(lambda t: "Bearer " + t),
)
paths = st.sampled_from(["/api/v1/devices/setup", "/api/v1/instances", "/api/v1/devices", "/api/v1/instance",
                         "/api/v1/instance/password", "/api/v1/devices/" + "a" * 32, "/api/v1/devices/%00",
                         "/api/v1/x", "/api/v2/devices", "/api/v1/devices/..%2f", "/healthz", "/mqtt"])


@settings(FUZZ, max_examples=300)
@given(method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "HEAD", "PATCH"]), path=paths, body=raw_bodies,
       ctype=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""]),
       authorization=authorizations)
def test_any_request_gets_a_defined_answer_and_no_traceback(api, failures, method, path, body, ctype,
                                                            authorization):
    headers = {"Content-Type": ctype} if ctype else {}
    if authorization is not None:
        headers["Authorization"] = authorization
    resp, parsed = api.call(method, path, raw=body, headers=headers)
    assert resp.code in STATUSES, (resp.code, parsed)
    if resp.code >= 400 and method != "HEAD":
        assert set(parsed) == {"error", "message"} and parsed["error"] in ERRORS, parsed
    assert failures == []


# -- the E2E envelope and message ------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_decode_message_raises_only_message_error(data):
    try:
        header, body = e2e.decode_message(data)
    except e2e.MessageError:
        return
    assert isinstance(header, dict) and isinstance(header.get("t"), str)
    assert len(body) <= e2e.MAX_BODY_CHUNK


@settings(max_examples=200, deadline=None)
@given(depth=st.integers(1, 100_000), kind=st.sampled_from("[{"))
def test_nested_message_headers_are_refused_cleanly(depth, kind):
    text = (kind * depth).encode()[:e2e.MAX_HEADER]
    with pytest.raises(e2e.MessageError):
        e2e.decode_message(len(text).to_bytes(4, "big") + text)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_tampered_data_envelope_is_never_accepted(data):
    device, connector = random_handshake_cached()
    seq = device.send_seq
    envelope = device.seal(e2e.encode_message({"t": "confirm"}))
    device.send_seq = seq  # the same seq each time: the connector's next expected
    mutation = data.draw(st.one_of(
        st.integers(0, len(envelope) * 8 - 1).map(lambda bit: flipped(envelope, bit)),
        st.integers(0, len(envelope) - 1).map(lambda n: envelope[:n]),
        st.binary(min_size=1, max_size=40).map(lambda extra: envelope + extra),
    ))
    try:
        assert connector.open(mutation) is None
    except e2e.SessionGap:
        raise AssertionError("a forged envelope ended the session")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=61, max_size=61), st.sampled_from([0, 1]))
def test_random_hellos_and_welcomes_are_dropped(tail, key_kind):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    static = _static()
    hello = bytes([1, 1, key_kind]) + tail[1:]
    assert e2e.accept_hello(hello, D, [("k", key_kind, b"k" * 32)], static) is None
    device = e2e.DeviceHandshake.start(D, b"k" * 32, 1, X25519PrivateKey.generate().public_key())
    assert device.finish(bytes([1, 2, 1]) + tail + tail[:8]) is None


_STATIC = []


def _static():
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    if not _STATIC:
        _STATIC.append(X25519PrivateKey.generate())
    return _STATIC[0]


# -- the proxy's path and header rules ----------------------------------------------------

PREFIXES = ("/app", "/wiki/spaces")
path_chars = string.ascii_letters + string.digits + "/.%;?#\\&=+-_~:@!$'()*,\x00\x7f \t\u00e9"
paths_in = st.one_of(
    st.text(alphabet=path_chars, max_size=40),
    st.lists(st.sampled_from(["app", "wiki", "spaces", ".", "..", "%2e", "%2E%2e", "..;x", "%2f", "a%5cb", "%00",
                              "", "x", "%zz", "%", "application"]), max_size=6).map(lambda s: "/" + "/".join(s)),
)


@settings(max_examples=1000, deadline=None)
@given(path=paths_in, query=st.one_of(st.none(), st.text(alphabet=path_chars, max_size=10)))
def test_an_allowed_path_is_always_under_a_prefix_and_clean(path, query):
    full = path if query is None else f"{path}?{query}"
    if not path_allowed(full, PREFIXES):
        return
    route = full.split("?", 1)[0]
    assert full.startswith("/") and not full.startswith("//")
    assert all(0x21 <= ord(c) <= 0x7E for c in full) and "\\" not in full and "#" not in full
    segments = route.split("/")[1:]
    for segment in segments:
        decoded = unquote(segment)
        assert "/" not in decoded and "\\" not in decoded
        assert decoded.split(";", 1)[0] not in (".", "..")
    assert any(route == p or route.startswith(p + "/") for p in PREFIXES)


header_names = st.one_of(
    st.sampled_from(["X-Forwarded-User", "x_forwarded_user", "X-FORWARDED-FOR", "x-forwarded-host",
                     "X_Forwarded_Proto", "Forwarded", "X-Real-IP", "X-Real_IP", "Host", "Content-Length",
                     "Connection", "Proxy-Authorization", "True-Client-IP", "Accept", "X-Custom", "Via"]),
    st.text(alphabet=string.ascii_letters + "-_!#$%&'*+.^`|~", min_size=1, max_size=20),
)
header_values = st.text(alphabet=string.printable + "\u00e9\u20ac", max_size=30)


@settings(max_examples=400, deadline=None)
@given(pairs=st.lists(st.tuples(header_names, header_values), max_size=8),
       public_host=st.sampled_from([None, "wiki.example.com"]))
def test_the_device_never_chooses_identity_or_forwarding_headers(pairs, public_host):
    device = Device()
    proxy, agent = held_proxy(device, task.Clock(), public_host=public_host)
    proxy.handle(req(1, "/app", headers=pairs), b"")
    if not agent.calls:  # refused as malformed: nothing reached the backend
        assert [h["code"] for h in device.for_id(1)] == ["bad_request"]
        return
    sent = {name.decode().lower(): values for name, values in agent.calls[0].headers.getAllRawHeaders()}
    assert sent["x-forwarded-user"] == [USER.encode()]
    assert sent["x-forwarded-proto"] == [b"https"]
    assert sent.get("x-forwarded-host") == ([public_host.encode()] if public_host else None)
    for name in sent:
        normal = name.replace("_", "-")
        if normal not in ("x-forwarded-user", "x-forwarded-proto", "x-forwarded-host"):
            assert normal not in FORWARDING and not normal.startswith("x-forwarded-"), name
            assert normal not in ("host", "content-length", "connection") and not normal.startswith("proxy-")
        for value in sent[name]:
            assert b"\r" not in value and b"\n" not in value
