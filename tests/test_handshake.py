"""Device and connector E2E behaviour of PROTOCOL.md 5, driven by Deferreds in memory."""

import pytest
from twisted.python.failure import Failure

from linchpin_common.contract import e2e
from linchpin_connector.device import (ConnectorOffline, DeviceState, PairingRejected, RequestTimeout,
                                       SessionLost)
from tests.e2e_harness import DEVICE_ID, Pair, result_of


@pytest.fixture
def pair(tmp_path):
    return Pair(tmp_path)


def handshake(pair, device):
    d = pair.run(device.handshake())
    r = result_of(d)
    if isinstance(r, Failure):
        r.raiseException()
    return r


def test_pairing_handshake_promotes_key_on_confirm(pair):
    device = pair.new_device()
    handshake(pair, device)
    stored = DeviceState.load(pair.dstate.path)
    assert stored.setup_secret is None and stored.device_secret
    dev = pair.connector_device()
    assert dev.setup_secret is None and dev.pending == ()
    assert dev.device_secret == e2e.b64u_decode(stored.device_secret)
    # exactly HELLO, WELCOME, then the confirm DATA (seq 0)
    assert pair.wire.kinds("up") == [e2e.HELLO, e2e.DATA]
    assert pair.wire.kinds("down") == [e2e.WELCOME]
    assert pair.proxies[0].handled == []  # confirm is not a request
    assert pair.proxies[0].user == "alice"


def test_requests_reach_proxy_and_responses_return(pair):
    device = pair.new_device()
    handshake(pair, device)
    d = pair.run(device.request("GET", "/x?y=1", [("Accept", "text/plain")]))
    proxy = pair.proxies[-1]
    assert proxy.handled == [({"t": "req", "id": 0, "method": "GET", "path": "/x?y=1",
                               "headers": [["Accept", "text/plain"]], "end": True}, b"")]
    proxy.send({"t": "res", "id": 0, "status": 200, "headers": [["Content-Type", "text/plain"]], "end": False},
               b"hello ")
    proxy.send({"t": "body", "id": 0, "end": True}, b"world")
    pair.wire.pump()
    response = result_of(d)
    assert response.status == 200 and response.header("content-type") == "text/plain"
    body = result_of(pair.run(response.content()))
    assert body == b"hello world"
    # 11 bytes are far below the ack batch: the body ended without any ack
    assert [h for h, _ in proxy.handled if h["t"] == "ack"] == []


def test_download_acked_in_batches_before_the_window_fills(pair):
    device = pair.new_device()
    handshake(pair, device)
    d = pair.run(device.request("GET", "/big"))
    proxy = pair.proxies[-1]
    proxy.send({"t": "res", "id": 0, "status": 200, "headers": [], "end": False})
    pair.wire.pump()
    response = result_of(d)
    received = []
    response.deliver(received.append)
    part = b"z" * 65536
    sent = acked = 0
    for i in range(64):  # 4 MiB in 64 KiB parts, sent only while the window allows
        assert sent - acked + len(part) <= e2e.CREDIT_WINDOW, "the device let the window fill"
        proxy.send({"t": "body", "id": 0, "end": i == 63}, part)
        sent += len(part)
        pair.wire.pump()
        acked = sum(h["bytes"] for h, _ in proxy.handled if h["t"] == "ack")
    assert b"".join(received) == part * 64
    acks = [h["bytes"] for h, _ in proxy.handled if h["t"] == "ack"]
    assert len(acks) == 16 and set(acks) == {256 * 1024}  # batched, not one per part


def test_lost_welcome_keeps_setup_secret_until_proof(pair):
    device = pair.new_device(timeout=5)
    pair.wire.filter_down = lambda p: None if p[1] == e2e.WELCOME else p
    d = pair.run(device.handshake())
    pair.clock.advance(5)
    assert isinstance(result_of(d).value, RequestTimeout)
    assert DeviceState.load(pair.dstate.path).setup_secret  # device still has it
    dev = pair.connector_device()
    assert dev.setup_secret is not None and len(dev.pending) == 1 and dev.device_secret is None

    pair.wire.filter_down = None
    handshake(pair, device)
    dev = pair.connector_device()
    assert dev.setup_secret is None and dev.pending == ()
    assert dev.device_secret == e2e.b64u_decode(DeviceState.load(pair.dstate.path).device_secret)


