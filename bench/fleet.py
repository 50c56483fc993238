"""A fleet of devices under steady load, in one process: ``python -m bench.fleet``.

Used by ``bench.failover`` and by the failover tests.  Each device is the
real library (:class:`linchpin_connector.device.Device`) on this process's
reactor: it pairs from a URI (or loads a state already paired), opens its
session, and sends requests one after another until told to stop: GETs of
``/api/whoami``, and every ``--post-every``-th a POST of ``--post-bytes`` to
``/upload`` (its answer's SHA-256 checked), every ``--download-every``-th a
GET of ``--download-bytes`` from ``/download`` (its length checked).

It speaks JSON lines on stdout, one per event, each with ``t`` (seconds on
this process's monotonic clock, the same for every line):

- ``{"ev": "ready", "n": N, "ids": [device_id, ...]}`` once every device
  has a live E2E session;
- ``{"ev": "req", "dev": i, "m": METHOD, "p": PATH, "ok": bool, "err": TEXT,
  "dt": s}`` for each request ended (``p`` without its query; ``err`` names
  the failure);
- ``{"ev": "status", "dev": i, "s": "online" | "offline" | "moved"}``;
- ``{"ev": "done"}`` after ``stop`` on stdin, once the requests in flight ended.

Reading ``stop`` (or end of file) on stdin stops it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

from twisted.internet import defer, reactor, stdio, task
from twisted.protocols.basic import LineReceiver

from linchpin_common.http_proxy import ProxyConfig
from linchpin_connector.device import Device, DeviceError, DeviceState, GatewayUnreachable, pair


def emit(**fields) -> None:
    fields["t"] = round(time.monotonic(), 4)
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Fleet:
    def __init__(self, args):
        self.args = args
        self.devices: list[Device] = []
        self.stopping = False
        self.running: list[defer.Deferred] = []
        self.upload = os.urandom(args.post_bytes)
        self.upload_digest = hashlib.sha256(self.upload).hexdigest()

    async def start(self) -> None:
        args = self.args
        states = []
        if args.uris:
            uris = [line.strip() for line in open(args.uris) if line.strip()]
            for i, uri in enumerate(uris):
                path = os.path.join(args.states, f"dev{i}.json")
                states.append(await pair(reactor, uri, path, allow_insecure=True, proxy=ProxyConfig.none()))
        else:
            for i in range(args.count):
                states.append(DeviceState.load(os.path.join(args.states, f"dev{i}.json")))
        for i, state in enumerate(states):
            device = Device(reactor, state, timeout=args.timeout, proxy=ProxyConfig.none())
            device.on_status = lambda status, i=i: emit(ev="status", dev=i, s=status)
            self.devices.append(device)
        for device in self.devices:  # one at a time: one address may have only a few logins in progress
            await self._ready(device)
        emit(ev="ready", n=len(self.devices), ids=[d.state.device_id for d in self.devices])
        for i, device in enumerate(self.devices):
            self.running.append(defer.ensureDeferred(self._load(i, device)))

    async def _ready(self, device: Device) -> None:
        for attempt in range(20):
            try:
                await device.open()
                break
            except GatewayUnreachable:  # e.g. CONNACK 3 while logins from this address queue: again
                await task.deferLater(reactor, 0.2 * (attempt + 1), lambda: None)
        await device.handshake()

    async def _load(self, i: int, device: Device) -> None:
        args = self.args
        n = 0
        while not self.stopping:
            n += 1
            if args.post_every and n % args.post_every == 0:
                await self._one(i, device, "POST", "/upload", self.upload, self._upload_ok)
            elif args.download_every and n % args.download_every == 0:
                await self._one(i, device, "GET", f"/download?size={args.download_bytes}", b"",
                                lambda body: len(body) == args.download_bytes)
            else:
                await self._one(i, device, "GET", "/api/whoami", b"", lambda body: b'"user"' in body)
            if args.pause:
                await task.deferLater(reactor, args.pause, lambda: None)

    def _upload_ok(self, body: bytes) -> bool:
        answer = json.loads(body)
        return answer["bytes"] == len(self.upload) and answer["sha256"] == self.upload_digest

    async def _one(self, i, device, method, path, body, check) -> None:
        start = time.monotonic()
        try:
            response = await device.request(method, path, body=body)
            content = await response.content()
            ok = response.status == 200 and check(content)
            err = "" if ok else f"status {response.status} or wrong body"
        except DeviceError as e:
            ok, err = False, f"{type(e).__name__}: {e}"
        except Exception as e:  # the fleet reports, never dies
            ok, err = False, f"{type(e).__name__}: {e}"
        emit(ev="req", dev=i, m=method, p=path.split("?")[0], ok=ok, err=err, dt=round(time.monotonic() - start, 4))

    async def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        await defer.DeferredList(self.running)
        emit(ev="done")
        for device in self.devices:
            device.close()


class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, fleet: Fleet):
        self.fleet = fleet

    def lineReceived(self, line):
        if line.strip() == b"stop":
            self._stop()

    def connectionLost(self, reason):
        self._stop()

    def _stop(self):
        d = defer.ensureDeferred(self.fleet.stop())
        d.addBoth(lambda _: reactor.running and reactor.stop())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--states", required=True, help="folder of the device states (dev0.json, dev1.json, ...)")
    p.add_argument("--uris", help="file of pairing URIs, one per line: pair those first")
    p.add_argument("--count", type=int, default=0, help="devices already paired in --states")
    p.add_argument("--post-every", type=int, default=5)
    p.add_argument("--post-bytes", type=int, default=64 * 1024)
    p.add_argument("--download-every", type=int, default=10)
    p.add_argument("--download-bytes", type=int, default=1024 * 1024)
    p.add_argument("--pause", type=float, default=0.05, help="seconds between one device's requests")
    p.add_argument("--timeout", type=float, default=30.0, help="a request's time without progress")
    args = p.parse_args(argv)
    fleet = Fleet(args)

    def begin():
        d = defer.ensureDeferred(fleet.start())

        def failed(f):
            emit(ev="error", err=f.getErrorMessage())
            reactor.stop()

        d.addErrback(failed)
        stdio.StandardIO(Commands(fleet))

    reactor.callWhenRunning(begin)
    reactor.run()


if __name__ == "__main__":
    main()
