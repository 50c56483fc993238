"""The connector's HTTP proxy: device requests to the backend (PROTOCOL.md section 5).

One :class:`RequestProxy` serves every request of one E2E session. It sees
decrypted messages as ``(header, body)`` through :meth:`RequestProxy.handle`
and answers through ``send(header, body)``; the caller encrypts both ways.

Flow control (section 5): the request body is streamed to the backend by an
``IBodyProducer`` of unknown length (chunked) and acked to the device as its
bytes are handed to the backend connection, so the device's window of 1 MiB
also bounds what is queued here. The response body goes to the device while
at most 1 MiB of it is sent and not acked; past that the backend transport is
paused (``pauseProducing``) until the device acks, so a request holds about
1 MiB in flight plus at most one read from the backend.

Decisions where PROTOCOL.md leaves room:

* A ``req`` whose id is already in flight is answered ``err bad_request`` and
  the request already running under that id is aborted too: the device will
  treat the err as the end of that id.
* A ``body`` after the request body ended, or an ``ack`` for more response
  bytes than were sent, is ``err bad_request`` and aborts the request.
* Every request-body byte is acked once written to the backend, also bytes
  of a ``req`` with ``end:true``.
* ``response_timeout`` is an idle time per direction, restarted only by
  progress: the upload's by request-body bytes received or handed to the
  backend (an empty ``body`` message is no progress), the response's by the
  response starting, backend bytes and device acks of more than 0 bytes
  (before the response, upload progress counts too). A stalled upload, a
  silent backend or a device that stops acking ends in ``err timeout``.
* One user's devices together have at most ``user_slots.per_key`` requests in
  flight (default 32); beyond, ``err busy``.
* The backend is reached through the HTTP client's ``IAgent`` directly, not
  ``HTTPClient.request``: treq would keep one cookie jar for every user of
  the connector, follow redirects and un-gzip bodies, none of which a proxy
  may do.

Which paths and headers pass is decided in :mod:`linchpin_connector.proxy_policy`.
"""

from __future__ import annotations

import enum
from collections import deque

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from linchpin_common.machine import Transitions
from linchpin_common.contract import messages
from linchpin_common.contract.channel import ReceiveWindow, SendWindow
from linchpin_common.contract.e2e import MAX_BODY_CHUNK, MAX_IN_FLIGHT
from linchpin_common.slots import Slots

from .config import USER_HEADER
from .proxy_policy import HeaderPolicy, fits, is_id, path_allowed, path_prefixes, req_problem, response_headers

__all__ = ["RequestProxy"]

log = Logger()


