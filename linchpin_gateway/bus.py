"""The message bus between gateway nodes: a small interface of ours, on
Redis (:class:`RedisBus`) or in memory for tests (:class:`MemoryBus`).

The bus offers what :mod:`.cluster` needs and nothing else: fire-and-forget
pub/sub on byte channels, and a few atomic operations on *ownership keys*
whose value is ``b"<node> <epoch>"``:

- ``claim``: bump the principal's epoch counter and take the key, returning
  the new epoch and the previous holder (one Redis script, so epochs order
  claims exactly);
- ``hold``: refresh the TTL of keys still ours, re-take keys that expired
  (or vanished with a Redis restart) and report those someone with a newer
  epoch holds;
- ``release``: delete a key only while it is still ours.

and on *registry hashes*, one field per session whose value ends in its
epoch like an ownership key's: ``hset_newer`` (written unless a newer epoch
is there), ``hdel_if`` (deleted only while it has that value) and
``hgetall``.

A principal's epoch counter lives ``EPOCH_TTL`` past the last claim or
hold that used it: far longer than any ownership key (whose holder refreshes
both), so a live session's epoch never goes back, and the counters of
principals long gone (or deleted: ``delete``) do not pile up in Redis.

While the bus is down every publish is dropped at once (``publish`` returns
False) and every other call fails with :class:`NotConnected`; nothing is
queued. The Redis client is txredisapi under a thin adapter of ours
(:mod:`.redis_client`) that keeps those rules.
"""

from __future__ import annotations

from collections import deque
from urllib.parse import unquote, urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from .config import redact_url
from .redis_client import CommandProtocol, Factory, NotConnected, SubscriberProtocol

EPOCH_TTL_MS = 24 * 3600 * 1000  # an epoch counter outlives its last claim or hold by a day

_CLAIM = b"""
local e = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. e, 'PX', ARGV[2])
return {e, old or ''}
"""

# KEYS[1] a hash, ARGV field, value "... <epoch>": set unless a newer epoch is there.
_HSET_NEWER = b"""
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  local theirs = tonumber(string.match(v, ' (%d+)$')) or 0
  local mine = tonumber(string.match(ARGV[2], ' (%d+)$'))
  if theirs > mine then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

_HDEL_IF = b"""
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

_HOLD = b"""
local lost = {}
local ettl = ARGV[#ARGV]
for i = 1, #KEYS, 2 do
  local j = (i + 1) / 2
  local want = ARGV[j + 1]
  local mine = tonumber(string.match(want, ' (%d+)$'))
  local v = redis.call('GET', KEYS[i])
  local theirs = 0
  if v then theirs = tonumber(string.match(v, ' (%d+)$')) or 0 end
  if v == want or theirs < mine then
    redis.call('SET', KEYS[i], want, 'PX', ARGV[1])
    local cur = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
    if cur < mine then redis.call('SET', KEYS[i + 1], mine, 'PX', ettl)
    else redis.call('PEXPIRE', KEYS[i + 1], ettl) end
  else
    table.insert(lost, j)
  end
end
return lost
"""

# A token bucket every node charges: KEYS[1] a hash (tokens, time);
# ARGV burst, tokens per second.  Redis's own clock, so nodes' clocks do
# not matter.  Returns 1 when a token was taken.
_TAKE = b"""
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tk', 'ts')
local tokens = tonumber(v[1]) or burst
local ts = tonumber(v[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local ok = 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
end
redis.call('HSET', KEYS[1], 'tk', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return ok
"""

_RELEASE = b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

HOLD_BATCH = 500  # keys per hold script call


def epoch_of(value: bytes) -> int:
    """The epoch of an ownership key's value ``b"<node> <epoch>"``."""
    return int(value.rsplit(b" ", 1)[1])


