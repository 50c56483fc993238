"""RFC 6455 client frames built by hand, for tools that speak WebSocket
without a library: the benchmark's load generators and the tests' raw client
(which send what no WebSocket library would); :func:`mask` also masks the
MQTT client's small frames."""

from __future__ import annotations

import os
import struct

__all__ = ["client_frame", "mask", "masked_header", "new_key"]


def mask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the 4-byte masking ``key`` repeated (RFC 6455 5.3)."""
    n = len(payload)
    if not n:
        return b""
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


def client_frame(payload: bytes, key: bytes, opcode: int = 0x2) -> bytes:
    """One masked, final frame carrying ``payload``."""
    return masked_header(len(payload), opcode) + key + mask(payload, key)


def masked_header(n: int, opcode: int = 0x2) -> bytes:
    """The header of a masked, final frame of ``n`` bytes, up to its masking key."""
    if n < 126:
        return struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    return struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)


def new_key() -> bytes:
    """A random masking key, never all zero (that would make masking free)."""
    key = os.urandom(4)
    while key == b"\0\0\0\0":
        key = os.urandom(4)
    return key
