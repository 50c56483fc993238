"""The device's E2E session with its connector, and its requests.

The library is Deferred-based and usable from any Twisted program: ``pair``,
``Device.open``, ``Device.request`` and ``Response.content`` return
Deferreds (so they can be awaited from coroutines too)::

    state = await pair(reactor, uri, "phone.json")
    device = Device(reactor, state)
    await device.open()
    response = await device.request("GET", "/app/page")
    body = await response.content()

Pairing is in :mod:`.pairing`, the handshake's states in :mod:`.handshake`,
the streamed bodies in :mod:`.bodies`; the names are re-exported here and by
the package.
"""

from __future__ import annotations

import io
from dataclasses import replace

from twisted.internet import defer
from twisted.logger import Logger

from linchpin_common import console, mqtt_client
from linchpin_common.contract import e2e, messages, topics
from linchpin_common.contract.channel import ChannelEndpoint, Outcome, SendWindow
from linchpin_common.gateway_client import InsecureURL, check_gateway_url
from linchpin_common.http_proxy import ProxyConfig, ProxyError
from linchpin_common.workers import InlineWorker

from .bodies import READ_CHUNK, BodyStream, Response, feed, whole_if_small
from .errors import (ConnectorOffline, DeviceError, DeviceNotAccepted, GatewayUnreachable, PairingRejected,
                     RequestRefused, RequestTimeout, SessionLost)
from .handshake import Handshake, Phase, SharedResult
from .pairing import pair
from .state import DeviceState
from .support import ReactorThreads, deferred_api, error_reason

__all__ = ["BodyStream", "ConnectorOffline", "Device", "DeviceError", "DeviceState", "GatewayUnreachable",
           "PairingRejected", "RequestRefused", "RequestTimeout", "Response", "SessionLost", "feed", "pair"]

DEFAULT_TIMEOUT = 60.0
# What may be sent once more on a new session after RESET or `moved`, when no
# part of its response had arrived (PROTOCOL.md section 5): it ran at most
# once already, and running it twice changes nothing.
RETRIED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _Request:
    def __init__(self, channel: _LiveRequests, request_id: int):
        self.channel = channel
        self.id = request_id
        self.started: defer.Deferred = defer.Deferred()  # fires with the Response
        self.response: Response | None = None
        self.upload = SendWindow()
        self.timeout = None
        self.idle = DEFAULT_TIMEOUT
        self.stream: BodyStream | None = None

    def ack(self, n: int) -> None:
        self.channel.send(messages.ack(self.id, n))

    def progress(self) -> None:
        """Upload bytes moved: the wait for the response starts again (a slow
        upload that keeps moving is not cut)."""
        if self.timeout is not None and self.timeout.active():
            self.timeout.reset(self.idle)

    def credit(self, n) -> None:
        if not self.upload.acked(n):
            return  # not an ack for bytes we sent: ignored
        if n:
            self.progress()
        if self.stream is not None:
            self.stream._flush()

    def fail(self, error: Exception) -> None:
        if self.timeout is not None and self.timeout.active():
            self.timeout.cancel()
        if not self.started.called:
            self.started.errback(error)
        elif self.response is not None and not self.response._ended:
            self.response._end(error)
        if self.stream is not None:
            self.stream._close()


