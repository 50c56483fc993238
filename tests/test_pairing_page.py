"""The pairing page in memory: the real twisted.web site and desk, the real
connector state (SQLite, run inline), a fake gateway API and a fake clock."""

from __future__ import annotations

import re
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest
from treq.testing import StubTreq
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from linchpin_common.contract.pairing import parse_pairing_uri
from linchpin_common.gateway_client import GatewayError
from linchpin_common.workers import InlineWorker
from linchpin_connector.state import AsyncState, ConnectorState
from linchpin_connector.web.desk import MAX_PENDING_PER_USER, PairingDesk
from linchpin_connector.web.site import HEARTBEAT, PairingPage

URL = "http://pairing.intranet/"
PUBLIC_KEY = bytes(range(32))


class FakeAPI:
    def __init__(self):
        self.devices = {}
        self.revoked = []

    async def add_device(self):
        device_id = secrets.token_hex(16)
        self.devices[device_id] = "pending"
        return {"device_id": device_id, "device_setup_key": secrets.token_urlsafe(16),
                "expires_at": "2030-01-02T03:04:05Z", "gateway_url": "https://gw.example"}

    async def revoke(self, device_id):
        if device_id not in self.devices:
            raise GatewayError(404, "not_found", "no such device")
        del self.devices[device_id]
        self.revoked.append(device_id)


class PairingPageUnderTest:
    def __init__(self, tmp_path):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_800_000_000)
        self.sync_state = ConnectorState(str(tmp_path / "connector"))
        self.state = AsyncState(self.sync_state, InlineWorker())
        self.api = FakeAPI()
        self.desk = PairingDesk(self.state, self.api, PUBLIC_KEY, self.reactor)
        self.page = PairingPage(self.desk, "X-Forwarded-User", self.reactor, hosts=("Pairing.Intranet",))
        self.stub = StubTreq(self.page)

    def call(self, method, path="", user="alice", headers=None, **kwargs):
        hdrs = dict(headers or {})
        if user is not None:
            hdrs["X-Forwarded-User"] = user
        d = self.stub.request(method, URL + path, headers=hdrs, allow_redirects=False, **kwargs)
        self.stub.flush()
        response = d.result
        body = self.stub.content(response)
        self.stub.flush()
        return response, body.result.decode("utf-8", "replace")

    def token(self, user="alice"):
        _, page = self.call("GET", user=user)
        return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)

    def post(self, path, user="alice", **form):
        return self.call("POST", path, user=user, data=form)

    def pair(self, user="alice"):
        response, _ = self.post("pair", user=user, csrf_token=self.token(user))
        assert response.code == 303
        _, page = self.call("GET", user=user)
        return page


def rows(page):
    return dict(re.findall(r'data-device-id="([0-9a-f]{32})" data-state="(\w+)"', page))


def pairing_uri(page):
    m = re.search(r'data-pairing-uri="([^"]+)"', page)
    return m and m.group(1).replace("&amp;", "&")


@pytest.fixture
def world(tmp_path):
    w = PairingPageUnderTest(tmp_path)
    yield w
    w.sync_state.close()


def test_without_the_identity_header_401_and_a_page_saying_so(world):
    for method, path in (("GET", ""), ("GET", "devices"), ("GET", "events"), ("POST", "pair")):
        response, page = world.call(method, path, user=None)
        assert response.code == 401 and "single sign-on" in page
    for bad in ("", " ", "a\x01b"):
        assert world.call("GET", user=bad)[0].code == 401


def test_the_page_headers_and_no_inline_script(world):
    response, page = world.call("GET")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-security-policy")[0].startswith("default-src 'self'")
    assert response.headers.getRawHeaders("cache-control") == ["no-store"]
    assert response.headers.getRawHeaders("x-frame-options") == ["DENY"]
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)  # no inline script
    assert not re.search(r"<[^>]+\son[a-z]+=", page) and "style=" not in page  # no inline handler or style
    assert 'src="static/pairing.js"' in page and "Pair a new device" in page and "You have no devices yet" in page
    for name, kind in (("pairing.js", "text/javascript"), ("pairing.css", "text/css")):
        response, body = world.call("GET", "static/" + name)
        assert response.code == 200 and response.headers.getRawHeaders("content-type")[0].startswith(kind) and body
    assert world.call("GET", "static/../desk.py")[0].code == 404
    assert world.call("GET", "nope")[0].code == 404
    assert world.call("GET", "pair")[0].code == 405


