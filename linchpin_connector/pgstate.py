"""The connector's state on PostgreSQL (``--store postgresql://...``), shared
by every connector of an instance.

Same methods and guarantees as the SQLite state (:class:`~.state.StateQueries`
holds the SQL of both); here each call takes a connection from a small
psycopg_pool pool and runs in one transaction.  The daemon calls it on its
state worker thread, never the reactor's.

- The tables live in the PostgreSQL schema ``lmconnector`` (the database may
  hold other tables, a gateway's included); it is created on first use in a
  transaction holding an advisory lock, so connectors starting at once
  create it once.
- Adding and proving a device's E2E keys lock its row (``FOR UPDATE``):
  two connectors answering the same device change its keys one after the
  other, each in one atomic update (PROTOCOL.md section 5's pending-key
  rules hold whichever connector sees the HELLO and the confirm).
- A password may come from ``PGPASSWORD`` (libpq reads it) rather than the
  URL, so ``ps`` does not show it; the URL is never logged with one.
"""

from __future__ import annotations

import contextlib
from importlib import resources

import psycopg
import psycopg_pool

from .state import SCHEMA_VERSION, StateQueries

SCHEMA = "lmconnector"
LOCK_SCHEMA = 0x6C6D_636E_0001  # advisory lock key, unique to the connector's schema
POOL_SIZE = 2
TIMEOUT = 5.0


class StateUnavailable(Exception):
    """PostgreSQL cannot be reached (or refused us) within the timeout."""


def redact(url: str) -> str:
    """The URL without its user part (a password may be in it)."""
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path.split('?')[0]}"


class PostgreSQLState(StateQueries):
    FOR_UPDATE = " FOR UPDATE"

    def __init__(self, url: str, pool_size: int = POOL_SIZE, timeout: float = TIMEOUT):
        self.url = url
        self.where = redact(url)
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, timeout=timeout, name="lmconnector",
            check=psycopg_pool.ConnectionPool.check_connection, reconnect_timeout=2.0,
            kwargs={"connect_timeout": max(1, int(timeout)), "application_name": "lmconnector",
                    "options": f"-c search_path={SCHEMA}"})
        try:
            self._pool.open(wait=True, timeout=2 * timeout)
            with self._txn() as c:
                _create_or_check(c)
        except (psycopg.Error, psycopg_pool.PoolTimeout, StateUnavailable) as e:
            self._pool.close()
            raise StateUnavailable(f"PostgreSQL at {self.where} cannot be used: {_reason(e)}") from None

    @contextlib.contextmanager
    def _txn(self):
        try:
            with self._pool.connection() as conn:
                with conn.transaction():
                    yield _Qmark(conn)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as e:
            raise StateUnavailable(f"PostgreSQL at {self.where} unavailable: {_reason(e)}") from None

    _read = _txn  # a transaction sees one snapshot of the device and its keys

    def close(self) -> None:
        self._pool.close()


class _Qmark:
    """A connection taking the qmark SQL of :class:`StateQueries`."""

    def __init__(self, conn):
        self.conn = conn

    def execute(self, sql: str, args=()):
        return self.conn.execute(sql.replace("?", "%s"), args)

    def executemany(self, sql: str, rows):
        with self.conn.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)


def _create_or_check(c) -> None:
    c.execute("SELECT pg_advisory_xact_lock(?)", (LOCK_SCHEMA,))
    c.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    (exists,) = c.execute("SELECT to_regclass('version')").fetchone()
    if exists is None:
        script = resources.files("linchpin_connector").joinpath(
            f"db-schemas/postgresql-v{SCHEMA_VERSION}.sql").read_text("utf-8")
        c.conn.execute(script)
        c.execute("INSERT INTO version (version) VALUES (?)", (SCHEMA_VERSION,))
        return
    (version,) = c.execute("SELECT version FROM version").fetchone()
    if version != SCHEMA_VERSION:
        raise StateUnavailable(f"the connector schema in PostgreSQL has version {version}; "
                               f"this connector knows {SCHEMA_VERSION}")


def _reason(error: Exception) -> str:
    """Why, without the URL or anything else that may hold a password."""
    if isinstance(error, StateUnavailable):
        return str(error)
    return type(error).__name__
