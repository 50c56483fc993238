"""End-to-end channel between device and connector (PROTOCOL.md section 5).

Everything here is pure: no I/O, no clocks, no Twisted. Randomness is drawn
from ``os.urandom`` / ``X25519PrivateKey.generate`` unless the caller injects
fixed values (only fixed-vector tests do that).

Envelopes (the whole MQTT payload of ``devices/<D>/up`` and ``/down``; byte 0
is the version 0x01, byte 1 the type; integers big-endian; ``D`` is the
device_id as its 32 ASCII bytes)::

    HELLO    (up,   63 bytes)  01 01 | key_kind(1) | nonce(12) |
             AES-GCM(k_hs, nonce, E_d(32), aad = bytes[0:15] || D || "up")
    WELCOME  (down, 71 bytes)  01 02 | key_kind(1) | nonce(12) |
             AES-GCM(k_hs, nonce, E_c(32) || session_id(8),
                     aad = bytes[0:15] || D || "down" || SHA-256(HELLO))
    DATA     (both, >= 34)     01 03 | session_id(8) | seq(8) |
             AES-GCM(k_dir, 00000000 || seq, message, aad = bytes[0:18] || D)
    RESET    (down, 10 bytes)  01 04 | session_id(8)        (not encrypted)
    REJECT   (down,  2 bytes)  01 05                        (not encrypted)

Keys::

    k_hs = HKDF(ikm=K, salt=32 zero bytes, info="lm-e2e v1 handshake" || D, L=32)
    ikm  = X25519(e_d, E_c) || X25519(e_d, S_c)      (device)
         = X25519(e_c, E_d) || X25519(s_c, E_d)      (connector)
    th   = SHA-256(HELLO || WELCOME)                 (full envelopes)
    k_up || k_down = HKDF(ikm, salt=K,
                          info="lm-e2e v1 session" || D || session_id || th, L=64)
    device_secret_key = HKDF(ikm, salt=K,
                             info="lm-e2e v1 device secret" || D || th, L=32)
                        (key_kind 0 only)

``K`` is the device_setup_secret_key (key_kind 0) or the device_secret_key
(key_kind 1; a not-yet-proven *pending* key is also used with key_kind 1).

Messages carried inside DATA: ``u32 header_len || header || body`` where the
header is compact UTF-8 JSON (an object with a string ``"t"``, at most 64 KiB)
and only ``req``/``res``/``body`` may carry body bytes (at most 256 KiB).

Decisions where PROTOCOL.md leaves room:

* Error handling follows one rule: input that came over the network never
  raises — it yields ``None`` ("drop silently") — except for an
  *authenticated* DATA with a seq above the expected one, which raises
  :class:`SessionGap` (the session is over). Bad *local* input (a wrong-length
  key, a malformed device_id, a connector public key that gives an all-zero
  X25519 result) raises ``ValueError`` / :class:`HandshakeError`.
* An all-zero X25519 result from a peer-supplied ephemeral key (or a key
  ``cryptography`` refuses to use) aborts the handshake: ``finish`` and
  ``accept_hello`` return ``None``. :class:`HandshakeError` is raised only by
  :meth:`DeviceHandshake.start` when the configured connector static key is
  such a point.
* :meth:`Session.open` verifies the tag *before* it looks at the seq, so a
  forged DATA with a higher seq is dropped like any other forgery and cannot
  end a session. Replays (lower seq) are dropped after authenticating.
* A HELLO or WELCOME whose key_kind is neither 0 nor 1 is dropped at parse
  time, like a wrong length.
* :meth:`DeviceHandshake.finish` succeeds at most once per HELLO; further
  WELCOMEs (duplicates, replays) return ``None``.
* Message headers are rejected when they contain duplicate object keys or the
  non-JSON constants NaN/Infinity, or nest too deeply for the parser.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import messages
from .ids import b64u_decode, b64u_encode, is_hex_id  # noqa: F401 (re-exported)

__all__ = [
    "KEY_SETUP", "KEY_DEVICE",
    "VERSION", "HELLO", "WELCOME", "DATA", "RESET", "REJECT",
    "HELLO_LEN", "WELCOME_LEN", "DATA_MIN_LEN", "RESET_LEN", "REJECT_LEN",
    "MAX_HEADER", "MAX_BODY_CHUNK", "CREDIT_WINDOW", "MAX_IN_FLIGHT",
    "BODY_TYPES",
    "b64u_encode", "b64u_decode", "handshake_key", "public_raw",
    "Hello", "Welcome", "Data", "Reset", "Reject", "parse_envelope",
    "make_reset", "make_reject",
    "MessageError", "encode_message", "decode_message",
    "SessionGap", "HandshakeError", "Session",
    "HandshakeResult", "DeviceHandshake", "Accepted", "accept_hello",
]

# --- constants -------------------------------------------------------------

KEY_SETUP = 0   # K = device_setup_secret_key
KEY_DEVICE = 1  # K = device_secret_key (or a pending one)

VERSION = 0x01
HELLO = 0x01
WELCOME = 0x02
DATA = 0x03
RESET = 0x04
REJECT = 0x05

HELLO_LEN = 63
WELCOME_LEN = 71
DATA_MIN_LEN = 34
RESET_LEN = 10
REJECT_LEN = 2

MAX_HEADER = 65536         # header bytes per message (64 KiB)
MAX_BODY_CHUNK = 262144    # body bytes per message (256 KiB)
CREDIT_WINDOW = 1048576    # un-acked body bytes per request and direction
MAX_IN_FLIGHT = 64         # requests in flight per session

BODY_TYPES = frozenset({messages.REQ, messages.RES, messages.BODY})  # the messages that carry body bytes

_KEY_LEN = 32
_NONCE_LEN = 12
_SESSION_ID_LEN = 8
_TAG_LEN = 16
_MAX_SEQ = 2**64 - 1
_SMALL = 16384  # Session.seal_parts joins messages up to this size

_INFO_HANDSHAKE = b"lm-e2e v1 handshake"
_INFO_SESSION = b"lm-e2e v1 session"
_INFO_DEVICE_SECRET = b"lm-e2e v1 device secret"



# --- errors ----------------------------------------------------------------

class MessageError(ValueError):
    """A message inside DATA (or one about to be sent) breaks the format."""


class SessionGap(Exception):
    """An authentic DATA arrived with a seq above the expected one.

    The session is over: the connector forgets it (and RESETs), the device
    fails its requests in flight and sends a new HELLO.
    """

    def __init__(self, expected: int, received: int) -> None:
        super().__init__(f"expected seq {expected}, received {received}")
        self.expected = expected
        self.received = received


class HandshakeError(ValueError):
    """A handshake cannot start with the given local parameters
    (the connector static key yields an all-zero X25519 result)."""


# --- small helpers ---------------------------------------------------------

def _device_bytes(device_id: str) -> bytes:
    if not is_hex_id(device_id):
        raise ValueError("device_id must be 32 lowercase hex characters")
    return device_id.encode("ascii")


def _check_key(K: bytes) -> bytes:
    if not isinstance(K, (bytes, bytearray)) or len(K) != _KEY_LEN:
        raise ValueError("a long-term key K must be 32 bytes")
    return bytes(K)


def _check_key_kind(key_kind: int) -> int:
    if key_kind not in (KEY_SETUP, KEY_DEVICE) or isinstance(key_kind, bool):
        raise ValueError("key_kind must be 0 (setup secret) or 1 (device secret)")
    return key_kind


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt,
                info=info).derive(ikm)


def _dh(private: X25519PrivateKey, public_raw: bytes) -> Optional[bytes]:
    """X25519, or None when the result would be all zero (low-order point)
    or the library refuses the point."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public_raw))
    except ValueError:
        return None
    if hmac.compare_digest(shared, bytes(32)):
        return None
    return shared