def test_pair_shows_a_qr_code_until_the_device_has_paired(world):
    page = world.pair()
    [(device_id, state)] = rows(page).items()
    assert state == "pending"
    uri = pairing_uri(page)
    info = parse_pairing_uri(uri)
    assert info.gateway_url == "https://gw.example" and info.connector_key == PUBLIC_KEY
    assert world.sync_state.device(device_id).setup_secret == info.secret  # stored like `device add`
    assert world.sync_state.device(device_id).user == "alice"
    assert re.search(r"<svg[^>]*class=\"qr\"", page) and page.count("data-pairing-uri=") == 1
    # the live part alone (what the script fetches) says the same
    response, live = world.call("GET", "devices")
    assert response.headers.getRawHeaders("cache-control") == ["no-store"] and pairing_uri(live) == uri

    world.desk.gateway_event("device_paired", device_id)
    _, page = world.call("GET")
    assert rows(page) == {device_id: "paired"} and pairing_uri(page) is None
    world.desk.gateway_event("device_connected", device_id)
    assert rows(world.call("GET")[1]) == {device_id: "connected"}
    world.desk.gateway_event("device_disconnected", device_id)
    assert rows(world.call("GET")[1]) == {device_id: "paired"}


def test_the_qr_code_goes_when_the_setup_key_expires(world):
    page = world.pair()
    assert pairing_uri(page)
    world.reactor.advance(1_900_000_000 - world.reactor.seconds())  # past 2030-01-02
    page = world.call("GET")[1]
    assert pairing_uri(page) is None and list(rows(page).values()) == ["pending"]


def test_a_user_sees_and_removes_only_their_own_devices(world):
    alice_page = world.pair("alice")
    [alice_device] = rows(alice_page)
    bob_page = world.pair("bob")
    [bob_device] = rows(bob_page)
    assert alice_device not in bob_page and bob_device not in world.call("GET", user="alice")[1]
    assert pairing_uri(bob_page) != pairing_uri(alice_page)

    response, page = world.post("remove", user="bob", csrf_token=world.token("bob"), device_id=alice_device)
    assert response.code == 404 and "no device" in page
    assert world.api.revoked == [] and world.sync_state.device(alice_device) is not None

    response, _ = world.post("remove", user="alice", csrf_token=world.token("alice"), device_id=alice_device)
    assert response.code == 303 and response.headers.getRawHeaders("location") == ["./"]
    assert world.api.revoked == [alice_device] and world.sync_state.device(alice_device) is None
    assert rows(world.call("GET", user="alice")[1]) == {}


def test_state_changing_requests_need_the_users_csrf_token(world):
    assert world.post("pair")[0].code == 403
    assert world.post("pair", csrf_token="forged")[0].code == 403
    assert world.post("pair", csrf_token=world.token("bob"))[0].code == 403  # another user's token
    response, page = world.call("POST", "pair", data={"csrf_token": world.token()},
                                headers={"Sec-Fetch-Site": "cross-site"})
    assert response.code == 403 and "reload the page" in page
    assert world.api.devices == {}
    [device_id] = rows(world.pair())
    assert world.post("remove", device_id=device_id)[0].code == 403
    assert world.sync_state.device(device_id) is not None


def test_pending_devices_per_user_are_bounded(world):
    for _ in range(MAX_PENDING_PER_USER):
        world.pair()
    response, page = world.post("pair", csrf_token=world.token())
    assert response.code == 409 and "remove one first" in page
    assert len(world.api.devices) == MAX_PENDING_PER_USER
    assert world.post("pair", user="bob", csrf_token=world.token("bob"))[0].code == 303


@pytest.mark.logged_failures.with_args(ConnectionRefusedError)
def test_gateway_trouble_is_a_page_not_a_hang(world):
    async def down():
        raise ConnectionRefusedError("gateway down")

    world.api.add_device = down
    response, page = world.post("pair", csrf_token=world.token())
    assert response.code == 502 and "Try again later" in page


