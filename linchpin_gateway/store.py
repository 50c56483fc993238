"""The gateway's durable store: ids and hashes, never a secret in clear.

:class:`IStore` is what the API and the authenticator use; every method
returns a Deferred and every write is committed before it fires, so an answer
sent after it survives a crash.  :class:`SQLiteStore` is the embedded
implementation: one database file in the data dir, all SQLite work on one
dedicated thread (never the reactor's).  :mod:`.pgstore` provides the same
interface on PostgreSQL, for several gateway nodes sharing one store.
"""

from __future__ import annotations

import os
import sqlite3
from importlib import resources

from twisted.internet import defer
from zope.interface import Interface, implementer

from linchpin_common.files import ensure_private_dir
from linchpin_common.workers import BoundedWorker, ThreadWorker

from .config import DEFAULTS

SCHEMA_VERSION = 1
DB_NAME = "lmgateway.sqlite"


class StoreError(Exception):
    pass


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (a network store that is down);
    callers answer "try again later" instead of failing hard."""


STORE_QUEUE = DEFAULTS.store_queue  # operations queued or running at most


def queue_full() -> StoreUnavailable:
    return StoreUnavailable("the store's work queue is full")


class IStore(Interface):
    def start():
        """Open the store (creating it if new)."""

    def stop():
        """Close the store; pending work finishes first."""

    def ping():
        """Deferred that fires once the store answers a trivial query."""

    def create_instance(instance_id, password_hash, now):
        """Deferred[None]."""

    def instance_hash(instance_id):
        """Deferred[str | None]: the instance's password hash."""

    def set_instance_password(instance_id, password_hash):
        """Deferred[bool]: False when there is no such instance."""

    def delete_instance(instance_id):
        """Deferred[list[str] | None]: ids of the devices deleted with it, None if unknown."""

    def create_device_capped(device_id, instance_id, setup_key_hash, expires_at, now, max_devices, max_pending):
        """Deferred[None | "devices" | "pending"]: the device is created unless
        the instance already has ``max_devices`` devices or ``max_pending``
        pending ones (None: no cap), checked and written in one transaction
        that no other node's can interleave with."""

    def create_device(device_id, instance_id, setup_key_hash, expires_at, now):
        """Deferred[None]: a pending device."""

    def find_setup_key(setup_key_hash, now):
        """Deferred[(device_id, instance_id) | None] for a usable (unused, unexpired) key."""

    def activate_device(device_id, setup_key_hash, password_hash, now):
        """Deferred[str | None]: instance_id when the key was still usable and
        is now spent (single use: at most one caller ever gets a result)."""

    def device_auth(device_id):
        """Deferred[(instance_id, state, password_hash) | None]."""

    def list_devices(instance_id):
        """Deferred[list[(device_id, state)]]."""

    def present(instance_ids, device_ids):
        """Deferred[(existing instance ids, active device ids)] among those given."""

    def delete_device(instance_id, device_id):
        """Deferred[bool]: False when the device is not this instance's."""

    def purge_expired(now):
        """Deferred[list[(instance_id, device_id)]]: expired pending devices removed."""


