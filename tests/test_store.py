"""The gateway's SQLite store and the connector's state file, directly."""

import os
import sqlite3
import stat

import pytest

from linchpin_connector.state import MAX_PENDING, ConnectorState, NotRegistered
from linchpin_gateway import hashing
from linchpin_gateway.store import DB_NAME, SQLiteStore, StoreError
from linchpin_common.workers import InlineWorker
from tests.test_api import result

I, D = "a" * 32, "d" * 32


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(None, str(tmp_path / "gw"), worker=InlineWorker())
    s.start()
    yield s
    s.stop()


def test_created_private_with_version_and_foreign_keys(store, tmp_path):
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


def test_hasher_queue_is_bounded():
    from twisted.internet import defer

    class Held:
        def __init__(self):
            self.jobs = []

        def start(self):
            pass

        def run(self, fn, *args):
            d = defer.Deferred()
            self.jobs.append(d)
            return d

    worker = Held()
    hasher = hashing.Hasher(None, worker=worker, max_pending=2)
    hasher.verify("a", None)
    hasher.verify("b", None)
    failed = []
    hasher.verify("c", None).addErrback(failed.append)
    assert failed[0].check(hashing.Overloaded)
    worker.jobs[0].callback(True)
    assert hasher.pending == 1
    hasher.verify("d", None)  # room again
    assert len(worker.jobs) == 3


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