def test_lost_confirm_then_hello_under_pending_key_proves_it(pair):
    device = pair.new_device()
    pair.wire.filter_up = lambda p: None if p[1] == e2e.DATA else p
    handshake(pair, device)
    dev = pair.connector_device()
    assert dev.setup_secret is not None and len(dev.pending) == 1  # not proven yet

    pair.wire.filter_up = None
    again = pair.new_device()  # a new process: HELLO with the derived key, kind 1
    handshake(pair, again)
    dev = pair.connector_device()
    assert dev.setup_secret is None and dev.pending == () and dev.device_secret is not None


def test_setup_hello_after_proof_dropped_silently(pair):
    device = pair.new_device()
    hellos = []
    pair.wire.filter_up = lambda p: (hellos.append(p), p)[1]
    handshake(pair, device)
    pair.wire.log.clear()
    pair.wire.up.append(hellos[0])  # a replay of the setup-secret HELLO
    pair.wire.pump()
    assert pair.wire.kinds("down") == []  # no WELCOME, no REJECT
    assert pair.connector_device().device_secret is not None


def keep_first_data(held: list):
    """A wire filter that keeps the first DATA back in ``held`` and passes the rest."""
    def keep(p):
        if p[1] == e2e.DATA and not held:
            held.append(p)
            return None
        return p
    return keep


def setup_hello(pair) -> bytes:
    """A fresh HELLO under the setup secret, as the device would make it."""
    return e2e.DeviceHandshake.start(DEVICE_ID, pair.setup_secret, e2e.KEY_SETUP,
                                     e2e.b64u_decode(pair.dstate.connector_key)).hello


def test_replayed_setup_hello_before_proof_makes_no_pending_key(pair):
    device = pair.new_device()
    pair.wire.filter_down = lambda p: None
    pair.run(device.handshake())  # its WELCOMEs are all lost
    hello = pair.wire.log[0][1]
    before = pair.connector_device().pending
    assert len(before) == 1
    for _ in range(6):
        pair.wire.up.append(hello)
    pair.wire.pump()
    assert pair.connector_device().pending == before
    # a retry after a lost WELCOME: the same WELCOME again, byte for byte
    welcomes = [p for d, p in pair.wire.log if d == "down" and p[1] == e2e.WELCOME]
    assert len(welcomes) == 7 and len(set(welcomes)) == 1


def test_distinct_setup_hellos_keep_four_newest_pending_keys(pair):
    for _ in range(6):
        pair.wire.up.append(setup_hello(pair))
    pair.wire.pump()
    pending = pair.connector_device().pending
    assert len(pending) == 4 and [key_id for key_id, _ in pending] == [3, 4, 5, 6]


def test_live_unconfirmed_session_key_is_never_evicted(pair):
    pair.wire.up.append(setup_hello(pair))
    pair.wire.pump()
    (first,) = pair.connector_device().pending
    pair.channels._replace = lambda device_id, channel: None  # later HELLOs never replace the live session
    for _ in range(6):
        pair.wire.up.append(setup_hello(pair))
    pair.wire.pump()
    pending = pair.connector_device().pending
    assert len(pending) == 4 and pending[0] == first


