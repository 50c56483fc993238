"""Test vectors of the contract, made by this package's own code from fixed
inputs: the bytes every device implementation must produce and accept
(PROTOCOL.md sections 4 and 5).

``python -m linchpin_common.contract.vectors`` prints them as JSON; the file
``tests/vectors/contract.json`` is that output, checked by the Python tests
(it must equal what this module makes now) and by the JavaScript device's
tests in Chromium (its modules must make and accept the same bytes).  Byte
strings are lowercase hex.
"""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import e2e, messages, wire

DEVICE_ID = "0123456789abcdef0123456789abcdef"
K_SETUP = bytes(range(0x00, 0x20))
K_DEVICE = bytes(range(0x20, 0x40))
E_D = bytes(range(0x40, 0x60))      # the device's ephemeral private key
E_C = bytes(range(0x60, 0x80))      # the connector's ephemeral private key
S_C = bytes(range(0x80, 0xA0))      # the connector's static private key
HELLO_NONCE = bytes(range(0xA0, 0xAC))
WELCOME_NONCE = bytes(range(0xB0, 0xBC))
SESSION_ID = bytes(range(0xC0, 0xC8))


def _key(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def _handshake(K: bytes, key_kind: int) -> dict:
    device = e2e.DeviceHandshake.start(DEVICE_ID, K, key_kind, e2e.public_raw(_key(S_C)),
                                       ephemeral_private=_key(E_D), nonce=HELLO_NONCE)
    accepted = e2e.accept_hello(device.hello, DEVICE_ID, [("k", key_kind, K)], _key(S_C),
                                ephemeral_private=_key(E_C), nonce=WELCOME_NONCE, session_id=SESSION_ID)
    result = device.finish(accepted.welcome)
    session = result.session
    up = [messages.confirm(), messages.req(0, "POST", "/app/form?x=1", [["Content-Type", "text/plain"]], True)]
    up_bodies = [b"", "é body\n".encode()]
    down = [messages.res(0, 200, [["Content-Type", "text/html; charset=utf-8"]], False), messages.body(0, True)]
    down_bodies = [b"<p>hello</p>", b""]
    data_up = [session.seal(e2e.encode_message(h, b)) for h, b in zip(up, up_bodies)]
    data_down = [accepted.session.seal(e2e.encode_message(h, b)) for h, b in zip(down, down_bodies)]
    return {
        "key_kind": key_kind, "K": K.hex(), "k_hs": e2e.handshake_key(K, DEVICE_ID).hex(),
        "hello": device.hello.hex(), "welcome": accepted.welcome.hex(),
        "k_up": session.send_key.hex(), "k_down": session.recv_key.hex(),
        "device_secret_key": result.device_secret_key.hex() if result.device_secret_key else None,
        "data_up": [{"header": h, "body": b.hex(), "envelope": env.hex()}
                    for h, b, env in zip(up, up_bodies, data_up)],
        "data_down": [{"header": h, "body": b.hex(), "envelope": env.hex()}
                      for h, b, env in zip(down, down_bodies, data_down)],
    }


def _messages() -> list[dict]:
    examples = [
        (messages.confirm(), b""),
        (messages.req(7, "GET", "/wiki/Caf%C3%A9?q=a+b", [["Accept", "text/html"], ["X-Tag", "ü"]], True), b""),
        (messages.req(8, "PUT", "/up", [], False), b"\x00\x01\xff"),
        (messages.res(7, 302, [["Location", "/next"], ["Set-Cookie", "a=1; Path=/"]], True), b""),
        (messages.body(8, False), b"part"),
        (messages.ack(8, 262144), b""),
        (messages.cancel(9), b""),
        (messages.err(9, messages.FORBIDDEN, "this path is not allowed"), b""),
    ]
    return [{"header": h, "body": b.hex(), "encoded": e2e.encode_message(h, b).hex()} for h, b in examples]


def _mqtt() -> list[dict]:
    packets = [
        ("connect", wire.Connect(client_id="", username=DEVICE_ID, password=b"pw-\xc3\xa9", keep_alive=30,
                                 clean_session=True)),
        ("subscribe", wire.Subscribe(1, ((f"devices/{DEVICE_ID}/down", 1), ("$gateway/status", 0)))),
        ("publish_qos0", wire.Publish(f"devices/{DEVICE_ID}/up", bytes(range(200)), qos=0)),
        ("publish_qos1", wire.Publish(f"devices/{DEVICE_ID}/up", b"\x01\x03", qos=1, packet_id=2)),
        ("puback", wire.Puback(2)),
        ("pingreq", wire.Pingreq()),
        ("disconnect", wire.Disconnect()),
        ("connack_accepted", wire.Connack(0)),
        ("connack_refused", wire.Connack(4)),
        ("suback", wire.Suback(1, (1, 0x80))),
        ("pingresp", wire.Pingresp()),
        ("publish_long", wire.Publish("$gateway/status", b"x" * 20000, qos=0)),
    ]
    return [{"name": name, "bytes": wire.encode(packet).hex()} for name, packet in packets]


def make() -> dict:
    return {
        "device_id": DEVICE_ID,
        "keys": {"e_d": E_D.hex(), "e_c": E_C.hex(), "s_c": S_C.hex(),
                 "e_d_public": e2e.public_raw(_key(E_D)).hex(), "e_c_public": e2e.public_raw(_key(E_C)).hex(),
                 "s_c_public": e2e.public_raw(_key(S_C)).hex()},
        "hello_nonce": HELLO_NONCE.hex(), "welcome_nonce": WELCOME_NONCE.hex(), "session_id": SESSION_ID.hex(),
        "handshakes": [_handshake(K_SETUP, e2e.KEY_SETUP), _handshake(K_DEVICE, e2e.KEY_DEVICE)],
        "reset": e2e.make_reset(SESSION_ID).hex(), "reject": e2e.make_reject().hex(),
        "messages": _messages(),
        "mqtt": _mqtt(),
    }


if __name__ == "__main__":
    print(json.dumps(make(), indent=1, ensure_ascii=False))
