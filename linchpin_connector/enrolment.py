"""Creating and revoking a device: the one way both ``lmconnector device
add/revoke`` and the pairing page do it.

The gateway first, then the connector's state: a device is created at the
gateway (which hands out its setup key once), stored here with a fresh setup
secret, and its pairing URI (PROTOCOL.md section 3) made from both.  Revoking
deletes it at the gateway (where a device it no longer knows is fine) and
then here.  ``state`` is the blocking ConnectorState or its AsyncState.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from twisted.internet import defer

from linchpin_common.contract.pairing import make_pairing_uri
from linchpin_common.gateway_client import GatewayError


@dataclass(frozen=True)
class NewDevice:
    device_id: str
    uri: str  # holds the setup key and secret: shown to its user, never logged
    expires_at: str  # RFC 3339, from the gateway


def valid_user(user: str) -> bool:
    """An intranet user name: non-empty, no control characters."""
    return bool(user) and not any(ch < " " or ch == "\x7f" for ch in user)


async def _settled(result):
    return await result if isinstance(result, defer.Deferred) else result


async def create_device(api, state, user: str, connector_public_key: bytes) -> NewDevice:
    answer = await api.add_device()
    secret = secrets.token_bytes(32)
    await _settled(state.add_device(answer["device_id"], user, secret))
    uri = make_pairing_uri(answer["gateway_url"], answer["device_setup_key"], secret, connector_public_key)
    return NewDevice(answer["device_id"], uri, answer["expires_at"])


async def revoke_device(api, state, device_id: str) -> bool:
    """Revoke at the gateway, then forget here; False if the gateway did not know it."""
    known = True
    try:
        await api.revoke(device_id)
    except GatewayError as e:
        if e.code != "not_found":
            raise
        known = False
    await _settled(state.remove_device(device_id))
    return known
