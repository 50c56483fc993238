"""Issue 10 item 7: every login costs the same PBKDF2 work, whichever id it names.

Timing is not measured with a clock (that would be flaky and slow): every
PBKDF2 run is recorded with its iteration count instead, which is what the
time of a check is made of. Before the fix, unknown, pending and revoked ids
were checked at 100,000 iterations while real ones used the configured
400,000, so they answered four times faster.
"""

import hashlib

import pytest

from linchpin_gateway import hashing
from tests.doubles import Client, result

ITERATIONS = 400_000


@pytest.fixture
def runs(monkeypatch):
    """The iteration count of every PBKDF2 run; each run is computed with 1
    iteration so the test stays fast (hashes and checks stay consistent)."""
    seen = []
    real = hashlib.pbkdf2_hmac

    def pbkdf2(name, password, salt, iterations, *rest):
        seen.append(iterations)
        return real(name, password, salt, 1, *rest)

    monkeypatch.setattr(hashing.hashlib, "pbkdf2_hmac", pbkdf2)
    return seen


def login_cost(gw, runs, username, password):
    del runs[:]
    principal = result(gw.authenticator.authenticate(username, password))
    return principal, list(runs)


def test_unknown_pending_revoked_and_real_ids_cost_the_same(make_gateway, runs):
    gw = make_gateway(pbkdf2_iterations=ITERATIONS)
    api = Client(gw)
    inst = api.register()
    pending = api.add_device(inst)
    active = api.add_device(inst)
    resp, paired = api.setup(active["device_setup_key"])
    revoked = api.add_device(inst)
    resp, gone = api.setup(revoked["device_setup_key"])
    resp, _ = api.call("DELETE", f"/api/v1/devices/{gone['device_id']}",
                       headers={"Authorization": _basic(inst)})
    assert resp.code == 204

    cases = {
        "instance, wrong password": (inst["instance_id"], "wrong"),
        "device, wrong password": (paired["device_id"], "wrong"),
        "unknown id": ("0" * 32, "wrong"),
        "not an id": ("nobody", "wrong"),
        "pending device": (pending["device_id"], "wrong"),
        "revoked device": (gone["device_id"], gone["device_password"]),
    }
    costs = {}
    for name, (username, password) in cases.items():
        principal, cost = login_cost(gw, runs, username, password)
        assert principal is None, name
        costs[name] = cost
    assert set(map(tuple, costs.values())) == {(ITERATIONS,)}, costs
    principal, cost = login_cost(gw, runs, paired["device_id"], paired["device_password"])
    assert principal is not None and cost == [ITERATIONS]


def test_the_dummy_hash_costs_nothing_to_make(runs, make_gateway):
    gw = make_gateway(pbkdf2_iterations=ITERATIONS)
    assert runs == []  # built without PBKDF2, so the first unknown id is not slower either
    assert gw.hasher._dummy.split("$")[1] == str(ITERATIONS)


def _basic(inst):
    import base64

    return "Basic " + base64.b64encode(f"{inst['instance_id']}:{inst['instance_password']}".encode()).decode()