class RequestProxy:
    """All requests of ONE E2E session of one device."""

    def __init__(self, *, http_client, backend_url: str, user: str, send, clock,
                 allow_paths=("/",), user_header: str = USER_HEADER,
                 response_timeout: float = 60.0, user_slots: Slots | None = None,
                 public_host: str | None = None):
        """``user_slots`` is shared by every session of the connector, so one
        user's devices together have at most its limit of requests in flight;
        ``public_host`` goes to the backend as ``X-Forwarded-Host``."""
        self._headers = HeaderPolicy(user, user_header=user_header, public_host=public_host)
        self._prefixes = path_prefixes(allow_paths)
        # treq's HTTPClient (and StubTreq) keep their IAgent as _agent; see
        # the module docstring for why HTTPClient.request is not used.
        self._agent = getattr(http_client, "_agent", http_client)
        self._base = backend_url.rstrip("/")
        self._user = user
        self._send_out = send
        self.clock = clock
        self.response_timeout = response_timeout
        self._user_slots = user_slots if user_slots is not None else Slots(MAX_IN_FLIGHT)
        self._requests: dict[int, _Request] = {}
        self._closed = False
        # Called when the last request in flight has ended: right after its
        # final message went out (so a RESET that follows reaches the device
        # with it), or on the next turn when it ended without one (a cancel).
        self.on_idle = None
        self._idle_pending = False

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    def handle(self, header: dict, body: bytes) -> None:
        """One message from the device: ``req``, ``body``, ``ack`` or ``cancel``."""
        if self._closed:
            return
        kind = messages.kind(header)
        if kind == messages.REQ:
            self._on_req(header, body)
            return
        if kind not in (messages.BODY, messages.ACK, messages.CANCEL):
            log.debug("message of an unexpected type ignored")
            return
        rid = header.get("id")
        request = self._requests.get(rid) if is_id(rid) else None
        if request is None:
            log.debug("{kind} for unknown request {id} ignored", kind=kind, id=rid if is_id(rid) else None)
        elif kind == messages.CANCEL:
            log.debug("request {id} cancelled by the device", id=rid)
            request.abort()
        elif kind == messages.ACK:
            request.on_ack(header)
        else:
            request.on_body(header, body)

    def close(self) -> None:
        """The session ended: abort every backend request, send nothing more."""
        self._closed = True
        for request in list(self._requests.values()):
            request.abort()
        self._requests.clear()

    # -- internals -----------------------------------------------------------

    def _send(self, header: dict, body: bytes = b"") -> None:
        if not self._closed:
            self._send_out(header, body)
            self._idle()

    def _send_err(self, rid: int, code: str, message: str) -> None:
        log.info("request {id}: err {code}", id=rid, code=code)
        self._send(messages.err(rid, code, message))

    def _on_req(self, header: dict, body: bytes) -> None:
        rid = header.get("id")
        if not is_id(rid):
            log.info("req without a usable id dropped")
            return
        existing = self._requests.get(rid)
        if existing is not None:
            existing.abort()
            self._send_err(rid, messages.BAD_REQUEST, "this id is already in flight")
            return
        problem = req_problem(header, body)
        if problem is not None:
            self._send_err(rid, messages.BAD_REQUEST, problem)
            return
        if len(self._requests) >= MAX_IN_FLIGHT:
            self._send_err(rid, messages.BUSY, f"at most {MAX_IN_FLIGHT} requests may be in flight")
            return
        path = header["path"]
        if not path_allowed(path, self._prefixes):
            self._send_err(rid, messages.FORBIDDEN, "this path is not allowed")
            return
        if not self._user_slots.acquire(self._user):
            self._send_err(rid, messages.BUSY, f"at most {self._user_slots.per_key} requests of this user may be in flight")
            return
        request = _Request(self, rid, header["method"])
        self._requests[rid] = request
        request.start(self._base + path, self._backend_headers(header["headers"]), body, header["end"])

    def _released(self, request: "_Request") -> None:
        self._user_slots.release(self._user)
        if not self._requests and self.on_idle is not None:
            self._idle_pending = True
            self.clock.callLater(0, self._idle)

    def _idle(self) -> None:
        if self._idle_pending and not self._requests and not self._closed:
            self._idle_pending = False
            self.on_idle()

    def _backend_headers(self, pairs) -> Headers:
        headers = Headers()
        for name, value in self._headers.backend_headers(pairs):
            headers.addRawHeader(name, value)
        return headers


@implementer(IBodyProducer)
class _RequestBody:
    """Streams the device's body messages into the backend connection."""

    def __init__(self, request: "_Request", length):
        self.request = request
        self.length = length
        self.consumer = None
        self.finished: Deferred | None = None
        self.paused = False

    def startProducing(self, consumer):
        self.consumer = consumer
        self.finished = Deferred()
        self.request.pump_up()
        return self.finished

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.request.pump_up()

    def stopProducing(self):
        self.consumer = None