class Statements:
    """The IStore methods whose SQL is the same on every engine, written
    once (``?`` placeholders).  An engine provides ``_execute`` (one
    committed statement: Deferred[rows changed]), ``_one`` and ``_all``
    (Deferred[row | None] and Deferred[list[row]]); what differs between
    engines (locking, RETURNING, the purge) stays in the engine's class."""

    def ping(self):
        return self._one("SELECT 1")

    def create_instance(self, instance_id, password_hash, now):
        return self._execute(
            "INSERT INTO instances (instance_id, password_hash, created_at) VALUES (?, ?, ?)",
            (instance_id, password_hash, int(now)),
        )

    def instance_hash(self, instance_id):
        d = self._one("SELECT password_hash FROM instances WHERE instance_id = ?", (instance_id,))
        return d.addCallback(lambda row: row[0] if row else None)

    def set_instance_password(self, instance_id, password_hash):
        d = self._execute(
            "UPDATE instances SET password_hash = ? WHERE instance_id = ?", (password_hash, instance_id)
        )
        return d.addCallback(lambda n: n == 1)

    def create_device(self, device_id, instance_id, setup_key_hash, expires_at, now):
        d = self.create_device_capped(device_id, instance_id, setup_key_hash, expires_at, now, None, None)
        return d.addCallback(lambda _: None)

    @staticmethod
    def _add_capped(c, p, device_id, instance_id, setup_key_hash, expires_at, now, max_devices, max_pending):
        """The checks and the insert of :meth:`create_device_capped`, in the
        caller's transaction (which holds the instance); ``p`` is the
        engine's placeholder."""
        counts = dict(c.execute(f"SELECT state, count(*) FROM devices WHERE instance_id = {p} GROUP BY state",
                                (instance_id,)).fetchall())
        if max_devices is not None and sum(counts.values()) >= max_devices:
            return "devices"
        if max_pending is not None and counts.get("pending", 0) >= max_pending:
            return "pending"
        c.execute("INSERT INTO devices (device_id, instance_id, state, setup_key_hash, expires_at, created_at)"
                  f" VALUES ({p}, {p}, 'pending', {p}, {p}, {p})",
                  (device_id, instance_id, setup_key_hash, int(expires_at), int(now)))
        return None

    def find_setup_key(self, setup_key_hash, now):
        d = self._one(
            "SELECT device_id, instance_id FROM devices"
            " WHERE setup_key_hash = ? AND state = 'pending' AND expires_at > ?",
            (setup_key_hash, int(now)),
        )
        return d.addCallback(lambda row: tuple(row) if row else None)

    def device_auth(self, device_id):
        d = self._one(
            "SELECT instance_id, state, password_hash FROM devices WHERE device_id = ?", (device_id,)
        )
        return d.addCallback(lambda row: tuple(row) if row else None)

    def list_devices(self, instance_id):
        d = self._all(
            "SELECT device_id, state FROM devices WHERE instance_id = ? ORDER BY created_at, device_id",
            (instance_id,),
        )
        return d.addCallback(lambda rows: [tuple(r) for r in rows])

    def present(self, instance_ids, device_ids):
        """Deferred[(set of these instances that exist, set of these devices
        that are active)]: one read for a batch of live sessions."""
        instance_ids, device_ids = list(instance_ids), list(device_ids)
        parts, args = [], []
        if instance_ids:
            parts.append("SELECT 'i', instance_id FROM instances WHERE instance_id IN (%s)"
                         % ", ".join("?" * len(instance_ids)))
            args += instance_ids
        if device_ids:
            parts.append("SELECT 'd', device_id FROM devices WHERE state = 'active' AND device_id IN (%s)"
                         % ", ".join("?" * len(device_ids)))
            args += device_ids
        if not parts:
            return defer.succeed((set(), set()))
        d = self._all(" UNION ALL ".join(parts), tuple(args))
        return d.addCallback(lambda rows: ({r[1] for r in rows if r[0] == "i"}, {r[1] for r in rows if r[0] == "d"}))

    def delete_device(self, instance_id, device_id):
        d = self._execute("DELETE FROM devices WHERE device_id = ? AND instance_id = ?", (device_id, instance_id))
        return d.addCallback(lambda n: n == 1)


