"""Accounts written straight into a gateway's SQLite store: a bench-only fixture.

Making 10,000 devices through the REST API costs two PBKDF2 runs each on
the gateway (``bench.accounts``): minutes of CPU before a capacity run even
starts. :func:`seed_gateway` writes the same rows the API would (an instance,
its devices ``active`` with a password hash) in one transaction instead.
Every device of one run shares one password, hashed once with a salt of its
own per run; the gateway still runs PBKDF2 for every login (its login cache
is keyed by principal), so logging in costs exactly what it costs in real
life. Never point this at a gateway that serves anyone: the shared password
is written in the accounts file it returns.
"""

from __future__ import annotations

import secrets
import time

from linchpin_gateway.hashing import hash_password
from linchpin_gateway.store import open_database


def _accounts(sizes: list[int]) -> tuple[dict, list, list]:
    """The accounts of :func:`seed_gateway` and the rows that hold them:
    (accounts, instance rows, device rows)."""
    instance_password = secrets.token_urlsafe(16)
    device_password = secrets.token_urlsafe(16)
    instance_hash = hash_password(instance_password)
    device_hash = hash_password(device_password)
    now = int(time.time())
    out: dict = {"instances": [], "devices": []}
    instances, devices = [], []
    for k, size in enumerate(sizes):
        instance_id = secrets.token_hex(16)
        instances.append((instance_id, instance_hash, now))
        out["instances"].append([instance_id, instance_password])
        for _ in range(size):
            device_id = secrets.token_hex(16)
            devices.append((device_id, instance_id, device_hash, now))
            out["devices"].append([device_id, device_password, k])
    return out, instances, devices


_INSERT_INSTANCE = "INSERT INTO instances (instance_id, password_hash, created_at) VALUES (?, ?, ?)"
_INSERT_DEVICE = ("INSERT INTO devices (device_id, instance_id, state, password_hash, created_at) "
                  "VALUES (?, ?, 'active', ?, ?)")


def seed_gateway(data_dir: str, sizes: list[int]) -> dict:
    """An instance for each of ``sizes``, with that many devices:
    ``{"instances": [[id, password]], "devices": [[device_id, password, instance_index]]}``."""
    out, instances, devices = _accounts(sizes)
    conn = open_database(data_dir)
    try:
        conn.execute("BEGIN")
        conn.executemany(_INSERT_INSTANCE, instances)
        conn.executemany(_INSERT_DEVICE, devices)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return out


def seed_gateway_postgres(url: str, sizes: list[int]) -> dict:
    """:func:`seed_gateway` for nodes sharing a PostgreSQL store (its schema
    made by a node that started on it)."""
    import psycopg

    out, instances, devices = _accounts(sizes)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(_INSERT_INSTANCE.replace("?", "%s"), instances)
        cur.executemany(_INSERT_DEVICE.replace("?", "%s"), devices)
    return out


def seed_connector(data_dir: str, gateway_url: str, instance: list, device_ids: list[str]) -> tuple[str, list[str]]:
    """A connector's data dir registered as ``instance`` (``[id, password]``
    of :func:`seed_gateway`), with ``device_ids`` already paired (each its
    own random device secret, as after its first handshake), users
    ``user-<n>``: ``(the connector's static public key, the device secrets)``
    in hex. Written straight into its SQLite state, in one transaction."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from linchpin_common.contract.e2e import public_raw
    from linchpin_connector.state import ConnectorState

    static = X25519PrivateKey.generate()
    state = ConnectorState(data_dir)
    try:
        state.save_registration(gateway_url, instance[0], instance[1], static.private_bytes_raw())
        secrets_hex = [secrets.token_hex(32) for _ in device_ids]
        now = int(time.time())
        with state._txn() as c:
            c.executemany('INSERT INTO devices (device_id, "user", created_at, device_secret) VALUES (?, ?, ?, ?)',
                          [(device_id, f"user-{k}", now, bytes.fromhex(secret))
                           for k, (device_id, secret) in enumerate(zip(device_ids, secrets_hex))])
    finally:
        state.close()
    return public_raw(static).hex(), secrets_hex
