"""Audit events: one structured log event per security-relevant change.

Each event is a twisted.logger event in the ``lmgateway.audit`` namespace
with an ``audit`` field naming it and the ids involved as fields (visible as
keys with ``twistd --logger``/JSON output).  Ids only: never a password, a
key or a payload.
"""

from twisted.logger import Logger

_log = Logger(namespace="lmgateway.audit")


def audit(event: str, **ids) -> None:
    detail = " ".join(f"{k}={{{k}}}" for k in ids)
    _log.info(f"audit {{audit}} {detail}".rstrip(), audit=event, **ids)