def test_relay_replaying_the_first_hello_does_not_unpair_the_device(pair):
    """Issue: the relay replays the device's first HELLO four times before it
    forwards the confirm; the device must still end up paired."""
    held = []
    device = pair.new_device()
    pair.wire.filter_up = keep_first_data(held)  # the confirm
    handshake(pair, device)  # the device adopted its key and dropped the setup secret
    assert DeviceState.load(pair.dstate.path).setup_secret is None
    hello = next(p for d, p in pair.wire.log if d == "up" and p[1] == e2e.HELLO)
    pair.wire.filter_up = None
    for _ in range(4):
        pair.wire.up.append(hello)
    pair.wire.up.append(held[0])
    pair.wire.pump()
    dev = pair.connector_device()
    assert dev.setup_secret is None and dev.pending == ()
    assert dev.device_secret == e2e.b64u_decode(DeviceState.load(pair.dstate.path).device_secret)
    # and the device's next session (a new process, key kind 1) is accepted
    again = pair.new_device()
    handshake(pair, again)
    assert pair.wire.kinds("down")[-1] == e2e.WELCOME


def test_unknown_or_revoked_device_rejected_and_keys_kept(pair):
    device = pair.new_device()
    handshake(pair, device)
    keys_before = DeviceState.load(pair.dstate.path).device_secret
    pair.cstate.remove_device(DEVICE_ID)
    again = pair.new_device()
    d = pair.run(again.handshake())
    assert isinstance(result_of(d).value, PairingRejected)
    assert DeviceState.load(pair.dstate.path).device_secret == keys_before


def test_hello_no_key_opens_rejected(pair):
    pair.dstate.setup_secret = e2e.b64u_encode(b"\x01" * 32)  # not the connector's secret
    pair.dstate.save()
    device = pair.new_device()
    d = pair.run(device.handshake())
    assert isinstance(result_of(d).value, PairingRejected)


def test_forged_reject_unpairs_nobody(pair):
    device = pair.new_device()
    handshake(pair, device)
    pair.wire.down.append(e2e.make_reject())
    pair.wire.pump()
    d = pair.run(device.request("GET", "/"))
    assert pair.proxies[-1].handled[-1][0]["t"] == "req"
    assert pair.connector_device().device_secret is not None
    assert not d.called  # waiting for a response, not failed


def test_reset_fails_in_flight_never_replays_then_rehandshakes(pair):
    device = pair.new_device()
    handshake(pair, device)
    pair.restart_connector()  # sessions are in memory only
    d = pair.run(device.request("POST", "/pay", body=b"once"))
    assert isinstance(result_of(d).value, SessionLost)
    down, up = pair.wire.kinds("down"), pair.wire.kinds("up")
    assert e2e.RESET in down
    # the device handshook again at once, before any request asked for it
    assert up[-2:] == [e2e.HELLO, e2e.DATA] and down[-1] == e2e.WELCOME
    first_proxy_count = len(pair.proxies)
    # the failed POST is not resent; the next request uses the new session
    d2 = pair.run(device.request("GET", "/next"))
    assert len(pair.proxies) == first_proxy_count
    assert [h["path"] for h, _ in pair.proxies[-1].handled if h["t"] == "req"] == ["/next"]
    assert not d2.called


def poke(pair, device):
    """A POST whose DATA meets the restarted connector: it gets RESET (and fails)."""
    assert isinstance(result_of(pair.run(device.request("POST", "/poke", body=b"x"))).value, SessionLost)


def requests_seen(pair):
    return [(h["method"], h["path"]) for proxy in pair.proxies for h, _ in proxy.handled if h["t"] == "req"]


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_a_safe_request_cut_by_a_reset_before_its_response_is_sent_once_more(pair, method):
    device = pair.new_device()
    handshake(pair, device)
    d = pair.run(device.request(method, "/page"))
    assert requests_seen(pair) == [(method, "/page")]
    pair.restart_connector()  # the request ran (or not) on a connector that is gone
    poke(pair, device)
    assert requests_seen(pair)[-1] == (method, "/page") and len(requests_seen(pair)) == 2
    assert not d.called  # waiting for the new session's response
    proxy = pair.proxies[-1]
    proxy.send({"t": "res", "id": proxy.handled[-1][0]["id"], "status": 200, "headers": [], "end": True})
    pair.wire.pump()
    assert result_of(d).status == 200


