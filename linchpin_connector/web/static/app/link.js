// One MQTT 3.1.1 session to the gateway over a WebSocket (PROTOCOL.md section 4).

import * as mqtt from "./mqtt.js";

export const KEEP_ALIVE = 30; // seconds; a PINGREQ goes when nothing else went for this long

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
  static connect(gatewayUrl, username, password, { onMessage, onClose, timeoutMs = 30000 } = {}) {
    return new Promise((resolve, reject) => {
      const link = new MqttLink(onMessage, onClose);
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
      ws.onopen = () => link.send(mqtt.connect({ username, password, keepAlive: KEEP_ALIVE }));
      ws.onmessage = (event) => link.received(new Uint8Array(event.data));
      ws.onerror = () => {};
      ws.onclose = () => {
        clearTimeout(timer);
        if (!link.open) reject(new LinkError("gateway unreachable"));
        link.closed();
      };
    });
  }

  constructor(onMessage, onClose) {
    this.onMessage = onMessage || (() => {});
    this.onClose = onClose || (() => {});
    this.parser = new mqtt.Parser();
    this.waiting = new Map(); // packet id -> [resolve, reject]
    this.nextId = 0;
    this.open = false;
    this.ended = false;
    this.lastSent = Date.now();
    this.pinger = null;
  }

  send(bytes) {
    if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(bytes);
      this.lastSent = Date.now();
    }
  }

  keepAlive() {
    this.pinger = setInterval(() => {
      if (Date.now() - this.lastSent >= (KEEP_ALIVE * 1000) / 2) this.send(mqtt.pingreq());
    }, (KEEP_ALIVE * 1000) / 4);
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
