-- Connector state, schema version 1. Holds secrets: the file is 0600 in a 0700 folder.
CREATE TABLE version (
    version INTEGER NOT NULL
);

CREATE TABLE config (
    key   TEXT PRIMARY KEY,   -- gateway_url, instance_id, instance_password, static_private_key
    value TEXT NOT NULL
);

CREATE TABLE devices (
    device_id      TEXT PRIMARY KEY,
    user           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    setup_secret   BLOB,      -- device_setup_secret_key until a derived key is proven
    device_secret  BLOB       -- device_secret_key once proven
);

CREATE TABLE pending_keys (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id  TEXT NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
    key        BLOB NOT NULL
);

CREATE INDEX pending_by_device ON pending_keys(device_id);
