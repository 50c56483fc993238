"""The device side: pairing, the E2E session, and requests; plus ``lmdevice``.

The library is Deferred-based and usable from any Twisted program: ``pair``,
``Device.open``, ``Device.request`` and ``Response.content`` return
Deferreds (so they can be awaited from coroutines too)::

    state = await pair(reactor, uri, "phone.json")
    device = Device(reactor, state)
    await device.open()
    response = await device.request("GET", "/app/page")
    body = await response.content()

Response bodies stream: :meth:`Response.deliver` hands each part to a
callable as it arrives and acknowledges it once the callable returned, which
is what lets the connector send the next part (1 MiB credit window).
"""

from __future__ import annotations

import collections
import functools
import io
import os
import stat
from dataclasses import replace

from twisted.internet import defer, threads
from twisted.logger import Logger

from linchpin_common import console, mqtt_client
from linchpin_common.contract import e2e, messages, topics
from linchpin_common.contract.channel import ACK_BATCH, ChannelEndpoint, ReceiveWindow, SendWindow
from linchpin_common.contract.channel import Outcome
from linchpin_common.contract.pairing import parse_pairing_uri
from linchpin_common.gateway_client import GatewayAPI, GatewayError, InsecureURL, check_gateway_url, make_http_client
from linchpin_common.http_proxy import ProxyConfig, ProxyError
from linchpin_common.workers import InlineWorker

from .errors import (ConnectorOffline, DeviceError, DeviceNotAccepted, GatewayUnreachable, PairingRejected,
                     RequestRefused, RequestTimeout, SessionLost)
from .handshake import Handshake, Phase, SharedResult
from .state import DeviceState

DEFAULT_TIMEOUT = 60.0
READ_CHUNK = e2e.MAX_BODY_CHUNK


def _deferred(fn):
    """The public API returns Deferreds (usable from any Twisted code); the
    bodies are coroutines for readability."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> defer.Deferred:
        return defer.ensureDeferred(fn(*args, **kwargs))

    return wrapper


# -- pairing ------------------------------------------------------------------------


@_deferred
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
        raise GatewayUnreachable(f"gateway unreachable at {gateway_url}: {_reason(e)}")
    state = DeviceState(path=state_path, gateway_url=gateway_url, device_id=creds["device_id"],
                        device_password=creds["device_password"],
                        connector_key=e2e.b64u_encode(info.connector_key),
                        setup_secret=e2e.b64u_encode(info.secret), insecure=allow_insecure,
                        ca_file=os.path.abspath(ca_file) if ca_file else None)
    await _ReactorThreads(reactor).run(state.save)
    return state


class _ReactorThreads:
    """Blocking file work on the reactor's thread pool."""

    def __init__(self, reactor):
        self.reactor = reactor

    def run(self, fn, *args) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)


def _reason(error) -> str:
    return getattr(error, "getErrorMessage", lambda: str(error) or type(error).__name__)()


# -- requests ------------------------------------------------------------------------


