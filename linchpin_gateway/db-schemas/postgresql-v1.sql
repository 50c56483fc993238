-- Gateway store on PostgreSQL, schema version 1: the tables of v1.sql with
-- 64-bit times. Only ids and hashes live here.
CREATE TABLE version (
    version INTEGER NOT NULL
);

CREATE TABLE instances (
    instance_id   TEXT PRIMARY KEY,            -- 32 lowercase hex
    password_hash TEXT NOT NULL,               -- pbkdf2_sha256$iter$salt$hash
    created_at    BIGINT NOT NULL              -- unix seconds
);

CREATE TABLE devices (
    device_id      TEXT PRIMARY KEY,           -- 32 lowercase hex
    instance_id    TEXT NOT NULL REFERENCES instances(instance_id) ON DELETE CASCADE,
    state          TEXT NOT NULL CHECK (state IN ('pending', 'active')),
    setup_key_hash TEXT UNIQUE,                -- sha256 hex; NULL once used
    expires_at     BIGINT,                     -- setup key expiry, unix seconds
    password_hash  TEXT,                       -- NULL while pending
    created_at     BIGINT NOT NULL
);

CREATE INDEX devices_by_instance ON devices(instance_id);
CREATE INDEX devices_pending_expiry ON devices(expires_at) WHERE state = 'pending';
