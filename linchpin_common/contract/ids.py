"""Identifiers and secrets (PROTOCOL.md section 1) and their text forms."""

from __future__ import annotations

import base64
import binascii
import re
import secrets

ID_BYTES = 16  # instance_id, device_id: 128 bits as 32 lowercase hex chars
SECRET_BYTES = 16  # passwords and setup keys: 128 bits as base64url (22 chars)

_HEX_ID = re.compile(r"[0-9a-f]{32}")
_B64U = re.compile(r"[A-Za-z0-9_-]*")


def is_hex_id(text) -> bool:
    """True for an instance_id or device_id: 32 lowercase hex characters."""
    return isinstance(text, str) and _HEX_ID.fullmatch(text) is not None


def new_id() -> str:
    """128 random bits as 32 lowercase hex chars."""
    return secrets.token_hex(ID_BYTES)


def new_secret() -> str:
    """128 random bits as base64url without padding (22 chars)."""
    return b64u_encode(secrets.token_bytes(SECRET_BYTES))


def b64u_encode(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Inverse of :func:`b64u_encode`; strict.

    Raises ValueError for padding characters, characters outside the url-safe
    alphabet, an impossible length, or non-zero unused trailing bits (so every
    byte string has exactly one accepted text form).
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("base64url text must be ASCII") from None
    if not isinstance(text, str):
        raise ValueError("base64url text must be a str")
    if not _B64U.fullmatch(text):
        raise ValueError("invalid base64url character (padding is not allowed)")
    if len(text) % 4 == 1:
        raise ValueError("invalid base64url length")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"invalid base64url: {exc}") from None
    if b64u_encode(raw) != text:
        raise ValueError("non-canonical base64url (unused bits set)")
    return raw
