// The device in a browser (or a hybrid app's web view): pairing, the session
// with the gateway, the end-to-end channel with the connector, and requests
// with streamed bodies (PROTOCOL.md sections 2-5).  Mirrors the Python
// library (linchpin_connector/device): the same rules for `moved`, RESET and
// what is sent once more.
//
//   const state = await pair(uri);                 // the setup call; keep `state` (IndexedDB)
//   const device = new Device(state, { saveState, onStatus });
//   await device.open();                           // the gateway session, the connector's status
//   const response = await device.request("GET", "/wiki/Home");
//   const html = new TextDecoder().decode(await response.bytes());

import { b64uDecode, b64uEncode, concat } from "./bytes.js";
import * as e2e from "./e2e.js";
import { LinkError, MqttLink } from "./link.js";
import * as messages from "./messages.js";

export const RETRIED_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);
const ACK_BATCH = e2e.CREDIT_WINDOW / 4; // acks go per quarter window consumed, not per part
const PAIR_PREFIX = "linchpin-mobile://pair?";

/**
 * ``kind``: unreachable, offline, rejected, revoked, timeout, session_lost, refused (``code``: the
 * connector's `err` code), too_large (not sent), bad_pairing.
 */
export class DeviceError extends Error {
  constructor(kind, message, extra = {}) {
    super(message);
    this.kind = kind;
    Object.assign(this, extra);
  }
}

export function parsePairingUri(uri) {
  uri = uri.trim();
  if (!uri.startsWith(PAIR_PREFIX)) throw new DeviceError("bad_pairing", "not a Linchpin pairing link");
  const query = new URLSearchParams(uri.slice(PAIR_PREFIX.length));
  const fields = {};
  for (const name of ["v", "gateway", "setup_key", "secret", "connector_key"]) {
    const values = query.getAll(name);
    if (values.length !== 1 || !values[0]) throw new DeviceError("bad_pairing", `the pairing link lacks ${name}`);
    fields[name] = values[0];
  }
  if (fields.v !== "1") throw new DeviceError("bad_pairing", `pairing link version ${fields.v} is unknown`);
  let secret, connectorKey;
  try {
    secret = b64uDecode(fields.secret);
    connectorKey = b64uDecode(fields.connector_key);
  } catch {
    throw new DeviceError("bad_pairing", "the pairing link has a malformed key");
  }
  if (secret.length !== 32 || connectorKey.length !== 32) {
    throw new DeviceError("bad_pairing", "the pairing link has a key of the wrong length");
  }
  return { gatewayUrl: fields.gateway, setupKey: fields.setup_key, secret, connectorKey };
}

/** The setup call (PROTOCOL.md section 2): the device's own password for the QR code's setup key. */
export async function pair(uri, { fetchImpl = fetch } = {}) {
  const info = parsePairingUri(uri);
  const url = new URL(info.gatewayUrl);
  const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(url.hostname);
  if (url.protocol !== "https:" && !(url.protocol === "http:" && loopback)) {
    throw new DeviceError("bad_pairing", "the gateway must be reached over https");
  }
  let answer;
  try {
    answer = await fetchImpl(`${info.gatewayUrl.replace(/\/+$/, "")}/api/v1/devices/setup`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ device_setup_key: info.setupKey }), credentials: "omit",
    });
  } catch (e) {
    throw new DeviceError("unreachable", `gateway unreachable: ${e.message}`);
  }
  const body = await answer.json().catch(() => ({}));
  if (answer.status === 404 && body.error === "invalid_setup_key") {
    throw new DeviceError("bad_pairing", "the pairing code is unknown, already used or expired");
  }
  if (!answer.ok) throw new DeviceError("unreachable", `the gateway said ${answer.status} ${body.error || ""}`);
  return {
    gatewayUrl: info.gatewayUrl, deviceId: body.device_id, devicePassword: body.device_password,
    connectorKey: b64uEncode(info.connectorKey), setupSecret: b64uEncode(info.secret), deviceSecret: null,
  };
}

