"""Many devices that keep an end-to-end session, from one process:
``python -m bench.e2e_sessions`` with the options of :mod:`bench.sessions`
plus ``--connector-key HEX`` (the connector's static public key).

Each session logs in as :mod:`bench.sessions` does (``--accounts`` lists
``[device_id, password, device_secret_hex]``), then behaves as the device
library does with its end-to-end session (PROTOCOL.md section 5):

* ``$gateway/status`` ``online`` with no session, or ``moved``: a HELLO under
  the device secret (key_kind 1); its WELCOME makes the session, and a DATA
  ``confirm`` is its first message;
* ``offline``: the session is gone (the connector's end of it is);
* RESET of the session: gone, and a new HELLO at once;
* a HELLO without WELCOME for ``--hello-timeout`` seconds is sent anew.

Prints ``READY {json}`` once every session is logged in (or has failed for
good), then holds them; each line ``report T`` on stdin prints ``REPORT
{json}``: how many sessions have an end-to-end session made after ``T`` (a
``time.monotonic()`` value: the caller, on the same machine, gives the
moment it stopped the connector), when the last of them was made, how many
in each second after ``T``, and counts of what happened (HELLOs, HELLOs
sent again, RESETs, REJECTs, offline, moved). EOF or any other line closes
them all (``CLOSED {json}``).
"""

from __future__ import annotations

import heapq
import json

from linchpin_common.contract import e2e, messages, topics, wire

from . import sessions, ws
from .procs import raise_nofile


class Ends:
    """The end-to-end side of one session."""

    __slots__ = ("secret", "handshake", "session", "hello_at", "back", "lost", "online")

    def __init__(self, secret: bytes):
        self.secret = secret
        self.handshake: e2e.DeviceHandshake | None = None
        self.session: e2e.Session | None = None
        self.hello_at = 0.0
        self.back = 0.0  # monotonic time of the last session made
        self.lost = 0.0  # ... and of the last one lost
        self.online = False  # the status that came while logging in


class E2ERunner(sessions.Runner):
    def __init__(self, args, accounts):
        super().__init__(args, [a[:2] for a in accounts])
        self.ends = [Ends(bytes.fromhex(a[2])) for a in accounts]
        self.connector_key = bytes.fromhex(args.connector_key)
        self.hello_due: list[tuple[float, int]] = []  # (when a HELLO without answer is sent again, index)
        self.counts = {"hellos": 0, "hello_again": 0, "welcomes": 0, "resets": 0, "rejects": 0, "offline": 0,
                       "moved": 0}

    # -- the session, as the device library keeps it ----------------------------

    def publish(self, s: sessions.Session, payload: bytes) -> None:
        if s.sock is None:
            return
        frame = ws.client_frame(wire.encode(wire.Publish(topics.up_topic(s.user), payload)), self.key)
        try:
            self.send(s, frame)
        except OSError:
            pass

    def hello(self, s: sessions.Session, now: float) -> None:
        ends = self.ends[s.i]
        ends.handshake = e2e.DeviceHandshake.start(s.user, ends.secret, e2e.KEY_DEVICE, self.connector_key)
        ends.hello_at = now
        self.counts["hellos"] += 1
        self.publish(s, ends.handshake.hello)
        heapq.heappush(self.hello_due, (now + self.args.hello_timeout, s.i))

    def lose(self, s: sessions.Session, now: float) -> None:
        ends = self.ends[s.i]
        if ends.session is not None:
            ends.session = None
            ends.lost = now

    def status(self, s: sessions.Session, payload: bytes, now: float) -> None:
        value = topics.connector_status(payload)
        ends = self.ends[s.i]
        if s.state != sessions.READY:  # logging in: acted on once ready
            ends.online = value == topics.ONLINE
            return
        if value == topics.OFFLINE:
            self.counts["offline"] += 1
            self.lose(s, now)
            ends.handshake = None
        elif value == topics.MOVED:
            self.counts["moved"] += 1
            self.lose(s, now)
            self.hello(s, now)
        elif value == topics.ONLINE and ends.session is None:
            self.hello(s, now)

    def down(self, s: sessions.Session, payload: bytes, now: float) -> None:
        ends = self.ends[s.i]
        env = e2e.parse_envelope(payload)
        if isinstance(env, e2e.Welcome) and ends.handshake is not None:
            result = ends.handshake.finish(env)
            if result is None:
                return
            ends.handshake = None
            ends.session = result.session
            ends.back = now
            self.counts["welcomes"] += 1
            self.publish(s, result.session.seal(e2e.encode_message(messages.confirm())))
        elif isinstance(env, e2e.Reset) and ends.session is not None \
                and env.session_id == ends.session.session_id:
            self.counts["resets"] += 1
            self.lose(s, now)
            self.hello(s, now)
        elif isinstance(env, e2e.Reject):
            self.counts["rejects"] += 1
            ends.handshake = None

    def ready(self, s: sessions.Session, now: float) -> None:
        super().ready(s, now)
        if self.ends[s.i].online:
            self.hello(s, now)

    def ready_input(self, s: sessions.Session, chunk: bytes, now: float) -> None:
        s.buf += chunk
        for opcode, payload in ws.server_frames(s.buf):
            if opcode not in (0x0, 0x2):
                continue
            for packet in s.parser.feed(payload):
                if not isinstance(packet, wire.Publish):
                    continue
                if packet.topic == topics.STATUS:
                    self.status(s, packet.payload, now)
                elif packet.topic == topics.down_topic(s.user):
                    self.down(s, packet.payload, now)

    def tick(self, now: float) -> None:
        """HELLOs without answer for --hello-timeout seconds go again."""
        due = self.hello_due
        while due and due[0][0] <= now:
            _, i = heapq.heappop(due)
            s, ends = self.sessions[i], self.ends[i]
            if s.state == sessions.READY and ends.handshake is not None \
                    and now - ends.hello_at >= self.args.hello_timeout:
                self.counts["hello_again"] += 1
                self.hello(s, now)

    # -- holding ----------------------------------------------------------------

    def report(self, since: float) -> dict:
        """Where the sessions stand: how many have a session made after
        ``since`` (a ``time.monotonic()``), the last of them, and how many
        came back in each second after it."""
        ready = [self.ends[i] for i, s in enumerate(self.sessions) if s.state == sessions.READY]
        back = sorted(e.back - since for e in ready if e.session is not None and e.back > since)
        by_second = [0] * (int(back[-1]) + 1 if back else 0)
        for t in back:
            by_second[int(t)] += 1
        return {"mqtt": super().report(since),  # the sessions with the gateway, as bench.sessions reports them
                "ready": len(ready), "with_session": sum(1 for e in ready if e.session is not None),
                "back_since": len(back), "last_back_s": round(back[-1], 2) if back else None,
                "back_by_second": by_second,
                "closed_by_server": self.closed_after_ready, **self.counts}


def main(argv=None) -> None:
    p = sessions.arguments("devices keeping an end-to-end session (see module docstring)")
    p.add_argument("--connector-key", required=True, help="the connector's static public key, hex")
    p.add_argument("--hello-timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    raise_nofile(args.count + 256)
    with open(args.accounts) as f:
        accounts = json.load(f)[args.first:args.first + args.count]
    runner = E2ERunner(args, accounts)
    print("READY " + json.dumps(runner.run()), flush=True)
    held = runner.hold()  # sessions.Runner.hold, reporting with E2ERunner.report
    runner.close_all()
    print("CLOSED " + json.dumps(held), flush=True)


if __name__ == "__main__":
    main()
