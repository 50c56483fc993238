"""PROTOCOL.md as code, sans-IO: nothing here imports Twisted or does I/O.

- ``ids``: identifiers and secrets (section 1), base64url.
- ``topics``: MQTT topic names, builders and the ACL predicates (section 4).
- ``wire``: the MQTT 3.1.1 codec (section 4).
- ``pairing``: the pairing URI (section 3).
- ``e2e``: the end-to-end envelopes, handshake and messages (section 5).
- ``channel``: one E2E channel endpoint (sessions, gaps, credit windows).
"""
