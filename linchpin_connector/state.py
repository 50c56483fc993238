"""The connector's durable state: one SQLite file in its data dir.

It holds secrets (instance password, static X25519 private key, E2E keys),
so the folder is 0700 and the file 0600.  :class:`ConnectorState` is plain
blocking SQLite, used as is by the short-lived CLI and through a worker
thread (:class:`AsyncState`) by the daemon, so the reactor never waits on
disk.  The CLI and the daemon share the file; WAL mode lets both work at once.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources

from linchpin_common.files import ensure_private_dir

SCHEMA_VERSION = 2  # v1.sql, then each upgrade-vN.sql in turn
DB_NAME = "lmconnector.sqlite"
DEFAULT_DATA_DIR = "./var/lmconnector"  # INTERFACE.md: the CLI's and the daemon's --data-dir
MAX_PENDING = 4


class NotRegistered(Exception):
    def __init__(self, data_dir):
        super().__init__(f"no connector registered in {data_dir}: run 'lmconnector register --gateway URL' first")


@dataclass(frozen=True)
class Device:
    device_id: str
    user: str
    setup_secret: bytes | None
    device_secret: bytes | None
    pending: tuple[tuple[int, bytes], ...] = ()
    answered: frozenset[bytes] = frozenset()  # SHA-256 of the HELLOs that made the pending keys

    @property
    def state(self) -> str:
        return "paired" if self.device_secret is not None else "pending"


class StateQueries:
    """Every read and write of the connector's state, in SQL both SQLite and
    PostgreSQL run (qmark placeholders).  A subclass provides ``_txn()``
    (one write transaction), ``_read()`` (a consistent read) and
    ``FOR_UPDATE`` (how a transaction locks the device row it changes, so
    that connectors sharing one database change a device one at a time)."""

    FOR_UPDATE = ""
    where = ""  # said in errors: which state this is

    def _txn(self):
        raise NotImplementedError

    def _read(self):
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- registration ------------------------------------------------------------

    def save_registration(self, gateway_url: str, instance_id: str, instance_password: str,
                          static_private_key: bytes) -> None:
        with self._txn() as c:
            c.execute("DELETE FROM pending_keys")
            c.execute("DELETE FROM devices")
            c.execute("DELETE FROM config")
            c.executemany("INSERT INTO config (key, value) VALUES (?, ?)", [
                ("gateway_url", gateway_url), ("instance_id", instance_id),
                ("instance_password", instance_password), ("static_private_key", static_private_key.hex()),
            ])

    def set_instance_password(self, password: str) -> None:
        with self._txn() as c:
            c.execute("UPDATE config SET value = ? WHERE key = 'instance_password'", (password,))

    def registration(self) -> dict:
        with self._read() as c:
            config = dict(c.execute("SELECT key, value FROM config").fetchall())
        if "instance_id" not in config:
            raise NotRegistered(self.where)
        config["static_private_key"] = bytes.fromhex(config["static_private_key"])
        return config

    # -- devices -----------------------------------------------------------------

    def add_device(self, device_id: str, user: str, setup_secret: bytes) -> None:
        with self._txn() as c:
            c.execute('INSERT INTO devices (device_id, "user", created_at, setup_secret) VALUES (?, ?, ?, ?)',
                      (device_id, user, int(time.time()), setup_secret))

    def device(self, device_id: str) -> Device | None:
        with self._read() as c:
            return self._device(c, device_id)

    @staticmethod
    def _device(c, device_id: str) -> Device | None:
        row = c.execute('SELECT device_id, "user", setup_secret, device_secret FROM devices WHERE device_id = ?',
                        (device_id,)).fetchone()
        if row is None:
            return None
        rows = c.execute("SELECT id, key, hello_digest FROM pending_keys WHERE device_id = ? ORDER BY id",
                         (device_id,)).fetchall()
        pending = tuple((r[0], bytes(r[1])) for r in rows)
        answered = frozenset(bytes(r[2]) for r in rows if r[2] is not None)
        return Device(row[0], row[1], _b(row[2]), _b(row[3]), pending, answered)

    def devices(self, user: str | None = None) -> list[Device]:
        """Every device, or only ``user``'s."""
        where, args = ("", ()) if user is None else (' WHERE "user" = ?', (user,))
        with self._read() as c:
            ids = [r[0] for r in c.execute(f"SELECT device_id FROM devices{where} ORDER BY created_at, device_id",
                                           args).fetchall()]
            return [d for d in (self._device(c, i) for i in ids) if d is not None]

    def remove_device(self, device_id: str) -> bool:
        with self._txn() as c:
            return c.execute("DELETE FROM devices WHERE device_id = ?", (device_id,)).rowcount == 1

    def add_pending_key(self, device_id: str, key: bytes, keep: int | None = None,
                        hello_digest: bytes | None = None) -> int | None:
        """Store a key derived under the setup secret; keep the newest MAX_PENDING.

        ``keep`` names a pending key that must survive the eviction (the key
        of a live, unconfirmed session): the oldest of the others goes instead.
        ``hello_digest`` is the SHA-256 of the HELLO it answers: a second key
        for the same HELLO (a replay) is refused.
        Returns the new key's id, or None if the device is gone or already
        proven, or that HELLO already has its key.  One transaction, the
        device's row locked: connectors sharing the state add and prove its
        keys one at a time.
        """
        with self._txn() as c:
            row = c.execute("SELECT setup_secret FROM devices WHERE device_id = ?" + self.FOR_UPDATE,
                            (device_id,)).fetchone()
            if row is None or row[0] is None:
                return None
            if hello_digest is not None and c.execute(
                    "SELECT 1 FROM pending_keys WHERE device_id = ? AND hello_digest = ?",
                    (device_id, hello_digest)).fetchone() is not None:
                return None
            (key_id,) = c.execute("INSERT INTO pending_keys (device_id, key, hello_digest) VALUES (?, ?, ?)"
                                  " RETURNING id", (device_id, key, hello_digest)).fetchone()
            kept = MAX_PENDING
            if keep is not None and c.execute("SELECT 1 FROM pending_keys WHERE id = ? AND device_id = ?",
                                               (keep, device_id)).fetchone() is not None:
                kept -= 1
            c.execute("DELETE FROM pending_keys WHERE device_id = ? AND id IS DISTINCT FROM ? AND id NOT IN"
                      " (SELECT id FROM pending_keys WHERE device_id = ? AND id IS DISTINCT FROM ?"
                      " ORDER BY id DESC LIMIT ?)", (device_id, keep, device_id, keep, kept))
            return key_id

    def promote_pending_key(self, device_id: str, key_id: int) -> bool:
        """A pending key was proven: it becomes the device secret; the setup
        secret and every other pending key are deleted (one transaction, the
        device's row locked, as :meth:`add_pending_key`)."""
        with self._txn() as c:
            if c.execute("SELECT 1 FROM devices WHERE device_id = ?" + self.FOR_UPDATE,
                         (device_id,)).fetchone() is None:
                return False
            row = c.execute("SELECT key FROM pending_keys WHERE id = ? AND device_id = ?",
                            (key_id, device_id)).fetchone()
            if row is None:
                return False
            c.execute("UPDATE devices SET device_secret = ?, setup_secret = NULL WHERE device_id = ?",
                      (row[0], device_id))
            c.execute("DELETE FROM pending_keys WHERE device_id = ?", (device_id,))
            return True