def test_a_safe_request_is_sent_once_more_at_most(pair):
    device = pair.new_device()
    handshake(pair, device)
    d = pair.run(device.request("GET", "/page"))
    for _ in range(2):
        pair.restart_connector()
        poke(pair, device)
    assert isinstance(result_of(d).value, SessionLost)
    assert requests_seen(pair).count(("GET", "/page")) == 2


def test_a_request_whose_response_started_is_never_sent_again(pair):
    device = pair.new_device()
    handshake(pair, device)
    d = pair.run(device.request("GET", "/page"))
    proxy = pair.proxies[-1]
    proxy.send({"t": "res", "id": 0, "status": 200, "headers": [], "end": False}, b"part")
    pair.wire.pump()
    response = result_of(d)
    body = pair.run(response.content())
    pair.restart_connector()
    poke(pair, device)
    assert isinstance(result_of(body).value, SessionLost)
    assert requests_seen(pair).count(("GET", "/page")) == 1


def test_moved_fails_in_flight_requests_and_handshakes_at_once(pair):
    """``$gateway/status`` ``moved``: the session's connector is gone; a new
    HELLO goes up at once (the gateway pins it to a ready connector), the
    POST fails, the GET is sent once more on the new session."""
    device = pair.new_device()
    handshake(pair, device)
    post = pair.run(device.request("POST", "/pay", body=b"once"))
    get = pair.run(device.request("GET", "/page"))
    pair.restart_connector()  # another connector: same keys, no sessions
    hellos = pair.wire.kinds("up").count(e2e.HELLO)
    device._on_message("$gateway/status", b'{"connector": "moved"}')
    pair.wire.pump()
    assert isinstance(result_of(post).value, SessionLost)
    assert pair.wire.kinds("up").count(e2e.HELLO) == hellos + 1
    assert requests_seen(pair) == [("POST", "/pay"), ("GET", "/page"), ("GET", "/page")]
    assert device.online and not get.called


def test_moved_during_a_handshake_sends_a_new_hello_and_the_waiting_post_goes_on_it(pair):
    """The HELLO may have gone to the connector that just went: a new one
    goes at once, and a request waiting for the session (never sent) is sent
    on the new session, a POST too."""
    device = pair.new_device()
    handshake(pair, device)
    pair.restart_connector()
    pair.wire.filter_down = lambda p: None if p[1] == e2e.WELCOME else p  # this HELLO's answer is lost
    device._on_message("$gateway/status", b'{"connector": "moved"}')
    pair.wire.pump()
    post = pair.run(device.request("POST", "/pay", body=b"once"))
    assert not post.called and requests_seen(pair) == []
    pair.wire.filter_down = None
    device._on_message("$gateway/status", b'{"connector": "moved"}')  # its connector went too
    pair.wire.pump()
    assert requests_seen(pair) == [("POST", "/pay")] and not post.called


def test_gap_ends_session(pair):
    device = pair.new_device()
    handshake(pair, device)
    pair.wire.filter_up = keep_first_data([])
    d1 = pair.run(device.request("POST", "/a"))  # lost on the way
    d2 = pair.run(device.request("POST", "/b"))  # arrives with a gap
    assert pair.proxies[0].handled == [] and pair.proxies[0].closed
    assert e2e.RESET in pair.wire.kinds("down")
    assert isinstance(result_of(d1).value, SessionLost) and isinstance(result_of(d2).value, SessionLost)