class _Unsent:
    """Response bytes read from the backend and not sent yet, kept as the
    reads came: a body message that is one whole read (the common case:
    reads are as large as a message may carry) is that read, not a copy."""

    __slots__ = ("parts", "size")

    def __init__(self):
        self.parts: deque = deque()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, data: bytes) -> None:
        if data:
            self.parts.append(data)
            self.size += len(data)

    def take(self, n: int):
        """The first ``n`` bytes (a bytes-like object), removed."""
        parts = self.parts
        if not n:
            return b""
        self.size -= n
        first = parts[0]
        if len(first) > n:
            view = memoryview(first)
            parts[0] = view[n:]
            return view[:n]
        if len(first) == n:
            return parts.popleft()
        taken = []
        while n:
            part = parts.popleft()
            if len(part) > n:
                view = memoryview(part)
                parts.appendleft(view[n:])
                part = view[:n]
            taken.append(part)
            n -= len(part)
        return b"".join(taken)


class _ResponseBody(Protocol):
    def __init__(self, request: "_Request"):
        self.request = request

    def dataReceived(self, data: bytes) -> None:
        self.request.on_backend_data(data)

    def connectionLost(self, reason) -> None:
        self.request.on_backend_end(reason)


# A proxied request's life cycle (the project's one machine idiom,
# linchpin_common.machine): (phase, input) -> next phase.  A pair not
# listed is a bug and raises IllegalTransition.  Backend callbacks that come
# after the request ended (a cancelled connection reporting its loss, data
# already in flight) are expected and dropped where they arrive.
class Phase(enum.Enum):
    WAITING = "waiting"  # sent to the backend, no response yet (the upload may go on)
    HEADERS = "headers"  # the backend's status and headers are in, the res not sent yet
    STREAMING = "streaming"  # res sent; body messages follow within the device's window
    DONE = "done"  # ended: completed, failed (err sent) or aborted (nothing sent)


WAITING, HEADERS, STREAMING, DONE = Phase

#   WAITING --response--> HEADERS --res_sent--> STREAMING
#      '---------------------'--------------------'--end--> DONE (end in DONE: stays)
_REQUEST = Transitions("proxied request", Phase, {
    (WAITING, "response"): HEADERS,
    (HEADERS, "res_sent"): STREAMING,
    (WAITING, "end"): DONE,
    (HEADERS, "end"): DONE,
    (STREAMING, "end"): DONE,
    (DONE, "end"): DONE,  # e.g. a cancel racing the last body
})