class ConnectorState(StateQueries):
    """The state in one SQLite file of the data dir (the default)."""

    def __init__(self, data_dir: str):
        self.data_dir = self.where = data_dir
        ensure_private_dir(data_dir)
        path = os.path.join(data_dir, DB_NAME)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(path, 0o600)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("PRAGMA busy_timeout = 10000")
        self._migrate()

    def _migrate(self) -> None:
        """Create the schema (v1) if the file is new, then apply each upgrade
        step the file has not had yet, each in its own transaction."""
        has_version = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'version'").fetchone()
        if has_version is None:
            with self._txn() as c:
                self._run_script(c, "v1.sql")
                c.execute("INSERT INTO version (version) VALUES (1)")
        (version,) = self.conn.execute("SELECT version FROM version").fetchone()
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{DB_NAME} has schema version {version}; this connector knows {SCHEMA_VERSION}")
        while version < SCHEMA_VERSION:
            version += 1
            with self._txn() as c:
                self._run_script(c, f"upgrade-v{version}.sql")
                c.execute("UPDATE version SET version = ?", (version,))

    @staticmethod
    def _run_script(c, name: str) -> None:
        script = resources.files("linchpin_connector").joinpath(f"db-schemas/{name}").read_text("utf-8")
        for statement in script.split(";"):
            if statement.strip():
                c.execute(statement)

    def _txn(self):
        return _Transaction(self.conn)

    def _read(self):
        return _Plain(self.conn)

    def close(self) -> None:
        self.conn.close()


def is_shared_store(store: str | None) -> bool:
    return bool(store) and store.startswith(("postgresql://", "postgres://"))


def open_state(data_dir: str, store: str | None = None) -> StateQueries:
    """The state: ``--store postgresql://...`` (shared by every connector of
    the instance), else the SQLite file in ``data_dir``."""
    if store and not is_shared_store(store):
        raise ValueError("--store must be a postgresql:// URL (the default is the SQLite file in --data-dir)")
    if is_shared_store(store):
        from .pgstate import PostgreSQLState  # psycopg only when asked for

        return PostgreSQLState(store)
    return ConnectorState(data_dir)


class _Plain:
    """Reads outside a transaction (WAL gives each statement a snapshot)."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        return False


class _Transaction:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def _b(value) -> bytes | None:
    return None if value is None else bytes(value)


class AsyncState:
    """The same state, each call run on a worker thread; returns Deferreds."""

    def __init__(self, state: StateQueries, worker):
        self.state = state
        self.worker = worker

    def __getattr__(self, name):
        method = getattr(self.state, name)

        def call(*args):
            return self.worker.run(method, *args)

        return call
