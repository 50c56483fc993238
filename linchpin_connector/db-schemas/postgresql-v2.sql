-- Connector state on PostgreSQL (--store postgresql://), schema version 2:
-- the same tables as SQLite's v1 + upgrade-v2, in the schema "lmconnector",
-- so the database may also hold other applications' tables. Holds secrets:
-- give the connectors their own role, and nobody else access to this schema.
CREATE TABLE version (
    version INTEGER NOT NULL
);

CREATE TABLE config (
    key   TEXT PRIMARY KEY,   -- gateway_url, instance_id, instance_password, static_private_key
    value TEXT NOT NULL
);

CREATE TABLE devices (
    device_id      TEXT PRIMARY KEY,
    "user"         TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    setup_secret   BYTEA,     -- device_setup_secret_key until a derived key is proven
    device_secret  BYTEA      -- device_secret_key once proven
);

CREATE TABLE pending_keys (
    id            BIGSERIAL PRIMARY KEY,
    device_id     TEXT NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
    key           BYTEA NOT NULL,
    hello_digest  BYTEA
);

CREATE INDEX pending_by_device ON pending_keys(device_id);
CREATE UNIQUE INDEX pending_by_hello ON pending_keys(device_id, hello_digest);
