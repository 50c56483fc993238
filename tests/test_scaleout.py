"""Two and three real ``twistd lmgateway`` nodes on a private PostgreSQL and
Redis: what a client sees whichever node it lands on, and when a node, Redis
or PostgreSQL goes away.

Waits are on events (a message, a log line, a closed session) with generous
timeouts; the 15 s bound for offline detection is the requirement itself.
"""

import os
import threading

import pytest

from tests.services import GatewayNode, PostgreSQL, Redis, postgresql, redis_server  # noqa: F401
from tests.support import Paho, RestAccounts, rest, scrape

ALL_BYTES = bytes(range(256)) * 4


@pytest.fixture
def cluster(tmp_path, postgresql, redis_server):
    """``make(n)``: n nodes on one fresh database and the Redis server."""
    db = postgresql.create_database()

    def make(n=2, *extra, metrics=False):
        return [GatewayNode(tmp_path / f"n{len(made) + i}", postgresql.url(db), redis_server.url(), *extra,
                            metrics=metrics) for i in range(n)]

    made = []
    yield make


def online(device):
    return device.next_matching("$gateway/status")[1] == b'{"connector": "online"}'


def events(connector, n):
    return [connector.next_matching("$gateway/events")[1] for _ in range(n)]


def connect_pair(a, b, inst, dev):
    """Connector on node a, device on node b, both subscribed."""
    c = Paho(a.port, *inst)
    assert c.result == "Success"
    assert c.subscribe("devices/+/up", "$gateway/events") == [1, 1]
    d = Paho(b.port, *dev)
    assert d.result == "Success"
    assert d.subscribe(f"devices/{dev[0]}/down", "$gateway/status") == [1, 1]
    return c, d


def redis_cli(server, *args) -> str:
    """One command to the test's Redis (the password through the environment)."""
    import subprocess

    out = subprocess.run(["redis-cli", "--no-auth-warning", "-p", str(server.port), *args], capture_output=True,
                         text=True, check=True, timeout=30, env={**os.environ, "REDISCLI_AUTH": server.password})
    return out.stdout.strip()


def test_the_shared_rest_budget_is_one_bucket_in_redis(redis_server):
    """The script every node runs for an address's REST budget (bus._TAKE):
    5 tokens, then none, whatever node asks; another address has its own."""
    from linchpin_gateway.bus import _TAKE

    def take(key):
        return redis_cli(redis_server, "EVAL", _TAKE.decode(), "1", key, "5", "0.01")

    assert [take("lm:rl:rest:192.0.2.1") for _ in range(7)] == ["1"] * 5 + ["0"] * 2
    assert take("lm:rl:rest:192.0.2.2") == "1"
    assert 0 < int(redis_cli(redis_server, "PTTL", "lm:rl:rest:192.0.2.1")) <= 501_000