class _LiveRequests:
    """One live E2E session with the connector, and its requests in flight."""

    def __init__(self, device: Device, endpoint: ChannelEndpoint):
        self.device = device
        self.endpoint = endpoint
        self.requests: dict[int, _Request] = {}

    @property
    def alive(self) -> bool:
        return self.endpoint.live

    def send(self, header: dict, body: bytes = b"") -> None:
        if self.endpoint.live:
            self.device._publish(self.endpoint.seal(header, body))

    def end(self, error: Exception) -> None:
        self.endpoint.end()
        requests, self.requests = self.requests, {}
        for request in requests.values():
            request.fail(error)

    def received(self, header: dict, body: bytes) -> None:
        request = self.requests.get(header.get("id"))
        if request is None:
            return
        kind = messages.kind(header)
        if kind == messages.RES:
            if request.started.called:
                return
            if request.timeout is not None and request.timeout.active():
                request.timeout.cancel()
            status, headers = header.get("status"), header.get("headers")
            if not isinstance(status, int) or not isinstance(headers, list):
                self._finish(request, RequestRefused("bad_response", "malformed response from the connector"))
                return
            request.response = Response(request, status, [tuple(h) for h in headers if isinstance(h, list)])
            request.started.callback(request.response)
            self._body(request, header, body)
        elif kind == messages.BODY and request.response is not None:
            self._body(request, header, body)
        elif kind == messages.ACK:
            request.credit(header.get("bytes"))
        elif kind == messages.ERR:
            self._finish(request, RequestRefused(str(header.get("code")), str(header.get("message", ""))))

    def _body(self, request: _Request, header: dict, body: bytes) -> None:
        if not request.response._part(body):
            self.send(messages.cancel(request.id))
            self._finish(request, RequestRefused("bad_response", "the connector overran the flow-control window"))
        elif header.get("end"):
            self._finish(request)

    def _finish(self, request: _Request, error: Exception | None = None) -> None:
        self.requests.pop(request.id, None)
        if error is not None:
            request.fail(error)
        elif request.response is not None:
            request.response._end()


