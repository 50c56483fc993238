"""Two connectors of one instance, real processes: ``twistd lmgateway`` (one
node, or two on Redis behind HAProxy), the sample app, two ``twistd
lmconnector`` sharing their state in a private PostgreSQL, and a fleet of
devices (``python -m bench.fleet``: the device library under steady load).

The targets of docs/benchmarks.md ("Several connectors") with loose bounds:
these machines are shared, so a bound here is several times the target and
``python -m bench.failover`` measures the real figures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from linchpin_common.contract import e2e
from tests.secrets_scan import find_secrets
from tests.services import GatewayNode, HAProxy, postgresql  # noqa: F401  (fixture)
from tests.support import BIN, TIMEOUT, Gateway, Process, SampleApp, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEEP_ALIVE = 2  # the connectors' MQTT keep-alive: a frozen one is cut after 1.5 x this


class Fleet(Process):
    """``python -m bench.fleet``: its JSON lines as events."""

    def __init__(self, states, uris, *extra):
        super().__init__([sys.executable, "-m", "bench.fleet", "--states", str(states), "--uris", str(uris),
                          "--pause", "0.02", "--post-every", "4", "--post-bytes", str(256 * 1024),
                          "--download-every", "7", "--download-bytes", str(1024 * 1024), *extra],
                         cwd=ROOT, stdin=subprocess.PIPE)
        self.ids = json.loads(self.wait_for(r'"ev": "ready"', timeout=60).string)["ids"]

    def events(self, kind=None) -> list[dict]:
        out = []
        for line in list(self.output):
            if line.startswith("{"):
                event = json.loads(line)
                if kind is None or event["ev"] == kind:
                    out.append(event)
        return out

    def ok_count(self) -> int:
        return sum(1 for e in self.events("req") if e["ok"])

    def wait_requests(self, n: int) -> None:
        """Until ``n`` more requests have succeeded."""
        target = self.ok_count() + n
        deadline = time.monotonic() + TIMEOUT
        while self.ok_count() < target:
            self.wait_for(r'"ev": "req"', timeout=max(0.1, deadline - time.monotonic()))

    def stop(self) -> list[dict]:
        self.proc.stdin.write(b"stop\n")
        self.proc.stdin.flush()
        self.wait_for(r'"ev": "done"', timeout=60)
        return self.events("req")


class Rig:
    """An instance served by connectors sharing a PostgreSQL state."""

    def __init__(self, tmp_path, pg, gateway_url):
        self.tmp_path = tmp_path
        db = pg.create_database()
        self.url = pg.url(db)
        self.store = f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{db}"  # the password: PGPASSWORD, not argv
        self.env = dict(os.environ, PGPASSWORD=pg.password)
        self.app = SampleApp()
        self.gateway_url = gateway_url
        cli("lmconnector", "--store", self.store, "register", "--gateway", gateway_url, env=self.env)
        self.connectors: dict[str, Process] = {}

    def start(self, name: str) -> Process:
        proc = Process([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "lmconnector", "--store", self.store,
                        "--data-dir", self.tmp_path / name, "--name", name, "--backend", self.app.url,
                        "--keep-alive", str(KEEP_ALIVE), "--drain-timeout", "20"], env=self.env)
        proc.wait_for(r"connected to the gateway")
        self.connectors[name] = proc
        return proc

    def fleet(self, n: int) -> Fleet:
        uris = [cli("lmconnector", "--store", self.store, "device", "add", f"user{i}",
                    env=self.env).stdout.decode().strip() for i in range(n)]
        path = self.tmp_path / "uris.txt"
        path.write_text("\n".join(uris) + "\n")
        (self.tmp_path / "fleet").mkdir(exist_ok=True)
        return Fleet(self.tmp_path / "fleet", path)

    def sessions(self, name: str) -> set[str]:
        """The devices that made an E2E session with connector ``name`` so far."""
        import re

        return set(re.findall(r"E2E session with device ([0-9a-f]{32}) established", self.connectors[name].text()))

    def keys(self) -> list[str]:
        """Every secret of the connectors' state, as text the scan knows."""
        with psycopg.connect(self.url) as conn:
            rows = conn.execute("SELECT value FROM lmconnector.config WHERE key = 'static_private_key'").fetchall()
            secrets = [e2e.b64u_encode(bytes.fromhex(rows[0][0]))]
            for setup, device in conn.execute("SELECT setup_secret, device_secret FROM lmconnector.devices"):
                secrets += [e2e.b64u_encode(bytes(k)) for k in (setup, device) if k is not None]
        return secrets


def sigterm_and_wait(proc: Process) -> int:
    proc.proc.send_signal(signal.SIGTERM)
    return proc.proc.wait(timeout=60)


def failures(requests: list[dict]) -> list[dict]:
    return [r for r in requests if not r["ok"]]


@pytest.fixture
def one_node(tmp_path, postgresql):  # noqa: F811
    gateway = Gateway(tmp_path / "gw")
    rig = Rig(tmp_path, postgresql, gateway.url)
    rig.gateway_data = tmp_path / "gw"
    return rig