def _schema(version: int, engine: str = "") -> str:
    name = f"{engine}-v{version}.sql" if engine else f"v{version}.sql"
    return resources.files("linchpin_gateway").joinpath(f"db-schemas/{name}").read_text("utf-8")


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def open_database(data_dir: str) -> sqlite3.Connection:
    """Open (or atomically create) the database file, mode 0600, in a 0700 dir."""
    ensure_private_dir(data_dir)
    path = os.path.join(data_dir, DB_NAME)
    if not os.path.exists(path):
        tmp = path + ".new"
        if os.path.exists(tmp):
            os.unlink(tmp)
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(tmp)
        conn.executescript(_schema(SCHEMA_VERSION))
        conn.execute("INSERT INTO version (version) VALUES (?)", (SCHEMA_VERSION,))
        conn.commit()
        conn.close()
        os.rename(tmp, path)
    os.chmod(path, 0o600)
    conn = _connect(path)
    (version,) = conn.execute("SELECT version FROM version").fetchone()
    if version != SCHEMA_VERSION:
        conn.close()
        raise StoreError(f"database {DB_NAME} has schema version {version}, this gateway knows {SCHEMA_VERSION}")
    return conn


@implementer(IStore)
class SQLiteStore(Statements):
    """Embedded store: one SQLite file, one worker thread."""

    def __init__(self, reactor, data_dir: str, worker=None, max_queue: int = STORE_QUEUE):
        self.data_dir = data_dir
        # One thread: SQLite connections are not shared between threads and
        # one writer at a time is all SQLite allows anyway.  Its queue is
        # bounded: a flood of fsync'd writes gets "unavailable" at once.
        self._worker = BoundedWorker(worker or ThreadWorker(reactor, "lmgateway-sqlite", 1), max_queue, queue_full)
        self._conn: sqlite3.Connection | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        # Opening is done synchronously at start-up, before any listener
        # exists, so a broken data dir stops the service with a clear error.
        self._conn = open_database(self.data_dir)
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()  # joins the thread: every queued write has committed
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self, fn, *args):
        return self._worker.run(fn, *args)

    def _write(self, fn, *args):
        """Run ``fn(conn, *args)`` in one committed transaction on the worker."""

        def txn():
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return self._run(txn)

    def _execute(self, sql, args):
        """One committed statement; Deferred[int] of the rows it changed."""
        return self._write(lambda c: c.execute(sql, args).rowcount)

    def _one(self, sql, args=()):
        return self._run(lambda: self._conn.execute(sql, args).fetchone())

    def _all(self, sql, args=()):
        return self._run(lambda: self._conn.execute(sql, args).fetchall())

    # -- IStore ------------------------------------------------------------

    def delete_instance(self, instance_id):
        def txn(c):
            if c.execute("SELECT 1 FROM instances WHERE instance_id = ?", (instance_id,)).fetchone() is None:
                return None
            ids = [r[0] for r in c.execute("SELECT device_id FROM devices WHERE instance_id = ?", (instance_id,))]
            c.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))  # cascades
            return ids

        return self._write(txn)

    def create_device_capped(self, device_id, instance_id, setup_key_hash, expires_at, now, max_devices,
                             max_pending):
        # BEGIN IMMEDIATE: one writer at a time, so the count cannot go stale.
        return self._write(self._add_capped, "?", device_id, instance_id, setup_key_hash, expires_at, now,
                           max_devices, max_pending)

    def activate_device(self, device_id, setup_key_hash, password_hash, now):
        def txn(c):
            row = c.execute(
                "SELECT instance_id FROM devices WHERE device_id = ? AND setup_key_hash = ?"
                " AND state = 'pending' AND expires_at > ?",
                (device_id, setup_key_hash, int(now)),
            ).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE devices SET state = 'active', setup_key_hash = NULL, expires_at = NULL,"
                " password_hash = ? WHERE device_id = ?",
                (password_hash, device_id),
            )
            return row[0]

        return self._write(txn)

    def purge_expired(self, now):
        def txn(c):
            rows = c.execute(
                "SELECT instance_id, device_id FROM devices WHERE state = 'pending' AND expires_at <= ?",
                (int(now),),
            ).fetchall()
            c.execute("DELETE FROM devices WHERE state = 'pending' AND expires_at <= ?", (int(now),))
            return [tuple(r) for r in rows]

        return self._write(txn)
