"""One end of the E2E channel (PROTOCOL.md section 5), for the device and the connector alike.

:mod:`.e2e` holds the primitives (envelopes, handshake, :class:`~.e2e.Session`);
this module holds the rules both parties apply on top of them, so they are
written once:

* :class:`ChannelEndpoint` wraps one live session: it seals messages and
  turns a received DATA into one :class:`Received` outcome (the session
  check, decryption, the replay and gap rules, message decoding, and the
  ``confirm`` rule: the device's first DATA is ``{"t":"confirm"}``).
* :class:`SendWindow` and :class:`ReceiveWindow` are the per-request credit
  window of one direction: at most ``CREDIT_WINDOW`` body bytes sent and not
  yet acked.
* :class:`AnsweredHellos` remembers which HELLOs the connector has answered,
  so a byte-identical replay never creates or evicts a pending key.

Sans-IO: no clock, no Twisted, no logging. Network input never raises here;
a local misuse (sealing on an ended channel, a device sealing before its
confirm) raises :class:`ChannelError`.
"""

from __future__ import annotations

import enum
import hashlib
from collections import OrderedDict
from typing import Optional

from . import e2e, messages

__all__ = [
    "CONFIRM", "Outcome", "Received", "ChannelError", "ChannelEndpoint",
    "SendWindow", "ReceiveWindow", "ACK_BATCH", "AnsweredHellos",
]

CONFIRM = messages.confirm()
# A receiver acks consumed body bytes in batches of a quarter of the window,
# so the sender always hears from it before its window fills.
ACK_BATCH = e2e.CREDIT_WINDOW // 4


class ChannelError(Exception):
    """This end used its channel against the rules (a local bug, never network input)."""


class Outcome(enum.Enum):
    MESSAGE = "message"              # header and body to act on
    CONFIRMED = "confirmed"          # connector: the device's confirm arrived (proves the session's key)
    DROPPED = "dropped"              # a replay or a forgery: ignore it, answer nothing
    MALFORMED = "malformed"          # an authentic message that breaks the format: ignore it, answer nothing
    OTHER_SESSION = "other_session"  # DATA of another session: the connector answers RESET, the device ignores it
    GAP = "gap"                      # an authentic DATA after a gap: the session is over
    NOT_CONFIRMED = "not_confirmed"  # connector: the first message was not the confirm: the session is over


_ENDING = frozenset({Outcome.GAP, Outcome.NOT_CONFIRMED})


class Received:
    """What one received DATA amounts to."""

    __slots__ = ("outcome", "header", "body", "reason")

    def __init__(self, outcome: Outcome, header: Optional[dict] = None, body: bytes = b"", reason: str = ""):
        self.outcome = outcome
        self.header = header
        self.body = body
        self.reason = reason

    @property
    def ends_session(self) -> bool:
        """True when the session is over (the endpoint has ended itself)."""
        return self.outcome in _ENDING

    def __repr__(self) -> str:  # never show bodies
        t = messages.kind(self.header)
        return f"<Received {self.outcome.value} t={t!r} body={len(self.body)} {self.reason}>"


_DROPPED = Received(Outcome.DROPPED, reason="replayed or forged")
_OTHER = Received(Outcome.OTHER_SESSION, reason="another session")