def test_events_stream_tells_only_the_owner_and_keeps_the_stream_alive(world):
    chunks = {"alice": [], "bob": []}
    for user in chunks:
        d = world.stub.get(URL + "events", headers={"X-Forwarded-User": user})
        world.stub.flush()
        response = d.result
        assert response.headers.getRawHeaders("content-type") == ["text/event-stream"]
        assert response.headers.getRawHeaders("cache-control") == ["no-store"]
        response.collect(chunks[user].append)
    world.stub.flush()
    assert b"".join(chunks["alice"]) == b"retry: 3000\n\n"

    page = world.pair("alice")
    [device_id] = rows(page)
    world.stub.flush()
    assert b"event: devices\ndata: changed\n\n" in b"".join(chunks["alice"])
    before = len(chunks["alice"])
    world.desk.gateway_event("device_paired", device_id)
    world.stub.flush()
    assert len(chunks["alice"]) == before + 1
    assert b"event: devices" not in b"".join(chunks["bob"])

    world.reactor.advance(HEARTBEAT)
    world.stub.flush()
    assert chunks["bob"][-1] == b": still here\n\n"
    assert set(world.desk.watchers) == {"alice", "bob"}


def events_request(user: str) -> DummyRequest:
    request = DummyRequest([b"events"])
    request.requestHeaders.setRawHeaders(b"X-Forwarded-User", [user.encode()])
    request.requestHeaders.setRawHeaders(b"Host", [b"localhost:8091"])
    request.prepath, request.postpath = [b"events"], []
    return request


def test_a_closed_event_stream_stops_watching(world):
    request = events_request("carol")
    world.page.render(request)
    assert set(world.desk.watchers) == {"carol"} and world.page.streams == {"carol": 1}
    request.processingFailed(Failure(ConnectionDone("the browser left")))
    assert world.desk.watchers == {} and world.page.streams == {}
    world.reactor.advance(HEARTBEAT * 2)
    assert request.written == [b"retry: 3000\n\n"]  # no heartbeat after the end


def test_device_list_at_connect_replaces_the_states(world):
    [a] = rows(world.pair())
    [b] = set(rows(world.pair())) - {a}
    world.desk.gateway_devices([{"device_id": a, "state": "active", "connected": True},
                                {"device_id": b, "state": "pending", "connected": False}])
    page = world.call("GET")[1]
    assert rows(page) == {a: "connected", b: "pending"}
    assert parse_qs(urlsplit(pairing_uri(page)).query)  # b's code is still shown
    world.desk.gateway_event("device_revoked", b)
    assert pairing_uri(world.call("GET")[1]) is None
    # b was forgotten by its event; a goes with a list that no longer has it
    world.desk.gateway_devices([])
    assert world.desk.owners == {} and world.desk.gateway_state == {}


def test_no_device_shown_connected_while_the_gateway_is_away(world):
    [a] = rows(world.pair())
    world.desk.gateway_event("device_paired", a)
    world.desk.gateway_event("device_connected", a)
    assert rows(world.call("GET")[1]) == {a: "connected"}
    world.desk.gateway_lost()
    assert rows(world.call("GET")[1]) == {a: "paired"}
    world.desk.gateway_devices([{"device_id": a, "state": "active", "connected": True}])
    assert rows(world.call("GET")[1]) == {a: "connected"}


def test_a_device_added_by_the_cli_shows_up_and_follows_events(world):
    device_id = secrets.token_hex(16)
    world.sync_state.add_device(device_id, "alice", secrets.token_bytes(32))
    chunks = []
    d = world.stub.get(URL + "events", headers={"X-Forwarded-User": "alice"})
    world.stub.flush()
    d.result.collect(chunks.append)
    world.desk.gateway_event("device_paired", device_id)  # the desk never saw it: looked up in the state
    world.stub.flush()
    assert b"event: devices" in b"".join(chunks)
    assert rows(world.call("GET")[1]) == {device_id: "paired"}