def public_raw(private: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of an X25519 public key (the QR code's ``connector_key``)."""
    return private.public_key().public_bytes_raw()


def _open(key: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> Optional[bytes]:
    try:
        return AESGCM(key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        return None


def _random_or(value: Optional[bytes], length: int, what: str) -> bytes:
    if value is None:
        return os.urandom(length)
    if not isinstance(value, (bytes, bytearray)) or len(value) != length:
        raise ValueError(f"{what} must be {length} bytes")
    return bytes(value)


def handshake_key(K: bytes, device_id: str) -> bytes:
    """k_hs = HKDF(ikm=K, salt=32 zero bytes, info="lm-e2e v1 handshake"||D, L=32)."""
    return _hkdf(_check_key(K), bytes(32),
                 _INFO_HANDSHAKE + _device_bytes(device_id), 32)


def _derive(ikm: bytes, K: bytes, D: bytes, session_id: bytes, th: bytes,
            key_kind: int) -> tuple[bytes, bytes, Optional[bytes]]:
    okm = _hkdf(ikm, K, _INFO_SESSION + D + session_id + th, 64)
    device_secret_key = None
    if key_kind == KEY_SETUP:
        device_secret_key = _hkdf(ikm, K, _INFO_DEVICE_SECRET + D + th, 32)
    return okm[:32], okm[32:], device_secret_key


# --- envelopes -------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    key_kind: int
    nonce: bytes
    sealed: bytes   # AES-GCM ciphertext || tag (48 bytes)
    raw: bytes      # the whole 63-byte envelope


@dataclass(frozen=True)
class Welcome:
    key_kind: int
    nonce: bytes
    sealed: bytes   # AES-GCM ciphertext || tag (56 bytes)
    raw: bytes      # the whole 71-byte envelope


@dataclass(frozen=True)
class Data:
    session_id: bytes
    seq: int
    sealed: bytes   # AES-GCM ciphertext || tag (>= 16 bytes); parsed: a view of raw, not a copy
    raw: bytes      # the whole envelope


@dataclass(frozen=True)
class Reset:
    session_id: bytes


@dataclass(frozen=True)
class Reject:
    pass


Envelope = Union[Hello, Welcome, Data, Reset, Reject]


def parse_envelope(data: Any) -> Optional[Envelope]:
    """Parse one MQTT payload. Returns None (drop silently) for anything that
    is not a well-formed version-1 envelope. Never raises."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None
    try:
        raw = bytes(data)
    except (TypeError, ValueError, BufferError):
        return None
    if len(raw) < 2 or raw[0] != VERSION:
        return None
    kind, n = raw[1], len(raw)
    if kind in (HELLO, WELCOME):
        if n != (HELLO_LEN if kind == HELLO else WELCOME_LEN):
            return None
        key_kind = raw[2]
        if key_kind not in (KEY_SETUP, KEY_DEVICE):
            return None
        cls = Hello if kind == HELLO else Welcome
        return cls(key_kind=key_kind, nonce=raw[3:15], sealed=raw[15:], raw=raw)
    if kind == DATA:
        if n < DATA_MIN_LEN:
            return None
        return Data(session_id=raw[2:10], seq=int.from_bytes(raw[10:18], "big"),
                    sealed=memoryview(raw)[18:], raw=raw)
    if kind == RESET:
        return Reset(session_id=raw[2:10]) if n == RESET_LEN else None
    if kind == REJECT:
        return Reject() if n == REJECT_LEN else None
    return None


def make_reset(session_id: bytes) -> bytes:
    if not isinstance(session_id, (bytes, bytearray)) or len(session_id) != _SESSION_ID_LEN:
        raise ValueError("session_id must be 8 bytes")
    return bytes((VERSION, RESET)) + bytes(session_id)


def make_reject() -> bytes:
    return bytes((VERSION, REJECT))


# --- messages inside DATA --------------------------------------------------

def _reject_constant(name: str) -> Any:
    raise MessageError(f"{name} is not JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj: dict = {}
    for key, value in pairs:
        if key in obj:
            raise MessageError(f"duplicate key {key!r} in header")
        obj[key] = value
    return obj


_decode_header = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant).decode


def _check_message(header: Any, body: bytes) -> None:
    if not isinstance(header, dict):
        raise MessageError("header must be a JSON object")
    t = header.get("t")
    if not isinstance(t, str):
        raise MessageError('header needs a string "t"')
    if body and t not in BODY_TYPES:
        raise MessageError(f"message type {t!r} carries no body")
    if len(body) > MAX_BODY_CHUNK:
        raise MessageError("body over 256 KiB")


def encode_message(header: dict, body: bytes = b"") -> bytes:
    """``u32 header_len || compact UTF-8 JSON header || body``.

    Applies the same rules as :func:`decode_message` and raises
    :class:`MessageError` rather than produce what a peer must refuse.
    """
    return message_prefix(header, body) + bytes(body)


def message_prefix(header: dict, body: bytes = b"") -> bytes:
    """What :func:`encode_message` puts before ``body``: its ``u32
    header_len || header``, so that a large body is not copied to sit
    behind it (:meth:`Session.seal_parts`).  The same checks."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise MessageError("body must be bytes")
    _check_message(header, body)
    try:
        encoded = _encode_header(header).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise MessageError(f"header cannot be encoded: {exc}") from None
    if len(encoded) > MAX_HEADER:
        raise MessageError("header over 64 KiB")
    return len(encoded).to_bytes(4, "big") + encoded


# One encoder and one decoder for every header: json.dumps and json.loads
# with options build a new one per call.
_encode_header = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def decode_message(data: bytes) -> tuple[dict, bytes]:
    """Split one plaintext message into ``(header, body)``.

    Raises :class:`MessageError` (a ValueError) for any malformed message.
    Only the framing, ``"t"`` and the body rules are checked here; fields of
    ``req`` etc. are validated by the callers.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError("message must be bytes")
    data = bytes(data)
    if len(data) < 4:
        raise MessageError("message shorter than its length prefix")
    (header_len,) = struct.unpack(">I", data[:4])
    if header_len > MAX_HEADER:
        raise MessageError("header over 64 KiB")
    if header_len > len(data) - 4:
        raise MessageError("header length beyond the message")
    try:
        text = data[4:4 + header_len].decode("utf-8")
        header = _decode_header(text)
    except MessageError:
        raise
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; so is the
        # int-digit limit. RecursionError: absurdly nested arrays/objects.
        raise MessageError(f"header is not UTF-8 JSON: {exc}") from None
    body = data[4 + header_len:]
    _check_message(header, body)
    return header, body


# --- sessions --------------------------------------------------------------

class Session:
    """One end-to-end session, in memory only.

    ``role`` is "device" (sends with k_up, receives with k_down) or
    "connector" (sends with k_down, receives with k_up). ``send_seq`` is the
    seq of the next DATA sealed, ``recv_seq`` the only seq accepted next.
    """

    def __init__(self, session_id: bytes, device_id: str, send_key: bytes,
                 recv_key: bytes, role: str, *, send_seq: int = 0,
                 recv_seq: int = 0) -> None:
        if role not in ("device", "connector"):
            raise ValueError('role must be "device" or "connector"')
        if not isinstance(session_id, (bytes, bytearray)) or len(session_id) != _SESSION_ID_LEN:
            raise ValueError("session_id must be 8 bytes")
        self.session_id = bytes(session_id)
        self.device_id = device_id
        self._D = _device_bytes(device_id)
        self.send_key = _check_key(send_key)
        self.recv_key = _check_key(recv_key)
        self.role = role
        self.send_seq = send_seq
        self.recv_seq = recv_seq
        self._send_aead = AESGCM(self.send_key)
        self._recv_aead = AESGCM(self.recv_key)

    def __repr__(self) -> str:  # never show keys
        return (f"<Session {self.role} {self.device_id} "
                f"id={self.session_id.hex()} send={self.send_seq} recv={self.recv_seq}>")

    @property
    def peer_confirmed(self) -> bool:
        """True once a DATA from the peer has been opened in this session,
        i.e. the peer has proven it derived the same keys. On the connector
        this is the device's seq-0 ``confirm``."""
        return self.recv_seq > 0

    @staticmethod
    def _nonce(seq: int) -> bytes:
        return bytes(4) + seq.to_bytes(8, "big")

    def seal(self, message: bytes) -> bytes:
        """Encrypt one message as the next DATA envelope; advances send_seq."""
        head = self._next_head()
        sealed = self._send_aead.encrypt(self._nonce(self.send_seq - 1), bytes(message), head + self._D)
        return head + sealed

    def seal_parts(self, *parts) -> bytearray:
        """:meth:`seal` of the message ``b"".join(parts)``, encrypted part by
        part into the one buffer it returns: a large body is neither joined
        to its header nor copied behind the envelope's head."""
        size = sum(len(part) for part in parts)
        if size <= _SMALL:  # setting up a streaming cipher costs more than joining a few KiB
            return self.seal(b"".join(parts))
        head = self._next_head()
        envelope = bytearray(18 + size + _TAG_LEN)
        envelope[:18] = head
        encryptor = Cipher(algorithms.AES(self.send_key), modes.GCM(self._nonce(self.send_seq - 1))).encryptor()
        encryptor.authenticate_additional_data(head + self._D)
        view = memoryview(envelope)
        at = 18
        for part in parts:
            # GCM encrypts as a stream: update_into writes exactly len(part)
            # bytes (it only asks for room for a block more, which the tag's
            # place at the end gives).
            at += encryptor.update_into(part, view[at:])
        encryptor.finalize()
        view[at:] = encryptor.tag
        return envelope

    def _next_head(self) -> bytes:
        """The next DATA's first 18 bytes; advances send_seq."""
        seq = self.send_seq
        if seq > _MAX_SEQ:
            raise OverflowError("seq space of this session is exhausted")
        self.send_seq = seq + 1
        return bytes((VERSION, DATA)) + self.session_id + seq.to_bytes(8, "big")

    def open(self, env: Union[Data, bytes]) -> Optional[bytes]:
        """Decrypt the peer's DATA.

        Returns the plaintext when the envelope authenticates and carries the
        expected seq. Returns None (drop silently) for another session_id, a
        failed decryption, or a lower seq (replay). Raises SessionGap for an
        authentic DATA with a higher seq. The tag is checked first, so a
        forged higher seq is only ever dropped.
        """
        if not isinstance(env, Data):
            env = parse_envelope(env)
            if not isinstance(env, Data):
                return None
        if env.session_id != self.session_id:
            return None
        try:
            plaintext = self._recv_aead.decrypt(self._nonce(env.seq), env.sealed, env.raw[:18] + self._D)
        except InvalidTag:
            return None
        if env.seq < self.recv_seq:
            return None
        if env.seq > self.recv_seq:
            raise SessionGap(self.recv_seq, env.seq)
        self.recv_seq += 1
        return plaintext


# --- handshake -------------------------------------------------------------

@dataclass(frozen=True)
class HandshakeResult:
    session: Session
    device_secret_key: Optional[bytes] = field(repr=False)  # key_kind 0 only


@dataclass(frozen=True)
class Accepted:
    label: str                           # label of the key that opened the HELLO
    welcome: bytes                       # 71-byte WELCOME to publish
    session: Session
    device_secret_key: Optional[bytes] = field(repr=False)  # key_kind 0 only


def _welcome_aad(header: bytes, D: bytes, hello_raw: bytes) -> bytes:
    return header + D + b"down" + hashlib.sha256(hello_raw).digest()


class DeviceHandshake:
    """The device's side of one handshake: build a HELLO, then finish with
    the WELCOME that answers it. Use :meth:`start`."""

    def __init__(self, device_id: str, K: bytes, key_kind: int, k_hs: bytes,
                 ephemeral_private: X25519PrivateKey, static_shared: bytes,
                 hello: bytes) -> None:
        # Internal; call DeviceHandshake.start().
        self.device_id = device_id
        self.key_kind = key_kind
        self.hello = hello
        self._D = _device_bytes(device_id)
        self._K = K
        self._k_hs = k_hs
        self._e_d = ephemeral_private
        self._static_shared = static_shared
        self._done = False

    def __repr__(self) -> str:
        return f"<DeviceHandshake {self.device_id} key_kind={self.key_kind} done={self._done}>"

    @classmethod
    def start(cls, device_id: str, K: bytes, key_kind: int,
              connector_static_public: Union[bytes, X25519PublicKey], *,
              ephemeral_private: Optional[X25519PrivateKey] = None,
              nonce: Optional[bytes] = None) -> "DeviceHandshake":
        """Make a HELLO (``.hello``, 63 bytes) under K.

        Raises ValueError for malformed local parameters and HandshakeError
        when the connector static key gives an all-zero X25519 result.
        """
        D = _device_bytes(device_id)
        K = _check_key(K)
        key_kind = _check_key_kind(key_kind)
        if isinstance(connector_static_public, X25519PublicKey):
            connector_static_public = connector_static_public.public_bytes_raw()
        if (not isinstance(connector_static_public, (bytes, bytearray))
                or len(connector_static_public) != 32):
            raise ValueError("connector static public key must be 32 bytes")
        nonce = _random_or(nonce, _NONCE_LEN, "nonce")
        e_d = ephemeral_private if ephemeral_private is not None else X25519PrivateKey.generate()
        static_shared = _dh(e_d, bytes(connector_static_public))
        if static_shared is None:
            raise HandshakeError("connector static key is a low-order point")
        k_hs = handshake_key(K, device_id)
        header = bytes((VERSION, HELLO, key_kind)) + nonce
        sealed = AESGCM(k_hs).encrypt(nonce, public_raw(e_d), header + D + b"up")
        return cls(device_id, K, key_kind, k_hs, e_d, static_shared, header + sealed)

    def finish(self, welcome: Union[Welcome, bytes]) -> Optional[HandshakeResult]:
        """Complete the handshake with a WELCOME.

        Returns None (drop) when the WELCOME is malformed, of another
        key_kind, does not authenticate for this HELLO, carries a low-order
        E_c, or when this handshake has already finished.
        """
        if self._done:
            return None
        if not isinstance(welcome, Welcome):
            welcome = parse_envelope(welcome)
            if not isinstance(welcome, Welcome):
                return None
        if welcome.key_kind != self.key_kind:
            return None
        plaintext = _open(self._k_hs, welcome.nonce, welcome.sealed,
                          _welcome_aad(welcome.raw[:15], self._D, self.hello))
        if plaintext is None:
            return None
        E_c, session_id = plaintext[:32], plaintext[32:]
        ephemeral_shared = _dh(self._e_d, E_c)
        if ephemeral_shared is None:
            return None
        th = hashlib.sha256(self.hello + welcome.raw).digest()
        k_up, k_down, dsk = _derive(ephemeral_shared + self._static_shared,
                                    self._K, self._D, session_id, th, self.key_kind)
        self._done = True
        session = Session(session_id, self.device_id, send_key=k_up,
                          recv_key=k_down, role="device")
        return HandshakeResult(session=session, device_secret_key=dsk)


def accept_hello(hello: Union[Hello, bytes], device_id: str,
                 keys: list[tuple[str, int, bytes]],
                 connector_static_private: X25519PrivateKey, *,
                 ephemeral_private: Optional[X25519PrivateKey] = None,
                 nonce: Optional[bytes] = None,
                 session_id: Optional[bytes] = None) -> Optional[Accepted]:
    """The connector's side of a handshake.

    ``keys`` lists the candidate long-term keys ``(label, key_kind, K)`` held
    for this device, tried in order; only those whose key_kind equals the
    HELLO's are tried (a pending key is listed with key_kind 1). Returns an
    :class:`Accepted` for the first key that opens the HELLO, else None —
    also when the HELLO is malformed or E_d is a low-order point. The caller
    chooses between REJECT and a silent drop.
    """
    D = _device_bytes(device_id)
    if not isinstance(hello, Hello):
        hello = parse_envelope(hello)
        if not isinstance(hello, Hello):
            return None
    aad = hello.raw[:15] + D + b"up"
    for label, key_kind, K in keys:
        if key_kind != hello.key_kind:
            continue
        K = _check_key(K)
        k_hs = handshake_key(K, device_id)
        E_d = _open(k_hs, hello.nonce, hello.sealed, aad)
        if E_d is None:
            continue
        e_c = ephemeral_private if ephemeral_private is not None else X25519PrivateKey.generate()
        ephemeral_shared = _dh(e_c, E_d)
        static_shared = _dh(connector_static_private, E_d)
        if ephemeral_shared is None or static_shared is None:
            return None
        sid = _random_or(session_id, _SESSION_ID_LEN, "session_id")
        wnonce = _random_or(nonce, _NONCE_LEN, "nonce")
        header = bytes((VERSION, WELCOME, hello.key_kind)) + wnonce
        welcome = header + AESGCM(k_hs).encrypt(
            wnonce, public_raw(e_c) + sid, _welcome_aad(header, D, hello.raw))
        th = hashlib.sha256(hello.raw + welcome).digest()
        k_up, k_down, dsk = _derive(ephemeral_shared + static_shared, K, D, sid,
                                    th, hello.key_kind)
        session = Session(sid, device_id, send_key=k_down, recv_key=k_up,
                          role="connector")
        return Accepted(label=label, welcome=welcome, session=session,
                        device_secret_key=dsk)
    return None
