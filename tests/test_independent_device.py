"""An independent device against the real connector, written from PROTOCOL.md alone.

Nothing here imports ``linchpin_connector`` or ``linchpin_gateway``: the device
below is built from paho-mqtt, urllib, hashlib/json/struct and the
``cryptography`` primitives, following PROTOCOL.md (docs/protocol.md) sections 1-5
byte by byte. ``tests.support`` is used only to start the real processes
(gateway, sample intranet app, ``twistd lmconnector``) and to run
``lmconnector device add``.

No test sleeps: every wait blocks on a queue with a timeout that only a
failure reaches. "Nothing was answered" is shown by ordering: a later
request that needs a backend round trip on another session comes back first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import struct
import urllib.parse
import urllib.request

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support import System

TIMEOUT = 30
MiB = 1024 * 1024
MAX_BODY_PER_MESSAGE = 256 * 1024
WINDOW = 1 * MiB

HELLO, WELCOME, DATA, RESET, REJECT = 1, 2, 3, 4, 5
NO_SALT = b"\x00" * 32


# -- primitives (PROTOCOL.md 5) --------------------------------------------------


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def raw_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def encode_message(header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return struct.pack("!I", len(head)) + head + body


def decode_message(message: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("!I", message[:4])
    assert length <= 64 * 1024, length
    return json.loads(message[4:4 + length].decode("utf-8")), message[4 + length:]


# -- pairing URI (PROTOCOL.md 3) ------------------------------------------------------


class Pairing:
    def __init__(self, uri: str):
        parts = urllib.parse.urlsplit(uri)
        assert parts.scheme == "linchpin-mobile" and parts.netloc == "pair", uri
        query = urllib.parse.parse_qs(parts.query, strict_parsing=True)
        assert all(len(v) == 1 for v in query.values()), query
        query = {k: v[0] for k, v in query.items()}
        assert query["v"] == "1"
        self.gateway_url = query["gateway"]
        gw = urllib.parse.urlsplit(self.gateway_url)
        # Section 3: plain http only for a loopback gateway (it is, in this test).
        assert gw.scheme == "https" or gw.hostname in ("127.0.0.1", "::1", "localhost"), self.gateway_url
        assert not self.gateway_url.endswith("/")
        self.setup_key = query["setup_key"]
        self.secret = b64url_decode(query["secret"])
        assert len(self.secret) == 32 and "=" not in query["secret"]
        assert len(query["connector_key"]) == 43
        self.connector_key = b64url_decode(query["connector_key"])
        assert len(self.connector_key) == 32

    def setup(self) -> tuple[str, str]:
        """POST /api/v1/devices/setup: (device_id, device_password)."""
        req = urllib.request.Request(self.gateway_url + "/api/v1/devices/setup",
                                     data=json.dumps({"device_setup_key": self.setup_key}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            assert resp.status == 200
            answer = json.loads(resp.read())
        assert len(answer["device_id"]) == 32 and all(c in "0123456789abcdef" for c in answer["device_id"])
        return answer["device_id"], answer["device_password"]


# -- the device ---------------------------------------------------------------------------


class Session:
    def __init__(self, sid: bytes, k_up: bytes, k_down: bytes, key_kind: int, device_secret_key: bytes | None):
        self.sid = sid
        self.k_up = AESGCM(k_up)
        self.k_down = AESGCM(k_down)
        self.key_kind = key_kind
        self.device_secret_key = device_secret_key
        self.up_seq = 0
        self.sent_seqs: list[int] = []
        self.received_seqs: list[int] = []


class Device:
    """One paired device: MQTT over WebSocket (section 4), E2E channel (section 5)."""

    def __init__(self, pairing: Pairing, device_id: str, password: str):
        self.pairing = pairing
        self.device_id = device_id
        self.D = device_id.encode("ascii")
        self.down_topic = f"devices/{device_id}/down"
        self.up_topic = f"devices/{device_id}/up"
        self.down: queue.Queue[bytes] = queue.Queue()
        self.status: queue.Queue[dict] = queue.Queue()
        self.backlog: list[bytes] = []
        self.connack: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.pubacks: queue.Queue = queue.Queue()

        gw = urllib.parse.urlsplit(pairing.gateway_url)
        assert gw.scheme == "http"  # ws://, section 3
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, transport="websockets",
                                  protocol=mqtt.MQTTv311, client_id="")
        self.client.ws_set_options(path="/mqtt")
        self.client.username_pw_set(device_id, password)
        self.client.on_connect = lambda c, u, flags, rc, props: self.connack.put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put(rcs)
        self.client.on_publish = lambda c, u, mid, rc, props: self.pubacks.put(mid)
        self.client.on_message = self._on_message
        self.client.connect(gw.hostname, gw.port, keepalive=60)
        self.client.loop_start()
        rc = self.connack.get(timeout=TIMEOUT)
        assert not rc.is_failure, rc
        self.client.subscribe([(self.down_topic, 1), ("$gateway/status", 1)])
        rcs = self.subacks.get(timeout=TIMEOUT)
        assert [rc.is_failure for rc in rcs] == [False, False], rcs
        while True:  # sent right after the SUBACK, then on every change
            if self.status.get(timeout=TIMEOUT) == {"connector": "online"}:
                break

    def _on_message(self, client, userdata, msg):
        if msg.topic == "$gateway/status":
            self.status.put(json.loads(msg.payload))
        else:
            assert msg.topic == self.down_topic, msg.topic
            self.down.put(bytes(msg.payload))

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    # -- transport

    def publish(self, payload: bytes) -> None:
        info = self.client.publish(self.up_topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc

    def next_envelope(self, match, timeout=TIMEOUT) -> bytes:
        """The next down envelope for which ``match`` is true; others are kept."""
        for i, env in enumerate(self.backlog):
            if match(env):
                return self.backlog.pop(i)
        while True:
            try:
                env = self.down.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"nothing matching arrived within {timeout}s; backlog: "
                                     f"{[e[:2].hex() for e in self.backlog]}")
            if match(env):
                return env
            self.backlog.append(env)

    def drain(self) -> list[bytes]:
        """Everything received and not consumed so far (no waiting)."""
        while True:
            try:
                self.backlog.append(self.down.get_nowait())
            except queue.Empty:
                break
        out, self.backlog = self.backlog, []
        return out

    # -- handshake

    def make_hello(self, key: bytes, key_kind: int):
        k_hs = hkdf(key, NO_SALT, b"lm-e2e v1 handshake" + self.D, 32)
        e_d = X25519PrivateKey.generate()
        nonce = os.urandom(12)
        head = bytes([0x01, HELLO, key_kind]) + nonce
        assert len(head) == 15
        hello = head + AESGCM(k_hs).encrypt(nonce, raw_public(e_d), head + self.D + b"up")
        assert len(hello) == 63
        return hello, e_d, k_hs

    def handshake(self, key: bytes, key_kind: int) -> Session:
        hello, e_d, k_hs = self.make_hello(key, key_kind)
        self.publish(hello)
        welcome = self.next_envelope(lambda e: e[:2] in (bytes([1, WELCOME]), bytes([1, REJECT])))
        assert welcome[:2] == bytes([1, WELCOME]), f"expected WELCOME, got {welcome.hex()}"
        return self.open_welcome(hello, welcome, e_d, k_hs, key, key_kind)

    def open_welcome(self, hello, welcome, e_d, k_hs, key, key_kind) -> Session:
        assert len(welcome) == 71, len(welcome)
        assert welcome[2] == key_kind, (welcome[2], key_kind)
        nonce = welcome[3:15]
        aad = welcome[:15] + self.D + b"down" + sha256(hello)
        plain = AESGCM(k_hs).decrypt(nonce, welcome[15:], aad)
        assert len(plain) == 40
        e_c, sid = X25519PublicKey.from_public_bytes(plain[:32]), plain[32:]
        s_c = X25519PublicKey.from_public_bytes(self.pairing.connector_key)
        dh1, dh2 = e_d.exchange(e_c), e_d.exchange(s_c)
        assert dh1 != b"\x00" * 32 and dh2 != b"\x00" * 32
        ikm = dh1 + dh2
        th = sha256(hello + welcome)
        okm = hkdf(ikm, key, b"lm-e2e v1 session" + self.D + sid + th, 64)
        secret = hkdf(ikm, key, b"lm-e2e v1 device secret" + self.D + th, 32) if key_kind == 0 else None
        return Session(sid, okm[:32], okm[32:], key_kind, secret)

    # -- DATA

    def data_envelope(self, session: Session, seq: int, message: bytes) -> bytes:
        head = bytes([0x01, DATA]) + session.sid + struct.pack("!Q", seq)
        assert len(head) == 18
        nonce = b"\x00\x00\x00\x00" + struct.pack("!Q", seq)
        return head + session.k_up.encrypt(nonce, message, head + self.D)

    def send(self, session: Session, header: dict, body: bytes = b"", seq: int | None = None) -> None:
        if seq is None:
            seq = session.up_seq
        session.up_seq = seq + 1
        session.sent_seqs.append(seq)
        self.publish(self.data_envelope(session, seq, encode_message(header, body)))

    def confirm(self, session: Session) -> None:
        self.send(session, {"t": "confirm"})

    def receive(self, session: Session, timeout=TIMEOUT) -> tuple[dict, bytes]:
        """The next DATA message of ``session`` (a RESET for it fails the test)."""
        sid = session.sid

        def mine(e):
            return (e[:2] == bytes([1, DATA]) and e[2:10] == sid) or e == bytes([1, RESET]) + sid

        env = self.next_envelope(mine, timeout)
        assert env[:2] == bytes([1, DATA]), f"session got RESET: {env.hex()}"
        assert len(env) >= 34
        (seq,) = struct.unpack("!Q", env[10:18])
        nonce = b"\x00\x00\x00\x00" + env[10:18]
        message = session.k_down.decrypt(nonce, env[18:], env[:18] + self.D)
        session.received_seqs.append(seq)
        assert seq == len(session.received_seqs) - 1, f"down seqs {session.received_seqs}"
        return decode_message(message)

    def request(self, session: Session, rid: int, method: str, path: str, headers=(), body: bytes = b"",
                ack_low=0, ack_high=0, stats=None):
        """Send one ``req`` and read its answer: ("res", status, headers, body) or ("err", header).

        Each body-carrying message of the response is acked by its own ``ack``
        once "consumed". The device consumes lazily: nothing is acked until
        ``ack_high`` bytes are unacked, then the oldest messages are acked
        until at most ``ack_low`` remain (0/0: ack at once).
        """
        assert len(body) <= MAX_BODY_PER_MESSAGE
        self.send(session, {"t": "req", "id": rid, "method": method, "path": path,
                            "headers": [list(h) for h in headers], "end": True}, body)
        got, status, res_headers = [], None, None
        pending: list[int] = []  # sizes of received, not yet acked body messages
        unacked = 0
        while True:
            header, part = self.receive(session)
            assert header.get("id") == rid, header
            if header["t"] == "err":
                assert status is None, header
                return ("err", header)
            if status is None:
                assert header["t"] == "res", header
                status, res_headers = header["status"], header["headers"]
            else:
                assert header["t"] == "body", header
            assert isinstance(header["end"], bool)
            assert len(part) <= MAX_BODY_PER_MESSAGE, len(part)
            got.append(part)
            unacked += len(part)
            if stats is not None:
                stats["max_message"] = max(stats.get("max_message", 0), len(part))
                stats["max_unacked"] = max(stats.get("max_unacked", 0), unacked)
                stats["messages"] = stats.get("messages", 0) + 1
            if header["end"]:
                return ("res", status, res_headers, b"".join(got))
            if part:
                pending.append(len(part))
            if unacked >= ack_high:
                while pending and unacked > ack_low:
                    n = pending.pop(0)
                    unacked -= n
                    self.send(session, {"t": "ack", "id": rid, "bytes": n})


def pair(system: System, user: str) -> tuple[Device, Session]:
    """Full pairing from the URI (section 3) and the first session (key_kind 0), confirmed."""
    pairing = Pairing(system.add_device(user))
    device_id, password = pairing.setup()
    device = Device(pairing, device_id, password)
    session = device.handshake(pairing.secret, 0)
    assert session.device_secret_key is not None
    device.confirm(session)
    return device, session


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    sys_ = None
    try:
        sys_ = System(tmp_path_factory.mktemp("independent"))
        yield sys_
    finally:
        if sys_ is not None:
            sys_.stop()


@pytest.fixture
def devices():
    made: list[Device] = []
    yield made
    for device in made:
        device.close()


def whoami(device, session, rid):
    kind, status, headers, body = device.request(session, rid, "GET", "/api/whoami")
    assert kind == "res" and status == 200, (kind, status, body)
    return json.loads(body)


# -- tests -----------------------------------------------------------------------------------


def test_pairing_then_whoami(system, devices):
    device, session = pair(system, "alice")
    devices.append(device)
    kind, status, headers, body = device.request(session, 1, "GET", "/api/whoami?x=1")
    assert kind == "res" and status == 200
    assert isinstance(headers, list) and headers
    assert all(isinstance(h, list) and len(h) == 2 and all(isinstance(s, str) for s in h) for h in headers)
    assert any(k.lower() == "content-type" and v.startswith("application/json") for k, v in headers), headers
    answer = json.loads(body)
    assert answer["user"] == "alice"
    assert answer["path"] == "/api/whoami" and answer["query"] == "x=1"
    # A second request on the same session: seqs keep counting by one.
    assert whoami(device, session, 2)["user"] == "alice"
    # confirm, req, (acks), req, (acks): 0, 1, 2, ...
    assert session.sent_seqs == list(range(len(session.sent_seqs))) and len(session.sent_seqs) >= 3
    assert session.received_seqs == list(range(len(session.received_seqs)))
    assert len(session.received_seqs) >= 2
    assert device.drain() == []


def test_second_session_uses_device_secret_key(system, devices):
    device, first = pair(system, "alice")
    devices.append(device)
    secret = first.device_secret_key
    # First session works, and its confirm proved the derived key.
    assert whoami(device, first, 1)["user"] == "alice"

    second = device.handshake(secret, 1)
    assert second.key_kind == 1 and second.sid != first.sid
    device.confirm(second)
    assert whoami(device, second, 1)["user"] == "alice"
    assert second.received_seqs[0] == 0

    # After the proof, a HELLO under the setup secret is dropped silently:
    # neither WELCOME nor REJECT. Shown by ordering: a later request on the
    # other session, which needs a backend round trip, is answered while the
    # HELLO still has no answer.
    hello, _, _ = device.make_hello(device.pairing.secret, 0)
    device.publish(hello)
    assert whoami(device, second, 2)["user"] == "alice"
    # and a further fresh key_kind 1 handshake + round trip, for good measure
    third = device.handshake(secret, 1)
    device.confirm(third)
    assert whoami(device, third, 1)["user"] == "alice"
    leftovers = device.drain()
    assert [e.hex() for e in leftovers] == [], "connector answered a HELLO under the setup secret after proof"


def download_with_probes(device: Device, session: Session, rid: int, path: str):
    """GET ``path`` as request ``rid``, consuming its body lazily; returns (status, body, stats).

    The device acks nothing until 768 KiB are unacked. It then sends a probe
    request (``GET /api/whoami``, another id on the same session) and only once
    the probe's answer is back does it ack, one ``ack`` per body message
    consumed. The probe needs a full trip through the connector and the
    backend, which gives a connector that ignored the window every chance to
    overshoot before the acks go out, without any sleep. A conforming
    connector never deadlocks here: its messages hold at most 256 KiB, so
    when it stops for the window it has more than 768 KiB out.
    """
    device.send(session, {"t": "req", "id": rid, "method": "GET", "path": path, "headers": [], "end": True})
    status, parts, pending = None, [], []
    unacked = 0
    probe_id, probe_done, next_probe = None, False, 1000
    stats = {"max_message": 0, "max_unacked": 0, "messages": 0, "probes": 0}
    ended = False
    while not ended or (probe_id is not None and not probe_done):
        header, part = device.receive(session)
        assert len(part) <= MAX_BODY_PER_MESSAGE, len(part)
        if header["id"] == probe_id:
            assert header["t"] in ("res", "body"), header
            assert header["t"] == "body" or header["status"] == 200, header
            probe_done = header["end"]
        else:
            assert header["id"] == rid, header
            assert header["t"] == ("res" if status is None else "body"), header
            if status is None:
                status = header["status"]
            parts.append(part)
            unacked += len(part)
            ended = header["end"]
            if part and not ended:
                pending.append(len(part))
            stats["messages"] += 1
            stats["max_message"] = max(stats["max_message"], len(part))
            stats["max_unacked"] = max(stats["max_unacked"], unacked)
            # bytes sent and not acked, seen from here: never more than the connector's own count
            assert unacked <= WINDOW, f"{unacked} body bytes unacked (> 1 MiB): {stats}"
        if probe_id is None and unacked >= 768 * 1024 and not ended:
            probe_id, probe_done, next_probe = next_probe, False, next_probe + 1
            stats["probes"] += 1
            device.send(session, {"t": "req", "id": probe_id, "method": "GET", "path": "/api/whoami",
                                  "headers": [], "end": True})
        if probe_id is not None and probe_done:
            probe_id = None
            while pending:
                n = pending.pop(0)
                unacked -= n
                device.send(session, {"t": "ack", "id": rid, "bytes": n})
    return status, b"".join(parts), stats


def test_streamed_download_flow_control(system, devices):
    device, session = pair(system, "alice")
    devices.append(device)
    size = 4 * MiB
    status, body, stats = download_with_probes(device, session, 7, f"/download?size={size}")
    assert status == 200
    assert stats["max_message"] <= MAX_BODY_PER_MESSAGE, stats
    assert stats["max_unacked"] <= WINDOW, stats
    assert stats["probes"] >= 3, stats  # the window was actually exercised
    assert len(body) == size
    with urllib.request.urlopen(f"{system.app.url}/download?size={size}", timeout=TIMEOUT) as resp:
        direct = resp.read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(direct).hexdigest()
    assert session.received_seqs == list(range(len(session.received_seqs)))
    assert session.sent_seqs == list(range(len(session.sent_seqs)))
    # still usable afterwards
    assert whoami(device, session, 8)["user"] == "alice"


def test_seq_gap_forgets_session(system, devices):
    device, broken = pair(system, "alice")
    devices.append(device)
    assert whoami(device, broken, 1)["user"] == "alice"  # up seqs 0 (confirm), 1 (req), maybe acks
    gap = broken.up_seq + 1
    # Skip one seq. The connector forgets the session: that DATA and later ones get RESET.
    device.send(broken, {"t": "req", "id": 2, "method": "GET", "path": "/api/whoami", "headers": [],
                         "end": True}, seq=gap)
    device.send(broken, {"t": "req", "id": 3, "method": "GET", "path": "/api/whoami", "headers": [],
                         "end": True}, seq=gap + 1)
    reset = bytes([1, RESET]) + broken.sid
    first = device.next_envelope(lambda e: e[:2] == bytes([1, RESET]))
    assert first == reset and len(first) == 10
    # Ordering witness: a fresh session (the connector keeps one per device;
    # PROTOCOL.md does not say so) and a backend round trip on it.
    fresh = device.handshake(broken.device_secret_key, 1)
    device.confirm(fresh)
    assert whoami(device, fresh, 1)["user"] == "alice"
    rest = device.drain()
    resets = [e for e in rest if e == reset]
    others = [e.hex() for e in rest if e != reset]
    assert others == [], f"unexpected envelopes: {others}"
    # the gap DATA and the one after it: two RESETs in all, and no answer to either request
    assert 1 + len(resets) == 2, f"got {1 + len(resets)} RESETs for 2 DATA after the gap"


def test_reject_wrong_setup_secret(system, devices):
    pairing = Pairing(system.add_device("bob"))
    device_id, password = pairing.setup()
    device = Device(pairing, device_id, password)
    devices.append(device)
    wrong = os.urandom(32)
    assert wrong != pairing.secret
    hello, _, _ = device.make_hello(wrong, 0)
    device.publish(hello)
    reject = device.next_envelope(lambda e: True)
    assert reject == bytes([1, REJECT]), reject.hex()
    # key_kind 1 under a key the connector does not have: REJECT as well.
    hello, _, _ = device.make_hello(os.urandom(32), 1)
    device.publish(hello)
    reject = device.next_envelope(lambda e: True)
    assert reject == bytes([1, REJECT]), reject.hex()
    # An unauthenticated REJECT-provoking HELLO does not unpair: the right secret still works.
    session = device.handshake(pairing.secret, 0)
    device.confirm(session)
    assert whoami(device, session, 1)["user"] == "bob"


def test_identity_header_cannot_be_spoofed(system, devices):
    device, session = pair(system, "alice")
    devices.append(device)
    kind, status, headers, body = device.request(
        session, 1, "GET", "/echo-headers",
        headers=[["X-Forwarded-User", "mallory"], ["x-forwarded_user", "eve"], ["X-Test", "kept"]])
    assert kind == "res" and status == 200
    seen = json.loads(body)["headers"]

    def norm(name):
        return name.lower().replace("_", "-")

    identity = [v for k, v in seen if norm(k) == "x-forwarded-user"]
    assert identity == ["alice"], seen
    assert ["kept"] == [v for k, v in seen if norm(k) == "x-test"], seen


@pytest.mark.parametrize("path", ["//evil.example/x", "/a/../b", "/%2e%2e/x"])
def test_path_refused(system, devices, path):
    device, session = pair(system, "alice")
    devices.append(device)
    answer = device.request(session, 5, "GET", path)
    assert answer[0] == "err", answer
    header = answer[1]
    assert header["t"] == "err" and header["id"] == 5 and header["code"] == "forbidden", header
    assert isinstance(header.get("message"), str)
    # the session survives a refusal
    assert whoami(device, session, 6)["user"] == "alice"
