"""The gateway's store on PostgreSQL (``--store postgresql://...``).

Same interface and guarantees as :class:`~.store.SQLiteStore`: every method
returns a Deferred that fires after its transaction has committed.  psycopg 3
connections come from a small psycopg_pool pool and every query runs on a
thread of the store's own worker, never the reactor's.

Several gateway nodes share one database, so:

- the schema is created on first start inside a transaction holding an
  advisory lock (two nodes starting at once: one creates, the other waits
  and then finds it);
- a setup key is spent by one ``UPDATE ... WHERE state = 'pending'
  RETURNING``: row locking makes exactly one of two concurrent callers see
  the row;
- the hourly purge takes a transaction-level advisory lock with
  ``pg_try_advisory_xact_lock``, so one node purges at a time and the
  others skip that round.

When the server cannot be reached, calls fail with
:class:`~.store.StoreUnavailable` after at most ``timeout`` seconds instead
of waiting; the pool reconnects by itself once the server is back.
"""

from __future__ import annotations

import psycopg
import psycopg_pool
from zope.interface import implementer

from linchpin_common.workers import BoundedWorker, ThreadWorker

from .config import redact_url
from .store import (SCHEMA_VERSION, STORE_QUEUE, IStore, Statements, StoreError, StoreUnavailable, _schema,
                    queue_full)

# Advisory lock keys (any 64-bit numbers unique to this application).
LOCK_SCHEMA = 0x6C6D_6777_0001
LOCK_PURGE = 0x6C6D_6777_0002
POOL_SIZE = 4
# psycopg_pool retries a failed connection after 1 s, doubling, until this
# many seconds have passed; then the next call starts over at once.  Kept
# below the call timeout, so the first call after the server is back waits
# for a retry at most this long instead of a backoff grown over an outage.
RECONNECT_WITHIN = 2.0


@implementer(IStore)
class PostgreSQLStore(Statements):
    def __init__(self, reactor, url: str, worker=None, pool_size: int = POOL_SIZE, timeout: float = 3.0,
                 max_queue: int = STORE_QUEUE):
        self.url = url
        self.timeout = timeout
        self._worker = BoundedWorker(worker or ThreadWorker(reactor, "lmgateway-postgresql", pool_size), max_queue,
                                     queue_full)
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, timeout=timeout, name="lmgateway",
            check=psycopg_pool.ConnectionPool.check_connection, reconnect_timeout=RECONNECT_WITHIN,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout)), "application_name": "lmgateway",
                    "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3},
        )

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        # Like SQLite's, done at start-up before any listener exists: a
        # server that cannot be reached stops the service with a clear error.
        try:
            self._pool.open(wait=True, timeout=2 * self.timeout)
            self._txn(_create_or_check)
        except _VersionMismatch as e:
            self._pool.close()
            raise StoreError(str(e)) from None
        except (StoreUnavailable, psycopg.Error, psycopg_pool.PoolTimeout) as e:
            self._pool.close()
            raise StoreError(f"PostgreSQL at {redact_url(self.url)} cannot be used: {type(e).__name__}") from None
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        self._pool.close()

    def _txn(self, fn, *args):
        """``fn(conn, *args)`` in one transaction, committed on return."""
        try:
            with self._pool.connection() as conn:
                with conn.transaction():
                    return fn(conn, *args)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
            raise StoreUnavailable(f"PostgreSQL unavailable: {type(e).__name__}") from None

    def _run(self, fn, *args):
        return self._worker.run(self._txn, fn, *args)

    # Statements' SQL has qmark placeholders; psycopg's are %s.
    def _execute(self, sql, args):
        return self._run(lambda c: c.execute(sql.replace("?", "%s"), args).rowcount)

    def _one(self, sql, args=()):
        return self._run(lambda c: c.execute(sql.replace("?", "%s"), args).fetchone())

    def _all(self, sql, args=()):
        return self._run(lambda c: c.execute(sql.replace("?", "%s"), args).fetchall())

    # -- IStore ------------------------------------------------------------

    def delete_instance(self, instance_id):
        def txn(c):
            if c.execute("SELECT 1 FROM instances WHERE instance_id = %s FOR UPDATE", (instance_id,)).fetchone() is None:
                return None
            ids = [r[0] for r in c.execute("SELECT device_id FROM devices WHERE instance_id = %s", (instance_id,))]
            c.execute("DELETE FROM instances WHERE instance_id = %s", (instance_id,))  # cascades
            return ids

        return self._run(txn)

    def create_device_capped(self, device_id, instance_id, setup_key_hash, expires_at, now, max_devices,
                             max_pending):
        def txn(c):
            # The instance's row locked: nodes adding devices to it at once
            # count and insert one after another (READ COMMITTED alone would
            # let each count before any insert is committed).
            c.execute("SELECT 1 FROM instances WHERE instance_id = %s FOR UPDATE", (instance_id,))
            return self._add_capped(c, "%s", device_id, instance_id, setup_key_hash, expires_at, now, max_devices,
                                    max_pending)

        return self._run(txn)

    def activate_device(self, device_id, setup_key_hash, password_hash, now):
        # One statement: of two nodes redeeming the same key at once, the
        # second waits on the row lock, re-checks the WHERE and matches nothing.
        d = self._one(
            "UPDATE devices SET state = 'active', setup_key_hash = NULL, expires_at = NULL, password_hash = ?"
            " WHERE device_id = ? AND setup_key_hash = ? AND state = 'pending' AND expires_at > ?"
            " RETURNING instance_id",
            (password_hash, device_id, setup_key_hash, int(now)),
        )
        return d.addCallback(lambda row: row[0] if row else None)

    def purge_expired(self, now):
        def txn(c):
            (locked,) = c.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_PURGE,)).fetchone()
            if not locked:
                return []  # another node is purging right now
            rows = c.execute(
                "DELETE FROM devices WHERE state = 'pending' AND expires_at <= %s RETURNING instance_id, device_id",
                (int(now),),
            ).fetchall()
            return sorted(tuple(r) for r in rows)

        return self._run(txn)


def _create_or_check(c) -> None:
    """Create the schema if this database has none; refuse an unknown version.

    The advisory lock serialises nodes starting at once against one database."""
    c.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_SCHEMA,))
    (exists,) = c.execute("SELECT to_regclass('version')").fetchone()
    if exists is None:
        c.execute(_schema(SCHEMA_VERSION, "postgresql"))
        c.execute("INSERT INTO version (version) VALUES (%s)", (SCHEMA_VERSION,))
        return
    (version,) = c.execute("SELECT version FROM version").fetchone()
    if version != SCHEMA_VERSION:
        raise _VersionMismatch(version)


class _VersionMismatch(psycopg.Error):
    def __init__(self, version):
        super().__init__(f"database has schema version {version}, this gateway knows {SCHEMA_VERSION}")
