"""Private PostgreSQL, Redis and HAProxy instances on 127.0.0.1 for tests.

PostgreSQL and Redis are started by :mod:`linchpin_common.testing_services`
(which bench.scaleout uses too); here are the fixtures over them, which stop
each one (and remove its folder) when they end, and the test-only launchers:
gateway nodes and HAProxy. Nothing here waits by sleeping: HAProxy and the
nodes are waited for through their own output.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from linchpin_common.testing_services import PostgreSQL, Redis, free_port  # noqa: F401  (tests import them from here)
from tests.support import Process


@pytest.fixture(scope="module")
def postgresql():
    pg = PostgreSQL()
    yield pg
    pg.destroy()


@pytest.fixture
def redis_server():
    server = Redis()
    yield server
    server.destroy()


class GatewayNode(Process):
    """``twistd lmgateway`` on a shared store and bus; URLs (with their
    passwords) go through the environment, never argv."""

    def __init__(self, data_dir, store_url: str, bus_url: str | None, *extra,
                 listen: str = "tcp:0:interface=127.0.0.1", metrics: bool = False):
        from tests.support import BIN

        env = dict(os.environ, LMGATEWAY_STORE=store_url)
        if bus_url:
            env["LMGATEWAY_BUS"] = bus_url
        if metrics:
            extra = (*extra, "--metrics", "tcp:0:interface=127.0.0.1")
        super().__init__([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "lmgateway", "--listen", listen,
                          "--data-dir", str(data_dir), *extra], env=env)
        self.port = int(self.wait_for(r"lmgateway listening on .* at 127\.0\.0\.1:(\d+)").group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        if metrics:
            port = self.wait_for(r"lmgateway listening on metrics .* at 127\.0\.0\.1:(\d+)").group(1)
            self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        if bus_url:
            self.wait_for(r"bus up")


class HAProxy(Process):
    """``haproxy`` with deploy/haproxy.cfg, its bind and servers pointed at
    loopback; ready once every server passed a health check."""

    def __init__(self, servers: list[int]):
        import re

        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="lm-haproxy-")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "deploy", "haproxy.cfg")) as f:
            text = f.read()
        text = re.sub(r"(?m)^(\s*)bind .*$", rf"\1bind 127.0.0.1:{self.port}", text)
        text = re.sub(r"(?m)^(\s*)maxconn .*$", r"\1maxconn 1000", text)  # within a test's file limit
        lines = "\n".join(f"    server node{i} 127.0.0.1:{port}" for i, port in enumerate(servers, 1))
        text = re.sub(r"(?m)^\s*server .*\n", "", text).rstrip() + "\n" + lines + "\n"
        cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(text)
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        super().__init__([haproxy, "-f", cfg, "-db"])
        for _ in servers:
            self.wait_for(r"Health check for server lmgateway_nodes/node\d+ succeeded")

    def destroy(self):
        self.kill()
        Process.running.discard(self)
        shutil.rmtree(self.dir, ignore_errors=True)