class Deferred {
  constructor() {
    this.promise = new Promise((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.promise.catch(() => {}); // a failure nobody waits for is not an error
  }
}

/** A response whose body streams: ``body`` is a ReadableStream; each part read is acked. */
class Response {
  constructor(request, status, headers) {
    this.status = status;
    this.headers = headers;
    this._request = request;
    this._parts = [];
    this._ended = false;
    this._error = null;
    this._wake = null;
    this.body = new ReadableStream({
      pull: (controller) => this._pull(controller),
      cancel: () => request.abandon(),
    }, { highWaterMark: 0 });
  }

  header(name) {
    const found = this.headers.find(([k]) => k.toLowerCase() === name.toLowerCase());
    return found ? found[1] : null;
  }

  async bytes() {
    const parts = [];
    const reader = this.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return concat(...parts);
      parts.push(value);
    }
  }

  _part(data) {
    this._parts.push(data);
    this._wake?.();
  }

  _end(error = null) {
    this._ended = true;
    this._error = error;
    this._wake?.();
  }

  async _pull(controller) {
    while (!this._parts.length && !this._ended) await new Promise((resolve) => (this._wake = resolve));
    this._wake = null;
    if (this._parts.length) {
      const part = this._parts.shift();
      this._request.consumed(part.length);
      controller.enqueue(part);
    } else if (this._error) {
      controller.error(this._error);
    } else {
      controller.close();
    }
  }
}

class Request {
  constructor(device, session, id, method) {
    Object.assign(this, { device, session, id, method });
    this.started = new Deferred(); // the Response, once `res` arrived
    this.response = null;
    this.sent = 0; // request body bytes sent
    this.acked = 0; // ...acked by the connector
    this.received = 0; // response body bytes received
    this.consumedBytes = 0;
    this.ackedDown = 0; // response body bytes we acked
    this.credit = null; // woken when acks make room for the upload
    this.timer = null;
  }

  arm() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.fail(new DeviceError("timeout", "no answer from the intranet in time")),
      this.device.timeoutMs);
  }

  consumed(n) {
    this.consumedBytes += n;
    const owed = this.consumedBytes - this.ackedDown;
    if (owed >= ACK_BATCH && !this.finished) {
      this.ackedDown += owed;
      this.device._send(this.session, messages.ack(this.id, owed));
    }
  }

  abandon() {
    if (this.device.requests.get(this.id) === this) {
      this.device._send(this.session, messages.cancel(this.id));
      this.finish(new DeviceError("session_lost", "the response was abandoned"));
    }
  }

  fail(error) {
    clearTimeout(this.timer);
    this.device.requests.delete(this.id);
    this.started.reject(error);
    this.response?._end(error);
    this.credit?.();
  }

  finish(error = null) {
    clearTimeout(this.timer);
    this.finished = true;
    this.device.requests.delete(this.id);
    if (error) this.started.reject(error);
    this.response?._end(error);
  }
}

export class Device {
  // keepAlive: seconds (link.js KEEP_ALIVE by default)
  constructor(state, { saveState = async () => {}, onStatus = () => {}, timeoutMs = 60000, keepAlive, fetchImpl } = {}) {
    this.state = state;
    this.saveState = saveState;
    this.onStatus = onStatus;
    this.timeoutMs = timeoutMs;
    this.keepAlive = keepAlive;
    this.link = null;
    this.online = null;
    this.session = null;
    this.requests = new Map();
    this.nextId = 0;
    this.hs = null; // the handshake under way: {handshake, done: Deferred}
    this.statusKnown = new Deferred();
    this.sendChain = Promise.resolve();
    this.recvChain = Promise.resolve();
    this.opening = null;
    this.upTopic = `devices/${state.deviceId}/up`;
    this.downTopic = `devices/${state.deviceId}/down`;
  }

  // -- the gateway session ----------------------------------------------------

  /** Connect, subscribe, learn whether the connector is online. */
  async open() {
    this.statusKnown = new Deferred();
    try {
      this.link = await MqttLink.connect(this.state.gatewayUrl, this.state.deviceId, this.state.devicePassword, {
        onMessage: (topic, payload) => this._message(topic, payload),
        onClose: () => this._closed(),
        timeoutMs: this.timeoutMs,
        keepAlive: this.keepAlive,
      });
    } catch (e) {
      if (e instanceof LinkError && e.code === 4) {
        throw new DeviceError("revoked", "the gateway does not accept this device (revoked or unknown)");
      }
      throw new DeviceError("unreachable", e.message);
    }
    try {
      await this.link.subscribe([[this.downTopic, 1], ["$gateway/status", 0]]);
    } catch (e) {
      throw new DeviceError("unreachable", e.message);
    }
    await this._within(this.statusKnown.promise, "no status from the gateway");
  }