class Device:
    """A paired device talking to its connector through the gateway."""

    log = Logger()

    def __init__(self, reactor, state: DeviceState, *, timeout: float = DEFAULT_TIMEOUT,
                 ca_file: str | None = None, connect=mqtt_client.connect, worker=None,
                 proxy: ProxyConfig | None = None):
        """``worker.run(fn)`` runs file reads and writes off the reactor
        thread (the reactor's thread pool by default).  ``proxy``: the HTTP proxy
        settings for the gateway; None reads them from the environment as
        curl does, ``ProxyConfig.none()`` goes direct."""
        self.reactor = reactor
        self.state = state
        self._worker = worker or ReactorThreads(reactor)
        self.timeout = timeout
        self.ca_file = ca_file or state.ca_file
        self.proxy = proxy if proxy is not None else ProxyConfig.resolve()
        self._connect = connect
        self._reopening = defer.DeferredLock()  # requests find the connection gone: one of them reopens it
        self.client: mqtt_client.MQTTClient | None = None
        self.online: bool | None = None
        self._status_known = SharedResult()
        self._hs = Handshake()
        self._session: _LiveRequests | None = None  # the requests of the live session (phase LIVE)
        self._next_id = 0
        # Told each $gateway/status: "online", "offline" or "moved" (an app shows it).
        self.on_status = None
        self.down_topic = topics.down_topic(state.device_id)
        self.up_topic = topics.up_topic(state.device_id)

    @property
    def phase(self) -> Phase:
        """Where the E2E handshake stands (see :mod:`.handshake`)."""
        return self._hs.phase

    # -- connection --------------------------------------------------------------

    @deferred_api
    async def open(self) -> None:
        """Connect to the gateway and learn whether the connector is online.

        :meth:`request` calls it again by itself after the connection was
        lost (gateway restart, network change).
        """
        self._status_known = SharedResult()
        try:
            gateway_url = check_gateway_url(self.state.gateway_url, self.state.insecure)
        except InsecureURL as e:
            raise DeviceError(str(e))
        try:
            self.client = await self._connect(self.reactor, gateway_url, self.state.device_id,
                                              self.state.device_password, on_message=self._on_message,
                                              ca_file=self.ca_file, timeout=self.timeout, proxy=self.proxy)
        except mqtt_client.ConnectionRefused as e:
            if e.code == 4:
                raise DeviceNotAccepted()
            raise GatewayUnreachable(str(e))
        except ProxyError as e:
            raise GatewayUnreachable(str(e))
        except (mqtt_client.ConnectionClosed, *console.UNREACHABLE) as e:
            raise GatewayUnreachable(f"gateway unreachable at {gateway_url}: {error_reason(e)}")
        self.client.closed.addCallback(self._closed)
        codes = await self.client.subscribe([(topic, 0) for topic in topics.device_subscriptions(self.state.device_id)])
        if topics.SUBACK_FAILURE in codes:
            raise DeviceError("the gateway refused this device's subscriptions")
        await self._with_timeout(self._status_known.when(), "no presence status from the gateway")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def _closed(self, reason) -> None:
        self.online = False
        self._fail(GatewayUnreachable(f"connection to the gateway lost ({reason})"))

    def _publish(self, payload: bytes) -> None:
        if self.client is not None and self.client.is_open:
            self.client.publish(self.up_topic, payload)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.down_topic:
            self._on_envelope(payload)
        elif topic == topics.STATUS:
            status = topics.connector_status(payload)
            if status is None:
                return
            if self.on_status is not None:
                self.on_status(status)
            if status == topics.MOVED:
                # The gateway pinned us anew: the E2E session was with a
                # connector that is gone, and a new HELLO goes to another.
                self.log.info("the connector of this device's session went; handshaking with another")
                self._fail(SessionLost("the connector serving this device went away; request not replayed",
                                       replayable=True))
                self._rehandshake()
                return
            online = status == topics.ONLINE
            self.online = online
            if not self._status_known.called:
                self._status_known.callback(online)
            if not online:
                self._fail(ConnectorOffline())

    def _on_envelope(self, payload: bytes) -> None:
        env = e2e.parse_envelope(payload)
        if isinstance(env, e2e.Data):
            self._on_data(env)
        elif isinstance(env, e2e.Welcome):
            self._on_welcome(env)
        elif isinstance(env, e2e.Reset):
            session = self._session
            if session is not None and session.endpoint.owns(env):
                self.log.info("connector reset the session; handshaking again")
                self._fail(SessionLost("the connector lost the session (restarted?); request not replayed",
                                       replayable=True))
                self._rehandshake()
        elif isinstance(env, e2e.Reject):
            # Unauthenticated: only meaningful as the answer to our HELLO.
            self._hs.reject(PairingRejected())

    def _on_data(self, env: e2e.Data) -> None:
        session = self._session
        if session is None:
            return
        received = session.endpoint.receive(env)
        if received.outcome is Outcome.MESSAGE:
            session.received(received.header, received.body)
        elif received.ends_session:
            self._fail(SessionLost("messages were lost between connector and device; request not replayed"))

    def _fail(self, error: Exception) -> None:
        """The handshake under way or the live session ends with ``error``."""
        self._hs.fail(error)
        session, self._session = self._session, None
        if session is not None:
            session.end(error)

    def _rehandshake(self) -> None:
        """After RESET or ``moved``: a new HELLO at once, so the gateway pins
        this device to a ready connector before the next request needs it."""
        if self.online and self.client is not None and self.client.is_open and self._hs.phase is Phase.IDLE:
            self.handshake().addErrback(
                lambda f: self.log.debug("handshake after a reset failed: {e}", e=f.getErrorMessage()))

    # -- handshake -----------------------------------------------------------------

    @deferred_api
    async def handshake(self) -> None:
        """Make sure an E2E session exists (HELLO, WELCOME, confirm)."""
        await self._hs.settled  # a key being written after a failed handshake
        if self._hs.phase is Phase.LIVE:
            return
        if not self.online:
            raise ConnectorOffline()
        if self._hs.phase is Phase.IDLE:
            key_kind, key = self.state.long_term_key()
            hello = self._hs.start(self.state.device_id, key_kind, key, e2e.b64u_decode(self.state.connector_key))
            done = self._hs.done
            self._publish(hello)
            try:
                await self._with_timeout(done.when(), "the connector did not answer the handshake")
            except RequestTimeout as e:
                if self._hs.done is done:
                    self._hs.fail(e)
                raise
            return
        # A handshake is already under way: wait for it.
        await self._with_timeout(self._hs.done.when(), "the connector did not answer the handshake")

    def _on_welcome(self, env: e2e.Welcome) -> None:
        result = self._hs.welcome_envelope(env)
        if result is None:
            return  # not the answer to our HELLO
        if result.device_secret_key is None:
            self._start_session()
            return
        # The new key is on disk (written on a thread, atomically) before the
        # setup secret is forgotten, here and in memory.
        paired = replace(self.state, device_secret=e2e.b64u_encode(result.device_secret_key), setup_secret=None)

        def saved(_):
            self.state = paired
            self.log.info("pairing complete: device secret key stored")
            if self._hs.saved():
                self._start_session()

        def not_saved(failure):
            self._hs.save_failed(DeviceError(f"cannot write the device state: {failure.getErrorMessage()}"))

        self._worker.run(paired.save).addCallbacks(saved, not_saved)

    def _start_session(self) -> None:
        self._session = _LiveRequests(self, self._hs.endpoint)
        self._publish(self._hs.confirm())
        self._hs.done.callback(None)

    # -- requests ------------------------------------------------------------------

    @deferred_api
    async def request(self, method: str, path: str, headers=(), body=b"") -> Response:
        """Send one request; returns once the response starts (its body streams).

        ``body`` is bytes, a binary file object (read on the worker's threads,
        in parts of at most 256 KiB, as the connector's acknowledgements
        allow), or a :class:`BodyStream` the caller feeds as its body arrives.
        A body that fits one message (bytes, or a regular file) goes inside the
        ``req``: the connector then gives the app its length, where a streamed
        body reaches the app chunked, which some application servers do not read.

        A GET, HEAD or OPTIONS request (with a body in memory, if any) whose
        session ends by RESET or ``moved`` before any part of its response
        arrived is sent once more on a new session; no other request is ever
        replayed (PROTOCOL.md section 5).  A request still waiting for its
        session (the handshake was cut by ``moved``) has not left: it goes on
        the next session, whatever its method.
        """
        if body is not None and not isinstance(body, (bytes, bytearray, memoryview, BodyStream)):
            try:
                body = await self._worker.run(whole_if_small, body)
            except OSError as e:
                raise DeviceError(f"cannot read the request body: {e.strerror or e}")
        in_memory = body is None or isinstance(body, (bytes, bytearray, memoryview))
        sent = []
        try:
            return await self._send_request(method, path, headers, body, sent)
        except SessionLost as e:
            # RESET or `moved` before any part of the response: once more, on a
            # new session, if it never left (the handshake it waited for was
            # cut) or is safe to run twice.
            if not (e.replayable and in_memory and (not sent or method in RETRIED_METHODS)):
                raise
            if sent:
                self.log.info("{method} {path}: sent once more on a new session", method=method, path=path)
            return await self._send_request(method, path, headers, body, [])

    async def _send_request(self, method: str, path: str, headers, body, sent: list) -> Response:
        await self._reopening.acquire()
        try:
            if self.client is None or not self.client.is_open:
                await self.open()
        finally:
            self._reopening.release()
        await self.handshake()
        channel = self._session
        if channel is None:
            raise SessionLost("the session ended before the request was sent", replayable=True)  # (not sent)
        if len(channel.requests) >= e2e.MAX_IN_FLIGHT:
            raise DeviceError("too many requests in flight")
        request_id = self._next_id
        self._next_id += 1
        if isinstance(body, BodyStream) and body.aborted:
            raise DeviceError("the request was abandoned")
        request = _Request(channel, request_id)
        channel.requests[request_id] = request
        request.idle = self.timeout
        request.timeout = self.reactor.callLater(
            self.timeout, lambda: self._timed_out(channel, request))
        header = messages.req(request_id, method, path, [[k, v] for k, v in headers], False)
        sent.append(request_id)
        if body is None:
            body = b""
        if isinstance(body, (bytes, bytearray, memoryview)) and len(body) <= READ_CHUNK:
            header["end"] = True
            channel.send(header, bytes(body))
            request.upload.sent(len(body))
            return await request.started
        source = None
        if not isinstance(body, BodyStream):
            # A file, or bytes too long for one message: read in parts as the window allows
            # (a file on the worker's threads; bytes in memory need none).
            source, reader = ((io.BytesIO(body), InlineWorker()) if isinstance(body, (bytes, bytearray, memoryview))
                              else (body, self._worker))
            body = BodyStream()
        channel.send(header)
        body._attach(request)
        if source is not None:
            feed(reader, source, body).addErrback(lambda f, stream=body: stream.abort())
        return await request.started

    def _timed_out(self, channel: _LiveRequests, request: _Request) -> None:
        if channel.requests.pop(request.id, None) is not None:
            channel.send(messages.cancel(request.id))
            request.fail(RequestTimeout(f"no response within {self.timeout:.0f} s"))

    async def _with_timeout(self, d: defer.Deferred, message: str):
        timeout = self.reactor.callLater(self.timeout, d.cancel)
        try:
            return await d
        except defer.CancelledError:
            raise RequestTimeout(f"{message} within {self.timeout:.0f} s")
        finally:
            if timeout.active():
                timeout.cancel()
