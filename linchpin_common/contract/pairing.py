"""The pairing URI carried by the QR code (PROTOCOL.md section 3)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

from .ids import b64u_decode, b64u_encode

PAIR_PREFIX = "linchpin-mobile://pair?"


@dataclass(frozen=True)
class PairingInfo:
    gateway_url: str
    setup_key: str
    secret: bytes
    connector_key: bytes


def make_pairing_uri(gateway_url: str, setup_key: str, secret: bytes, connector_key: bytes) -> str:
    return (f"{PAIR_PREFIX}v=1&gateway={quote(gateway_url, safe='')}&setup_key={setup_key}"
            f"&secret={b64u_encode(secret)}&connector_key={b64u_encode(connector_key)}")


def parse_pairing_uri(uri: str) -> PairingInfo:
    uri = uri.strip()
    if not uri.startswith(PAIR_PREFIX):
        raise ValueError("not a Linchpin pairing URI (linchpin-mobile://pair?...)")
    query = parse_qs(urlsplit(uri).query, keep_blank_values=True, strict_parsing=False)
    fields = {}
    for name in ("v", "gateway", "setup_key", "secret", "connector_key"):
        values = query.get(name)
        if not values or len(values) != 1 or not values[0]:
            raise ValueError(f"pairing URI lacks '{name}'")
        fields[name] = values[0]
    if fields["v"] != "1":
        raise ValueError(f"unsupported pairing URI version {fields['v']}")
    try:
        secret = b64u_decode(fields["secret"])
        connector_key = b64u_decode(fields["connector_key"])
    except ValueError:
        raise ValueError("pairing URI has a malformed key")
    if len(secret) != 32 or len(connector_key) != 32:
        raise ValueError("pairing URI has a key of the wrong length")
    return PairingInfo(fields["gateway"], fields["setup_key"], secret, connector_key)