def test_tampered_and_replayed_data_dropped(pair):
    device = pair.new_device()
    handshake(pair, device)
    seen = []
    pair.wire.filter_up = lambda p: (seen.append(p), p)[1]
    pair.run(device.request("GET", "/a"))
    proxy = pair.proxies[-1]
    assert len(proxy.handled) == 1
    original = seen[-1]
    pair.wire.filter_up = None
    for bit in range(0, len(original) * 8, 7):
        forged = bytearray(original)
        forged[bit // 8] ^= 1 << (bit % 8)
        pair.wire.up.append(bytes(forged))
    pair.wire.up.append(original)  # replay
    pair.wire.pump()
    assert len(proxy.handled) == 1
    # the session survived all that
    pair.run(device.request("GET", "/b"))
    assert [h["path"] for h, _ in proxy.handled if h["t"] == "req"] == ["/a", "/b"]


def test_connector_offline_fails_fast(pair):
    pair.online = False
    device = pair.new_device()
    d = pair.run(device.request("GET", "/"))
    assert isinstance(result_of(d).value, ConnectorOffline)
    assert pair.wire.log == []  # nothing sent, no waiting for a timeout


def test_connector_going_offline_fails_requests_in_flight(pair):
    device = pair.new_device()
    handshake(pair, device)
    d = pair.run(device.request("GET", "/"))
    device._on_message("$gateway/status", b'{"connector": "offline"}')
    assert isinstance(result_of(d).value, ConnectorOffline)


def test_request_timeout_sends_cancel(pair):
    device = pair.new_device(timeout=10)
    handshake(pair, device)
    d = pair.run(device.request("GET", "/slow"))
    pair.clock.advance(10)
    pair.wire.pump()
    assert isinstance(result_of(d).value, RequestTimeout)
    assert pair.proxies[-1].handled[-1][0] == {"t": "cancel", "id": 0}


def test_upload_respects_credit_window(pair):
    device = pair.new_device()
    handshake(pair, device)
    body = bytes(range(256)) * (4 * 4096)  # 4 MiB
    pair.run(device.request("PUT", "/up", body=body))
    proxy = pair.proxies[-1]

    def sent():
        return sum(len(b) for h, b in proxy.handled if h["t"] in ("req", "body"))

    assert sent() == e2e.CREDIT_WINDOW  # stops at the window
    acked = 0
    while proxy.handled[-1][0].get("end") is not True:
        n = sent() - acked
        assert n > 0, "upload stalled with credit available"
        proxy.send({"t": "ack", "id": 0, "bytes": n})
        acked += n
        pair.wire.pump()
        assert sent() - acked <= e2e.CREDIT_WINDOW
    assert b"".join(b for h, b in proxy.handled if h["t"] in ("req", "body")) == body
    assert proxy.handled[-1][0] == {"t": "body", "id": 0, "end": True}


def test_device_reconnects_by_itself_after_losing_the_gateway(pair):
    device = pair.new_device()
    handshake(pair, device)
    old = device.client
    old.is_open = False
    old.closed.callback("gateway restarted")
    d = pair.run(device.request("GET", "/after"))
    assert device.client is not old and device.client.is_open
    assert [h["path"] for h, _ in pair.proxies[-1].handled if h["t"] == "req"] == ["/after"]
    assert not d.called  # waiting for the response on the new session


def test_unwritable_state_fails_the_handshake_and_keeps_the_setup_secret(pair):
    from twisted.internet import defer

    from linchpin_connector.device import DeviceError

    device = pair.new_device()

    class Full:
        def run(self, fn, *args):
            return defer.fail(OSError("No space left on device"))

    device._worker = Full()
    d = pair.run(device.handshake())
    failure = result_of(d)
    assert isinstance(failure.value, DeviceError) and "No space left" in str(failure.value)
    assert device.state.setup_secret is not None and device.state.device_secret is None
    assert DeviceState.load(pair.dstate.path).setup_secret is not None


def test_hello_flood_is_bounded(pair):
    from twisted.internet import defer

    slow = defer.Deferred()
    real_device = pair.channels.state.device
    pair.channels.state.device = lambda device_id: slow  # the state file is busy
    hello = e2e.DeviceHandshake.start(DEVICE_ID, pair.setup_secret, e2e.KEY_SETUP,
                                      e2e.b64u_decode(pair.dstate.connector_key)).hello
    for _ in range(100):
        pair.channels.envelope(DEVICE_ID, hello)
    assert len(pair.channels._locks[DEVICE_ID].waiting) == 4  # not 99
    pair.channels.state.device = real_device
    slow.callback(pair.cstate.device(DEVICE_ID))
    pair.wire.pump()
    assert pair.wire.kinds("down").count(e2e.WELCOME) == 5  # the first and the four queued


def test_hello_under_a_pending_key_that_vanished_is_not_answered(pair):
    """Issue 10 item 14: the result of promoting a pending key is not ignored."""
    device = pair.new_device()
    pair.wire.filter_up = lambda p: None if p[1] == e2e.DATA else p  # the confirm is lost
    handshake(pair, device)
    assert len(pair.connector_device().pending) == 1
    pair.wire.filter_up = None
    real = pair.channels.state.promote_pending_key

    def vanished(device_id, key_id):  # another key proven (or the device removed) meanwhile
        pair.cstate.conn.execute("DELETE FROM pending_keys")
        return real(device_id, key_id)

    pair.channels.state.promote_pending_key = vanished
    pair.wire.log.clear()
    again = pair.new_device()  # HELLO under the pending key (kind 1)
    d = pair.run(again.handshake())
    assert pair.wire.kinds("down") == []  # no WELCOME for a key that is gone
    assert not d.called


def test_confirm_of_a_session_whose_pending_key_vanished_ends_it(pair):
    device = pair.new_device()
    held = []
    pair.wire.filter_up = keep_first_data(held)
    handshake(pair, device)
    pair.cstate.conn.execute("DELETE FROM pending_keys")  # the device was re-added meanwhile, say
    pair.wire.filter_up = None
    before = len(pair.wire.kinds("down"))
    pair.wire.up.append(held[0])
    pair.wire.pump()
    assert pair.wire.kinds("down")[before] == e2e.RESET


def test_hello_locks_are_pruned(pair):
    for _ in range(3):
        pair.new_device()
        pair.wire.up.append(e2e.DeviceHandshake.start(DEVICE_ID, pair.setup_secret, e2e.KEY_SETUP,
                                                      e2e.b64u_decode(pair.dstate.connector_key)).hello)
        pair.wire.pump()
    assert pair.channels._locks == {}


def test_replayed_setup_hello_after_a_connector_restart_makes_no_pending_key(pair):
    """The HELLO of each pending key is remembered in the state file, so a
    relay replaying it after the connector restarted still gains nothing."""
    device = pair.new_device()
    pair.wire.filter_down = lambda p: None  # the WELCOME is lost; the device keeps its setup secret
    pair.run(device.handshake())
    hello = pair.wire.log[0][1]
    before = pair.connector_device().pending
    pair.restart_connector()
    pair.wire.log.clear()
    for _ in range(5):
        pair.wire.up.append(hello)
    pair.wire.pump()
    assert pair.connector_device().pending == before
    assert pair.wire.kinds("down") == []


def test_a_connector_stopping_alone_resets_each_session_once_and_then_lets_the_drain_end(pair):
    """A drain to stop with no other connector ready: each device's session
    is reset once; its next HELLO comes back here (nowhere else to go) and
    is dropped, not answered with a session that would only be reset again,
    so the drain ends at once instead of at its timeout."""
    device = pair.new_device()
    handshake(pair, device)
    drained = pair.channels.drain(stopping=True)
    pair.clock.advance(1.0)  # DRAIN_QUIET: the idle session is reset
    pair.wire.pump()
    assert pair.wire.kinds("down") == [e2e.WELCOME, e2e.RESET]
    assert pair.wire.kinds("up")[-1] == e2e.HELLO  # the device handshook again at once...
    for _ in range(5):
        pair.clock.advance(1.0)
        pair.wire.pump()
    assert pair.wire.kinds("down") == [e2e.WELCOME, e2e.RESET]  # ...and got no session here
    assert drained.called and pair.channels.channels == {}
    pair.channels.undrain()  # taking devices again (the backend's drain ended): answered as before
    handshake(pair, pair.new_device())
    assert pair.wire.kinds("down")[-1] == e2e.WELCOME
