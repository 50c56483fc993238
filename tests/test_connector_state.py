"""The connector's state file: schema versions and their upgrade steps."""

import sqlite3
from importlib import resources

import pytest

from linchpin_connector.state import DB_NAME, SCHEMA_VERSION, ConnectorState

D = "d" * 32


def make_v1(folder):
    """A state file as the first connector release wrote it."""
    folder.mkdir(mode=0o700)
    conn = sqlite3.connect(folder / DB_NAME)
    conn.executescript(resources.files("linchpin_connector").joinpath("db-schemas/v1.sql").read_text())
    conn.execute("INSERT INTO version (version) VALUES (1)")
    conn.execute("INSERT INTO devices (device_id, user, created_at, setup_secret) VALUES (?, 'alice', 1, ?)",
                 (D, b"s" * 32))
    conn.execute("INSERT INTO pending_keys (device_id, key) VALUES (?, ?)", (D, b"k" * 32))
    conn.commit()
    conn.close()
    (folder / DB_NAME).chmod(0o600)


def test_a_v1_file_is_upgraded_in_place_and_keeps_its_data(tmp_path):
    make_v1(tmp_path / "c")
    state = ConnectorState(str(tmp_path / "c"))
    try:
        assert state.conn.execute("SELECT version FROM version").fetchall() == [(SCHEMA_VERSION,)]
        device = state.device(D)
        assert device.user == "alice" and device.pending == ((1, b"k" * 32),) and device.answered == frozenset()
        key_id = state.add_pending_key(D, b"n" * 32, hello_digest=b"h" * 32)
        assert state.device(D).answered == {b"h" * 32}
        assert state.add_pending_key(D, b"m" * 32, hello_digest=b"h" * 32) is None  # the same HELLO again
        assert [k for k, _ in state.device(D).pending] == [1, key_id]
    finally:
        state.close()
    again = ConnectorState(str(tmp_path / "c"))  # opening an upgraded file changes nothing
    try:
        assert again.device(D).answered == {b"h" * 32}
    finally:
        again.close()


def test_a_new_file_gets_every_step(tmp_path):
    state = ConnectorState(str(tmp_path / "c"))
    try:
        assert state.conn.execute("SELECT version FROM version").fetchone() == (SCHEMA_VERSION,)
        columns = [r[1] for r in state.conn.execute("PRAGMA table_info(pending_keys)")]
        assert "hello_digest" in columns
    finally:
        state.close()


def test_a_file_from_a_newer_connector_is_refused(tmp_path):
    ConnectorState(str(tmp_path / "c")).close()
    conn = sqlite3.connect(tmp_path / "c" / DB_NAME)
    conn.execute("UPDATE version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="schema version"):
        ConnectorState(str(tmp_path / "c"))


def test_pending_key_kept_alive_is_not_evicted(tmp_path):
    state = ConnectorState(str(tmp_path / "c"))
    try:
        state.add_device(D, "alice", b"s" * 32)
        first = state.add_pending_key(D, b"0" * 32)
        for i in range(1, 7):
            state.add_pending_key(D, bytes([i]) * 32, keep=first)
        ids = [k for k, _ in state.device(D).pending]
        assert len(ids) == 4 and ids[0] == first
    finally:
        state.close()


def test_devices_of_one_user(tmp_path):
    state = ConnectorState(str(tmp_path / "c"))
    try:
        for device_id, user in ((D, "alice"), ("e" * 32, "bob"), ("f" * 32, "alice")):
            state.add_device(device_id, user, b"s" * 32)
        assert [d.device_id for d in state.devices("alice")] == [D, "f" * 32]
        assert [d.user for d in state.devices()] == ["alice", "bob", "alice"]
        assert state.devices("carol") == []
    finally:
        state.close()