  close() {
    this.link?.close();
  }

  _closed() {
    this.online = false;
    this._fail(new DeviceError("unreachable", "the connection to the gateway was lost"));
    this.onStatus("offline");
  }

  _message(topic, payload) {
    if (topic === this.downTopic) {
      this.recvChain = this.recvChain.then(() => this._envelope(payload)).catch(() => {});
      return;
    }
    if (topic !== "$gateway/status") return;
    let status;
    try {
      status = JSON.parse(new TextDecoder().decode(payload)).connector;
    } catch {
      return;
    }
    if (!["online", "offline", "moved"].includes(status)) return;
    this.onStatus(status);
    if (status === "moved") {
      // The connector of our session is gone; the gateway pins us anew on our next HELLO.
      this._fail(new DeviceError("session_lost", "the connector serving this device went away", { replayable: true }));
      this._rehandshake();
      return;
    }
    this.online = status === "online";
    this.statusKnown.resolve(this.online);
    if (!this.online) this._fail(new DeviceError("offline", "the connector is offline"));
  }

  // -- the end-to-end session ---------------------------------------------------

  async _envelope(payload) {
    const env = e2e.parseEnvelope(payload);
    if (!env) return;
    if (env.type === e2e.WELCOME) return this._welcome(env);
    if (env.type === e2e.REJECT && this.hs) {
      const hs = this.hs;
      this.hs = null;
      hs.done.reject(new DeviceError("rejected", "pairing rejected: the connector does not recognise this device"));
    } else if (env.type === e2e.RESET && this.session?.owns(env)) {
      this._fail(new DeviceError("session_lost", "the connector lost the session", { replayable: true }));
      this._rehandshake();
    } else if (env.type === e2e.DATA && this.session) {
      const session = this.session;
      let plain;
      try {
        plain = await session.open(env);
      } catch (e) {
        if (e instanceof e2e.SessionGap) this._fail(new DeviceError("session_lost", "messages were lost"));
        return;
      }
      if (plain !== null) this._data(session, plain);
    }
  }

  async _welcome(env) {
    const hs = this.hs;
    if (!hs) return;
    const result = await hs.handshake.finish(env);
    if (!result || this.hs !== hs) return;
    if (result.deviceSecretKey) {
      // The new key is stored before the setup secret is forgotten.
      const paired = { ...this.state, deviceSecret: b64uEncode(result.deviceSecretKey), setupSecret: null };
      try {
        await this.saveState(paired);
      } catch (e) {
        this.hs = null;
        hs.done.reject(new DeviceError("session_lost", `cannot store the device key: ${e.message}`));
        return;
      }
      this.state = paired;
    }
    this.hs = null;
    this.session = result.session;
    this._send(result.session, messages.confirm());
    hs.done.resolve();
  }

  /** Make sure an end-to-end session exists (HELLO, WELCOME, confirm). */
  async handshake() {
    if (this.session) return;
    if (!this.online) throw new DeviceError("offline", "the connector is offline");
    if (!this.hs) {
      const setup = !this.state.deviceSecret;
      const K = b64uDecode(setup ? this.state.setupSecret : this.state.deviceSecret);
      const handshake = await e2e.DeviceHandshake.start(this.state.deviceId, K, setup ? e2e.KEY_SETUP : e2e.KEY_DEVICE,
        b64uDecode(this.state.connectorKey));
      if (this.hs || this.session) return this.handshake();
      this.hs = { handshake, done: new Deferred() };
      this.link.publish(this.upTopic, handshake.hello);
    }
    const hs = this.hs;
    try {
      await this._within(hs.done.promise, "the connector did not answer the handshake");
    } catch (e) {
      if (this.hs === hs) this.hs = null;
      throw e;
    }
  }

  _rehandshake() {
    if (this.online && this.link?.open && !this.hs && !this.session) this.handshake().catch(() => {});
  }

  /** The session (or the handshake under way) ends with ``error``. */
  _fail(error) {
    const hs = this.hs;
    this.hs = null;
    hs?.done.reject(error);
    const session = this.session;
    this.session = null;
    if (!session) return;
    for (const request of [...this.requests.values()]) if (request.session === session) request.fail(error);
  }

