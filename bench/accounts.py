"""Accounts on a gateway through its REST API (PROTOCOL.md section 2).

``POST /api/v1/instances`` gives an instance (the connector's principal);
each device is ``POST /api/v1/devices`` (Basic auth: one PBKDF2 check) then
``POST /api/v1/devices/setup`` (one PBKDF2 hash), so a device costs two
PBKDF2 runs on the gateway's hashing pool. :func:`pair_devices` runs them
from a few threads with keep-alive connections; a 503 (hashing queue full)
or 429 (rate limit) is retried after its Retry-After, within a deadline.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor


class ApiFailure(Exception):
    pass


class Client:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 60.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.retries = 0

    def call(self, method: str, path: str, body=None, auth=None, deadline: float | None = None):
        headers = {"Host": f"{self.host}:{self.port}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        while True:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if deadline is not None and time.monotonic() > deadline:
                    raise
                self.retries += 1
                time.sleep(0.2)
                continue
            if resp.status in (429, 503):
                wait = float(resp.getheader("Retry-After") or 1)
                if deadline is not None and time.monotonic() + wait > deadline:
                    raise ApiFailure(f"{method} {path}: {resp.status} past the deadline")
                self.retries += 1
                time.sleep(wait)
                continue
            return resp.status, (json.loads(raw) if raw else None)

    def close(self):
        if self.conn is not None:
            self.conn.close()


def register(port: int) -> tuple[str, str]:
    c = Client(port)
    try:
        status, body = c.call("POST", "/api/v1/instances", {})
    finally:
        c.close()
    if status != 201:
        raise ApiFailure(f"register: {status} {body}")
    return body["instance_id"], body["instance_password"]


def pair_devices(port: int, instance: tuple[str, str], n: int, workers: int = 6,
                 timeout: float = 600.0) -> tuple[list[tuple[str, str]], dict]:
    """n paired devices [(device_id, device_password)] and stats of the run."""
    deadline = time.monotonic() + timeout
    local = threading.local()
    clients: list[Client] = []
    lock = threading.Lock()

    def client() -> Client:
        c = getattr(local, "client", None)
        if c is None:
            c = local.client = Client(port)
            with lock:
                clients.append(c)
        return c

    def one(_):
        c = client()
        status, body = c.call("POST", "/api/v1/devices", {}, auth=instance, deadline=deadline)
        if status != 201:
            raise ApiFailure(f"add device: {status} {body}")
        status, body2 = c.call("POST", "/api/v1/devices/setup", {"device_setup_key": body["device_setup_key"]},
                               deadline=deadline)
        if status != 200:
            raise ApiFailure(f"setup: {status} {body2}")
        return body2["device_id"], body2["device_password"]

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        devices = list(pool.map(one, range(n)))
    elapsed = time.monotonic() - t0
    retries = sum(c.retries for c in clients)
    for c in clients:
        c.close()
    return devices, {"devices": n, "seconds": round(elapsed, 2), "retries": retries, "workers": workers}