def test_register_on_one_node_pair_on_another_relay_presence_takeover_revocation(cluster, redis_server):
    a, b, c3 = cluster(3, metrics=True)
    inst = RestAccounts(a.url).register()
    dev = RestAccounts(b.url).pair(inst)  # key made on a, redeemed on b
    conn, device = connect_pair(a, b, inst, dev)
    assert online(device)
    assert b'"device_connected"' in events(conn, 1)[0]
    # relay, byte-exact both ways
    device.publish(f"devices/{dev[0]}/up", ALL_BYTES)
    assert conn.next_matching(f"devices/{dev[0]}/up")[1] == ALL_BYTES
    conn.publish(f"devices/{dev[0]}/down", ALL_BYTES[::-1])
    assert device.next_matching(f"devices/{dev[0]}/down")[1] == ALL_BYTES[::-1]
    # per node: sessions held, cross-node messages, bus and store up
    ma, mb = scrape(a.metrics_url, "lmgateway_"), scrape(b.metrics_url, "lmgateway_")
    assert ma['lmgateway_sessions{role="connector"}'] == 1 and mb['lmgateway_sessions{role="device"}'] == 1
    assert ma["lmgateway_bus_messages_out_total"] >= 1 and ma["lmgateway_bus_messages_in_total"] >= 1
    assert mb["lmgateway_bus_messages_out_total"] >= 1 and mb["lmgateway_bus_messages_in_total"] >= 1
    assert ma["lmgateway_bus_up"] == mb["lmgateway_bus_up"] == ma["lmgateway_store_up"] == 1
    assert "lmgateway_bus_rtt_seconds" in ma
    # any node tells the device is connected
    status, body, _ = rest("GET", c3.url + "/api/v1/devices", auth=inst)
    assert body["devices"] == [{"device_id": dev[0], "state": "active", "connected": True}]
    # takeover across nodes: the newest session wins, the connector hears it in order
    newer = Paho(c3.port, *dev)
    assert newer.subscribe(f"devices/{dev[0]}/down", "$gateway/status") == [1, 1]
    device.wait_closed()
    assert [e.split(b'"')[3] for e in events(conn, 2)] == [b"device_disconnected", b"device_connected"]
    conn.publish(f"devices/{dev[0]}/down", b"to the newer one")
    assert newer.next_matching(f"devices/{dev[0]}/down")[1] == b"to the newer one"
    # epoch counters expire a day after their last use (before: never)
    assert 0 < int(redis_cli(redis_server, "PTTL", f"lm:epoch:{dev[0]}")) <= 24 * 3600 * 1000
    # revocation through a cuts the session on c3 (and the cached credentials everywhere)
    RestAccounts(a.url).revoke(inst, dev[0])
    newer.wait_closed()
    assert redis_cli(redis_server, "EXISTS", f"lm:epoch:{dev[0]}") == "0"  # gone with the device
    for node in (a, b, c3):
        assert Paho(node.port, *dev).result != "Success"
    # the connector's own takeover across nodes: its devices are not told it went offline
    dev2 = RestAccounts(b.url).pair(inst)
    d2 = Paho(c3.port, *dev2)
    assert d2.subscribe(f"devices/{dev2[0]}/down", "$gateway/status") == [1, 1]
    assert online(d2)
    conn_b = Paho(b.port, *inst)
    assert conn_b.subscribe("devices/+/up", "$gateway/events") == [1, 1]
    conn.wait_closed()
    d2.publish(f"devices/{dev2[0]}/up", b"to the newer connector")
    assert conn_b.next_matching(f"devices/{dev2[0]}/up")[1] == b"to the newer connector"
    # a message sent after a's takeover comes after anything a's takeover made c3 send
    conn_b.publish(f"devices/{dev2[0]}/down", b"after the takeover")
    seen = []
    while not seen or seen[-1][:2] != (f"devices/{dev2[0]}/down", b"after the takeover"):
        seen.append(d2.next_message())
    assert [p for t, p, _, _ in seen if t == "$gateway/status"] in ([], [b'{"connector": "online"}'])
    for client in (conn, device, newer, d2, conn_b):
        client.close()
    # a password rotated through one node stops working on every node at once,
    # also where it was cached
    other = RestAccounts(a.url).register()
    cached = Paho(b.port, *other)
    assert cached.result == "Success"
    cached.close()
    status, body, _ = rest("POST", c3.url + "/api/v1/instance/password", {}, auth=other)
    assert status == 200
    refused = Paho(b.port, *other)
    assert refused.result != "Success"
    fresh = Paho(b.port, other[0], body["instance_password"])
    assert fresh.result == "Success"
    for client in (refused, fresh):
        client.close()


