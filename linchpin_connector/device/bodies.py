"""Request and response bodies of the device library, streamed under the
connector's credit windows (PROTOCOL.md section 5): :class:`Response` hands
each part to the caller and acks it once consumed; :class:`BodyStream` sends
an upload as its parts arrive; :func:`feed` reads a blocking file into one."""

from __future__ import annotations

import collections
import os
import stat
from typing import TYPE_CHECKING

from twisted.internet import defer

from linchpin_common.contract import e2e, messages
from linchpin_common.contract.channel import ACK_BATCH, ReceiveWindow

from .errors import DeviceError
from .support import deferred_api

if TYPE_CHECKING:
    from .client import _Request

READ_CHUNK = e2e.MAX_BODY_CHUNK


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

    @deferred_api
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


def whole_if_small(file):
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
