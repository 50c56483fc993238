"""The device's side of the E2E handshake as an explicit state machine.

Every phase, every input and every transition is in :data:`TRANSITIONS`
(the project's one machine idiom, :mod:`linchpin_common.machine`); an input
a phase does not list raises :class:`IllegalTransition` (a bug in the
caller, never network input: envelopes from the network that mean nothing
in a phase are declared ignored there and change nothing)::

    IDLE --start--> AWAITING_WELCOME --welcome (device key)--> LIVE
                        |  |  '--welcome (setup secret)--> SAVING_KEY --saved--> LIVE
                        |  |                                   |  '--save_failed--> IDLE
                        |  '--reject / fail--> IDLE            '--fail--> ABANDONED --saved/save_failed--> IDLE
    LIVE --fail (RESET, gap, connector offline, gateway lost)--> IDLE

``fail`` in SAVING_KEY cannot stop the key from being written (the setup
secret is forgotten only once the new key is on disk), so the machine waits
in ABANDONED for the write to end before a new handshake may start.
"""

from __future__ import annotations

import enum

from twisted.internet import defer

from linchpin_common.contract import e2e
from linchpin_common.contract.channel import ChannelEndpoint
from linchpin_common.machine import IllegalTransition, Transitions


class Phase(enum.Enum):
    IDLE = "idle"                          # no session; the next request starts a handshake
    AWAITING_WELCOME = "awaiting_welcome"  # HELLO sent
    SAVING_KEY = "saving_key"              # WELCOME under the setup secret: the new key is being written
    ABANDONED = "abandoned"                # failed while the key was being written; waits for the write
    LIVE = "live"                          # a session, its confirm sent


TRANSITIONS = Transitions("handshake", Phase, {
    (Phase.IDLE, "start"): Phase.AWAITING_WELCOME,
    (Phase.AWAITING_WELCOME, "welcome"): Phase.LIVE,
    (Phase.AWAITING_WELCOME, "new_key"): Phase.SAVING_KEY,
    (Phase.AWAITING_WELCOME, "reject"): Phase.IDLE,
    (Phase.AWAITING_WELCOME, "fail"): Phase.IDLE,
    (Phase.SAVING_KEY, "saved"): Phase.LIVE,
    (Phase.SAVING_KEY, "save_failed"): Phase.IDLE,
    (Phase.SAVING_KEY, "fail"): Phase.ABANDONED,
    (Phase.ABANDONED, "saved"): Phase.IDLE,
    (Phase.ABANDONED, "save_failed"): Phase.IDLE,
    (Phase.LIVE, "fail"): Phase.IDLE,
},
    # Inputs that mean nothing in a phase and are dropped: envelopes from the
    # network (a WELCOME or REJECT that answers no HELLO of ours) and failures
    # when there is nothing to fail.
    ignored=[(phase, "welcome_envelope") for phase in Phase if phase is not Phase.AWAITING_WELCOME]
    + [(phase, "reject") for phase in Phase if phase is not Phase.AWAITING_WELCOME]
    + [(Phase.IDLE, "fail"), (Phase.ABANDONED, "fail")])

__all__ = ["IllegalTransition", "Phase", "TRANSITIONS", "Handshake", "SharedResult"]


class SharedResult:
    """A result many may wait for; each waiter gets its own Deferred, so one
    waiter giving up (a timeout cancels it) does not disturb the others."""

    def __init__(self):
        self.called = False
        self._result = None
        self._waiters: list[defer.Deferred] = []

    def when(self) -> defer.Deferred:
        if self.called:
            return defer.fail(self._result) if isinstance(self._result, Exception) else defer.succeed(self._result)
        d = defer.Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d

    def callback(self, result=None) -> None:
        self._fire(result)

    def errback(self, error: Exception) -> None:
        self._fire(error)

    def _fire(self, result) -> None:
        if self.called:
            return
        self.called, self._result = True, result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(result, Exception):
                d.errback(result)
            else:
                d.callback(result)


class Handshake:
    """Phase, the handshake in progress and the live endpoint of one device.

    The :class:`~linchpin_connector.device.client.Device` does the I/O
    (publishing, writing the state file) and feeds the results in here.
    """

    def __init__(self):
        self.phase = Phase.IDLE
        self.endpoint: ChannelEndpoint | None = None  # in LIVE
        self.done: SharedResult | None = None     # fires when a handshake under way ends (LIVE or failed)
        self._hs: e2e.DeviceHandshake | None = None
        self._result: e2e.HandshakeResult | None = None
        self._written: SharedResult | None = None  # SAVING_KEY / ABANDONED: the key write ended

    def __repr__(self) -> str:
        return f"<Handshake {self.phase.value}>"

    def _go(self, event: str) -> bool:
        """Take the transition for ``event``; False for an ignored input."""
        if TRANSITIONS.ignores(self.phase, event):
            return False
        self.phase = TRANSITIONS.next(self.phase, event)
        return True

    @property
    def settled(self) -> defer.Deferred:
        """Fires once no key write is in progress (at once in most phases)."""
        if self.phase is Phase.ABANDONED and self._written is not None:
            return self._written.when()
        return defer.succeed(None)

    # -- inputs ----------------------------------------------------------------------

    def start(self, device_id: str, key_kind: int, key: bytes, connector_key: bytes) -> bytes:
        """Begin a handshake; returns the HELLO to publish."""
        hs = e2e.DeviceHandshake.start(device_id, key, key_kind, connector_key)
        self._go("start")
        self._hs, self.done = hs, SharedResult()
        return hs.hello

    def welcome_envelope(self, env: e2e.Welcome) -> e2e.HandshakeResult | None:
        """A WELCOME arrived. Returns the result when it answers our HELLO:
        with ``device_secret_key`` set the caller writes that key and then
        calls :meth:`saved` or :meth:`save_failed`; without it, the session is
        live and the caller publishes :meth:`confirm`."""
        if self.phase is not Phase.AWAITING_WELCOME:
            self._go("welcome_envelope")  # ignored (or loud, should the table ever change)
            return None
        result = self._hs.finish(env)
        if result is None:
            return None  # not the answer to our HELLO
        self._hs = None
        if result.device_secret_key is None:
            self._go("welcome")
            self._live(result)
        else:
            self._go("new_key")
            self._result, self._written = result, SharedResult()
        return result

    def saved(self) -> bool:
        """The new key is on disk. True when the session is now live."""
        self._go("saved")
        result, self._result = self._result, None
        self._written.callback(None)
        if self.phase is Phase.LIVE:
            self._live(result)
            return True
        return False

    def save_failed(self, error: Exception) -> None:
        self._go("save_failed")
        self._result = None
        self._written.callback(None)
        self.done.errback(error)

    def reject(self, error: Exception) -> bool:
        """A REJECT arrived; True when it failed our handshake."""
        if not self._go("reject"):
            return False
        self._hs = None
        self.done.errback(error)
        return True

    def fail(self, error: Exception) -> ChannelEndpoint | None:
        """The handshake or the session ends (timeout, RESET, gap, connector
        offline, gateway lost). Returns the endpoint that ended, if any."""
        endpoint, self.endpoint = self.endpoint, None
        if not self._go("fail"):
            return None
        self._hs = None
        if endpoint is not None:
            endpoint.end()
        if self.done is not None:
            self.done.errback(error)  # no-op once fired
        return endpoint

    def confirm(self) -> bytes:
        """The confirm DATA for the session just made live."""
        return self.endpoint.confirm()

    def _live(self, result: e2e.HandshakeResult) -> None:
        self.endpoint = ChannelEndpoint(result.session)
