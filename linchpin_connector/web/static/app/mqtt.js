// MQTT 3.1.1 for the device (PROTOCOL.md section 4): the packets a device
// sends, and a stream parser for what the gateway sends.  An MQTT packet may
// span WebSocket messages and one message may hold several: the parser is
// fed bytes and yields whole packets.  Mirrors linchpin_common/contract/wire.py.

import { concat, decodeUtf8, utf8 } from "./bytes.js";

export const CONNECT = 1, CONNACK = 2, PUBLISH = 3, PUBACK = 4, SUBSCRIBE = 8, SUBACK = 9, UNSUBACK = 11,
  PINGREQ = 12, PINGRESP = 13, DISCONNECT = 14;
export const DEFAULT_MAX_PACKET = 1 << 20;

export class ProtocolError extends Error {}

function remainingLength(n) {
  const out = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 128;
    out.push(byte);
  } while (n > 0);
  return Uint8Array.from(out);
}

function string(text) {
  const bytes = typeof text === "string" ? utf8.encode(text) : text;
  if (bytes.length > 0xffff) throw new Error("an MQTT string holds at most 65535 bytes");
  return concat(Uint8Array.of(bytes.length >> 8, bytes.length & 255), bytes);
}

function packet(first, ...parts) {
  const body = concat(...parts);
  return concat(Uint8Array.of(first), remainingLength(body.length), body);
}

export function connect({ clientId = "", username, password, keepAlive = 30 }) {
  const flags = 0x02 | 0x80 | 0x40; // clean session, username, password
  const variable = concat(string("MQTT"), Uint8Array.of(4, flags, keepAlive >> 8, keepAlive & 255));
  return packet(CONNECT << 4, variable, string(clientId), string(username), string(password));
}

export function subscribe(packetId, filters) {
  const parts = filters.map(([filter, qos]) => concat(string(filter), Uint8Array.of(qos)));
  return packet((SUBSCRIBE << 4) | 2, Uint8Array.of(packetId >> 8, packetId & 255), ...parts);
}

export function publish(topic, payload, qos = 0, packetId = 0) {
  const id = qos ? Uint8Array.of(packetId >> 8, packetId & 255) : new Uint8Array(0);
  return packet((PUBLISH << 4) | (qos << 1), string(topic), id, payload);
}

export const puback = (packetId) => Uint8Array.of(PUBACK << 4, 2, packetId >> 8, packetId & 255);
export const pingreq = () => Uint8Array.of(PINGREQ << 4, 0);
export const disconnect = () => Uint8Array.of(DISCONNECT << 4, 0);

/** Feeds bytes, yields packets: {type, ...}.  Throws ProtocolError on anything malformed. */
export class Parser {
  constructor(maxPacket = DEFAULT_MAX_PACKET) {
    this.maxPacket = maxPacket;
    this.buffer = new Uint8Array(0);
  }

  *feed(bytes) {
    this.buffer = this.buffer.length ? concat(this.buffer, bytes) : bytes;
    for (;;) {
      const buf = this.buffer;
      if (buf.length < 2) return;
      let length = 0, multiplier = 1, at = 1;
      for (;;) {
        if (at >= buf.length) return; // the length is not whole yet
        const byte = buf[at++];
        length += (byte & 127) * multiplier;
        if (!(byte & 128)) break;
        multiplier *= 128;
        if (at > 4) throw new ProtocolError("malformed remaining length");
      }
      if (length > this.maxPacket) throw new ProtocolError(`a packet of ${length} bytes is over the limit`);
      if (buf.length < at + length) return;
      const first = buf[0], body = buf.subarray(at, at + length);
      this.buffer = buf.subarray(at + length);
      yield parsePacket(first, body);
    }
  }
}

function u16(bytes, at) {
  return (bytes[at] << 8) | bytes[at + 1];
}

function parsePacket(first, body) {
  const type = first >> 4, flags = first & 15;
  switch (type) {
    case CONNACK:
      if (body.length !== 2) throw new ProtocolError("CONNACK of another length");
      return { type, sessionPresent: !!(body[0] & 1), returnCode: body[1] };
    case PUBLISH: {
      const qos = (flags >> 1) & 3;
      if (qos > 1) throw new ProtocolError("QoS 2 PUBLISH");
      const topicLength = u16(body, 0);
      let at = 2 + topicLength;
      if (at > body.length) throw new ProtocolError("PUBLISH topic beyond the packet");
      const topic = decodeUtf8(body.subarray(2, at));
      let packetId = 0;
      if (qos) {
        packetId = u16(body, at);
        at += 2;
      }
      return { type, qos, topic, packetId, payload: body.slice(at) };
    }
    case PUBACK:
    case UNSUBACK:
      return { type, packetId: u16(body, 0) };
    case SUBACK:
      return { type, packetId: u16(body, 0), returnCodes: Array.from(body.subarray(2)) };
    case PINGRESP:
      return { type };
    default:
      throw new ProtocolError(`packet type ${type} from the gateway`);
  }
}
