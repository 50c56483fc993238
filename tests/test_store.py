"""The gateway's store (one body against SQLite and PostgreSQL) and the
connector's state file, directly."""

import os
import sqlite3
import stat

import pytest

from linchpin_connector.state import MAX_PENDING, ConnectorState, NotRegistered
from linchpin_gateway import hashing
from linchpin_gateway.store import DB_NAME, SQLiteStore, StoreError
from linchpin_common.workers import InlineWorker
from tests.services import postgresql  # noqa: F401  (fixture)
from tests.doubles import result

I, D = "a" * 32, "d" * 32


@pytest.fixture
def sqlite_store(tmp_path):
    s = SQLiteStore(None, str(tmp_path / "gw"), worker=InlineWorker())
    s.start()
    yield s
    s.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """The same test body against each engine (PostgreSQL: a fresh database)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_store")
        return
    from linchpin_gateway.pgstore import PostgreSQLStore

    pg = request.getfixturevalue("postgresql")
    s = PostgreSQLStore(None, pg.url(pg.create_database()), worker=InlineWorker())
    s.start()
    yield s
    s.stop()


def test_created_private_with_version_and_foreign_keys(sqlite_store, tmp_path):
    store = sqlite_store
    folder = tmp_path / "gw"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder / DB_NAME).st_mode) == 0o600
    conn = sqlite3.connect(folder / DB_NAME)
    assert conn.execute("SELECT version FROM version").fetchall() == [(1,)]
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    result(store.create_instance(I, "h", 0))
    result(store.create_device(D, I, "k", 100, 0))
    assert result(store.delete_instance(I)) == [D]
    assert result(store.device_auth(D)) is None  # cascaded


def test_existing_dir_is_tightened(tmp_path):
    os.makedirs(tmp_path / "gw", mode=0o755)
    s = SQLiteStore(None, str(tmp_path / "gw"), worker=InlineWorker())
    s.start()
    s.stop()
    assert stat.S_IMODE(os.stat(tmp_path / "gw").st_mode) == 0o700


def test_unknown_schema_version_refused(tmp_path):
    first = SQLiteStore(None, str(tmp_path / "gw"), worker=InlineWorker())
    first.start()
    first.stop()
    conn = sqlite3.connect(tmp_path / "gw" / DB_NAME)
    conn.execute("UPDATE version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SQLiteStore(None, str(tmp_path / "gw"), worker=InlineWorker()).start()


def test_setup_key_single_use_and_expiry(store):
    result(store.create_instance(I, "h", 0))
    result(store.create_device(D, I, "keyhash", 100, 0))
    assert result(store.find_setup_key("keyhash", 99)) == (D, I)
    assert result(store.find_setup_key("keyhash", 100)) is None  # expired
    assert result(store.activate_device(D, "keyhash", "pwhash", 50)) == I
    assert result(store.activate_device(D, "keyhash", "pwhash2", 50)) is None  # spent
    assert result(store.device_auth(D)) == (I, "active", "pwhash")


def test_purge_only_expired_pending(store):
    result(store.create_instance(I, "h", 0))
    result(store.create_device(D, I, "k1", 100, 0))
    result(store.create_device("e" * 32, I, "k2", 1000, 0))
    assert result(store.purge_expired(500)) == [(I, D)]
    assert [d for d, _ in result(store.list_devices(I))] == ["e" * 32]


def test_instances_devices_and_passwords(store):
    assert result(store.instance_hash(I)) is None
    result(store.create_instance(I, "h1", 0))
    assert result(store.instance_hash(I)) == "h1"
    assert result(store.set_instance_password(I, "h2")) is True
    assert result(store.set_instance_password("b" * 32, "h2")) is False
    assert result(store.instance_hash(I)) == "h2"
    result(store.create_device(D, I, "k", 10**10, 5))  # expiry past 2038
    assert result(store.list_devices(I)) == [(D, "pending")]
    assert result(store.device_auth(D)) == (I, "pending", None)
    assert result(store.delete_device("b" * 32, D)) is False  # another instance's
    assert result(store.delete_device(I, D)) is True
    assert result(store.delete_device(I, D)) is False
    assert result(store.delete_instance("b" * 32)) is None
    assert result(store.delete_instance(I)) == []
    assert result(store.ping()) is not None


def test_password_hash_format_and_verify():
    encoded = hashing.hash_password("secret")
    algorithm, iterations, salt, digest = encoded.split("$")
    assert algorithm == "pbkdf2_sha256" and int(iterations) == 100_000
    assert hashing.verify_password("secret", encoded)
    assert not hashing.verify_password("Secret", encoded)
    assert not hashing.verify_password("secret", "garbage")
    assert not hashing.verify_password("secret", encoded.replace("100000", "1000"))
    with pytest.raises(ValueError):
        hashing.hash_password("x", iterations=1000)
    assert hashing.sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_connector_state(tmp_path):
    state = ConnectorState(str(tmp_path / "c"))
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "c" / "lmconnector.sqlite").st_mode) == 0o600
    with pytest.raises(NotRegistered):
        state.registration()
    state.save_registration("http://gw", I, "pw", b"\x01" * 32)
    assert state.registration()["static_private_key"] == b"\x01" * 32
    state.add_device(D, "alice", b"s" * 32)
    ids = [state.add_pending_key(D, bytes([i]) * 32) for i in range(MAX_PENDING + 2)]
    device = state.device(D)
    assert [k for k, _ in device.pending] == ids[-MAX_PENDING:]  # newest kept
    assert state.promote_pending_key(D, ids[-1])
    device = state.device(D)
    assert device.device_secret == bytes([MAX_PENDING + 1]) * 32
    assert device.setup_secret is None and device.pending == () and device.state == "paired"
    assert state.add_pending_key(D, b"x" * 32) is None  # proven: no more pending keys
    assert not state.promote_pending_key(D, ids[0])
    # a second process sees the same state (the CLI and the daemon share it)
    other = ConnectorState(str(tmp_path / "c"))
    assert other.device(D).device_secret == device.device_secret
    assert state.remove_device(D) and other.device(D) is None


# -- PostgreSQL only: what several nodes sharing one database need ------------------


def _pg_store(pg, db, worker=None):
    from linchpin_gateway.pgstore import PostgreSQLStore

    s = PostgreSQLStore(None, pg.url(db), worker=worker or InlineWorker())
    s.start()
    return s


def test_postgresql_nodes_starting_at_once_create_one_schema(postgresql):
    import threading

    db = postgresql.create_database()
    started, errors = [], []
    go = threading.Barrier(3)

    def node():
        go.wait()
        try:
            started.append(_pg_store(postgresql, db))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=node) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(started) == 3
    import psycopg

    with psycopg.connect(postgresql.url(db)) as conn:
        assert conn.execute("SELECT version FROM version").fetchall() == [(1,)]
    for s in started:
        s.stop()


def test_postgresql_setup_key_redeemed_at_once_on_two_nodes(postgresql):
    """Two nodes (two pools), many threads each: exactly one wins each key."""
    import threading

    db = postgresql.create_database()
    a, b = _pg_store(postgresql, db), _pg_store(postgresql, db)
    result(a.create_instance(I, "h", 0))
    keys = [(f"{n:032x}", f"key{n}") for n in range(10)]
    for device_id, key in keys:
        result(a.create_device(device_id, I, key, 1000, 0))
    wins = []
    go = threading.Barrier(4)

    def redeem(store):
        go.wait()
        for device_id, key in keys:
            got = result(store.activate_device(device_id, key, "pw", 10))
            if got is not None:
                wins.append(device_id)

    threads = [threading.Thread(target=redeem, args=(s,)) for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(wins) == sorted(d for d, _ in keys)  # each key exactly once
    a.stop()
    b.stop()


def test_postgresql_one_purger_at_a_time(postgresql):
    import psycopg

    from linchpin_gateway.pgstore import LOCK_PURGE

    db = postgresql.create_database()
    s = _pg_store(postgresql, db)
    result(s.create_instance(I, "h", 0))
    result(s.create_device(D, I, "k", 100, 0))
    with psycopg.connect(postgresql.url(db)) as other:  # another node, mid-purge
        other.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_PURGE,))
        assert result(s.purge_expired(500)) == []
    assert result(s.purge_expired(500)) == [(I, D)]
    s.stop()


def test_postgresql_unknown_schema_version_refused(postgresql):
    import psycopg

    db = postgresql.create_database()
    _pg_store(postgresql, db).stop()
    with psycopg.connect(postgresql.url(db)) as conn:
        conn.execute("UPDATE version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99"):
        _pg_store(postgresql, db)


@pytest.mark.parametrize("where", ["u:hunter2@127.0.0.1:{port}/db", "u@127.0.0.1:{port}/db?password=hunter2"])
def test_postgresql_unreachable_fails_fast_and_redacts(postgresql, where):
    from linchpin_gateway.pgstore import PostgreSQLStore
    from tests.services import free_port

    url = "postgresql://" + where.format(port=free_port())
    with pytest.raises(StoreError) as info:
        PostgreSQLStore(None, url, worker=InlineWorker(), timeout=1).start()
    assert "hunter2" not in str(info.value) and "postgresql://127.0.0.1:" in str(info.value)


def test_device_caps_hold_in_the_store(store):
    result(store.create_instance(I, "h", 0))
    made = [result(store.create_device_capped(f"{n:032x}", I, f"k{n}", 1000, 0, 3, 2)) for n in range(4)]
    assert made == [None, None, "pending", "pending"]  # two pending at most
    assert result(store.activate_device("0" * 32, "k0", "pw", 10)) == I
    assert result(store.create_device_capped("9" * 32, I, "k9", 1000, 0, 3, 2)) is None
    assert result(store.create_device_capped("8" * 32, I, "k8", 1000, 0, 3, None)) == "devices"  # three in all
    assert len(result(store.list_devices(I))) == 3


def test_postgresql_device_caps_hold_across_nodes(postgresql):
    """Before: each node counted, then wrote, so 3 nodes made 6 devices
    against a cap of 5."""
    import threading

    db = postgresql.create_database()
    nodes = [_pg_store(postgresql, db) for _ in range(3)]
    result(nodes[0].create_instance(I, "h", 0))
    outcomes = []
    go = threading.Barrier(6)

    def add(store, n):
        go.wait()
        for i in range(4):
            outcomes.append(result(store.create_device_capped(f"{n:02x}{i:030x}", I, f"k{n}-{i}", 1000, 0, 5, None)))

    threads = [threading.Thread(target=add, args=(nodes[n % 3], n)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes.count(None) == 5 and outcomes.count("devices") == 19
    assert len(result(nodes[1].list_devices(I))) == 5
    for s in nodes:
        s.stop()
