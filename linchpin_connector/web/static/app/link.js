// One MQTT 3.1.1 session to the gateway over a WebSocket (PROTOCOL.md section 4).

import * as mqtt from "./mqtt.js";

// Seconds.  A PINGREQ goes when nothing went, or nothing came, for half of it;
// when nothing at all came for a whole of it (not even a PINGRESP), the
// connection is dead though the socket looks open (a half-open TCP
// connection: a phone's network changed, a NAT forgot it): it is dropped.
export const KEEP_ALIVE = 30;

export class LinkError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code; // the CONNACK return code, when refused
  }
}

/** ``http(s)://host[:port][/base]`` -> ``ws(s)://host[:port][/base]/mqtt`` */
export function websocketUrl(gatewayUrl) {
  const url = new URL(gatewayUrl);
  const scheme = { "http:": "ws:", "https:": "wss:" }[url.protocol];
  if (!scheme) throw new LinkError(`not an http(s) gateway URL: ${gatewayUrl}`);
  return `${scheme}//${url.host}${url.pathname.replace(/\/+$/, "")}/mqtt`;
}

export class MqttLink {
  /** Resolves once CONNACK 0 arrived; rejects with a LinkError otherwise. */
  static connect(gatewayUrl, username, password,
    { onMessage, onClose, timeoutMs = 30000, keepAlive = KEEP_ALIVE } = {}) {
    return new Promise((resolve, reject) => {
      const link = new MqttLink(onMessage, onClose, keepAlive);
      const ws = new WebSocket(websocketUrl(gatewayUrl), "mqtt");
      ws.binaryType = "arraybuffer";
      link.ws = ws;
      const timer = setTimeout(() => {
        reject(new LinkError("no answer from the gateway"));
        ws.close();
      }, timeoutMs);
      link.connack = (code) => {
        clearTimeout(timer);
        if (code === 0) {
          link.open = true;
          link.keepAlive();
          resolve(link);
        } else {
          reject(new LinkError(`the gateway refused the session (CONNACK ${code})`, code));
          ws.close();
        }
      };
      ws.onopen = () => link.send(mqtt.connect({ username, password, keepAlive }));
      ws.onmessage = (event) => link.received(new Uint8Array(event.data));
      ws.onerror = () => {};
      ws.onclose = () => {
        clearTimeout(timer);
        if (!link.open) reject(new LinkError("gateway unreachable"));
        link.closed();
      };
    });
  }

  constructor(onMessage, onClose, keepAlive = KEEP_ALIVE) {
    this.onMessage = onMessage || (() => {});
    this.onClose = onClose || (() => {});
    this.parser = new mqtt.Parser();
    this.waiting = new Map(); // packet id -> [resolve, reject]
    this.nextId = 0;
    this.open = false;
    this.ended = false;
    this.keepAliveMs = keepAlive * 1000;
    this.lastSent = this.lastReceived = Date.now();
    this.pinger = null;
  }

  send(bytes) {
    if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(bytes);
      this.lastSent = Date.now();
    }
  }

  keepAlive() {
    const half = this.keepAliveMs / 2;
    this.pinger = setInterval(() => {
      const now = Date.now();
      if (now - this.lastReceived >= this.keepAliveMs) this.dead();
      else if (now - this.lastSent >= half || now - this.lastReceived >= half) this.send(mqtt.pingreq());
    }, this.keepAliveMs / 4);
  }

  /** Nothing came back for a whole keep-alive: the session ends now, not when TCP gives up. */
  dead() {
    const ws = this.ws;
    ws.onmessage = ws.onclose = null;
    ws.close();
    this.closed();
  }

  packetId() {
    this.nextId = (this.nextId % 65535) + 1;
    return this.nextId;
  }

  subscribe(filters) {
    const id = this.packetId();
    return new Promise((resolve, reject) => {
      if (this.ended) return reject(new LinkError("the connection to the gateway was lost"));
      this.waiting.set(id, [resolve, reject]);
      this.send(mqtt.subscribe(id, filters));
    });
  }

  publish(topic, payload) {
    this.send(mqtt.publish(topic, payload, 0));
  }

  received(bytes) {
    this.lastReceived = Date.now();
    let packets;
    try {
      packets = [...this.parser.feed(bytes)];
    } catch {
      this.close(); // a malformed packet from the gateway ends the session
      return;
    }
    for (const p of packets) {
      if (p.type === mqtt.CONNACK) this.connack?.(p.returnCode);
      else if (p.type === mqtt.SUBACK) {
        this.waiting.get(p.packetId)?.[0](p.returnCodes);
        this.waiting.delete(p.packetId);
      } else if (p.type === mqtt.PUBLISH) {
        if (p.qos === 1) this.send(mqtt.puback(p.packetId));
        this.onMessage(p.topic, p.payload);
      }
    }
  }

  close() {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(mqtt.disconnect());
    this.ws.close();
  }

  closed() {
    if (this.ended) return;
    const wasOpen = this.open;
    this.ended = true;
    this.open = false;
    clearInterval(this.pinger);
    // A subscription still unanswered never will be: whoever waits for it hears so.
    for (const [, reject] of this.waiting.values()) reject(new LinkError("the connection to the gateway was lost"));
    this.waiting.clear();
    if (wasOpen) this.onClose(); // a session refused or never made was never the device's
  }
}