  _send(session, header, body = new Uint8Array(0)) {
    if (this.session !== session || !this.link) return;
    const link = this.link;
    const plain = e2e.encodeMessage(header, body); // throws here, to the caller, if it cannot be sent
    this.sendChain = this.sendChain
      .then(() => session.seal(plain))
      .then((envelope) => link.publish(this.upTopic, envelope))
      .catch(() => {});
  }

  _data(session, plain) {
    let header, body;
    try {
      [header, body] = e2e.decodeMessage(plain);
    } catch {
      return;
    }
    const request = this.requests.get(header.id);
    if (!request || request.session !== session) return;
    const kind = messages.kind(header);
    if (kind === messages.RES && !request.response) {
      request.response = new Response(request, header.status, header.headers);
      request.started.resolve(request.response);
      this._body(request, header, body);
    } else if (kind === messages.BODY && request.response) {
      this._body(request, header, body);
    } else if (kind === messages.ACK) {
      request.acked += header.bytes;
      request.arm();
      request.credit?.();
    } else if (kind === messages.ERR) {
      request.finish(new DeviceError("refused", `the connector refused the request (${header.code}): ${header.message}`,
        { code: header.code }));
    }
  }

  _body(request, header, body) {
    request.arm();
    if (body.length) {
      request.received += body.length;
      if (request.received - request.ackedDown > e2e.CREDIT_WINDOW) {
        this._send(request.session, messages.cancel(request.id));
        request.finish(new DeviceError("session_lost", "the connector overran the flow-control window"));
        return;
      }
      request.response._part(body);
    }
    if (header.end) request.finish();
  }

  // -- requests -----------------------------------------------------------------

  /**
   * One request; resolves once the response starts (its body streams).  A GET,
   * HEAD or OPTIONS whose session ends by RESET or `moved` before any part of
   * its response is sent once more on a new session; a request still waiting
   * for its session goes on the next one, whatever its method; nothing else is
   * ever replayed (PROTOCOL.md section 5).
   */
  async request(method, path, { headers = [], body = new Uint8Array(0) } = {}) {
    const sent = [];
    try {
      return await this._request(method, path, headers, body, sent);
    } catch (e) {
      if (!(e instanceof DeviceError && e.replayable && (!sent.length || RETRIED_METHODS.has(method)))) throw e;
      return this._request(method, path, headers, body, []);
    }
  }

  async _request(method, path, headers, body, sent) {
    if (!this.link?.open) {
      this.opening ??= this.open().finally(() => (this.opening = null));
      await this.opening;
    }
    await this.handshake();
    const session = this.session;
    if (!session) throw new DeviceError("session_lost", "the session ended before the request left",
      { replayable: true });
    if (this.requests.size >= e2e.MAX_IN_FLIGHT) throw new DeviceError("refused", "too many requests in flight");
    const id = this.nextId++;
    const request = new Request(this, session, id, method);
    this.requests.set(id, request);
    const whole = body.length <= e2e.MAX_BODY_CHUNK;
    try {
      this._send(session, messages.req(id, method, path, headers, whole), whole ? body : undefined);
    } catch (e) {
      this.requests.delete(id);
      if (!(e instanceof e2e.MessageError)) throw e;
      throw new DeviceError("too_large", "the request's address and headers are over 64 KiB: it was not sent");
    }
    request.arm();
    sent.push(id);
    if (whole) request.sent = body.length;
    else this._upload(request, body);
    return request.started.promise;
  }

  async _upload(request, body) {
    let at = 0;
    while (at < body.length) {
      if (this.requests.get(request.id) !== request) return; // over
      const room = e2e.CREDIT_WINDOW - (request.sent - request.acked);
      if (room <= 0) {
        await new Promise((resolve) => (request.credit = resolve));
        continue;
      }
      const n = Math.min(room, e2e.MAX_BODY_CHUNK, body.length - at);
      const part = body.subarray(at, at + n);
      at += n;
      request.sent += n;
      this._send(request.session, messages.body(request.id, at === body.length), part);
    }
  }

  _within(promise, message) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new DeviceError("timeout", message)), this.timeoutMs);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }
}
