"""``lmconnector``: register with a gateway, add, list and revoke devices.

The daemon itself is ``twistd -n lmconnector`` (see :mod:`linchpin_connector.tap`).
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import segno
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from linchpin_common import __version__, console
from linchpin_common.console import UNREACHABLE
from linchpin_common.contract import e2e
from linchpin_common.files import write_private_file
from linchpin_common.http_proxy import ProxyError
from linchpin_common.gateway_client import GatewayAPI, GatewayError, InsecureURL, check_gateway_url, make_http_client
from linchpin_common.tls import CAFileError, TLSFailure

from .enrolment import create_device, revoke_device, valid_user
from .state import DEFAULT_DATA_DIR, NotRegistered, StateQueries, open_state


class CommandError(Exception):
    pass


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def _api(reactor, args, state: StateQueries) -> GatewayAPI:
    reg = state.registration()
    return GatewayAPI(make_http_client(reactor, args.ca_file, persistent=False, proxy=args.proxy_config),
                      reg["gateway_url"], reg["instance_id"], reg["instance_password"])


async def register(reactor, args, state: StateQueries) -> None:
    try:
        url = check_gateway_url(args.gateway, args.insecure)
    except InsecureURL as e:
        raise CommandError(str(e))
    try:
        state.registration()
        if not args.force:
            raise CommandError(f"already registered (state in {state_name(args)}); --force registers anew "
                               "and forgets every paired device")
    except NotRegistered:
        pass
    api = GatewayAPI(make_http_client(reactor, args.ca_file, persistent=False, proxy=args.proxy_config), url)
    answer = await api.register(_registration_token(args))
    # The daemon and the devices use the URL the gateway gives (its public
    # URL), which must pass the same test as the one typed here.
    try:
        public_url = check_gateway_url(answer.get("gateway_url") or url, args.insecure)
    except InsecureURL as e:
        raise CommandError(f"the gateway calls itself {answer.get('gateway_url')!r}: {e}")
    static = X25519PrivateKey.generate()
    state.save_registration(public_url, answer["instance_id"], answer["instance_password"], _raw_private(static))
    print(f"registered instance {answer['instance_id']} at {public_url}", file=sys.stderr)


TOKEN_ENV = "LINCHPIN_REGISTRATION_TOKEN"


def _registration_token(args) -> str | None:
    """From --registration-token-file (first line), else the option, else the environment."""
    if args.registration_token_file:
        try:
            with open(args.registration_token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as e:
            raise CommandError(f"cannot read the registration token file {args.registration_token_file}: "
                               f"{e.strerror or e}")
        if not token:
            raise CommandError(f"the registration token file {args.registration_token_file} is empty")
        return token
    return args.registration_token or os.environ.get(TOKEN_ENV) or None


async def device_add(reactor, args, state: StateQueries) -> None:
    if not valid_user(args.user):
        raise CommandError("a user name must be non-empty and hold no control characters")
    reg = state.registration()
    device = await create_device(_api(reactor, args, state), state, args.user,
                                 e2e.public_raw(X25519PrivateKey.from_private_bytes(reg["static_private_key"])))
    qr = segno.make(device.uri, error="m")
    if args.qr_png:
        _write_qr(args.qr_png, qr, "png", device.device_id)
    if args.qr_svg:
        _write_qr(args.qr_svg, qr, "svg", device.device_id)
    if sys.stderr.isatty():
        qr.terminal(out=sys.stderr, compact=True)
    print(f"device {device.device_id} for {args.user}; pairing code valid until {device.expires_at}",
          file=sys.stderr)
    print(device.uri)


def _write_qr(path: str, qr, kind: str, device_id: str) -> None:
    """The QR code holds secrets: a new 0600 file under a temporary name,
    renamed over ``path`` (a planted symlink or world-readable file there is
    replaced, never written through)."""
    image = io.BytesIO()
    qr.save(image, kind=kind, scale=6)
    try:
        write_private_file(path, image.getvalue())
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror or e}; device {device_id} was created "
                           f"without it: 'lmconnector device revoke {device_id}', then add it again")


async def device_list(reactor, args, state: StateQueries) -> None:
    for device in state.devices():
        print(f"{device.device_id}\t{device.user}\t{device.state}")


async def device_revoke(reactor, args, state: StateQueries) -> None:
    if not await revoke_device(_api(reactor, args, state), state, args.device_id):
        print("the gateway did not know this device; removed it here", file=sys.stderr)
    print(f"device {args.device_id} revoked", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmconnector", description="Linchpin connector administration: register with a gateway, then "
        "add, list and revoke devices. The daemon itself is 'twistd -n lmconnector --backend URL'.",
        epilog="Exit status: 0 done, 1 refused (the message says why), 2 bad usage or local files, "
        "3 gateway or proxy unreachable.")
    p.add_argument("--version", action="version", version=f"lmconnector {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("register", help="register this connector with a gateway")
    r.add_argument("--gateway", metavar="URL", required=True, help="gateway base URL, e.g. https://gw.example.com")
    r.add_argument("--registration-token", metavar="TOKEN",
                   help=f"the gateway's registration token, if it has one (visible in ps: prefer "
                        f"--registration-token-file or {TOKEN_ENV})")
    r.add_argument("--registration-token-file", metavar="FILE", help="file whose first line is the token")
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
    listing = dsub.add_parser("list", help="list devices: id, user, state")
    listing.set_defaults(run=device_list)
    v = dsub.add_parser("revoke", help="revoke a device at the gateway and forget its keys")
    v.add_argument("device_id")
    v.set_defaults(run=device_revoke)
    console.shared_options(p, [r, a, listing, v], _global_options)
    return p


def state_name(args) -> str:
    """Where the state is, for messages (never a password)."""
    if args.store:
        from .pgstate import redact

        return redact(args.store)
    return args.data_dir


def _global_options(parser, **defaults) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help="state folder (default %s)" % DEFAULT_DATA_DIR,
                        **{"default": DEFAULT_DATA_DIR, **defaults})
    parser.add_argument("--store", metavar="URL", help="postgresql://user@host:port/db: the state shared by every "
                        "connector of the instance (password from PGPASSWORD); default the SQLite file in --data-dir",
                        **defaults)
    parser.add_argument("--ca-file", metavar="PEM", help="PEM of a private CA that signed the gateway's certificate",
                        **defaults)
    console.add_proxy_options(parser, **defaults)


def main(argv=None) -> None:
    args = console.parse_command_line(_parser(), argv, "lmconnector")

    async def run(reactor):
        try:
            state = open_state(args.data_dir, args.store)
        except Exception as e:
            print(f"lmconnector: cannot open state in {state_name(args)}: {e}", file=sys.stderr)
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
        except ProxyError as e:
            print(f"lmconnector: {e}", file=sys.stderr)
            return 3
        except TLSFailure as e:
            print(f"lmconnector: gateway unreachable: {e}", file=sys.stderr)
            return 3
        except UNREACHABLE as e:
            print(f"lmconnector: gateway unreachable: {e} (check the gateway URL, that it is running, "
                  "and the proxy settings)", file=sys.stderr)
            return 3
        finally:
            state.close()

    console.run(run)
