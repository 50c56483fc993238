// The messages inside the end-to-end channel (PROTOCOL.md section 5), built
// and read in one place; mirrors linchpin_common/contract/messages.py (same
// key order, so both sides encode the same bytes).

export const CONFIRM = "confirm", REQ = "req", RES = "res", BODY = "body", ACK = "ack", CANCEL = "cancel",
  ERR = "err";
export const KINDS = new Set([CONFIRM, REQ, RES, BODY, ACK, CANCEL, ERR]);
export const ERROR_CODES = new Set(["bad_request", "forbidden", "backend_unreachable", "timeout", "too_large",
  "busy"]);

export const kind = (header) => (header && typeof header === "object" ? header.t : undefined);
export const confirm = () => ({ t: CONFIRM });
export const req = (id, method, path, headers, end) => ({ t: REQ, id, method, path, headers, end });
export const res = (id, status, headers, end) => ({ t: RES, id, status, headers, end });
export const body = (id, end) => ({ t: BODY, id, end });
export const ack = (id, bytes) => ({ t: ACK, id, bytes });
export const cancel = (id) => ({ t: CANCEL, id });
export function err(id, code, message) {
  if (!ERROR_CODES.has(code)) throw new Error(`${code} is not an err code of the contract`);
  return { t: ERR, id, code, message };
}