class Response:
    """A response whose body arrives in parts; see :meth:`deliver`."""

    def __init__(self, request: _Request, status: int, headers: list):
        self._request = request
        self.status = status
        self.headers = headers
        self._parts: list[bytes] = []
        self._ended = False
        self._error = None
        self._sink = None
        self._done: defer.Deferred | None = None
        self._paused = False
        # Acks go out per ACK_BATCH consumed, not per part: a quarter of the
        # window, so the sender always hears from us before its window fills.
        self._window = ReceiveWindow(batch=ACK_BATCH)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def deliver(self, write) -> defer.Deferred:
        """Call ``write(part)`` for each body part; fires when the body ended."""
        self._sink = write
        self._done = defer.Deferred()
        self._flush()
        return self._done

    def pause(self) -> None:
        """Stop handing parts to ``write`` (and acking them): once its 1 MiB
        window is full, the connector stops reading from the backend."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._flush()

    def cancel(self) -> None:
        """Abandon the rest of the body: the connector is told to stop sending it."""
        self._abandon(DeviceError("the response was abandoned"))

    def _abandon(self, error: Exception) -> None:
        if self._ended:
            return
        request = self._request
        request.channel.send(messages.cancel(request.id))
        request.channel.requests.pop(request.id, None)
        self._parts = []
        self._end(error)

    def _flush(self) -> None:
        while self._parts and self._sink is not None and not self._paused:
            self._consume(self._parts.pop(0))
        self._finish_if_ended()

    @_deferred
    async def content(self) -> bytes:
        parts = []
        await self.deliver(parts.append)
        return b"".join(parts)

    def _part(self, data: bytes) -> bool:
        """False when the connector sent more than the window allows."""
        if not data:
            return True
        if not self._window.received(len(data)):
            return False
        if self._sink is None or self._paused or self._parts:
            self._parts.append(data)  # bounded by the 1 MiB window: nothing is acked yet
            self._flush()
        else:
            self._consume(data)
        return True

    def _consume(self, data: bytes) -> None:
        try:
            self._sink(data)
        except Exception as e:  # e.g. the pipe it writes to is closed: this response ends, the session goes on
            self._abandon(e)
            return
        ack = self._window.consumed(len(data))
        if ack:
            self._request.ack(ack)

    def _end(self, error=None) -> None:
        self._ended = True
        self._error = error
        self._finish_if_ended()

    def _finish_if_ended(self) -> None:
        if self._parts and self._error is None:
            return  # parts still held back by pause()
        if self._ended and self._done is not None and not self._done.called:
            if self._error is not None:
                self._done.errback(self._error)
            else:
                self._done.callback(None)


class BodyStream:
    """A request body pushed as it arrives: a browser's upload in ``lmdevice
    serve``, standard input in ``lmdevice request --data -``.

    Pass it as ``body`` to :meth:`Device.request`, then :meth:`write` the parts
    as they come and :meth:`end` after the last (before or after the request
    starts).  Parts leave as ``body`` messages while the connector's 1 MiB
    credit window allows; what does not fit waits here and the registered
    producer (an ``IPushProducer``, e.g. the socket the body comes from) is
    paused until acks make room, so besides the window at most one write is
    held.  :meth:`abort` abandons the request (the connector gets ``cancel``).
    """

    def __init__(self):
        self._held: collections.deque[bytes] = collections.deque()
        self.held = 0              # bytes written and not yet sent
        self.aborted = False
        self._ended = False        # end() was called
        self._closed = False       # end sent, aborted or failed: writes are dropped
        self._request: _Request | None = None
        self._producer = None
        self.paused = False        # the producer is paused by this stream

    @property
    def over(self) -> bool:
        """No more writes are wanted (the end is sent, or the request is over)."""
        return self._closed or self._ended

    def register_producer(self, producer) -> None:
        self._producer = producer
        self._pace()

    def write(self, data: bytes) -> None:
        if self._closed or self._ended or not data:
            return
        self._held.append(bytes(data))
        self.held += len(data)
        self._flush()

    def end(self) -> None:
        if self._closed or self._ended:
            return
        self._ended = True
        self._flush()

    def discard(self) -> None:
        """The rest of the body is not wanted (the response came first): drop
        it as it arrives, and stop holding the producer back."""
        self._close()

    def abort(self) -> None:
        """The body's source went away: the request is abandoned, never replayed."""
        self.aborted = True
        self._close()
        request = self._request
        if request is not None and request.channel.requests.pop(request.id, None) is not None:
            request.channel.send(messages.cancel(request.id))
            request.fail(DeviceError("the request was abandoned"))

    def _attach(self, request: _Request) -> None:
        """The ``req`` message is sent: the body may follow."""
        self._request = request
        request.stream = self
        self._flush()

    def _close(self) -> None:
        self._closed = True
        self._held.clear()
        self.held = 0
        self._pace()

    def _flush(self) -> None:
        request = self._request
        if request is None or self._closed:
            self._pace()
            return
        if request.id not in request.channel.requests or not request.channel.alive:
            self._close()
            return
        window = request.upload
        while self._held and window.available > 0:
            part = self._held[0]
            n = min(len(part), window.available, READ_CHUNK)
            if n == len(part):
                self._held.popleft()
            else:
                self._held[0], part = part[n:], part[:n]
            self.held -= n
            window.sent(n)
            last = self._ended and not self._held
            request.channel.send(messages.body(request.id, last), part)
            request.progress()
            if last:
                self._closed = True
        if self._ended and not self._held and not self._closed:
            request.channel.send(messages.body(request.id, True))
            self._closed = True
        self._pace()

    def _pace(self) -> None:
        request = self._request
        busy = not self._closed and (self.held > 0 or (request is not None and request.upload.full))
        if self._producer is None or busy == self.paused:
            return
        self.paused = busy
        if busy:
            self._producer.pauseProducing()
        else:
            self._producer.resumeProducing()


