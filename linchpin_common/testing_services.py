"""Private PostgreSQL and Redis instances on 127.0.0.1, for tests and
benchmarks only (the test fixtures in tests/services.py and bench.scaleout
both start them from here; nothing in the gateway or the connector uses
this module).

Each one runs from a fresh temporary folder on a free loopback port and is
stopped (and its folder removed) by :meth:`destroy`.  As root, PostgreSQL
runs as ``nobody`` (it refuses to run as root), from a folder ``nobody`` can
reach.  Nothing here waits by sleeping: ``pg_ctl -w`` waits for the server,
Redis is waited for through its own output.  Secrets (the passwords) go into
files of mode 0600, never into a command line.

:class:`Paho` is the paho-mqtt client both use to play a device or a
connector (paho-mqtt comes with the test extras); :func:`free_port` serves
both as well.
"""

from __future__ import annotations

import glob
import os
import queue
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading

from .contract import topics
from .procs import Child, ChildError

TIMEOUT = 30


def free_port() -> int:
    """A loopback port that was free a moment ago (for servers that cannot
    take port 0 and report the one they got)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    matches = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not matches:
        raise ChildError(f"PostgreSQL's {name} is not installed")
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
            raise ChildError(f"{argv[0]} failed: {done.stdout}{done.stderr}")
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
        except ChildError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class Redis(Child):
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
        shutil.rmtree(self.dir, ignore_errors=True)


class Paho:
    """A paho-mqtt client over WebSocket with every callback turned into a queue."""

    def __init__(self, port, username, password, keepalive=60, client_id="paho"):
        """``client_id``: a connector's name (PROTOCOL.md section 4); devices may use any."""
        import paho.mqtt.client as mqtt  # the test extras

        # One connection per object: paho would otherwise log in again after
        # every close (a takeover, a revocation, a refused CONNACK, a stopped
        # gateway), from a thread that outlives the test.
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, transport="websockets",
                                  protocol=mqtt.MQTTv311, client_id=client_id, reconnect_on_failure=False)
        self.client.ws_set_options(path="/mqtt")
        self.client.username_pw_set(username, password)
        self.connack: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.pubacks: queue.Queue = queue.Queue()
        self.disconnected = threading.Event()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connack.put(str(rc))
        self.client.on_message = lambda c, u, msg: self.messages.put((msg.topic, msg.payload, msg.qos, msg.retain))
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put([
            (topics.SUBACK_FAILURE if rc.is_failure else rc.value) for rc in rcs])
        self.client.on_publish = lambda c, u, mid, rc, props: self.pubacks.put(mid)
        self.client.on_disconnect = lambda *a: self.disconnected.set()
        self.client.connect("127.0.0.1", port, keepalive=keepalive)
        self.client.loop_start()
        self.result = self.connack.get(timeout=TIMEOUT)

    def subscribe(self, *topics, qos=1):
        self.client.subscribe([(t, qos) for t in topics])
        return self.subacks.get(timeout=TIMEOUT)

    def publish(self, topic, payload, qos=1):
        info = self.client.publish(topic, payload, qos=qos)
        if qos:
            assert self.pubacks.get(timeout=TIMEOUT) == info.mid
        return info

    def next_message(self, timeout=TIMEOUT):
        return self.messages.get(timeout=timeout)

    def next_matching(self, topic, timeout=TIMEOUT):
        while True:
            msg = self.messages.get(timeout=timeout)
            if msg[0] == topic:
                return msg

    def wait_closed(self):
        assert self.disconnected.wait(TIMEOUT), "gateway did not close the session"

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
