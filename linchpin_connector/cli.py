"""``lmconnector``: register with a gateway, add, list and revoke devices.

The daemon itself is ``twistd -n lmconnector`` (see :mod:`linchpin_connector.tap`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys

import segno
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from linchpin_common import console
from linchpin_common.console import UNREACHABLE
from linchpin_common.contract.pairing import make_pairing_uri
from linchpin_common.gateway_client import GatewayAPI, GatewayError, InsecureURL, check_gateway_url, make_http_client
from linchpin_common.tls import CAFileError

from .state import ConnectorState, NotRegistered

DEFAULT_DATA_DIR = "./var/lmconnector"


class CommandError(Exception):
    pass


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def _raw_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _api(reactor, state: ConnectorState, ca_file) -> GatewayAPI:
    reg = state.registration()
    return GatewayAPI(make_http_client(reactor, ca_file, persistent=False), reg["gateway_url"],
                      reg["instance_id"], reg["instance_password"])


async def register(reactor, args, state: ConnectorState) -> None:
    try:
        url = check_gateway_url(args.gateway, args.insecure)
    except InsecureURL as e:
        raise CommandError(str(e))
    try:
        state.registration()
        if not args.force:
            raise CommandError(f"already registered (state in {args.data_dir}); --force registers anew "
                               "and forgets every paired device")
    except NotRegistered:
        pass
    api = GatewayAPI(make_http_client(reactor, args.ca_file, persistent=False), url)
    answer = await api.register(args.registration_token)
    # The daemon and the devices use the URL the gateway gives (its public
    # URL), which must pass the same test as the one typed here.
    try:
        public_url = check_gateway_url(answer.get("gateway_url") or url, args.insecure)
    except InsecureURL as e:
        raise CommandError(f"the gateway calls itself {answer.get('gateway_url')!r}: {e}")
    static = X25519PrivateKey.generate()
    state.save_registration(public_url, answer["instance_id"], answer["instance_password"], _raw_private(static))
    print(f"registered instance {answer['instance_id']} at {public_url}", file=sys.stderr)


async def device_add(reactor, args, state: ConnectorState) -> None:
    if not args.user or any(ch < " " or ch == "\x7f" for ch in args.user):
        raise CommandError("a user name must be non-empty and hold no control characters")
    reg = state.registration()
    answer = await _api(reactor, state, args.ca_file).add_device()
    secret = secrets.token_bytes(32)
    state.add_device(answer["device_id"], args.user, secret)
    uri = make_pairing_uri(answer["gateway_url"], answer["device_setup_key"], secret,
                           _raw_public(reg["static_private_key"]))
    qr = segno.make(uri, error="m")
    if args.qr_png:
        _write_private(args.qr_png, lambda f: qr.save(f, kind="png", scale=6))
    if args.qr_svg:
        _write_private(args.qr_svg, lambda f: qr.save(f, kind="svg", scale=6))
    if sys.stderr.isatty():
        qr.terminal(out=sys.stderr, compact=True)
    print(f"device {answer['device_id']} for {args.user}; pairing code valid until {answer['expires_at']}",
          file=sys.stderr)
    print(uri)


def _write_private(path: str, write) -> None:
    """The QR code holds secrets: the file is created 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        write(f)


async def device_list(reactor, args, state: ConnectorState) -> None:
    for device in state.devices():
        print(f"{device.device_id}\t{device.user}\t{device.state}")


async def device_revoke(reactor, args, state: ConnectorState) -> None:
    try:
        await _api(reactor, state, args.ca_file).revoke(args.device_id)
    except GatewayError as e:
        if e.code != "not_found":
            raise
        print("the gateway did not know this device; removing it here", file=sys.stderr)
    state.remove_device(args.device_id)
    print(f"device {args.device_id} revoked", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmconnector", description="Linchpin connector administration")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="state folder (default %(default)s)")
    p.add_argument("--ca-file", help="PEM of a private CA that signed the gateway's certificate")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("register", help="register this connector with a gateway")
    r.add_argument("--gateway", required=True, help="gateway base URL, e.g. https://gw.example.com")
    r.add_argument("--registration-token", help="the gateway's registration token, if it has one")
    r.add_argument("--insecure", action="store_true", help="allow plain http to a non-loopback gateway")
    r.add_argument("--force", action="store_true", help="register anew even if already registered")
    r.set_defaults(run=register)
    d = sub.add_parser("device", help="manage devices")
    dsub = d.add_subparsers(dest="device_command", required=True)
    a = dsub.add_parser("add", help="create a device for an intranet user and print its pairing URI")
    a.add_argument("user")
    a.add_argument("--qr-png", help="also write the QR code as a PNG file")
    a.add_argument("--qr-svg", help="also write the QR code as an SVG file")
    a.set_defaults(run=device_add)
    dsub.add_parser("list", help="list devices: id, user, state").set_defaults(run=device_list)
    v = dsub.add_parser("revoke", help="revoke a device at the gateway and forget its keys")
    v.add_argument("device_id")
    v.set_defaults(run=device_revoke)
    return p


def main(argv=None) -> None:
    args = _parser().parse_args(argv)

    async def run(reactor):
        try:
            state = ConnectorState(args.data_dir)
        except Exception as e:
            print(f"lmconnector: cannot open state in {args.data_dir}: {e}", file=sys.stderr)
            return 2
        try:
            await args.run(reactor, args, state)
            return 0
        except (CommandError, NotRegistered, GatewayError) as e:
            print(f"lmconnector: {e}", file=sys.stderr)
            return 1
        except CAFileError as e:
            print(f"lmconnector: {e}", file=sys.stderr)
            return 2
        except UNREACHABLE as e:
            print(f"lmconnector: gateway unreachable: {e}", file=sys.stderr)
            return 3
        finally:
            state.close()

    console.run(run)