def test_same_setup_key_on_two_nodes_at_once(cluster):
    a, b = cluster(2)
    inst = RestAccounts(a.url).register()
    keys = [RestAccounts(a.url).add_device(inst)["device_setup_key"] for _ in range(4)]
    outcomes = []
    go = threading.Barrier(2 * len(keys))

    def redeem(node, key):
        go.wait()
        outcomes.append((key, rest("POST", node.url + "/api/v1/devices/setup", {"device_setup_key": key})[0]))

    threads = [threading.Thread(target=redeem, args=(node, key)) for key in keys for node in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for key in keys:
        assert sorted(s for k, s in outcomes if k == key) == [200, 404]


def test_node_killed_connector_offline_within_15s_and_back_through_another(cluster):
    a, b = cluster(2)
    inst = RestAccounts(a.url).register()
    dev = RestAccounts(a.url).pair(inst)
    conn, device = connect_pair(a, b, inst, dev)
    assert online(device)
    a.kill()  # kill -9, the connector's session on it still live
    assert device.next_matching("$gateway/status", timeout=15)[1] == b'{"connector": "offline"}'
    # the connector reconnects through b and traffic flows again
    conn2 = Paho(b.port, *inst)
    assert conn2.subscribe("devices/+/up", "$gateway/events") == [1, 1]
    assert online(device)
    device.publish(f"devices/{dev[0]}/up", b"after failover")
    assert conn2.next_matching(f"devices/{dev[0]}/up")[1] == b"after failover"
    for client in (conn, device, conn2):
        client.close()


def test_devices_of_a_killed_node_are_disconnected_for_the_connector(cluster):
    a, b = cluster(2)
    inst = RestAccounts(a.url).register()
    dev = RestAccounts(a.url).pair(inst)
    conn, device = connect_pair(b, a, inst, dev)
    assert online(device)
    assert b'"device_connected"' in events(conn, 1)[0]
    a.kill()
    assert conn.next_matching("$gateway/events", timeout=15)[1] == (
        b'{"event": "device_disconnected", "device_id": "%s"}' % dev[0].encode())
    conn.close()


def test_redis_stopped_and_restarted(tmp_path, postgresql):
    redis = Redis()
    db = postgresql.create_database()
    a, b = (GatewayNode(tmp_path / n, postgresql.url(db), redis.url()) for n in "ab")
    inst = RestAccounts(a.url).register()
    local_dev, remote_dev = RestAccounts(a.url).pair(inst), RestAccounts(a.url).pair(inst)
    conn, local = connect_pair(a, a, inst, local_dev)
    remote = Paho(b.port, *remote_dev)
    assert remote.subscribe(f"devices/{remote_dev[0]}/down", "$gateway/status") == [1, 1]
    assert online(local) and online(remote)
    redis.destroy()
    a.wait_for("bus down")
    b.wait_for("bus down")
    status, body, _ = rest("GET", a.url + "/readyz")
    assert status == 503 and body == {"error": "unavailable", "message": "bus unreachable"}
    assert rest("GET", a.url + "/healthz")[0] == 200  # liveness only
    # same-node traffic is unaffected; a cross-node publish is PUBACKed and dropped
    local.publish(f"devices/{local_dev[0]}/up", b"same node")
    assert conn.next_matching(f"devices/{local_dev[0]}/up")[1] == b"same node"
    remote.publish(f"devices/{remote_dev[0]}/up", b"dropped")
    assert remote.next_matching("$gateway/status")[1] == b'{"connector": "offline"}'
    restarted = Redis(port=redis.port, password=redis.password)
    try:
        a.wait_for("bus up")
        b.wait_for("bus up")
        assert online(remote)
        assert rest("GET", a.url + "/readyz")[0] == 200
        remote.publish(f"devices/{remote_dev[0]}/up", b"cross-node again")
        assert conn.next_matching(f"devices/{remote_dev[0]}/up")[1] == b"cross-node again"
    finally:
        restarted.destroy()
        for client in (conn, local, remote):
            client.close()


def test_postgresql_stopped_and_restarted(tmp_path, redis_server):
    pg = PostgreSQL()
    try:
        db = pg.create_database()
        node = GatewayNode(tmp_path / "n", pg.url(db), redis_server.url())
        world = RestAccounts(node.url)
        inst = world.register()
        dev = world.pair(inst)
        never_connected = world.pair(inst)
        conn, device = connect_pair(node, node, inst, dev)
        pg.stop()
        # live sessions keep relaying
        device.publish(f"devices/{dev[0]}/up", b"store down")
        assert conn.next_matching(f"devices/{dev[0]}/up")[1] == b"store down"
        # new logins: CONNACK 3; REST: 503 with Retry-After; not ready
        assert Paho(node.port, *never_connected).result == "Server unavailable"
        status, body, headers = rest("GET", node.url + "/api/v1/devices", auth=inst)
        assert status == 503 and headers["Retry-After"] and body["error"] == "unavailable"
        status, body, _ = rest("GET", node.url + "/readyz")
        assert status == 503 and body["message"] == "store unreachable"
        pg.start()
        assert rest("GET", node.url + "/readyz")[0] == 200
        assert Paho(node.port, *never_connected).result == "Success"
        assert rest("GET", node.url + "/api/v1/devices", auth=inst)[0] == 200
        conn.close()
        device.close()
    finally:
        pg.destroy()


def _register_from(source: str, port: int) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    conn.request("POST", "/api/v1/instances", body=b"{}", headers={"Content-Type": "application/json"})
    status = conn.getresponse().status
    conn.close()
    return status


def _register_via(world):
    status, body, _ = rest("POST", world.url + "/api/v1/instances", {})  # from 127.0.0.1: its own budget
    assert status == 201, body
    return body["instance_id"], body["instance_password"]


def test_through_haproxy_the_rate_limiter_sees_the_clients_address(tmp_path, postgresql, redis_server):
    from tests.services import HAProxy

    db = postgresql.create_database()
    nodes = [GatewayNode(tmp_path / n, postgresql.url(db), redis_server.url(), "--rest-limit", "3",
                         listen="haproxy:tcp:0:interface=127.0.0.1") for n in "ab"]
    lb = HAProxy([n.port for n in nodes])
    try:
        # 127.0.0.2 spends its budget, shared by both nodes: then 429 whichever node answers
        assert [_register_from("127.0.0.2", lb.port) for _ in range(3)] == [201, 201, 201]
        assert {_register_from("127.0.0.2", lb.port) for _ in range(4)} == {429}
        # another client behind the same load balancer is not affected
        assert _register_from("127.0.0.3", lb.port) == 201
        tripped = [n for n in nodes if "rate_limit_tripped host=127.0.0.2" in n.text()]
        assert tripped, "no node saw the client's own address"
        # MQTT sessions through HAProxy, landing on either node
        world = RestAccounts(f"http://127.0.0.1:{lb.port}")
        inst = _register_via(world)
        dev = world.pair(inst)
        conn, device = connect_pair(lb, lb, inst, dev)
        device.publish(f"devices/{dev[0]}/up", ALL_BYTES)
        assert conn.next_matching(f"devices/{dev[0]}/up")[1] == ALL_BYTES
        conn.close()
        device.close()
    finally:
        lb.destroy()
