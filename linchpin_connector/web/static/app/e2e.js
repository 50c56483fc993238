// The device's side of the end-to-end channel (PROTOCOL.md section 5) on
// WebCrypto: X25519, HKDF-SHA256, AES-256-GCM, SHA-256.  Mirrors
// linchpin_common/contract/e2e.py; tests/vectors/contract.json pins the bytes
// both must make.  Input from the network never throws: it gives null
// ("drop silently"), except an authentic DATA with a seq above the expected
// one, which throws SessionGap (the session is over).

import { BODY, REQ, RES } from "./messages.js";
import { concat, decodeUtf8, equal, readU32, readU64, u32, u64, utf8 } from "./bytes.js";

export const VERSION = 1, HELLO = 1, WELCOME = 2, DATA = 3, RESET = 4, REJECT = 5;
export const KEY_SETUP = 0, KEY_DEVICE = 1;
export const HELLO_LEN = 63, WELCOME_LEN = 71, DATA_MIN_LEN = 34, RESET_LEN = 10, REJECT_LEN = 2;
export const MAX_HEADER = 65536, MAX_BODY_CHUNK = 262144, CREDIT_WINDOW = 1048576, MAX_IN_FLIGHT = 64;
const BODY_TYPES = new Set([REQ, RES, BODY]);
const subtle = globalThis.crypto.subtle;
const INFO_HANDSHAKE = utf8.encode("lm-e2e v1 handshake");
const INFO_SESSION = utf8.encode("lm-e2e v1 session");
const INFO_DEVICE_SECRET = utf8.encode("lm-e2e v1 device secret");
// PKCS #8 of an X25519 private key, before its 32 raw bytes (RFC 8410)
const PKCS8_X25519 = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e,
  0x04, 0x22, 0x04, 0x20]);

export class MessageError extends Error {}
export class SessionGap extends Error {
  constructor(expected, received) {
    super(`expected seq ${expected}, received ${received}`);
    this.expected = expected;
    this.received = received;
  }
}

function deviceBytes(deviceId) {
  if (!/^[0-9a-f]{32}$/.test(deviceId)) throw new Error("device_id must be 32 lowercase hex characters");
  return utf8.encode(deviceId);
}

async function hkdf(ikm, salt, info, length) {
  const key = await subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, key, 8 * length));
}

async function sha256(bytes) {
  return new Uint8Array(await subtle.digest("SHA-256", bytes));
}

async function aesKey(raw) {
  return subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
}

async function seal(key, nonce, plaintext, aad) {
  return new Uint8Array(await subtle.encrypt({ name: "AES-GCM", iv: nonce, additionalData: aad }, key, plaintext));
}

async function open(key, nonce, sealed, aad) {
  try {
    return new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv: nonce, additionalData: aad }, key, sealed));
  } catch {
    return null;
  }
}

/** An X25519 key pair: fresh (its private key not extractable), or from 32 raw bytes (test vectors). */
export async function x25519KeyPair(privateRaw) {
  if (privateRaw === undefined) return subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
  const privateKey = await subtle.importKey("pkcs8", concat(PKCS8_X25519, privateRaw), { name: "X25519" }, true,
    ["deriveBits"]);
  const jwk = await subtle.exportKey("jwk", privateKey);
  const publicKey = await subtle.importKey("jwk", { kty: "OKP", crv: "X25519", x: jwk.x }, { name: "X25519" },
    true, []);
  return { privateKey, publicKey };
}

export async function publicRaw(keyPair) {
  return new Uint8Array(await subtle.exportKey("raw", keyPair.publicKey));
}

/** X25519, or null when the result is all zero (a low-order point) or the point is refused. */
async function dh(privateKey, peerRaw) {
  try {
    const peer = await subtle.importKey("raw", peerRaw, { name: "X25519" }, false, []);
    const shared = new Uint8Array(await subtle.deriveBits({ name: "X25519", public: peer }, privateKey, 256));
    return equal(shared, new Uint8Array(32)) ? null : shared;
  } catch {
    return null;
  }
}

export function handshakeKey(K, deviceId) {
  return hkdf(K, new Uint8Array(32), concat(INFO_HANDSHAKE, deviceBytes(deviceId)), 32);
}

// -- envelopes ---------------------------------------------------------------

/** One MQTT payload as an envelope ({type, ...}), or null for anything else. */
export function parseEnvelope(raw) {
  if (!(raw instanceof Uint8Array) || raw.length < 2 || raw[0] !== VERSION) return null;
  const type = raw[1], n = raw.length;
  if (type === HELLO || type === WELCOME) {
    if (n !== (type === HELLO ? HELLO_LEN : WELCOME_LEN) || raw[2] > KEY_DEVICE) return null;
    return { type, keyKind: raw[2], nonce: raw.subarray(3, 15), sealed: raw.subarray(15), raw };
  }
  if (type === DATA) {
    if (n < DATA_MIN_LEN) return null;
    return { type, sessionId: raw.subarray(2, 10), seq: readU64(raw, 10), sealed: raw.subarray(18), raw };
  }
  if (type === RESET) return n === RESET_LEN ? { type, sessionId: raw.subarray(2, 10) } : null;
  if (type === REJECT) return n === REJECT_LEN ? { type } : null;
  return null;
}

// -- messages inside DATA ----------------------------------------------------

function checkMessage(header, body) {
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new MessageError("header must be a JSON object");
  }
  if (typeof header.t !== "string") throw new MessageError('header needs a string "t"');
  if (body.length && !BODY_TYPES.has(header.t)) throw new MessageError(`message type ${header.t} carries no body`);
  if (body.length > MAX_BODY_CHUNK) throw new MessageError("body over 256 KiB");
}