@pytest.fixture
def two_nodes(tmp_path, postgresql):  # noqa: F811
    from tests.services import Redis

    redis = Redis()
    store = postgresql.url(postgresql.create_database())
    nodes = [GatewayNode(tmp_path / f"gw{i}", store, redis.url(), listen="haproxy:tcp:0:interface=127.0.0.1")
             for i in range(2)]  # HAProxy speaks the PROXY protocol to them
    haproxy = HAProxy([node.port for node in nodes])
    rig = Rig(tmp_path, postgresql, f"http://127.0.0.1:{haproxy.port}")
    rig.gateway_data = tmp_path
    yield rig
    haproxy.destroy()
    redis.destroy()


def rolling_restart(rig):
    for name in ("c1", "c2"):
        rig.start(name)
    fleet = rig.fleet(6)
    fleet.wait_requests(30)
    for name in ("c1", "c2"):
        assert sigterm_and_wait(rig.connectors[name]) == 0
        assert "drained" in rig.connectors[name].text()
        fleet.wait_requests(20)  # served by the other alone
        rig.start(name)
        fleet.wait_requests(20)
    requests = fleet.stop()
    assert failures(requests) == [], (json.dumps(failures(requests)[:5] + fleet.events("status"))
                                      + "".join(f"\n--- {n}:\n{p.tail(60)}" for n, p in rig.connectors.items()))
    assert {r["m"] for r in requests} == {"GET", "POST"} and len(requests) >= 110
    return fleet


def test_a_rolling_restart_under_load_fails_no_request(one_node):
    rolling_restart(one_node)


def test_a_rolling_restart_through_two_gateway_nodes_fails_no_request(two_nodes):
    rolling_restart(two_nodes)


def killed_hard(rig, how):
    """Kill (or freeze) a connector under load; the devices it served move to the other.
    Returns (fleet, the kill's time, the devices moved)."""
    for name in ("c1", "c2"):
        rig.start(name)
    fleet = rig.fleet(6)
    fleet.wait_requests(30)
    victim = "c1" if rig.sessions("c1") else "c2"  # device ids are random: one may have them all
    victims = {fleet.ids.index(d) for d in rig.sessions(victim)}
    rig.victim = victim
    start = time.monotonic()
    how(rig.connectors[victim])
    moved = {}
    deadline = start + TIMEOUT
    while set(moved) != victims and time.monotonic() < deadline:
        fleet.wait_for(r'"s": "moved"', timeout=max(0.1, deadline - time.monotonic()))
        moved = {e["dev"]: e["t"] for e in fleet.events("status") if e["s"] == "moved"}
    assert set(moved) == victims
    fleet.wait_requests(30)
    return fleet, start, moved


def assert_moved_then_served(fleet, start, moved, within):
    requests = fleet.stop()
    for dev, t in moved.items():
        assert t - start < within, (dev, t - start)
        after = [r for r in requests if r["dev"] == dev and r["t"] > t and r["ok"]]
        assert after and after[0]["t"] - t < 5, (dev, after[:1])
    # What may fail is what was in flight and may have run: a POST, or a
    # download whose response had begun (it streams for a while); a short GET
    # without its answer is sent once more, so it never fails.
    for r in failures(requests):
        assert r["err"].startswith("SessionLost") and (r["m"] == "POST" or r["p"] == "/download"), r


def test_kill_9_of_a_connector_moves_its_devices_at_once(one_node):
    fleet, start, moved = killed_hard(one_node, lambda proc: proc.proc.kill())
    assert_moved_then_served(fleet, start, moved, within=5)  # target 2 s


def test_kill_9_through_two_gateway_nodes_moves_the_devices_too(two_nodes):
    fleet, start, moved = killed_hard(two_nodes, lambda proc: proc.proc.kill())
    assert_moved_then_served(fleet, start, moved, within=5)


def frozen(rig):
    fleet, start, moved = killed_hard(rig, lambda proc: proc.proc.send_signal(signal.SIGSTOP))
    assert_moved_then_served(fleet, start, moved, within=1.5 * KEEP_ALIVE + 4)
    stopped = rig.connectors[rig.victim]
    stopped.proc.send_signal(signal.SIGCONT)
    stopped.wait_for(r"connected to the gateway")  # it finds its session gone and comes back


def test_a_frozen_connector_is_cut_after_its_keep_alive_and_its_devices_move(one_node):
    frozen(one_node)


def test_a_frozen_connector_behind_two_gateway_nodes_too(two_nodes):
    frozen(two_nodes)


def joining(rig):
    rig.start("c1")
    fleet = rig.fleet(6)
    fleet.wait_requests(20)
    rig.start("c2")
    fleet.wait_requests(40)
    requests = fleet.stop()
    assert failures(requests) == [] and fleet.events("status") == [
        e for e in fleet.events("status") if e["s"] == "online"]  # nobody moved
    assert rig.sessions("c2") == set()  # the healthy c1 kept every device


def test_a_connector_joining_takes_only_new_devices(one_node):
    joining(one_node)


def test_a_connector_joining_through_two_gateway_nodes_too(two_nodes):
    joining(two_nodes)


def test_the_gateway_keeps_nothing_of_the_connectors_keys(one_node):
    rolling_restart(one_node)
    secrets = one_node.keys()
    assert len(secrets) >= 7  # the static key and each device's proven key
    assert find_secrets(one_node.gateway_data, secrets) == []