class _Request:
    """One request in flight: upload, response and both flow-control windows.

    Two idle timers, one per direction, restarted only by progress: the
    upload's (device body bytes received or handed to the backend) runs
    while the request body is open; the response's (the response starting,
    backend bytes, device acks; before the response, upload progress too)
    runs until the last body message.  Either firing ends the request with
    ``err timeout`` and closes the backend connection.
    """

    def __init__(self, proxy: RequestProxy, rid: int, method: str):
        self.proxy = proxy
        self.id = rid
        self.method = method
        self.phase = WAITING
        self.up_idle = None           # DelayedCall, while the upload is open
        self.down_idle = None         # DelayedCall, until the response ends
        self.backend = None           # the agent's Deferred
        # device -> backend
        self.producer: _RequestBody | None = None
        self.up_queue: deque[bytes] = deque()
        self.up_window = ReceiveWindow()  # received from the device, not yet acked
        self.up_end = False          # the device sent its last body message
        # backend -> device
        self.res: dict | None = None
        self.reader: _ResponseBody | None = None
        self.down_buf = _Unsent()  # read from the backend, not yet sent
        self.down_window = SendWindow()  # sent to the device, not yet acked
        self.down_end = False        # the backend finished its body
        self.paused = False          # the backend transport is paused (window full)
        self.pumping = False         # pump_down is on the stack

    def _go(self, event: str) -> Phase:
        before = self.phase
        self.phase = _REQUEST.next(before, event)
        return before

    @property
    def done(self) -> bool:
        return self.phase is DONE

    # -- life cycle ----------------------------------------------------------

    def start(self, url: str, headers: Headers, body: bytes, end: bool) -> None:
        if body:
            self.up_queue.append(body)
            self.up_window.received(len(body))
        self.up_end = end
        if not (end and not body):
            self.producer = _RequestBody(self, len(body) if end else UNKNOWN_LENGTH)
        self.down_idle = self._arm(self.down_idle, self.on_down_timeout)
        if not end:
            self.up_idle = self._arm(self.up_idle, self.on_up_timeout)
        self.backend = maybeDeferred(self.proxy._agent.request, self.method.encode("ascii"),
                                     url.encode("ascii"), headers, self.producer)
        self.backend.addCallbacks(self.on_response, self.on_request_failed)
        self.backend.addErrback(self.on_bug)

    def _arm(self, timer, fire):
        """(Re)start an idle timer: progress was made."""
        if self.phase is DONE:
            return None
        if timer is not None and timer.active():
            timer.reset(self.proxy.response_timeout)
            return timer
        return self.proxy.clock.callLater(self.proxy.response_timeout, fire)

    def _upload_progress(self) -> None:
        if self.up_idle is not None:
            self.up_idle = self._arm(self.up_idle, self.on_up_timeout)
        if self.phase is WAITING:  # a backend still reading the body is not silent
            self.down_idle = self._arm(self.down_idle, self.on_down_timeout)

    def _download_progress(self) -> None:
        self.down_idle = self._arm(self.down_idle, self.on_down_timeout)

    @staticmethod
    def _stop(timer) -> None:
        if timer is not None and timer.active():
            timer.cancel()

    def finish(self) -> None:
        """Forget this request (no message is sent here)."""
        self._go("end")
        if self.proxy._requests.get(self.id) is self:
            del self.proxy._requests[self.id]
            self.proxy._released(self)
        self._stop(self.up_idle)
        self._stop(self.down_idle)
        self.up_idle = self.down_idle = None
        self.down_buf = _Unsent()
        self.up_queue.clear()

    def stop_backend(self) -> None:
        if self.reader is not None:
            if self.reader.transport is not None:
                self.reader.transport.stopProducing()  # closes the connection
        elif self.backend is not None:
            self.backend.cancel()  # a no-op once it has fired

    def abort(self) -> None:
        """Cancel from the device or the end of the session: nothing is sent."""
        if self.phase is not DONE:
            self.finish()
            self.stop_backend()

    def fail(self, code: str, message: str) -> None:
        if self.phase is not DONE:
            self.finish()
            self.proxy._send_err(self.id, code, message)
            self.stop_backend()

    def on_up_timeout(self) -> None:
        self.up_idle = None
        self.fail(messages.TIMEOUT, f"the request body made no progress for {self.proxy.response_timeout:g} s")

    def on_down_timeout(self) -> None:
        self.down_idle = None
        if self.phase is WAITING:
            self.fail(messages.TIMEOUT, f"no response from the backend within {self.proxy.response_timeout:g} s")
        else:
            self.fail(messages.TIMEOUT, f"the response made no progress for {self.proxy.response_timeout:g} s")

    def on_request_failed(self, failure) -> None:
        if self.phase is DONE:
            return  # we cancelled it
        log.info("request {id}: backend failed before the response ({error})",
                 id=self.id, error=failure.type.__name__)
        self.fail(messages.BACKEND_UNREACHABLE, "the backend could not be reached")

    def on_bug(self, failure) -> None:
        log.failure("request {id}: proxying failed", failure, id=self.id)
        self.fail(messages.BACKEND_UNREACHABLE, "the connector failed to proxy this request")

    # -- device -> backend ---------------------------------------------------

    def on_body(self, header: dict, body: bytes) -> None:
        end = header.get("end")
        if not isinstance(end, bool) or self.up_end or len(body) > MAX_BODY_CHUNK:
            self.fail(messages.BAD_REQUEST, "unexpected or malformed body message")
            return
        if not self.up_window.received(len(body)):
            self.fail(messages.TOO_LARGE, "more than 1 MiB of request body was sent without an ack")
            return
        if body:
            self.up_queue.append(body)
            self._upload_progress()  # an empty body message is no progress
        self.up_end = end
        self.pump_up()

    def pump_up(self) -> None:
        """Hand queued request bytes to the backend connection while it takes
        them, and ack what was handed over."""
        p = self.producer
        if self.phase is DONE or p is None or p.consumer is None:
            return
        written = 0
        while self.up_queue and not p.paused and p.consumer is not None:
            chunk = self.up_queue.popleft()
            p.consumer.write(chunk)
            written += len(chunk)
        if self.phase is DONE:
            return
        if written:
            self._upload_progress()
        ack = self.up_window.consumed(written)
        if ack:
            self.proxy._send(messages.ack(self.id, ack))
        if self.up_end and not self.up_queue and p.finished is not None and not p.finished.called:
            self._stop(self.up_idle)
            self.up_idle = None
            p.finished.callback(None)

    # -- backend -> device ---------------------------------------------------

    def on_response(self, response) -> None:
        if self.phase is DONE:
            return  # answered after we gave up
        log.info("request {id} {method}: {status}", id=self.id, method=self.method, status=response.code)
        self.reader = _ResponseBody(self)
        # Body bytes that are already here ride in the res: they are only
        # buffered while ``res`` is unset.
        response.deliverBody(self.reader)
        if self.phase is DONE:
            return
        res = messages.res(self.id, response.code, response_headers(response.headers.getAllRawHeaders(), response.length, self.method, response.code), False)
        if not fits(res):
            self.fail(messages.BACKEND_UNREACHABLE, "the backend's response headers are too large")
            return
        self.res = res
        self._go("response")
        self._download_progress()
        self.pump_down()

    def on_backend_data(self, data: bytes) -> None:
        if self.phase is not DONE:
            self.down_buf.add(data)
            self._download_progress()
            self.pump_down()

    def on_backend_end(self, reason) -> None:
        if self.phase is DONE:
            return  # our own stopProducing, or the end of a request already over
        if reason.check(ResponseDone, PotentialDataLoss):
            self.down_end = True
            self.pump_down()
        else:
            log.info("request {id}: backend failed during the response ({error})",
                     id=self.id, error=reason.type.__name__)
            self.fail(messages.BACKEND_UNREACHABLE, "the backend connection failed during the response")

    def on_ack(self, header: dict) -> None:
        n = header.get("bytes")
        if not self.down_window.acked(n):
            self.fail(messages.BAD_REQUEST, "ack for more response bytes than were sent")
            return
        if n:
            self._download_progress()
        self.pump_down()

    def pump_down(self) -> None:
        """Send buffered response bytes within the device's window; pause the
        backend transport while the window is full."""
        if self.pumping or self.phase not in (HEADERS, STREAMING):
            return
        self.pumping = True
        try:
            while self.phase is not DONE:
                n = min(len(self.down_buf), MAX_BODY_CHUNK, self.down_window.available)
                end = self.down_end and n == len(self.down_buf)
                if self.phase is STREAMING and not n and not end:
                    break
                chunk = self.down_buf.take(n)
                self.down_window.sent(n)
                if self.phase is STREAMING:
                    header = messages.body(self.id, end)
                else:
                    header = dict(self.res, end=end)
                    self._go("res_sent")
                if end:
                    self.finish()
                self.proxy._send(header, chunk)
        finally:
            self.pumping = False
        if self.phase is not DONE:
            self.set_paused(self.down_window.full)

    def set_paused(self, paused: bool) -> None:
        transport = self.reader.transport if self.reader is not None else None
        if paused == self.paused or transport is None:
            return
        self.paused = paused
        if paused:
            transport.pauseProducing()
        else:
            transport.resumeProducing()
