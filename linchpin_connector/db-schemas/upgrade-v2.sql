-- Connector state, schema version 1 -> 2: each pending key remembers the
-- SHA-256 of the HELLO it answered, so a replay of that HELLO (even after a
-- restart of the connector) never creates or evicts a pending key.
ALTER TABLE pending_keys ADD COLUMN hello_digest BLOB;

CREATE UNIQUE INDEX pending_by_hello ON pending_keys(device_id, hello_digest);
