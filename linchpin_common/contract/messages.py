"""The end-to-end message vocabulary (PROTOCOL.md section 5), built and
read in one place, as h11 keeps its events: the device, the connector and
the JavaScript device mirror these names.

Each DATA carries one message: a JSON header and, for ``req``, ``res`` and
``body``, body bytes (:func:`~.e2e.encode_message` frames it).  Headers:

============  ====  ==========================================================
``confirm``   up    the first DATA of every session
``req``       up    ``id``, ``method``, ``path``, ``headers`` ([[k, v], ...]), ``end``
``res``       down  ``id``, ``status``, ``headers``, ``end``
``body``      both  ``id``, ``end``: the next part of a request or response body
``ack``       both  ``id``, ``bytes``: the receiver consumed that many more body bytes
``cancel``    up    ``id``: the device abandons the request
``err``       down  ``id``, ``code`` (one of :data:`ERROR_CODES`), ``message``
============  ====  ==========================================================
"""

from __future__ import annotations

CONFIRM = "confirm"
REQ = "req"
RES = "res"
BODY = "body"
ACK = "ack"
CANCEL = "cancel"
ERR = "err"
KINDS = frozenset({CONFIRM, REQ, RES, BODY, ACK, CANCEL, ERR})

# The codes of an ``err``.
BAD_REQUEST = "bad_request"
FORBIDDEN = "forbidden"
BACKEND_UNREACHABLE = "backend_unreachable"
TIMEOUT = "timeout"
TOO_LARGE = "too_large"
BUSY = "busy"
ERROR_CODES = frozenset({BAD_REQUEST, FORBIDDEN, BACKEND_UNREACHABLE, TIMEOUT, TOO_LARGE, BUSY})


def kind(header) -> str | None:
    """The ``t`` of a decoded header, None when it has none."""
    return header.get("t") if isinstance(header, dict) else None


def confirm() -> dict:
    return {"t": CONFIRM}


def req(request_id: int, method: str, path: str, headers: list, end: bool) -> dict:
    return {"t": REQ, "id": request_id, "method": method, "path": path, "headers": headers, "end": end}


def res(request_id: int, status: int, headers: list, end: bool) -> dict:
    return {"t": RES, "id": request_id, "status": status, "headers": headers, "end": end}


def body(request_id: int, end: bool) -> dict:
    return {"t": BODY, "id": request_id, "end": end}


def ack(request_id: int, n: int) -> dict:
    return {"t": ACK, "id": request_id, "bytes": n}


def cancel(request_id: int) -> dict:
    return {"t": CANCEL, "id": request_id}


def err(request_id: int, code: str, message: str) -> dict:
    if code not in ERROR_CODES:
        raise ValueError(f"{code!r} is not an err code of the contract")
    return {"t": ERR, "id": request_id, "code": code, "message": message}
