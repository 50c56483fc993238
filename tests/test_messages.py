"""The end-to-end message vocabulary (linchpin_common.contract.messages):
each header has exactly the fields of PROTOCOL.md section 5."""

import pytest

from linchpin_common.contract import e2e, messages as m


@pytest.mark.parametrize("header, wire", [
    (m.confirm(), {"t": "confirm"}),
    (m.req(7, "POST", "/app?x=1", [["Content-Type", "text/plain"]], False),
     {"t": "req", "id": 7, "method": "POST", "path": "/app?x=1", "headers": [["Content-Type", "text/plain"]],
      "end": False}),
    (m.res(7, 200, [], True), {"t": "res", "id": 7, "status": 200, "headers": [], "end": True}),
    (m.body(7, False), {"t": "body", "id": 7, "end": False}),
    (m.ack(7, 262144), {"t": "ack", "id": 7, "bytes": 262144}),
    (m.cancel(7), {"t": "cancel", "id": 7}),
    (m.err(7, m.BUSY, "at most 64"), {"t": "err", "id": 7, "code": "busy", "message": "at most 64"}),
])
def test_each_header_is_the_contracts(header, wire):
    assert header == wire and m.kind(header) == wire["t"] in m.KINDS
    decoded, body = e2e.decode_message(e2e.encode_message(header, b"x" if wire["t"] in e2e.BODY_TYPES else b""))
    assert decoded == wire


def test_err_codes_are_the_contracts_and_no_other():
    assert m.ERROR_CODES == {"bad_request", "forbidden", "backend_unreachable", "timeout", "too_large", "busy"}
    with pytest.raises(ValueError):
        m.err(1, "teapot", "no")
    assert m.kind("not a header") is None and m.kind({}) is None
