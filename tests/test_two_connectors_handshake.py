"""PROTOCOL.md section 5 with two connectors sharing one state: the device's
envelopes go to the one the test routes them to, as the gateway's pin would
(one connector gone, a HELLO replayed to the other by a relay)."""

from __future__ import annotations

import pytest
from twisted.python.failure import Failure

from linchpin_common.contract import e2e
from linchpin_common.workers import InlineWorker
from linchpin_connector.connector import DeviceChannels
from linchpin_connector.device import DeviceState, PairingRejected, RequestTimeout
from linchpin_connector.state import AsyncState, ConnectorState
from tests.e2e_harness import DEVICE_ID, Pair, result_of


class TwoConnectors(Pair):
    """Connector A is the harness's; B has its own process state (its own
    connection to the same state file) and no sessions in common."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.a = self.channels
        self.b_state = ConnectorState(str(tmp_path / "connector"))
        self.b = DeviceChannels(AsyncState(self.b_state, InlineWorker()), self.static,
                                lambda device_id, payload: self.wire.down.append(payload), self._make_proxy,
                                self.clock)
        self.to("a")

    def to(self, name: str) -> None:
        """The gateway pins the device to connector ``name`` from now on."""
        channels = self.a if name == "a" else self.b
        self.wire.connector = lambda payload: channels.envelope(DEVICE_ID, payload)


@pytest.fixture
def two(tmp_path):
    t = TwoConnectors(tmp_path)
    yield t
    t.b_state.close()


def handshake(two, device):
    r = result_of(two.run(device.handshake()))
    if isinstance(r, Failure):
        r.raiseException()


def test_a_pairing_started_on_one_and_redone_on_the_other_proves_one_key(two):
    """A answers the setup HELLO, its WELCOME is lost (A died); the device's
    next HELLO goes to B, which answers and sees the confirm: B's key is the
    one proven, and A's pending key is gone with the other pending keys."""
    device = two.new_device(timeout=5)
    two.wire.filter_down = lambda p: None if p[1] == e2e.WELCOME else p
    d = two.run(device.handshake())
    two.clock.advance(5)
    assert isinstance(result_of(d).value, RequestTimeout)
    assert len(two.connector_device().pending) == 1  # A's, durable before its WELCOME
    two.wire.filter_down = None
    two.to("b")
    handshake(two, device)
    stored = two.connector_device()
    assert stored.setup_secret is None and stored.pending == ()
    assert stored.device_secret == e2e.b64u_decode(DeviceState.load(two.dstate.path).device_secret)
    assert DEVICE_ID in two.b.channels


def test_a_device_moved_to_the_other_connector_handshakes_under_its_proven_key(two):
    device = two.new_device()
    handshake(two, device)  # paired through A
    two.to("b")
    again = two.new_device()  # after `moved`: a HELLO under the device secret, to B
    handshake(two, again)
    assert DEVICE_ID in two.b.channels and two.wire.kinds("down")[-1] == e2e.WELCOME


def test_a_hello_under_a_pending_key_reaching_the_other_connector_proves_it(two):
    """A's WELCOME arrived but the confirm was lost (A died): the device has
    the new key; its HELLO under that key reaches B, which proves it."""
    device = two.new_device()
    two.wire.filter_up = lambda p: None if p[1] == e2e.DATA else p
    handshake(two, device)
    assert len(two.connector_device().pending) == 1
    two.wire.filter_up = None
    two.to("b")
    handshake(two, two.new_device())
    stored = two.connector_device()
    assert stored.setup_secret is None and stored.pending == () and stored.device_secret is not None


def test_a_setup_hello_replayed_to_the_other_connector_never_makes_a_key_or_unpairs(two):
    device = two.new_device(timeout=5)
    hellos = []
    two.wire.filter_up = lambda p: (hellos.append(p), p)[1] if p[1] == e2e.HELLO else p
    two.wire.filter_down = lambda p: None if p[1] == e2e.WELCOME else p  # unproven: A's key pending
    d = two.run(device.handshake())
    two.clock.advance(5)
    assert isinstance(result_of(d).value, RequestTimeout)
    two.wire.filter_up = two.wire.filter_down = None
    assert len(two.connector_device().pending) == 1
    two.to("b")
    two.wire.log.clear()
    two.wire.up.append(hellos[0])  # the relay replays the first HELLO to B
    two.wire.pump()
    assert two.wire.kinds("down") == []  # answered already (by A): no WELCOME, no REJECT
    assert len(two.connector_device().pending) == 1  # no key made, none evicted
    handshake(two, device)  # the real device still pairs, through B
    assert two.connector_device().device_secret is not None


def test_a_revoked_device_is_refused_by_both(two):
    device = two.new_device()
    handshake(two, device)
    assert two.cstate.remove_device(DEVICE_ID)  # revoked: one row, shared
    two.a.forget(DEVICE_ID)
    for name in ("a", "b"):
        two.to(name)
        d = two.run(two.new_device().handshake())
        assert isinstance(result_of(d).value, PairingRejected), name
