"""Where an idle session's memory goes: ``python -m bench.session_memory [N]``.

Builds the gateway's real service in memory (its Site, WebSocket factory,
router and SQLite store on a fake clock; sockets played by StringTransport),
opens N WebSocket sessions through the HTTP upgrade and logs each in with a
CONNECT, then prints what tracemalloc saw them allocate: the total per
session and the lines that allocated the most.  Password checks are
replaced by a function that says yes (this measures memory, not PBKDF2);
everything else is the code as shipped.  ``make bench-capacity`` measures
the RSS of a real process; this says which objects make it up.
"""

from __future__ import annotations

import base64
import gc
import os
import sys
import tempfile
import tracemalloc

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from linchpin_common.contract import wire
from linchpin_common.workers import InlineWorker
from linchpin_gateway import hashing
from linchpin_gateway.config import GatewayConfig
from linchpin_gateway.service import Gateway
from linchpin_gateway.store import SQLiteStore

from .seed import seed_gateway

UNLIMITED = dict(connections_per_address=1 << 30, pending_logins_per_address=1 << 30,
                 login_checks_per_address=1 << 30, login_limit=0, max_pending_logins=1 << 30)


class Socket(StringTransport):
    protocol = None

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


def open_session(gw: Gateway, i: int, device_id: str, password: str):
    host = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
    address = IPv4Address("TCP", host, 40000)
    channel = gw.site.buildProtocol(address)
    sock = Socket(peerAddress=address)
    sock.protocol = channel
    channel.makeConnection(sock)
    key = base64.b64encode(os.urandom(16))
    channel.dataReceived(b"GET /mqtt HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Protocol: mqtt\r\n\r\n")
    ws = sock.protocol  # the WebSocket protocol took the socket over
    ws.mqtt.data_received(wire.encode(wire.Connect(client_id="", username=device_id, password=password.encode(),
                                                   keep_alive=30, clean_session=True)))
    sock.clear()
    return ws, sock


def main(argv=None) -> None:
    n = int((argv or sys.argv[1:] or ["2000"])[0])
    hashing.verify_password = lambda password, encoded: True
    folder = tempfile.mkdtemp(prefix="lm-session-memory-")
    devices = seed_gateway(folder, [n + 10])["devices"]
    reactor = MemoryReactorClock()
    reactor.advance(1_800_000_000)
    store = SQLiteStore(reactor, folder, worker=InlineWorker())
    gw = Gateway(reactor, store, GatewayConfig(max_instance_sessions=n + 100, **UNLIMITED),
                 hash_worker=InlineWorker())
    gw.startService()
    held = [open_session(gw, i, d[0], d[1]) for i, d in enumerate(devices[:10])]  # warm every cache
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    held += [open_session(gw, 10 + i, d[0], d[1]) for i, d in enumerate(devices[10:n + 10])]
    gc.collect()
    after = tracemalloc.take_snapshot()
    connected = sum(1 for ws in gw.ws_factory.live if ws.mqtt is not None and ws.mqtt.client is not None)
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"{connected} sessions connected; {total / n:.0f} bytes of Python objects a session")
    print("(the StringTransport sockets and the fake clock's timers stand in for the real ones)")
    for s in stats[:25]:
        frame = s.traceback[0]
        print(f"{s.size_diff / n:8.0f} B  {frame.filename.split('site-packages/')[-1]}:{frame.lineno}")


if __name__ == "__main__":
    main()
