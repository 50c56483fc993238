"""The device's handshake state machine (linchpin_connector.device.handshake)."""

import pytest
from twisted.internet import defer

from linchpin_common.contract import e2e
from linchpin_connector.device import ConnectorOffline, DeviceState, GatewayUnreachable, PairingRejected
from linchpin_connector.device.handshake import TRANSITIONS, Handshake, IllegalTransition, Phase
from tests.e2e_harness import DEVICE_ID, Pair, result_of

EVENTS = ("start", "welcome", "new_key", "saved", "save_failed", "reject", "fail", "welcome_envelope")


def test_the_table_names_every_input():
    assert TRANSITIONS.inputs() == set(EVENTS)
    assert TRANSITIONS.reachable(Phase.IDLE) == set(Phase)


def in_phase(phase: Phase) -> Handshake:
    hs = Handshake()
    hs.phase = phase
    return hs


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("event", EVENTS)
def test_every_input_is_a_transition_an_ignored_input_or_a_loud_error(phase, event):
    hs = in_phase(phase)
    key = (phase, event)
    if TRANSITIONS.allows(phase, event):
        assert hs._go(event) is True and hs.phase is TRANSITIONS.next(phase, event)
    elif TRANSITIONS.ignores(phase, event):
        assert hs._go(event) is False and hs.phase is phase
    else:
        with pytest.raises(IllegalTransition):
            hs._go(event)
        assert hs.phase is phase


def test_bugs_are_loud():
    with pytest.raises(IllegalTransition):
        Handshake().saved()
    with pytest.raises(IllegalTransition):
        in_phase(Phase.LIVE)._go("start")
    with pytest.raises(IllegalTransition):
        in_phase(Phase.SAVING_KEY).start(DEVICE_ID, e2e.KEY_DEVICE, bytes(32), bytes([9] * 32))


def test_network_noise_changes_nothing():
    hs = Handshake()
    assert hs.welcome_envelope(e2e.parse_envelope(bytes([1, 2, 1]) + bytes(68))) is None
    assert hs.reject(PairingRejected()) is False
    assert hs.fail(ConnectorOffline()) is None
    assert hs.phase is Phase.IDLE


class HeldWrites(list):
    """A device worker that runs nothing until the test says: each job is
    kept as (fn, Deferred); the test calls fn, then fires the Deferred."""

    def run(self, fn, *args):
        d = defer.Deferred()
        self.append((fn, d))
        return d


@pytest.fixture
def pair(tmp_path):
    return Pair(tmp_path)


def test_phases_of_a_pairing_handshake(pair):
    device = pair.new_device()
    writes = device._worker = HeldWrites()
    assert device.phase is Phase.IDLE
    d = defer.ensureDeferred(device.handshake())
    assert device.phase is Phase.AWAITING_WELCOME
    pair.wire.pump()
    assert device.phase is Phase.SAVING_KEY and not d.called
    fn, written = writes[0]
    fn()
    written.callback(None)
    assert device.phase is Phase.LIVE and result_of(d) is None
    pair.wire.pump()
    assert pair.connector_device().device_secret is not None


def test_connection_lost_while_the_key_is_written(pair):
    """The key still lands on disk; the session is abandoned; the next
    handshake waits for the write and uses the new key."""
    device = pair.new_device()
    writes = device._worker = HeldWrites()
    d = defer.ensureDeferred(device.handshake())
    pair.wire.pump()
    assert device.phase is Phase.SAVING_KEY
    device.client.is_open = False
    device.client.closed.callback("gateway restarted")
    assert device.phase is Phase.ABANDONED
    assert isinstance(result_of(d).value, GatewayUnreachable)
    device.client.is_open = True
    device.online = True
    again = defer.ensureDeferred(device.handshake())
    assert not again.called and pair.wire.up == []  # waits for the write, sends nothing yet
    fn, written = writes[0]
    fn()
    written.callback(None)
    assert device.state.setup_secret is None
    assert DeviceState.load(pair.dstate.path).device_secret == device.state.device_secret
    pair.wire.pump()  # the new handshake ran under the new key (kind 1)
    assert [p[2] for direction, p in pair.wire.log if direction == "up" and p[1] == e2e.HELLO] == [0, 1]
    assert device.phase is Phase.LIVE and result_of(again) is None


def test_reject_fails_every_waiter_and_keeps_the_keys(pair):
    pair.cstate.remove_device(DEVICE_ID)
    device = pair.new_device()
    d1 = defer.ensureDeferred(device.handshake())
    d2 = defer.ensureDeferred(device.handshake())
    pair.wire.pump()
    assert isinstance(result_of(d1).value, PairingRejected) and isinstance(result_of(d2).value, PairingRejected)
    assert device.phase is Phase.IDLE and device.state.setup_secret is not None
