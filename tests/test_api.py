"""REST API of PROTOCOL.md section 2 through StubTreq: every call, status and error body."""

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from linchpin_gateway.router import DEVICE, Principal
from tests.conftest import JSON, basic
from tests.doubles import BASE, Client, FakeSession, result



@pytest.fixture
def gw(make_gateway):
    return make_gateway()


@pytest.fixture
def api(gw):
    return Client(gw)


def assert_error(resp, body, status, code):
    assert resp.code == status
    assert body["error"] == code and isinstance(body["message"], str) and body["message"]


def test_register(api):
    body = api.register()
    assert re.fullmatch(r"[0-9a-f]{32}", body["instance_id"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", body["instance_password"])
    assert body["gateway_url"] == BASE


def test_public_url_wins(make_gateway):
    api = Client(make_gateway(public_url="https://gw.example.com/"))
    assert api.register()["gateway_url"] == "https://gw.example.com"


def test_registration_token(make_gateway):
    api = Client(make_gateway(registration_token="s3cret"))
    resp, body = api.call("POST", "/api/v1/instances", {})
    assert_error(resp, body, 401, "unauthorized")
    assert resp.headers.getRawHeaders("www-authenticate") == ['Bearer realm="lmgateway"']
    resp, body = api.call("POST", "/api/v1/instances", {}, {"Authorization": "Bearer wrong"})
    assert resp.code == 401
    assert api.register(headers={"Authorization": "Bearer s3cret"})["instance_id"]


def test_device_lifecycle(api, gw):
    inst = api.register()
    auth = basic(inst["instance_id"], inst["instance_password"])
    dev = api.add_device(inst)
    assert re.fullmatch(r"[0-9a-f]{32}", dev["device_id"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", dev["device_setup_key"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", dev["expires_at"])
    assert dev["gateway_url"] == BASE
    resp, body = api.call("GET", "/api/v1/devices", headers=auth)
    assert body == {"devices": [{"device_id": dev["device_id"], "state": "pending", "connected": False}]}

    resp, body = api.setup(dev["device_setup_key"])
    assert resp.code == 200 and body["device_id"] == dev["device_id"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", body["device_password"])
    principal = result(gw.authenticator.authenticate(dev["device_id"], body["device_password"]))
    assert principal == Principal(DEVICE, dev["device_id"], inst["instance_id"])

    # single use
    resp, again = api.setup(dev["device_setup_key"])
    assert_error(resp, again, 404, "invalid_setup_key")

    session = FakeSession()
    gw.router.attach(principal, session)
    resp, body = api.call("GET", "/api/v1/devices", headers=auth)
    assert body["devices"] == [{"device_id": dev["device_id"], "state": "active", "connected": True}]

    resp, body = api.call("DELETE", f"/api/v1/devices/{dev['device_id']}", headers=auth)
    assert resp.code == 204 and body is None
    assert session.closed == "device revoked"
    assert result(gw.authenticator.authenticate(dev["device_id"], "x")) is None
    resp, body = api.call("GET", "/api/v1/devices", headers=auth)
    assert body == {"devices": []}
    resp, body = api.call("DELETE", f"/api/v1/devices/{dev['device_id']}", headers=auth)
    assert_error(resp, body, 404, "not_found")


def test_other_instances_device_is_404(api):
    a, b = api.register(), api.register()
    dev = api.add_device(a)
    resp, body = api.call("DELETE", f"/api/v1/devices/{dev['device_id']}",
                          headers=basic(b["instance_id"], b["instance_password"]))
    assert_error(resp, body, 404, "not_found")
    resp, body = api.call("DELETE", "/api/v1/devices/not-hex", headers=basic(b["instance_id"], b["instance_password"]))
    assert_error(resp, body, 404, "not_found")
    resp, body = api.call("GET", "/api/v1/devices", headers=basic(a["instance_id"], a["instance_password"]))
    assert len(body["devices"]) == 1


def test_setup_key_expires(make_gateway):
    gw = make_gateway(setup_key_ttl=60)
    api = Client(gw)
    dev = api.add_device(api.register())
    gw.reactor.advance(61)
    resp, body = api.setup(dev["device_setup_key"])
    assert_error(resp, body, 404, "invalid_setup_key")


def test_expired_pending_devices_purged(make_gateway):
    gw = make_gateway(setup_key_ttl=60)
    api = Client(gw)
    inst = api.register()
    api.add_device(inst)
    gw.reactor.advance(3601)  # the purge timer runs hourly
    resp, body = api.call("GET", "/api/v1/devices", headers=basic(inst["instance_id"], inst["instance_password"]))
    assert body == {"devices": []}


@pytest.mark.parametrize("key", ["", "nope", "A" * 22, "x" * 1000])
def test_unknown_setup_keys_look_the_same(api, key):
    resp, body = api.setup(key)
    assert resp.code == 404 and body == {"error": "invalid_setup_key", "message": "unknown, used or expired setup key"}


@pytest.mark.parametrize("raw,code", [(b"{", "bad_request"), (b"[]", "bad_request"), (b'{"x":1}', "bad_request"),
                                      (b'{"device_setup_key": 5}', "bad_request"), (b"\xff\xfe", "bad_request")])
def test_setup_bad_bodies(api, raw, code):
    resp, body = api.call("POST", "/api/v1/devices/setup", raw=raw, headers=JSON)
    assert_error(resp, body, 400, code)


def test_unknown_fields_ignored(api):
    dev = api.add_device(api.register())
    resp, body = api.call("POST", "/api/v1/devices/setup", {"device_setup_key": dev["device_setup_key"], "x": [1]})
    assert resp.code == 200


def test_rotate_password(api, gw):
    inst = api.register()
    old = basic(inst["instance_id"], inst["instance_password"])
    resp, body = api.call("POST", "/api/v1/instance/password", {}, old)
    assert resp.code == 200 and body["instance_password"] != inst["instance_password"]
    resp, _ = api.call("GET", "/api/v1/devices", headers=old)
    assert resp.code == 401
    resp, _ = api.call("GET", "/api/v1/devices", headers=basic(inst["instance_id"], body["instance_password"]))
    assert resp.code == 200


def test_delete_instance_closes_sessions(api, gw):
    inst = api.register()
    auth = basic(inst["instance_id"], inst["instance_password"])
    dev = api.add_device(inst)
    _, creds = api.setup(dev["device_setup_key"])
    principal = result(gw.authenticator.authenticate(dev["device_id"], creds["device_password"]))
    session = FakeSession()
    gw.router.attach(principal, session)
    resp, body = api.call("DELETE", "/api/v1/instance", headers=auth)
    assert resp.code == 204
    assert session.closed == "instance deleted"
    assert result(gw.authenticator.authenticate(dev["device_id"], creds["device_password"])) is None
    resp, body = api.call("GET", "/api/v1/devices", headers=auth)
    assert_error(resp, body, 401, "unauthorized")


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Basic !!!"}, {"Authorization": "Bearer x"}, basic("a" * 32, "pw"), basic("nothex", "pw"),
])
def test_401_same_answer(api, headers):
    resp, body = api.call("GET", "/api/v1/devices", headers=headers)
    assert body == {"error": "unauthorized", "message": "missing or wrong credentials"}
    assert resp.headers.getRawHeaders("www-authenticate") == ['Basic realm="lmgateway"']


def test_wrong_password_same_answer_as_unknown(api):
    inst = api.register()
    resp, body = api.call("GET", "/api/v1/devices", headers=basic(inst["instance_id"], "wrong"))
    assert resp.code == 401 and body["message"] == "missing or wrong credentials"


@pytest.mark.parametrize("method,path", [("GET", "/"), ("GET", "/api"), ("GET", "/api/v2/devices"),
                                         ("PUT", "/api/v1/nope"), ("DELETE", "/api/v1/devices/x/y")])
def test_unknown_path_404_before_method(api, method, path):
    resp, body = api.call(method, path)
    assert_error(resp, body, 404, "not_found")


@pytest.mark.parametrize("method,path", [("GET", "/api/v1/instances"), ("PUT", "/api/v1/devices"),
                                         ("GET", "/api/v1/devices/setup"), ("POST", "/api/v1/instance")])
def test_405(api, method, path):
    resp, body = api.call(method, path)
    assert_error(resp, body, 405, "method_not_allowed")


def test_413(api):
    resp, body = api.call("POST", "/api/v1/instances", raw=b"{" + b" " * (64 * 1024) + b"}", headers=JSON)
    assert_error(resp, body, 413, "payload_too_large")


def test_exactly_64k_is_fine(api):
    resp, body = api.call("POST", "/api/v1/instances", raw=b"{" + b" " * (64 * 1024 - 2) + b"}", headers=JSON)
    assert resp.code == 201


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_415(api, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    resp, body = api.call("POST", "/api/v1/instances", raw=b"{}", headers=headers)
    assert_error(resp, body, 415, "unsupported_media_type")


def test_json_with_charset_ok(api):
    resp, _ = api.call("POST", "/api/v1/instances", raw=b"{}", headers={"Content-Type": "application/json; charset=utf-8"})
    assert resp.code == 201


def test_healthz(api):
    resp, body = api.call("GET", "/healthz")
    assert resp.code == 200 and body == {"status": "ok"}


def test_healthz_503_when_store_fails(api, gw):
    gw.store.ping = lambda: defer.fail(RuntimeError("disk gone"))
    resp, body = api.call("GET", "/healthz")
    assert_error(resp, body, 503, "unavailable")


def test_readyz_follows_the_store(api, gw):
    resp, body = api.call("GET", "/readyz")
    assert resp.code == 200 and body == {"status": "ready"}
    gw.store.ping = lambda: defer.fail(RuntimeError("disk gone"))
    resp, body = api.call("GET", "/readyz")
    assert_error(resp, body, 503, "unavailable")
    assert body["message"] == "store unreachable"
    assert resp.headers.getRawHeaders("Retry-After") == ["5"]
    resp, body = api.call("POST", "/readyz")
    assert_error(resp, body, 405, "method_not_allowed")


def test_store_unavailable_is_503_with_retry_after(api, gw):
    from linchpin_gateway.store import StoreUnavailable

    gw.store.create_instance = lambda *a: defer.fail(StoreUnavailable("down"))
    resp, body = api.call("POST", "/api/v1/instances", {})
    assert_error(resp, body, 503, "unavailable")
    assert resp.headers.getRawHeaders("retry-after") == ["5"]


def test_setup_emits_paired_event(api, gw):
    from linchpin_gateway.router import CONNECTOR

    inst = api.register()
    session = FakeSession()
    client = gw.router.attach(Principal(CONNECTOR, inst["instance_id"], inst["instance_id"]), session)
    gw.router.subscribe(client, [("$gateway/events", 0)])
    dev = api.add_device(inst)
    api.setup(dev["device_setup_key"])
    assert session.events() == [("device_paired", dev["device_id"])]


def test_store_holds_no_secret(api, gw, tmp_path):
    inst = api.register()
    dev = api.add_device(inst)
    _, creds = api.setup(dev["device_setup_key"])
    dev2 = api.add_device(inst)
    secrets = [inst["instance_password"], dev["device_setup_key"], creds["device_password"], dev2["device_setup_key"]]
    gw.store.stop()
    from tests.secrets_scan import find_secrets

    assert find_secrets(tmp_path, secrets) == []


def test_unauthenticated_calls_rate_limited_with_retry_after(api, gw):
    codes = [api.setup("nope")[0].code for _ in range(40)]
    assert codes[:30] == [404] * 30 and set(codes[30:]) == {429}
    resp, body = api.setup("nope")
    assert_error(resp, body, 429, "rate_limited")
    retry = int(resp.headers.getRawHeaders("retry-after")[0])
    assert 1 <= retry <= 2
    gw.reactor.advance(retry)
    assert api.setup("nope")[0].code == 404
    assert gw.stats.rate_limited >= 11


def test_failed_logins_charge_and_then_block_before_hashing(api, gw):
    inst = api.register()
    for _ in range(20):
        resp, _ = api.call("GET", "/api/v1/devices", headers=basic(inst["instance_id"], "wrong"))
        assert resp.code == 401
    resp, body = api.call("GET", "/api/v1/devices", headers=basic(inst["instance_id"], "wrong"))
    assert resp.code == 429  # 20 failed logins a minute is the limit
    pending_before = gw.hasher.pending
    # even the right password waits now: the address is over its limit
    resp, body = api.call("GET", "/api/v1/devices", headers=basic(inst["instance_id"], inst["instance_password"]))
    assert_error(resp, body, 429, "rate_limited")
    assert gw.hasher.pending == pending_before


def test_authenticated_calls_spend_no_address_budget(make_gateway):
    api = Client(make_gateway(instance_rest_limit=0))
    inst = api.register()
    auth = basic(inst["instance_id"], inst["instance_password"])
    for _ in range(300):
        assert api.call("GET", "/api/v1/devices", headers=auth)[0].code == 200


def test_well_behaved_client_never_limited(api, gw):
    for _ in range(100):  # 20 a minute, for five minutes
        assert api.setup("nope")[0].code == 404
        gw.reactor.advance(3)


def test_default_limits_trip_within_100_calls_a_minute(api, gw):
    codes = []
    for _ in range(100):
        codes.append(api.setup("nope")[0].code)
        gw.reactor.advance(0.6)
    assert 429 in codes


def test_verified_credentials_cached_and_forgotten_on_rotation(api, gw):
    inst = api.register()
    auth = basic(inst["instance_id"], inst["instance_password"])
    calls = []
    real = gw.hasher.verify
    gw.hasher.verify = lambda *a: (calls.append(a), real(*a))[1]
    for _ in range(5):
        assert api.call("GET", "/api/v1/devices", headers=auth)[0].code == 200
    assert len(calls) == 1  # PBKDF2 once, then the cache
    api.call("POST", "/api/v1/instance/password", {}, auth)
    assert api.call("GET", "/api/v1/devices", headers=auth)[0].code == 401
    gw.reactor.advance(301)
    resp, body = api.call("POST", "/api/v1/instance/password", {}, auth)
    assert resp.code == 401


@pytest.fixture
def unlimited_gateway(make_gateway):
    """One gateway for every example of a hypothesis test (no rate limit)."""
    return make_gateway(rest_limit=0, login_limit=0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["device_setup_key", "x", ""]), json_values, max_size=3).map(
        lambda v: json.dumps(v).encode()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/api/v1/devices/setup", "/api/v1/instances", "/api/v1/devices",
                             "/api/v1/instance/password"]),
       body=bodies, ctype=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"]))
def test_fuzzed_bodies_only_get_defined_answers(unlimited_gateway, path, body, ctype):
    api = Client(unlimited_gateway)
    resp, parsed = api.call("POST", path, raw=body, headers={"Content-Type": ctype})
    assert resp.code in (200, 201, 400, 401, 404, 415), (resp.code, parsed)
    if resp.code >= 400:
        assert set(parsed) == {"error", "message"}
        assert parsed["error"] in ("bad_request", "unauthorized", "invalid_setup_key", "unsupported_media_type")


def test_tcp_keepalive_on_for_every_accepted_socket(gw):
    from twisted.internet.testing import StringTransport

    class TCP(StringTransport):
        keepalive = nodelay = None

        def setTcpKeepAlive(self, on):
            self.keepalive = on

        def setTcpNoDelay(self, on):
            self.nodelay = on

    class TLS(StringTransport):  # a TLS transport: the socket is its handle
        def __init__(self):
            super().__init__()
            self.handle = TCP()

        def getHandle(self):
            return self.handle

    plain, tls = TCP(), TLS()
    gw.site.buildProtocol(None).makeConnection(plain)
    gw.site.buildProtocol(None).makeConnection(tls)
    assert plain.keepalive and tls.handle.keepalive


def test_unauthenticated_calls_and_failed_logins_have_separate_budgets(api, gw):
    inst = api.register()
    for _ in range(15):
        assert api.setup("nope")[0].code == 404
    for _ in range(16):
        assert api.call("GET", "/api/v1/devices", headers=basic(inst["instance_id"], "wrong"))[0].code == 401
    auth = basic(inst["instance_id"], inst["instance_password"])
    assert api.call("GET", "/api/v1/devices", headers=auth)[0].code == 200


@pytest.mark.parametrize("method,path,status,code", [
    ("POST", "/healthz", 405, "method_not_allowed"), ("GET", "/healthz/x", 404, "not_found"),
    ("GET", "/mqtt", 400, "bad_request"), ("GET", "/mqtt/x", 404, "not_found"),
])
def test_healthz_and_mqtt_follow_the_api_error_rules(api, method, path, status, code):
    resp, body = api.call(method, path)
    assert_error(resp, body, status, code)


CORS = {"access-control-allow-origin": ["*"], "access-control-allow-methods": ["POST"],
        "access-control-allow-headers": ["Content-Type"]}


def cors(resp) -> dict:
    return {name: resp.headers.getRawHeaders(name) for name in CORS if resp.headers.hasHeader(name)}


def test_the_setup_call_answers_cors_for_a_phones_page(api):
    """PROTOCOL.md section 2: its preflight and every answer of it, errors too."""
    origin = {"Origin": "https://intranet.example"}
    resp, body = api.call("OPTIONS", "/api/v1/devices/setup",
                          headers={**origin, "Access-Control-Request-Method": "POST",
                                   "Access-Control-Request-Headers": "content-type"})
    assert resp.code == 204 and body is None and cors(resp) == CORS
    inst = api.register()
    key = api.add_device(inst)["device_setup_key"]
    resp, body = api.call("POST", "/api/v1/devices/setup", {"device_setup_key": key}, headers=origin)
    assert resp.code == 200 and cors(resp) == CORS and "device_password" in body
    resp, body = api.call("POST", "/api/v1/devices/setup", {"device_setup_key": key}, headers=origin)
    assert_error(resp, body, 404, "invalid_setup_key")
    assert cors(resp) == CORS  # the page can read why
    resp, _ = api.call("GET", "/api/v1/devices/setup", headers=origin)
    assert resp.code == 405 and cors(resp) == CORS
    assert resp.headers.getRawHeaders("allow") == ["OPTIONS, POST"]


@pytest.mark.parametrize("method, path", [("POST", "/api/v1/instances"), ("OPTIONS", "/api/v1/instances"),
                                          ("GET", "/api/v1/devices"), ("OPTIONS", "/api/v1/devices"),
                                          ("GET", "/api/v1/nope"), ("GET", "/healthz")])
def test_no_other_path_answers_cors(api, method, path):
    resp, _ = api.call(method, path, {} if method == "POST" else None, headers={"Origin": "https://evil.example"})
    assert cors(resp) == {}
