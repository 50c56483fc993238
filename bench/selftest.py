"""Self-test of the load clients' receive side: ``python -m bench.selftest``.

:class:`bench.ws.Counter` counts echoes without buffering them, so a bug in
it would silently produce wrong throughput figures. This feeds it server
streams cut at random places (frames split across reads, several packets in
one frame, one packet across two frames, fragmented messages with a ping in
between, foreign packets) and checks every count. ``bench.run`` runs it
before measuring anything; it takes well under a second.
"""

from __future__ import annotations

import random
import struct
import sys

from linchpin_common.contract import wire

from .ws import Counter


def server_frame(payload: bytes, opcode: int = 0x2, fin: bool = True) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        return struct.pack("!BB", b0, n) + payload
    if n < 65536:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


def check(size: int, rng: random.Random, messages: int = 300) -> None:
    expect = wire.encode_publish(b"devices/" + b"a" * 32 + b"/down", rng.randbytes(size))
    other = wire.encode_publish(b"$gateway/status", b'{"connector": "online"}')
    stream, expected, others, pings = b"", 0, 0, 0
    for _ in range(messages):
        r = rng.random()
        if r < 0.5:
            stream += server_frame(expect)
            expected += 1
        elif r < 0.6:
            stream += server_frame(expect + other + expect)
            expected, others = expected + 2, others + 1
        elif r < 0.7:
            cut = rng.randrange(1, len(expect))
            stream += (server_frame(expect[:cut], fin=False) + server_frame(b"pp", 0x9)
                       + server_frame(expect[cut:], 0x0))
            expected, pings = expected + 1, pings + 1
        else:
            both = expect + expect
            cut = rng.randrange(1, len(both))
            stream += server_frame(both[:cut]) + server_frame(both[cut:])
            expected += 2
    counter = Counter(expect, check=10**9)
    rbuf = bytearray(1 << 20)
    pos = carry = got = 0
    while pos < len(stream):
        k = min(rng.choice([1, 2, 3, 7, 100, 5000, 100000]), len(stream) - pos, len(rbuf) - carry)
        rbuf[carry:carry + k] = stream[pos:pos + k]
        pos += k
        n = carry + k
        g, carry = counter.feed(rbuf, n)
        if carry:
            rbuf[:carry] = rbuf[n - carry:n]
        got += g
    assert got == expected, (size, got, expected)
    assert counter.other == others, (size, counter.other, others)
    assert counter.mismatch == 0, size
    assert len(counter.pings) == pings, (size, len(counter.pings), pings)
    # A corrupted echo is noticed.
    bad = bytearray(expect)
    bad[-1] ^= 0xFF
    counter = Counter(expect)
    rbuf[:len(server_frame(bytes(bad)))] = server_frame(bytes(bad))
    counter.feed(rbuf, len(server_frame(bytes(bad))))
    assert counter.mismatch == 1, size


def run_all() -> None:
    rng = random.Random(6455)
    for size in (0, 5, 256, 16384, 70000):
        check(size, rng, 300 if size < 70000 else 40)


def main() -> int:
    run_all()
    print("bench.selftest: ws.Counter ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
