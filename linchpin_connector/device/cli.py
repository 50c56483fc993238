"""``lmdevice``: pair, send one request, or serve the intranet to a local browser."""

from __future__ import annotations

import argparse
import os
import sys
import threading

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES

from linchpin_common import __version__, console
from linchpin_common.malloc import keep_large_buffers

from .bodies import BodyStream, feed
from .client import DEFAULT_TIMEOUT, Device
from .pairing import pair
from .support import ReactorThreads
from . import serve
from .errors import ConnectorOffline, DeviceError, GatewayUnreachable, PairingRejected
from .progress import Progress
from .state import DEFAULT_STATE, DeviceState


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmdevice", description="Linchpin mobile device (command-line client): pair once with the URI "
        "of the QR code 'lmconnector device add' printed, then send requests to the intranet app.",
        epilog="Exit status: 0 a response arrived (whatever its HTTP status), 1 other error, 2 bad usage, "
        "3 gateway or proxy unreachable, 4 connector offline, 5 pairing rejected, 6 timeout, "
        "7 session lost mid-request, 8 the connector refused the request.")
    p.add_argument("--version", action="version", version=f"lmdevice {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("pair", help="pair with the URI from the QR code ('-' reads it from stdin)")
    pp.add_argument("uri")
    pp.add_argument("--insecure", action="store_true", help="allow a plain-http gateway that is not on loopback")
    rp = sub.add_parser("request", help="send one HTTP request to the intranet app")
    rp.add_argument("-X", "--request", dest="method", default=None, help="method (default GET, POST with --data)")
    rp.add_argument("-H", "--header", action="append", default=[], help="'Name: value' (repeatable)")
    rp.add_argument("--data", help="request body: @FILE, or - for stdin")
    rp.add_argument("-i", "--include", action="store_true", help="print status line and headers first")
    rp.add_argument("path")
    sp = sub.add_parser("serve", help="serve the intranet app to a browser on this machine")
    sp.add_argument("--listen", default=serve.DEFAULT_LISTEN,
                    help="Twisted server endpoint (default %(default)s; loopback only unless told otherwise)")
    console.shared_options(p, [pp, rp, sp], _global_options)
    return p


def _global_options(parser, **defaults) -> None:
    parser.add_argument("--state", metavar="FILE", help="device state file (default %s)" % DEFAULT_STATE,
                        **{"default": DEFAULT_STATE, **defaults})
    parser.add_argument("--ca-file", metavar="PEM", help="PEM of a private CA that signed the gateway's certificate",
                        **defaults)
    console.add_proxy_options(parser, **defaults)
    parser.add_argument("--timeout", metavar="SECONDS", type=float, help="seconds to wait (default %s)" % DEFAULT_TIMEOUT,
                        **{"default": DEFAULT_TIMEOUT, **defaults})


async def _pair_command(reactor, args) -> int:
    uri = sys.stdin.readline() if args.uri == "-" else args.uri
    state = await pair(reactor, uri, args.state, allow_insecure=args.insecure, ca_file=args.ca_file,
                       proxy=args.proxy_config)
    print(f"paired: device {state.device_id}", file=sys.stderr)
    device = Device(reactor, state, timeout=args.timeout, ca_file=args.ca_file, proxy=args.proxy_config)
    try:
        await device.open()
        if device.online:
            await device.handshake()
            print("end-to-end key agreed with the connector", file=sys.stderr)
        else:
            print("connector offline: the key exchange will happen at the first request", file=sys.stderr)
    except PairingRejected:
        raise
    except DeviceError as e:
        print(f"key exchange postponed: {e}", file=sys.stderr)
    finally:
        device.close()
    return 0


async def _request_command(reactor, args) -> int:
    headers = []
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise DeviceError(f"bad header {h!r}: use 'Name: value'")
        headers.append((name.strip(), value.strip()))
    body = b""
    if args.data is not None:
        if args.data == "-":
            body = BodyStream()  # read on a thread as it comes: a pipe may be slow, or endless
        elif args.data.startswith("@"):
            try:
                body = open(args.data[1:], "rb")
            except OSError as e:
                raise DeviceError(f"cannot read {args.data[1:]}: {e.strerror or e}")
        else:
            body = args.data.encode()
    method = args.method or ("POST" if args.data is not None else "GET")
    device = Device(reactor, DeviceState.load(args.state), timeout=args.timeout, ca_file=args.ca_file,
                    proxy=args.proxy_config)
    try:
        await device.open()
        if not device.online:
            raise ConnectorOffline()
        if isinstance(body, BodyStream):
            feed(_DaemonThreads(reactor), sys.stdin.buffer.raw, body).addErrback(lambda f: body.abort())
        response = await device.request(method, args.path, headers, body)
        progress = None
        if sys.stderr.isatty():
            length = response.header("Content-Length")
            progress = Progress(sys.stderr, int(length) if length and length.isdigit() else None)
        try:
            await _write_response(reactor, response, args.include, progress)
        finally:
            if progress is not None:
                progress.finish()
    finally:
        device.close()
    return 0


async def _write_response(reactor, response, include: bool, progress) -> None:
    """Standard output gets the body (``include``: status line and headers
    first), written on a thread one part at a time: a reader that is slow to
    empty the pipe pauses the response (so the connector stops reading the
    app) while the reactor goes on (keep-alives).  A failed write (the reader
    went away) ends the command with one line."""
    fd = sys.stdout.fileno()
    threads = ReactorThreads(reactor)
    writing = defer.succeed(None)  # the write under way
    failed: list[OSError] = []

    def write(part: bytes) -> None:
        nonlocal writing
        response.pause()

        def written(_):
            if progress is not None:
                progress.update(len(part))
            response.resume()

        def not_written(failure):
            failed.append(failure.value)
            response.cancel()

        writing = threads.run(_write_all, fd, part)
        writing.addCallbacks(written, not_written)

    try:
        if include:
            await threads.run(_write_all, fd, _head(response))
        try:
            await response.deliver(write)
        finally:
            if not writing.called:  # (called: it is done, and may be what ended the delivery)
                await writing
    except OSError as e:
        failed.append(e)
    except DeviceError:
        if not failed:
            raise
    if failed:
        raise DeviceError(f"cannot write the response: {failed[0].strerror or failed[0]}")


def _head(response) -> bytes:
    reason = RESPONSES.get(response.status, b"").decode("latin-1")
    lines = [f"HTTP/1.1 {response.status} {reason}".rstrip().encode()]
    lines += [f"{k}: {v}".encode("utf-8", "replace") for k, v in response.headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _write_all(fd: int, data: bytes) -> None:
    """Unbuffered, so nothing is left in a buffer to fail again at exit."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _DaemonThreads:
    """Runs each blocking read of standard input on a daemon thread of its
    own: when the answer comes before the end of the input, the command exits
    while a read still waits (the reactor's thread pool would wait for it at
    shutdown).  The reads are unbuffered (``sys.stdin.buffer.raw``), so no
    lock of a buffered stream is held by a thread left behind."""

    def __init__(self, reactor):
        self.reactor = reactor

    def run(self, fn, *args) -> defer.Deferred:
        d = defer.Deferred()

        def work():
            try:
                result = fn(*args)
            except BaseException:
                self.reactor.callFromThread(d.errback, Failure())
            else:
                self.reactor.callFromThread(d.callback, result)

        threading.Thread(target=work, name="lmdevice-stdin", daemon=True).start()
        return d


async def _serve_command(reactor, args) -> int:
    state = DeviceState.load(args.state)
    device = Device(reactor, state, timeout=args.timeout, ca_file=args.ca_file, proxy=args.proxy_config)
    reactor.addSystemEventTrigger("before", "shutdown", device.close)
    port = await serve.listen(reactor, device, args.listen)
    address = port.getHost()
    host = f"[{address.host}]" if ":" in address.host else address.host
    print(f"lmdevice serving the intranet at http://{host}:{address.port}/ for device {state.device_id}",
          file=sys.stderr, flush=True)
    if not serve.HostCheck(address.host, address.port).loopback:
        print("lmdevice: warning: listening beyond loopback; anyone who reaches this address browses "
              "the intranet as this device's user", file=sys.stderr, flush=True)
    try:
        await device.open()
        print("connector " + ("online" if device.online else "offline (pages will say so until it is back)"),
              file=sys.stderr, flush=True)
    except DeviceError as e:
        print(f"lmdevice: {e} (each page load tries again)", file=sys.stderr, flush=True)
    await defer.Deferred()  # until the process is stopped (SIGTERM, SIGINT)
    return 0


def _next_step(error: Exception) -> str:
    """What to do about an error whose message does not already say it."""
    message = str(error)
    if isinstance(error, GatewayUnreachable) and not message.startswith("proxy ") and "TLS" not in message:
        return " (check the network and any proxy settings: https_proxy, --proxy; then try again)"
    if isinstance(error, ConnectorOffline):
        return "; try again later, or ask whoever runs the connector"
    if isinstance(error, PairingRejected):
        return "; pair again with a new QR code"
    return ""


def main(argv=None) -> None:
    args = console.parse_command_line(_parser(), argv, "lmdevice")
    keep_large_buffers()

    async def run(reactor):
        try:
            if args.command == "pair":
                return await _pair_command(reactor, args)
            if args.command == "serve":
                return await _serve_command(reactor, args)
            return await _request_command(reactor, args)
        except (DeviceError, ValueError) as e:
            print(f"lmdevice: {e}{_next_step(e)}", file=sys.stderr)
            return getattr(e, "exit_code", 2)

    console.run(run)