/** u32 header_len || compact UTF-8 JSON header || body */
export function encodeMessage(header, body = new Uint8Array(0)) {
  checkMessage(header, body);
  const encoded = utf8.encode(JSON.stringify(header));
  if (encoded.length > MAX_HEADER) throw new MessageError("header over 64 KiB");
  return concat(u32(encoded.length), encoded, body);
}

/** [header, body] of one plaintext message; throws MessageError when malformed. */
export function decodeMessage(data) {
  if (data.length < 4) throw new MessageError("message shorter than its length prefix");
  const length = readU32(data, 0);
  if (length > MAX_HEADER) throw new MessageError("header over 64 KiB");
  if (length > data.length - 4) throw new MessageError("header length beyond the message");
  let header;
  try {
    header = JSON.parse(decodeUtf8(data.subarray(4, 4 + length)));
  } catch (e) {
    throw new MessageError(`header is not UTF-8 JSON: ${e.message}`);
  }
  const body = data.subarray(4 + length);
  checkMessage(header, body);
  return [header, body];
}

// -- sessions ----------------------------------------------------------------

/** One end-to-end session of the device: sends with k_up, receives with k_down. */
export class Session {
  static async create(sessionId, deviceId, kUp, kDown) {
    return new Session(sessionId, deviceId, await aesKey(kUp), await aesKey(kDown));
  }

  constructor(sessionId, deviceId, sendKey, recvKey) {
    this.sessionId = sessionId;
    this.deviceId = deviceId;
    this.D = deviceBytes(deviceId);
    this.sendKey = sendKey;
    this.recvKey = recvKey;
    this.sendSeq = 0;
    this.recvSeq = 0;
  }

  /** The next DATA envelope carrying ``message``. */
  async seal(message) {
    const seq = this.sendSeq++;
    const head = concat(Uint8Array.of(VERSION, DATA), this.sessionId, u64(seq));
    return concat(head, await seal(this.sendKey, concat(new Uint8Array(4), u64(seq)), message, concat(head, this.D)));
  }

  /** The plaintext of the peer's next DATA; null to drop it; throws SessionGap. */
  async open(env) {
    if (!env || env.type !== DATA || !equal(env.sessionId, this.sessionId)) return null;
    const plain = await open(this.recvKey, concat(new Uint8Array(4), u64(env.seq)), env.sealed,
      concat(env.raw.subarray(0, 18), this.D));
    if (plain === null || env.seq < this.recvSeq) return null;
    if (env.seq > this.recvSeq) throw new SessionGap(this.recvSeq, env.seq);
    this.recvSeq += 1;
    return plain;
  }

  owns(env) {
    return env && equal(env.sessionId, this.sessionId);
  }
}

// -- the handshake -------------------------------------------------------------

/** The device's side of one handshake: ``start`` makes the HELLO, ``finish`` takes its WELCOME. */
export class DeviceHandshake {
  /** ``options.ephemeral`` and ``options.nonce`` are for test vectors only. */
  static async start(deviceId, K, keyKind, connectorPublic, options = {}) {
    const D = deviceBytes(deviceId);
    if (K.length !== 32) throw new Error("a long-term key K must be 32 bytes");
    if (keyKind !== KEY_SETUP && keyKind !== KEY_DEVICE) throw new Error("key_kind must be 0 or 1");
    const kHs = await handshakeKey(K, deviceId);
    const ephemeral = options.ephemeral ?? (await x25519KeyPair());
    const staticShared = await dh(ephemeral.privateKey, connectorPublic);
    if (staticShared === null) throw new Error("the connector's public key is unusable");
    const nonce = options.nonce ?? crypto.getRandomValues(new Uint8Array(12));
    const head = concat(Uint8Array.of(VERSION, HELLO, keyKind), nonce);
    const sealed = await seal(await aesKey(kHs), nonce, await publicRaw(ephemeral), concat(head, D, utf8.encode("up")));
    const hs = new DeviceHandshake();
    Object.assign(hs, { deviceId, D, K, keyKind, kHs, ephemeral, staticShared, hello: concat(head, sealed),
      done: false });
    return hs;
  }

  /** {session, deviceSecretKey} for the WELCOME that answers this HELLO, else null. */
  async finish(welcome) {
    const env = welcome instanceof Uint8Array ? parseEnvelope(welcome) : welcome;
    if (this.done || !env || env.type !== WELCOME || env.keyKind !== this.keyKind) return null;
    const aad = concat(env.raw.subarray(0, 15), this.D, utf8.encode("down"), await sha256(this.hello));
    const plain = await open(await aesKey(this.kHs), env.nonce, env.sealed, aad);
    if (plain === null) return null;
    const ephemeralShared = await dh(this.ephemeral.privateKey, plain.subarray(0, 32));
    if (ephemeralShared === null) return null;
    this.done = true;
    const sessionId = plain.slice(32, 40);
    const ikm = concat(ephemeralShared, this.staticShared);
    const th = await sha256(concat(this.hello, env.raw));
    const okm = await hkdf(ikm, this.K, concat(INFO_SESSION, this.D, sessionId, th), 64);
    let deviceSecretKey = null;
    if (this.keyKind === KEY_SETUP) deviceSecretKey = await hkdf(ikm, this.K, concat(INFO_DEVICE_SECRET, this.D, th), 32);
    const session = await Session.create(sessionId, this.deviceId, okm.subarray(0, 32), okm.subarray(32));
    return { session, deviceSecretKey, kUp: okm.slice(0, 32), kDown: okm.slice(32) };
  }
}