def test_connector_options_for_the_pairing_page(world, tmp_path):
    from twisted.python import usage

    from linchpin_connector import tap
    from linchpin_connector.web import PairingWebService

    options = tap.Options()
    data_dir = ["--data-dir", str(tmp_path / "connector")]  # the world's state
    options.parseOptions(["--backend", "http://intranet.local:8090", *data_dir])
    assert options["web"] is None and options["web-user-header"] == "X-Forwarded-User"
    assert not [s for s in tap.makeService(options, MemoryReactorClock()) if isinstance(s, PairingWebService)]

    options = tap.Options()
    options.parseOptions(["--backend", "http://intranet.local:8090", *data_dir, "--web", "tcp:0:interface=127.0.0.1",
                          "--web-user-header", "X-Remote-User"])
    [web] = [s for s in tap.makeService(options, MemoryReactorClock()) if isinstance(s, PairingWebService)]
    assert web.user_header == "X-Remote-User" and web.hosts == ()
    options = tap.Options()
    options.parseOptions(["--backend", "http://intranet.local:8090", *data_dir, "--web", "tcp:0:interface=127.0.0.1",
                          "--web-host", "pair.corp.example", "--web-host", "[2001:db8::1]"])
    [web] = [s for s in tap.makeService(options, MemoryReactorClock()) if isinstance(s, PairingWebService)]
    assert web.hosts == ("pair.corp.example", "2001:db8::1")
    with pytest.raises(usage.UsageError, match="web-host"):
        tap.Options().parseOptions(["--backend", "http://x", "--web-host", "https://pair.corp.example/"])
    with pytest.raises(usage.UsageError, match="web-user-header"):
        tap.Options().parseOptions(["--backend", "http://x", "--web-user-header", "X User"])


def test_pairs_made_at_once_stay_within_the_pending_bound(world):
    """Requests that overlap while the gateway is slow each saw fewer devices
    than the bound; together they must not pass it."""
    from twisted.internet import defer

    from linchpin_connector.web.desk import TooManyPending

    answers = []
    real = world.api.add_device

    def slow():
        d = defer.Deferred()
        answers.append((d, real))
        return d

    world.api.add_device = slow
    outcomes = [defer.ensureDeferred(world.desk.pair("alice")) for _ in range(MAX_PENDING_PER_USER + 3)]
    refused = [d for d in outcomes if d.called]
    for d in refused:
        d.addErrback(lambda f: f.trap(TooManyPending))
    assert len(answers) == MAX_PENDING_PER_USER and len(refused) == 3
    for d, make in answers:
        defer.ensureDeferred(make()).chainDeferred(d)
    assert len(world.api.devices) == MAX_PENDING_PER_USER
    assert all(d.called for d in outcomes) and len(rows(world.call("GET")[1])) == MAX_PENDING_PER_USER
    assert world.desk._creating == {}


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "pairing.intranet.evil.example",
                                  "127.0.0.2", "[::2]:80", "", "pairing.intranet, evil.example"])
def test_a_host_the_page_does_not_serve_gets_421_and_no_token(world, host):
    """Before: any Host was answered, so a DNS-rebinding page (or anyone
    who reached the port) read the CSRF token and paired as any user."""
    for method, path in (("GET", ""), ("GET", "devices"), ("GET", "events"), ("GET", "static/pairing.css"),
                         ("POST", "pair")):
        response, body = world.call(method, path, headers={"Host": host})
        assert response.code == 421, (method, path)
        assert "csrf_token" not in body
    assert world.api.devices == {}


@pytest.mark.parametrize("host", ["pairing.intranet", "PAIRING.INTRANET:8443", "pairing.intranet.",
                                  "localhost", "localhost:8091"])
def test_the_names_the_page_serves_are_answered(world, host):
    response, body = world.call("GET", headers={"Host": host})
    assert response.code == 200 and "csrf_token" in body


def test_the_listening_address_is_served():
    from linchpin_connector.web.site import host_name

    assert host_name(b"[::1]:8091") == "::1" and host_name(b"127.0.0.1:8091") == "127.0.0.1"
    assert host_name(b"[::1") is None and host_name(None) is None
    request = DummyRequest([b""])
    request.requestHeaders.setRawHeaders(b"Host", [b"192.0.2.5:8091"])
    request.client = None
    from twisted.internet.address import IPv4Address

    request.getHost = lambda: IPv4Address("TCP", "192.0.2.5", 8091)
    page = PairingPage(None, "X-Forwarded-User")
    assert page._host_ok(request)
    request.requestHeaders.setRawHeaders(b"Host", [b"192.0.2.6:8091"])
    assert not page._host_ok(request)