class IBus(Interface):
    connected = Attribute("True while messages can be sent and received")

    def start(on_message, on_state):
        """Connect; ``on_message(channel, data)`` for each message on a
        subscribed channel, ``on_state(up)`` whenever the bus comes or goes."""

    def stop():
        """Deferred: disconnected."""

    def publish(channel, data):
        """Send at once or drop: True when handed to the bus."""

    def subscribe(channel):
        """Receive ``channel`` (again after every reconnect)."""

    def unsubscribe(channel):
        """Stop receiving ``channel``."""

    def claim(own_key, epoch_key, node, ttl_ms):
        """Deferred[(epoch, previous value or None)]."""

    def hold(entries, ttl_ms):
        """``entries``: [(own_key, epoch_key, value)]; Deferred[list of indices
        of entries held by a newer epoch elsewhere]."""

    def release(own_key, value):
        """Deferred: the key is deleted if it still has ``value``."""

    def delete(keys):
        """Deferred: these keys are gone."""

    def take(key, burst, per_second):
        """Deferred[bool]: a token taken from the shared bucket ``key``."""

    def exists(keys):
        """Deferred[list[bool]]."""

    def set(key, value, ttl_ms):
        """Deferred."""

    def hset_newer(key, field, value):
        """Deferred: ``field`` of hash ``key`` set to ``value`` unless it holds
        a newer epoch (values end in `` <epoch>``)."""

    def hdel_if(key, field, value):
        """Deferred: ``field`` deleted if it still has ``value``."""

    def hgetall(key):
        """Deferred[dict[bytes, bytes]]."""

    def ping():
        """Deferred: one round trip."""

    def reset():
        """Drop the connections (they are made again, with backoff)."""


