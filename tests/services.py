"""Private PostgreSQL, Redis and HAProxy instances on 127.0.0.1 for tests.

Each one runs from a fresh temporary folder on a free loopback port and is
stopped (and its folder removed) when its fixture ends.  As root, PostgreSQL
runs as ``nobody`` (it refuses to run as root), from a folder ``nobody`` can
reach.  Nothing here waits by sleeping: ``pg_ctl -w`` waits for the server,
Redis and HAProxy are waited for through their own output.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile

import pytest

from tests.support import Process

TIMEOUT = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    matches = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not matches:
        raise AssertionError(f"PostgreSQL's {name} is not installed (run tools/system-packages.sh)")
    return matches[-1]


class PostgreSQL:
    """One private cluster; ``url(db)`` gives a URL with the password in it."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="lm-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.user = "lmgateway"
        self.password = secrets.token_urlsafe(16)
        self._as_user = []
        if os.geteuid() == 0:
            import pwd

            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
            self._as_user = ["runuser", "-u", "nobody", "--"]
        os.chmod(self.root, 0o700)
        pwfile = os.path.join(self.root, "pw")
        with open(os.open(pwfile, os.O_CREAT | os.O_WRONLY, 0o600), "w") as f:
            f.write(self.password + "\n")
        if self._as_user:
            os.chown(pwfile, os.stat(self.root).st_uid, -1)
        self._run(_pg_bin("initdb"), "-D", self.data, "-U", self.user, "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
        os.unlink(pwfile)
        self.start()

    def _run(self, *argv):
        done = subprocess.run([*self._as_user, *argv], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise AssertionError(f"{argv[0]} failed: {done.stdout}{done.stderr}")
        return done

    def start(self):
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off -c max_connections=100 -c shared_buffers=16MB")
        self._run(_pg_bin("pg_ctl"), "-D", self.data, "-o", opts, "-l", os.path.join(self.root, "log"),
                  "-w", "-t", "60", "start")

    def stop(self):
        self._run(_pg_bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def destroy(self):
        try:
            self._run(_pg_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")
        except AssertionError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class Redis(Process):
    """``redis-server`` with a password, no persistence, on a free port."""

    def __init__(self, port: int | None = None, password: str | None = None):
        self.port = port or free_port()
        self.password = password or secrets.token_urlsafe(16)
        self.dir = tempfile.mkdtemp(prefix="lm-redis-")
        conf = os.path.join(self.dir, "redis.conf")
        with open(os.open(conf, os.O_CREAT | os.O_WRONLY, 0o600), "w") as f:
            f.write(f"bind 127.0.0.1\nport {self.port}\nrequirepass {self.password}\nsave \"\"\n"
                    f"appendonly no\ndir {self.dir}\nprotected-mode yes\n")
        super().__init__(["redis-server", conf])
        self.wait_for(r"Ready to accept connections")

    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def destroy(self):
        self.kill()
        Process.running.discard(self)
        shutil.rmtree(self.dir, ignore_errors=True)


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
