"""Issue 10 item 5: one tenant cannot starve the others.

Per instance: REST calls a minute, devices (pending and total) and live
device sessions; and the store's work queue is bounded.  Before, an
instance's authenticated calls were never limited, it could create pending
devices without end (each an fsync'd write on the single store thread,
whose queue was unbounded) and fill the global session cap.
"""

from twisted.internet import defer

from linchpin_common.contract import wire
from linchpin_common.workers import BoundedWorker, InlineWorker
from linchpin_gateway.store import StoreUnavailable
from tests.conftest import HeldWorker, basic
from tests.doubles import Client, result
from tests.test_edge import HEAD, connect, upgrade
from tests.support import connect_packet


def auth(inst):
    return basic(inst["instance_id"], inst["instance_password"])


def test_rest_calls_are_limited_per_instance(make_gateway):
    gw = make_gateway(instance_rest_limit=60)
    api = Client(gw)
    greedy, polite = api.register(), api.register()
    codes = [api.call("GET", "/api/v1/devices", headers=auth(greedy))[0].code for _ in range(100)]
    assert codes.count(200) == 60 and codes[-1] == 429
    resp, body = api.call("GET", "/api/v1/devices", headers=auth(greedy))
    assert body["error"] == "rate_limited" and int(resp.headers.getRawHeaders("retry-after")[0]) >= 1
    assert api.call("GET", "/api/v1/devices", headers=auth(polite))[0].code == 200  # others unaffected
    gw.reactor.advance(1)
    assert api.call("GET", "/api/v1/devices", headers=auth(greedy))[0].code == 200  # refills, 1 a second


def test_a_connector_that_calls_once_a_second_is_never_limited(make_gateway):
    gw = make_gateway()
    api = Client(gw)
    inst = api.register()
    for _ in range(600):
        assert api.call("GET", "/api/v1/devices", headers=auth(inst))[0].code == 200
        gw.reactor.advance(1)


def test_pending_devices_per_instance_are_capped(make_gateway):
    gw = make_gateway(max_pending_devices=3, max_devices=5, instance_rest_limit=0)
    api = Client(gw)
    inst = api.register()
    made = [api.add_device(inst) for _ in range(3)]
    resp, body = api.call("POST", "/api/v1/devices", {}, auth(inst))
    assert resp.code == 403 and body["error"] == "limit_reached" and "waiting to be paired" in body["message"]
    api.setup(made[0]["device_setup_key"])
    api.setup(made[1]["device_setup_key"])
    api.add_device(inst)
    api.add_device(inst)  # 2 paired + 3 pending = 5
    resp, body = api.call("POST", "/api/v1/devices", {}, auth(inst))
    assert resp.code == 403 and body["error"] == "limit_reached" and "5 devices" in body["message"]
    other = api.register()
    assert api.call("POST", "/api/v1/devices", {}, auth(other))[0].code == 201


def test_live_device_sessions_per_instance_are_capped(make_gateway):
    gw = make_gateway(max_instance_sessions=2, instance_rest_limit=0)
    api = Client(gw)
    inst = api.register()
    devices = []
    for _ in range(3):
        d = api.add_device(inst)
        devices.append(api.setup(d["device_setup_key"])[1])

    def login(username, password, host):
        channel, sock = connect(gw, host)
        upgrade(channel)
        ws = next(p for p in gw.ws_factory.live if p.mqtt is not None and p.mqtt.host == host)
        sent = []
        ws.send = lambda data, alone=False: sent.append(data)
        ws.mqtt.data_received(connect_packet(username, password))
        return ws, wire.Parser().feed(b"".join(sent))

    codes = [login(d["device_id"], d["device_password"], f"192.0.2.{i + 1}")[1] for i, d in enumerate(devices)]
    assert codes == [[wire.Connack(0)], [wire.Connack(0)], [wire.Connack(3)]]
    # the connector is never refused, and a takeover of a live device fits
    assert login(inst["instance_id"], inst["instance_password"], "192.0.2.50")[1] == [wire.Connack(0)]
    again = devices[0]
    assert login(again["device_id"], again["device_password"], "192.0.2.60")[1] == [wire.Connack(0)]


def test_the_store_queue_is_bounded():
    held = HeldWorker()
    worker = BoundedWorker(held, 3, lambda: StoreUnavailable("full"))
    ds = [worker.run(lambda: 1) for _ in range(3)]
    refused = worker.run(lambda: 1)
    failures = []
    refused.addErrback(failures.append)
    assert failures and failures[0].check(StoreUnavailable)
    held.release()
    assert [result(d) for d in ds] == [1, 1, 1] and worker.pending == 0
    worker.run(lambda: 2)  # room again
    assert len(held.jobs) == 1


def test_a_full_store_queue_is_a_503(make_gateway):
    gw = make_gateway(instance_rest_limit=0)
    api = Client(gw)
    inst = api.register()
    worker = gw.store._worker
    worker.max_pending = worker.pending  # full
    resp, body = api.call("POST", "/api/v1/devices/setup", {"device_setup_key": "x"})
    assert resp.code == 503 and body["error"] == "unavailable"
    worker.max_pending = 1024
    assert api.call("GET", "/api/v1/devices", headers=auth(inst))[0].code == 200
    assert isinstance(worker.worker, InlineWorker)


def test_the_new_limits_are_in_the_metrics(make_gateway):
    from linchpin_gateway.metrics import GatewayCollector

    gw = make_gateway(connections_per_address=1)
    for _ in range(2):  # the second is over the address's cap: refused
        channel, _ = connect(gw)
        channel.dataReceived(HEAD)
    gw.logins.login("192.0.2.1", "a" * 32, "wrong")  # one password check
    gw.store._worker.worker = HeldWorker()
    gw.store.ping()  # waits in the store's queue
    values = {family.name: family.samples[0].value for family in GatewayCollector(gw).collect()
               if family.samples}
    assert values["lmgateway_password_checks"] == 1
    assert values["lmgateway_connections_refused"] == 1
    assert values["lmgateway_store_queue_depth"] == 1


def test_parallel_additions_cannot_race_past_the_cap(tmp_path):
    """The count and the write of one instance's additions are not
    interleaved: 16 parallel calls at 2 below the cap make exactly 2."""
    from twisted.internet.testing import MemoryReactorClock

    from linchpin_gateway.config import GatewayConfig
    from linchpin_gateway.service import Gateway
    from linchpin_gateway.store import SQLiteStore

    worker = HeldWorker()
    reactor = MemoryReactorClock()
    store = SQLiteStore(reactor, str(tmp_path / "gw"), worker=worker)
    gw = Gateway(reactor, store, GatewayConfig(max_pending_devices=3, instance_rest_limit=0),
                 hash_worker=InlineWorker())
    gw.startService()
    try:
        created = result_of(gw.accounts.register(None), worker)
        instance_id = created.instance_id
        result_of(gw.accounts.add_device(instance_id), worker)
        outcomes = []
        for _ in range(16):
            d = defer.ensureDeferred(gw.accounts.add_device(instance_id))
            d.addCallbacks(lambda _: outcomes.append("made"), lambda f: outcomes.append(type(f.value).__name__))
        worker.release()
        assert sorted(outcomes) == ["LimitReached"] * 14 + ["made"] * 2
    finally:
        store.stop()


def result_of(coroutine, worker):
    d = defer.ensureDeferred(coroutine)
    worker.release()
    return result(d)