def test_event_streams_are_capped_in_all(world, monkeypatch):
    from linchpin_connector.web import site

    monkeypatch.setattr(site, "MAX_STREAMS", 3)
    requests = [events_request(user) for user in ("u1", "u2", "u3", "u4")]
    for request in requests[:3]:
        world.page.render(request)
    world.page.render(requests[3])
    assert requests[3].responseCode == 503 and requests[3].responseHeaders.getRawHeaders(b"Retry-After") == [b"30"]
    assert sum(world.page.streams.values()) == 3
    requests[0].processingFailed(Failure(ConnectionDone("left")))
    again = events_request("u4")
    world.page.render(again)
    assert again.responseCode != 503 and world.page.streams.get("u4") == 1


def test_a_pending_device_made_by_another_connector_offers_a_new_link(world, tmp_path):
    """Another connector of the instance (sharing the state) made it: its
    setup key is not here, so the row offers to replace it by a new link."""
    world.sync_state.add_device("e" * 32, "alice", bytes(32))
    world.api.devices["e" * 32] = "pending"
    _, page = world.call("GET")
    assert rows(page) == {"e" * 32: "pending"} and pairing_uri(page) is None
    assert 'action="replace"' in page and "New pairing link" in page
    assert world.post("replace", user="bob", csrf_token=world.token("bob"), device_id="e" * 32)[0].code == 404
    response, _ = world.post("replace", csrf_token=world.token(), device_id="e" * 32)
    assert response.code == 303
    _, page = world.call("GET")
    [(new_id, state)] = rows(page).items()
    assert new_id != "e" * 32 and state == "pending" and world.api.revoked == ["e" * 32]
    assert parse_pairing_uri(pairing_uri(page)).secret == world.sync_state.device(new_id).setup_secret
    assert 'action="replace"' not in page  # this one's link is here


def test_a_paired_device_cannot_be_replaced(world):
    page = world.pair()
    [device_id] = rows(page)
    world.sync_state.conn.execute("UPDATE devices SET device_secret = ?, setup_secret = NULL", (bytes(32),))
    assert world.post("replace", csrf_token=world.token(), device_id=device_id)[0].code == 404


def test_the_phone_app_files_and_the_workers_scope(world):
    """The app under app/ (no sign-in): its page and worker carry the CSP; only the worker
    may take the whole origin (Service-Worker-Allowed), for the pairing page
    served at a path of the intranet's own origin."""
    response, _ = world.call("GET", "app")
    assert response.code == 301 and response.headers.getRawHeaders("location") == ["app/"]
    for path, kind in (("app/", "text/html"), ("app/sw.js", "text/javascript"), ("app/keeper.js", "text/javascript"),
                       ("app/manifest.webmanifest", "application/manifest+json"), ("app/icon-512.png", "image/png")):
        response, _ = world.call("GET", path)
        assert response.code == 200 and response.headers.getRawHeaders("content-type")[0].startswith(kind), path
        allowed = response.headers.getRawHeaders("service-worker-allowed")
        assert allowed == (["/"] if path == "app/sw.js" else None), path
        if path in ("app/", "app/sw.js"):
            policy = response.headers.getRawHeaders("content-security-policy")[0]
            assert policy.startswith("default-src 'self'") and "frame-ancestors 'none'" in policy
    _, index = world.call("GET", "app/")  # the app refuses links naming another connector
    assert '<meta name="linchpin-connector-key" content="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8">' in index
    assert world.call("GET", "app/nope.js")[0].code == 404
    assert world.call("POST", "app/sw.js")[0].code == 405
    # without sign-in too: a browser fetches a module worker and its imports without cookies
    assert world.call("GET", "app/sw.js", user=None)[0].code == 200
    assert world.call("GET", "app/keeper.js", user=None)[0].code == 200
    assert world.call("GET", "app/", user=None, headers={"Host": "evil.example"})[0].code == 421