class ChannelEndpoint:
    """One end of one live E2E session.

    The role comes from the session (``e2e.Session.role``). A device endpoint
    must send :meth:`confirm` before any other message; a connector endpoint
    reports the device's confirm as :attr:`Outcome.CONFIRMED` and ends the
    session when the first message is anything else.
    """

    __slots__ = ("session", "confirmed", "live")

    def __init__(self, session: e2e.Session):
        self.session = session
        self.confirmed = False  # device: confirm sent; connector: confirm received
        self.live = True

    def __repr__(self) -> str:
        return f"<ChannelEndpoint {self.session!r} confirmed={self.confirmed} live={self.live}>"

    @property
    def session_id(self) -> bytes:
        return self.session.session_id

    @property
    def is_device(self) -> bool:
        return self.session.role == "device"

    def end(self) -> None:
        self.live = False

    # -- sending -----------------------------------------------------------------

    def confirm(self) -> bytes:
        """The device's first DATA of the session (seq 0): ``{"t":"confirm"}``."""
        if not self.is_device or self.confirmed:
            raise ChannelError("only a device confirms, and once per session")
        envelope = self._seal(CONFIRM, b"")
        self.confirmed = True
        return envelope

    def seal(self, header: dict, body: bytes = b"") -> bytes:
        """One message as the next DATA envelope. Raises :class:`e2e.MessageError`
        for a message the peer would refuse."""
        if self.is_device and not self.confirmed:
            raise ChannelError("a device sends its confirm first")
        return self._seal(header, body)

    def _seal(self, header: dict, body: bytes) -> bytes:
        if not self.live:
            raise ChannelError("this session has ended")
        return self.session.seal_parts(e2e.message_prefix(header, body), body)

    # -- receiving ---------------------------------------------------------------

    def owns(self, env: e2e.Data) -> bool:
        return env.session_id == self.session.session_id

    def receive(self, env: e2e.Data) -> Received:
        """Apply the receive rules of section 5 to one DATA from the peer."""
        if not self.live or env.session_id != self.session.session_id:
            return _OTHER
        try:
            plaintext = self.session.open(env)
        except e2e.SessionGap as gap:
            self.live = False
            return Received(Outcome.GAP, reason=f"expected seq {gap.expected}, received {gap.received}")
        if plaintext is None:
            return _DROPPED
        try:
            header, body = e2e.decode_message(plaintext)
        except e2e.MessageError as e:
            return Received(Outcome.MALFORMED, reason=str(e))
        if not self.confirmed and not self.is_device:
            if messages.kind(header) != messages.CONFIRM:
                self.live = False
                return Received(Outcome.NOT_CONFIRMED, header, reason="the first message was not the confirm")
            self.confirmed = True
            return Received(Outcome.CONFIRMED, header)
        return Received(Outcome.MESSAGE, header, body)


# -- flow control ------------------------------------------------------------------


class SendWindow:
    """The sender's side of one request's body in one direction: at most
    ``size`` bytes sent and not yet acked."""

    __slots__ = ("size", "unacked")

    def __init__(self, size: int = e2e.CREDIT_WINDOW):
        self.size = size
        self.unacked = 0

    @property
    def available(self) -> int:
        return self.size - self.unacked

    @property
    def full(self) -> bool:
        return self.unacked >= self.size

    def sent(self, n: int) -> None:
        if n > self.available:
            raise ChannelError(f"{n} bytes exceed the {self.available} bytes of credit left")
        self.unacked += n

    def acked(self, n) -> bool:
        """Credit ``n`` bytes back. False (nothing changes) for an ack that is
        not an integer from 0 to the bytes outstanding."""
        if type(n) is not int or not 0 <= n <= self.unacked:
            return False
        self.unacked -= n
        return True


class ReceiveWindow:
    """The receiver's side of one request's body in one direction.

    :meth:`received` counts bytes as they arrive (False when the peer
    overran the window); :meth:`consumed` counts bytes handed on and returns
    how many to ack now: everything consumed since the last ack once it
    reaches ``batch`` (1 acks at once), else 0.
    """

    __slots__ = ("size", "batch", "unacked", "_consumed")

    def __init__(self, size: int = e2e.CREDIT_WINDOW, batch: int = 1):
        self.size = size
        self.batch = batch
        self.unacked = 0      # received and not yet acked
        self._consumed = 0    # consumed and not yet acked

    def received(self, n: int) -> bool:
        self.unacked += n
        return self.unacked <= self.size

    def consumed(self, n: int) -> int:
        self._consumed += n
        if self._consumed < self.batch or not self._consumed:
            return 0
        ack, self._consumed = self._consumed, 0
        self.unacked -= ack
        return ack


# -- replayed HELLOs -----------------------------------------------------------------


class AnsweredHellos:
    """The HELLOs the connector has answered, per device (digests only).

    PROTOCOL.md: a HELLO byte-identical to one already answered gets the same
    WELCOME again or is dropped; it never creates or evicts a pending key.
    The newest ``per_device`` HELLOs of each device are remembered; a device
    that is removed is forgotten with :meth:`forget`.
    """

    def __init__(self, per_device: int = 16):
        self.per_device = per_device
        self._seen: dict[str, OrderedDict[bytes, None]] = {}

    @staticmethod
    def digest(hello: e2e.Hello) -> bytes:
        return hashlib.sha256(hello.raw).digest()

    def seen(self, device_id: str, hello: e2e.Hello) -> bool:
        known = self._seen.get(device_id)
        return known is not None and self.digest(hello) in known

    def answered(self, device_id: str, hello: e2e.Hello) -> None:
        known = self._seen.setdefault(device_id, OrderedDict())
        known[self.digest(hello)] = None
        while len(known) > self.per_device:
            known.popitem(last=False)

    def forget(self, device_id: str) -> None:
        self._seen.pop(device_id, None)

    def __len__(self) -> int:
        return len(self._seen)