def feed(worker, source, stream: BodyStream) -> defer.Deferred:
    """Read a blocking binary file (standard input, a pipe) into ``stream``
    on ``worker`` threads, as fast as the stream lets it; fires when the
    file is read to its end or the stream is over."""
    feeder = _Feeder(worker, source, stream)
    return feeder.run()


class _Feeder:
    """The producer for :func:`feed`: paused, it reads nothing more."""

    def __init__(self, worker, source, stream: BodyStream):
        self.worker, self.source, self.stream = worker, source, stream
        self._resumed: defer.Deferred | None = None
        self._paused = False
        stream.register_producer(self)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        waiter, self._resumed = self._resumed, None
        if waiter is not None:
            waiter.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()

    @defer.inlineCallbacks
    def run(self):
        read = getattr(self.source, "read1", self.source.read)
        while not self.stream.over:
            if self._paused:
                self._resumed = defer.Deferred()
                yield self._resumed
                continue
            part = yield self.worker.run(read, READ_CHUNK)
            if not part:
                self.stream.end()
                return
            self.stream.write(part)


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
        self._worker = worker or _ReactorThreads(reactor)
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
        self.down_topic = topics.down_topic(state.device_id)
        self.up_topic = topics.up_topic(state.device_id)

    @property
    def phase(self) -> Phase:
        """Where the E2E handshake stands (see :mod:`.handshake`)."""
        return self._hs.phase

    # -- connection --------------------------------------------------------------

    @_deferred
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
            raise GatewayUnreachable(f"gateway unreachable at {gateway_url}: {_reason(e)}")
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
            online = topics.parse_status(payload)
            if online is None:
                return
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
                self.log.info("connector reset the session; requests in flight fail, the next one re-handshakes")
                self._fail(SessionLost("the connector lost the session (restarted?); request not replayed"))
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

    # -- handshake -----------------------------------------------------------------

    @_deferred
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

    @_deferred
    async def request(self, method: str, path: str, headers=(), body=b"") -> Response:
        """Send one request; returns once the response starts (its body streams).

        ``body`` is bytes, a binary file object (read on the worker's threads,
        in parts of at most 256 KiB, as the connector's acknowledgements
        allow), or a :class:`BodyStream` the caller feeds as its body arrives.
        A body that fits one message (bytes, or a regular file) goes inside the
        ``req``: the connector then gives the app its length, where a streamed
        body reaches the app chunked, which some application servers do not read.
        """
        if body is not None and not isinstance(body, (bytes, bytearray, memoryview, BodyStream)):
            try:
                body = await self._worker.run(_whole_if_small, body)
            except OSError as e:
                raise DeviceError(f"cannot read the request body: {e.strerror or e}")
        await self._reopening.acquire()
        try:
            if self.client is None or not self.client.is_open:
                await self.open()
        finally:
            self._reopening.release()
        await self.handshake()
        channel = self._session
        if channel is None:
            raise SessionLost("the session ended before the request was sent")
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


def _whole_if_small(file):
    """The rest of ``file`` as bytes when it is a regular file with at most one
    message left in it, else ``file`` itself (a pipe, a large file: streamed)."""
    try:
        info = os.fstat(file.fileno())
        left = info.st_size - file.tell()
    except (AttributeError, OSError, ValueError):  # no descriptor (io.UnsupportedOperation is both)
        return file
    if not stat.S_ISREG(info.st_mode) or left > READ_CHUNK:
        return file
    return file.read()
