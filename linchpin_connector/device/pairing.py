"""Pairing: the setup key from the QR code traded at the gateway for this
device's own password, saved with the connector's key (PROTOCOL.md section 2).
The E2E half of pairing (the setup secret rotated to the device secret key)
happens on the first handshake, in :mod:`.handshake` and :mod:`.client`."""

from __future__ import annotations

import os

from linchpin_common import console
from linchpin_common.contract import e2e
from linchpin_common.contract.pairing import parse_pairing_uri
from linchpin_common.gateway_client import GatewayAPI, GatewayError, InsecureURL, check_gateway_url, make_http_client
from linchpin_common.http_proxy import ProxyConfig, ProxyError

from .errors import DeviceError, GatewayUnreachable
from .state import DeviceState
from .support import ReactorThreads, deferred_api, error_reason


@deferred_api
async def pair(reactor, uri: str, state_path: str, *, http=None, allow_insecure: bool = False,
               ca_file: str | None = None, proxy: ProxyConfig | None = None) -> DeviceState:
    """Trade the setup key for this device's own password and save the state.

    ``proxy``: the HTTP proxy settings for the gateway; None reads them from
    the environment as curl does, ``ProxyConfig.none()`` goes direct."""
    info = parse_pairing_uri(uri)
    try:
        gateway_url = check_gateway_url(info.gateway_url, allow_insecure)
    except InsecureURL as e:
        raise DeviceError(str(e))
    if proxy is None:
        proxy = ProxyConfig.resolve()
    http = http or make_http_client(reactor, ca_file, persistent=False, proxy=proxy)
    api = GatewayAPI(http, gateway_url)
    try:
        creds = await api.setup(info.setup_key)
    except GatewayError as e:
        if e.code == "invalid_setup_key":
            raise DeviceError("the pairing code is unknown, already used or expired")
        raise DeviceError(str(e))
    except ProxyError as e:
        raise GatewayUnreachable(str(e))
    except console.UNREACHABLE as e:
        raise GatewayUnreachable(f"gateway unreachable at {gateway_url}: {error_reason(e)}")
    state = DeviceState(path=state_path, gateway_url=gateway_url, device_id=creds["device_id"],
                        device_password=creds["device_password"],
                        connector_key=e2e.b64u_encode(info.connector_key),
                        setup_secret=e2e.b64u_encode(info.secret), insecure=allow_insecure,
                        ca_file=os.path.abspath(ca_file) if ca_file else None)
    await ReactorThreads(reactor).run(state.save)
    return state
