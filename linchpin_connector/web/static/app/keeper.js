// The one device of this browser, kept connected: the service worker holds
// it (or the app's page, where no worker can run).  Two holders would fight
// over the gateway session (one MQTT client identifier per device) and the
// connector's end-to-end session, so a holder that starts tells the others,
// over a BroadcastChannel, to let go.
//
// States, as the app shows them (INTERFACE.md "Phone app"): unpaired, ready,
// offline, revoked.

import { Device, DeviceError } from "./device.js";
import { loadState, saveState } from "./store.js";

export const MIN_DELAY = 1000, MAX_DELAY = 60000; // reconnect back-off, with jitter
const CHANNEL = "linchpin-device";
const GONE = new Set(["revoked", "rejected"]);

export class Keeper {
  constructor({ onChange = () => {}, timeoutMs = 60000 } = {}) {
    this.onChange = onChange;
    this.timeoutMs = timeoutMs;
    this.state = null;
    this.detail = "";
    this.device = null;
    this.connecting = null;
    this.failures = 0;
    this.retry = null;
    this.stopped = false;
    this.channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(CHANNEL) : null;
    if (this.channel) this.channel.onmessage = (event) => event.data === "takeover" && this.stop();
  }

  /** This holder takes the device: any other (an older worker, another page) lets go. */
  claim() {
    this.channel?.postMessage("takeover");
  }

  _set(state, detail = "") {
    if (state === this.state && detail === this.detail) return;
    this.state = state;
    this.detail = detail;
    this.onChange(state, detail);
  }

  /** Connect if not connected; settles once the state is known (never rejects). */
  ensure() {
    if (this.stopped) return Promise.resolve();
    if (this.state === "ready" && this.device?.session && this.device.link?.open) return Promise.resolve();
    this.connecting ??= this._connect()
      .catch((e) => this._set("offline", e.message)) // whatever went wrong, the app says so
      .finally(() => (this.connecting = null));
    return this.connecting;
  }

  async _connect() {
    let state;
    try {
      state = await loadState();
    } catch (e) { // storage refused (private mode, evicted): say so, never leave the app "starting"
      return this._set("offline", `this browser's storage cannot be read: ${e.message}`);
    }
    if (this.stopped) return; // another holder took the device meanwhile
    if (!state) {
      this._drop();
      return this._set("unpaired");
    }
    if (this.device && this.device.state.deviceId !== state.deviceId) this._drop();
    if (this.state === "revoked" && this.device) return; // until paired anew
    if (!this.device) this.claim(); // the holder that connects holds the device
    const device = (this.device ??= new Device(state, {
      saveState, timeoutMs: this.timeoutMs, onStatus: (status) => this._status(device, status),
    }));
    try {
      if (!device.link?.open) await device.open();
      await device.handshake();
      if (this.device !== device) return device.close(); // let go meanwhile (stop, a new pairing)
      this.failures = 0;
      this._set("ready");
    } catch (e) {
      if (this.device === device) this._failed(e);
    }
  }

  _failed(error) {
    if (GONE.has(error.kind)) {
      clearTimeout(this.retry);
      this.device?.close();
      return this._set("revoked", error.message);
    }
    this._set("offline", error.message);
    if (!this.device?.link?.open) this._again(); // the gateway: try again; the connector: it says when it is back
  }

  _status(device, status) {
    if (device !== this.device || this.state === "revoked" || this.stopped) return;
    if (status === "offline") {
      this._set("offline", device.link?.open ? "the company's connector is offline" : "the gateway cannot be reached");
      if (!device.link?.open) this._again();
    } else if (status === "online") {
      this.ensure();
    }
    // "moved": the device handshakes again by itself
  }

  _again() {
    // Anywhere from a tenth of the window to all of it (gateway_client.backoff): phones turned away
    // together by a restarting gateway come back spread out, not in waves.
    const delay = Math.min(MAX_DELAY, MIN_DELAY * 2 ** Math.min(this.failures, 32)) * (0.1 + 0.9 * Math.random());
    this.failures += 1;
    clearTimeout(this.retry);
    this.retry = setTimeout(() => this.ensure(), delay);
  }

  _drop() {
    clearTimeout(this.retry);
    const device = this.device;
    this.device = null;
    device?.close();
  }

  /** The device, connected; rejects with a DeviceError saying why there is none. */
  async current() {
    if (this.stopped) throw new DeviceError("offline", "another copy of the app holds this phone's connection");
    await this.ensure();
    if (this.state === "revoked") throw new DeviceError("revoked", this.detail);
    if (!this.device) throw new DeviceError("offline", "this phone is not paired");
    return this.device;
  }

  /** ``device.request`` (device.js); a revocation seen here is shown. */
  async send(device, method, path, options) {
    try {
      return await device.request(method, path, options);
    } catch (e) {
      if (GONE.has(e.kind) && device === this.device) this._failed(e);
      throw e;
    }
  }

  /** A request as the paired user. */
  async request(method, path, options) {
    return this.send(await this.current(), method, path, options);
  }

  /** The stored state changed (paired anew): start again from it. */
  async reload() {
    this._drop();
    this.stopped = false;
    this.failures = 0;
    await this.connecting; // an attempt with the old state ends first
    this.state = null;
    return this.ensure();
  }

  stop() {
    this.stopped = true;
    this._drop();
  }
}