def parse_url(url: str) -> dict:
    """``redis://[user:password@]host:port/db`` (or ``rediss://``) as options."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("a redis:// or rediss:// URL with a host is required")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError("the database in a redis URL is a number")
    return {
        "tls": parts.scheme == "rediss",
        "host": parts.hostname,
        "port": parts.port or 6379,
        "db": int(db or 0),
        "username": unquote(parts.username).encode() if parts.username else None,
        "password": unquote(parts.password).encode() if parts.password is not None else None,
    }


@implementer(IBus)
class RedisBus:
    log = Logger()

    def __init__(self, reactor, url: str):
        self.reactor = reactor
        self.options = parse_url(url)
        self.where = redact_url(url)
        self.connected = False
        self._channels: set[bytes] = set()
        self._on_state = None
        o = self.options
        endpoint = TCP4ClientEndpoint(reactor, o["host"], o["port"], timeout=5)
        if o["tls"]:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(o["host"]), endpoint)
        self._endpoint = endpoint
        self._cmd = Factory(CommandProtocol, o, self._changed, self._changed, "command")
        self._sub = Factory(SubscriberProtocol, o, self._changed, self._changed, "subscriber",
                            channels=self._channels)

    def _changed(self, *_):
        up = self._cmd.current is not None and self._sub.current is not None
        if up != self.connected:
            self.connected = up
            self.log.info("bus {state} ({where})", state="up" if up else "down", where=self.where)
            self._on_state(up)

    # -- IBus ------------------------------------------------------------------

    def start(self, on_message, on_state):
        self._on_state = on_state
        self._sub.on_message = on_message  # called straight from the reader, once per message
        self._cmd.start(self._endpoint)
        self._sub.start(self._endpoint)

    def stop(self):
        return defer.gatherResults([self._cmd.stop(), self._sub.stop()], consumeErrors=True)

    def publish(self, channel, data):
        proto = self._cmd.current
        if proto is None:
            return False
        return proto.publish_or_drop(channel, data)

    def subscribe(self, channel):
        if channel in self._channels:
            return
        self._channels.add(channel)
        proto = self._sub.current
        if proto is not None:
            proto.send_subscribe(channel)

    def unsubscribe(self, channel):
        if channel not in self._channels:
            return
        self._channels.discard(channel)
        proto = self._sub.current
        if proto is not None:
            proto.send_unsubscribe(channel)

    def _call(self, *args):
        proto = self._cmd.current
        if proto is None:
            return defer.fail(NotConnected("Redis is not connected"))
        return defer.maybeDeferred(proto.execute_command, *args)

    def claim(self, own_key, epoch_key, node, ttl_ms):
        d = self._call(b"EVAL", _CLAIM, 2, own_key, epoch_key, node, int(ttl_ms), EPOCH_TTL_MS)
        return d.addCallback(lambda r: (int(r[0]), r[1] or None))

    def hold(self, entries, ttl_ms):
        calls = []
        for start in range(0, len(entries), HOLD_BATCH):
            batch = entries[start:start + HOLD_BATCH]
            keys = [k for own, ep, _ in batch for k in (own, ep)]
            d = self._call(b"EVAL", _HOLD, len(keys), *keys, int(ttl_ms), *[v for _, _, v in batch], EPOCH_TTL_MS)
            calls.append(d.addCallback(lambda lost, start=start: [start + j - 1 for j in lost]))
        d = defer.gatherResults(calls, consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure)
        return d.addCallback(lambda parts: [i for part in parts for i in part])

    def release(self, own_key, value):
        return self._call(b"EVAL", _RELEASE, 1, own_key, value)

    def delete(self, keys):
        return self._call(b"DEL", *keys) if keys else defer.succeed(0)

    def take(self, key, burst, per_second):
        return self._call(b"EVAL", _TAKE, 1, key, burst, repr(float(per_second))).addCallback(lambda r: r == 1)

    def exists(self, keys):
        if not keys:
            return defer.succeed([])
        return self._call(b"MGET", *keys).addCallback(lambda values: [v is not None for v in values])

    def set(self, key, value, ttl_ms):
        return self._call(b"SET", key, value, b"PX", int(ttl_ms))

    def hset_newer(self, key, field, value):
        return self._call(b"EVAL", _HSET_NEWER, 1, key, field, value)

    def hdel_if(self, key, field, value):
        return self._call(b"EVAL", _HDEL_IF, 1, key, field, value)

    def hgetall(self, key):
        d = self._call(b"HGETALL", key)
        return d.addCallback(lambda flat: _as_bytes_dict(flat))

    def ping(self):
        return self._call(b"PING")

    def reset(self):
        for conn in (self._cmd, self._sub):
            if conn.current is not None:
                conn.current.transport.abortConnection()


def _as_bytes_dict(reply) -> dict:
    """An HGETALL reply (a flat list, or a dict from some clients) as bytes -> bytes."""
    if isinstance(reply, dict):
        items = reply.items()
    else:
        items = zip(reply[0::2], reply[1::2])
    b = lambda x: x if isinstance(x, bytes) else str(x).encode()  # noqa: E731
    return {b(k): b(v) for k, v in items}


# -- in memory ---------------------------------------------------------------------


class MemoryHub:
    """What Redis would be, for several :class:`MemoryBus` nodes in one test.

    Messages wait in a queue until :meth:`flush`, so a test decides when
    they arrive (as ``iosim``'s ``pump`` does for connections)."""

    def __init__(self, clock):
        self.clock = clock
        self.keys: dict[bytes, tuple[bytes, float | None]] = {}
        self.hashes: dict[bytes, dict[bytes, bytes]] = {}
        self.buckets: dict[bytes, tuple[float, float]] = {}  # take(): tokens, when
        self.buses: list[MemoryBus] = []
        self.queue: deque = deque()

    def flush(self) -> int:
        n = 0
        while self.queue:
            channel, data = self.queue.popleft()
            for bus in list(self.buses):
                if bus.connected and channel in bus.channels:
                    bus.on_message(channel, data)
            n += 1
        return n

    def get(self, key):
        entry = self.keys.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and self.clock.seconds() >= expires:
            del self.keys[key]
            return None
        return value

    def set(self, key, value, ttl_ms=None):
        self.keys[key] = (value, None if ttl_ms is None else self.clock.seconds() + ttl_ms / 1000)

    def restart(self):
        """Redis restarted without persistence: every key is gone."""
        self.keys.clear()
        self.hashes.clear()


@implementer(IBus)
class MemoryBus:
    def __init__(self, hub: MemoryHub):
        self.hub = hub
        self.connected = False
        self.channels: set[bytes] = set()
        self.on_message = None
        self._on_state = None
        self.hung = False  # tests: connected, but PING is never answered
        self.resets = 0
        hub.buses.append(self)

    def set_connected(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            self._on_state(up)

    def _check(self):
        if not self.connected:
            raise NotConnected("bus down")

    def start(self, on_message, on_state):
        self.on_message = on_message
        self._on_state = on_state
        self.set_connected(True)

    def stop(self):
        self.connected = False
        return defer.succeed(None)

    def publish(self, channel, data):
        if not self.connected:
            return False
        self.hub.queue.append((channel, data))
        return True

    def subscribe(self, channel):
        self.channels.add(channel)

    def unsubscribe(self, channel):
        self.channels.discard(channel)

    def claim(self, own_key, epoch_key, node, ttl_ms):
        return defer.maybeDeferred(self._claim, own_key, epoch_key, node, ttl_ms)

    def _claim(self, own_key, epoch_key, node, ttl_ms):
        self._check()
        hub = self.hub
        epoch = int(hub.get(epoch_key) or 0) + 1
        hub.set(epoch_key, b"%d" % epoch, EPOCH_TTL_MS)
        old = hub.get(own_key)
        hub.set(own_key, node + b" %d" % epoch, ttl_ms)
        return epoch, old

    def hold(self, entries, ttl_ms):
        return defer.maybeDeferred(self._hold, entries, ttl_ms)

    def _hold(self, entries, ttl_ms):
        self._check()
        hub = self.hub
        lost = []
        for i, (own, ep, want) in enumerate(entries):
            mine = epoch_of(want)
            value = hub.get(own)
            theirs = epoch_of(value) if value else 0
            if value == want or theirs < mine:
                hub.set(own, want, ttl_ms)
                hub.set(ep, b"%d" % max(mine, int(hub.get(ep) or 0)), EPOCH_TTL_MS)
            else:
                lost.append(i)
        return lost

    def release(self, own_key, value):
        def release():
            self._check()
            if self.hub.get(own_key) == value:
                del self.hub.keys[own_key]

        return defer.maybeDeferred(release)

    def delete(self, keys):
        def delete():
            self._check()
            return sum((self.hub.keys.pop(k, None) or self.hub.hashes.pop(k, None)) is not None for k in keys)

        return defer.maybeDeferred(delete)

    def take(self, key, burst, per_second):
        def take():
            self._check()
            now = self.hub.clock.seconds()
            tokens, at = self.hub.buckets.get(key, (float(burst), now))
            tokens = min(float(burst), tokens + (now - at) * per_second)
            ok = tokens >= 1
            self.hub.buckets[key] = (tokens - 1 if ok else tokens, now)
            return ok

        return defer.maybeDeferred(take)

    def exists(self, keys):
        return defer.maybeDeferred(lambda: self._check() or [self.hub.get(k) is not None for k in keys])

    def set(self, key, value, ttl_ms):
        return defer.maybeDeferred(lambda: self._check() or self.hub.set(key, value, ttl_ms))

    def hset_newer(self, key, field, value):
        def hset():
            self._check()
            h = self.hub.hashes.setdefault(key, {})
            if field in h and epoch_of(h[field]) > epoch_of(value):
                return 0
            h[field] = value
            return 1

        return defer.maybeDeferred(hset)

    def hdel_if(self, key, field, value):
        def hdel():
            self._check()
            h = self.hub.hashes.get(key, {})
            if h.get(field) != value:
                return 0
            del h[field]
            return 1

        return defer.maybeDeferred(hdel)

    def hgetall(self, key):
        return defer.maybeDeferred(lambda: self._check() or dict(self.hub.hashes.get(key, {})))

    def ping(self):
        if self.hung:
            return defer.Deferred()  # never answers
        return defer.maybeDeferred(self._check)

    def reset(self):
        self.resets += 1
        self.hung = False
        self.set_connected(False)
        self.set_connected(True)


__all__ = ["IBus", "RedisBus", "MemoryBus", "MemoryHub", "NotConnected", "parse_url"]
