"""Shared plumbing of the command-line tools: run a coroutine, exit with its code."""

from __future__ import annotations

import argparse

import sys

from twisted.internet import defer, error, task
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from .http_proxy import PASSWORD_ENV, ProxyConfig, ProxySettingsError, url_has_password

# What a refused, reset or timed-out connection to the gateway looks like.
UNREACHABLE = (error.ConnectError, error.DNSLookupError, error.TimeoutError, ResponseFailed,
               ResponseNeverReceived, ConnectionError)


def run(command) -> None:
    """``task.react`` a coroutine function ``command(reactor) -> int`` and exit with its result."""

    def main(reactor):
        def finish(code):
            if code:
                raise SystemExit(code)

        return defer.ensureDeferred(command(reactor)).addCallback(finish)

    task.react(main)


def add_proxy_options(parser, **defaults) -> None:
    """``--proxy URL`` and ``--proxy-password-file FILE`` on an argparse parser."""
    parser.add_argument("--proxy", metavar="URL",
                        help="HTTP proxy to the gateway, http://[user@]host:port ('' for none; default: "
                             "https_proxy, http_proxy, all_proxy and no_proxy as curl reads them)", **defaults)
    parser.add_argument("--proxy-password-file", metavar="FILE",
                        help=f"file whose first line is the proxy password (or set {PASSWORD_ENV})", **defaults)


def shared_options(parser, commands, add) -> None:
    """Options of the whole command, accepted before its subcommand and
    after it, as people type them (``lmconnector register --gateway URL
    --proxy URL``).  ``add(parser, **defaults)`` declares them; after the
    subcommand they have no default of their own, so they replace the value
    given before the subcommand only when given."""
    add(parser)
    for command in commands:
        add(command, default=argparse.SUPPRESS)


def parse_command_line(parser, argv, prog: str):
    """Parse ``argv`` and attach the proxy settings as ``args.proxy_config``;
    a bad proxy setting ends the command with one line and status 2."""
    args = parser.parse_args(argv)
    try:
        args.proxy_config = proxy_config(args)
    except ProxySettingsError as e:
        parser.exit(2, f"{prog}: {e}\n")
    return args


PASSWORD_IN_PS = ("warning: the password in --proxy is visible in ps; give http://user@host:port and the "
                  f"password with --proxy-password-file or {PASSWORD_ENV}")


def proxy_config(args, warn=lambda text: print(text, file=sys.stderr)) -> ProxyConfig:
    """The proxy settings of parsed arguments; :class:`ProxySettingsError` says what is wrong.

    A password in ``--proxy`` is used, as INTERFACE.md allows, with a warning
    that it shows in ``ps`` (the warning never repeats it)."""
    if url_has_password(args.proxy):
        warn(PASSWORD_IN_PS)
    return ProxyConfig.resolve(args.proxy, password_file=args.proxy_password_file)
