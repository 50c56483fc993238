"""Audit events during a whole in-memory run: present, structured, and free of secrets."""

import json

from twisted.logger import capturedLogs, formatEvent

from linchpin_common.contract import wire
from tests.conftest import basic
from tests.doubles import Client, Peer


def test_audit_events_and_no_secret_in_any_log_event(make_gateway):
    with capturedLogs() as events:
        gw = make_gateway()
        api = Client(gw)
        inst = api.register()
        auth = basic(inst["instance_id"], inst["instance_password"])
        dev = api.add_device(inst)
        _, creds = api.setup(dev["device_setup_key"])
        payload = b"PAYLOAD-" + b"7" * 24
        conn = Peer(gw.router, gw.logins, gw.reactor, limits=gw.limits)
        conn.feed(wire.Connect(client_id="c", username=inst["instance_id"],
                               password=inst["instance_password"].encode(), keep_alive=60, clean_session=True),
                  wire.Subscribe(1, (("devices/+/up", 0),)))
        device = Peer(gw.router, gw.logins, gw.reactor, limits=gw.limits)
        device.feed(wire.Connect(client_id="d", username=dev["device_id"], password=creds["device_password"].encode(),
                                 keep_alive=60, clean_session=True),
                    wire.Publish(f"devices/{dev['device_id']}/up", payload))
        assert conn.take()[-1].payload == payload
        for _ in range(25):  # a burst of failed logins from one address
            bad = Peer(gw.router, gw.logins, gw.reactor, limits=gw.limits, host="203.0.113.9")
            bad.feed(wire.Connect(client_id="x", username=dev["device_id"], password=b"guess", keep_alive=60,
                                  clean_session=True))
        api.call("DELETE", f"/api/v1/devices/{dev['device_id']}", headers=auth)
        api.call("POST", "/api/v1/instance/password", {}, auth)
    audits = [e for e in events if "audit" in e]
    kinds = [e["audit"] for e in audits]
    for kind in ("instance_registered", "device_created", "device_paired", "device_revoked",
                 "instance_password_changed"):
        assert kinds.count(kind) == 1, kinds
    assert kinds.count("auth_failure_burst") == 1  # one event for the burst, not one per failure
    burst = next(e for e in audits if e["audit"] == "auth_failure_burst")
    assert burst["host"] == "203.0.113.9"
    assert next(e for e in audits if e["audit"] == "device_paired")["device_id"] == dev["device_id"]

    secrets = [inst["instance_password"], dev["device_setup_key"], creds["device_password"], "guess",
               payload.decode()]
    for event in events:
        text = formatEvent(event) + json.dumps({k: repr(v) for k, v in event.items()})
        for secret in secrets:
            assert secret not in text, (secret, event)


def test_default_login_limit_trips_within_50_a_minute_but_not_at_20(make_gateway):
    gw = make_gateway()
    inst = Client(gw).register()

    def attempt(host):
        p = Peer(gw.router, gw.logins, gw.reactor, limits=gw.limits, host=host)
        p.feed(wire.Connect(client_id="x", username=inst["instance_id"], password=b"wrong", keep_alive=60,
                            clean_session=True))
        return p.take()[0].return_code

    codes = []
    for _ in range(50):
        codes.append(attempt("198.51.100.1"))
        gw.reactor.advance(1.2)  # 50 in a minute
    assert 5 in codes and codes[:20] == [4] * 20
    for _ in range(60):  # 20 a minute from another address, for three minutes
        assert attempt("198.51.100.2") == 4
        gw.reactor.advance(3)
