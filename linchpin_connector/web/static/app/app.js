// The phone app's page: pairs from `#pair=` (or a pasted link), keeps the
// device's state in IndexedDB, and shows where it stands in `data-app-state`:
// unpaired, pairing, ready, offline, revoked.

import { Device, pair } from "./device.js";
import { loadState, saveState } from "./store.js";

const root = document.getElementById("app");
const detail = document.getElementById("detail");
const MIN_DELAY = 1000, MAX_DELAY = 60000;
let device = null;
let failures = 0;
let retry = null;

function show(state, text = "") {
  root.dataset.appState = state;
  detail.textContent = text;
}

function again() {
  // back-off with jitter, so that a fleet of phones does not come back in step
  const delay = Math.min(MAX_DELAY, MIN_DELAY * 2 ** failures) * (1 + 0.2 * Math.random());
  failures += 1;
  clearTimeout(retry);
  retry = setTimeout(connect, delay);
}

async function connect() {
  const state = await loadState();
  if (!state) return show("unpaired");
  device ??= new Device(state, { saveState, onStatus });
  try {
    await device.open();
    await device.handshake();
    failures = 0;
    show("ready");
  } catch (e) {
    if (e.kind === "revoked" || e.kind === "rejected") return show("revoked");
    show("offline", e.message);
    again();
  }
}

function onStatus(status) {
  if (root.dataset.appState === "revoked") return;
  if (status === "offline") {
    show("offline");
    if (!device?.link?.open) again();
  } else if (status === "online" && root.dataset.appState === "offline") {
    device.handshake().then(() => show("ready"), () => {});
  }
}

async function pairWith(uri) {
  show("pairing");
  try {
    await saveState(await pair(uri));
  } catch (e) {
    return show("unpaired", e.message);
  }
  device = null;
  await connect();
}

document.getElementById("paste").addEventListener("submit", (event) => {
  event.preventDefault();
  pairWith(document.getElementById("uri").value);
});

/** A pairing link opened on this page (`#pair=`): true when there was one. */
function pairFromFragment() {
  if (!location.hash.startsWith("#pair=")) return false;
  const fragment = location.hash.slice("#pair=".length);
  // The secret leaves the address bar and this history entry at once.
  history.replaceState(null, "", location.pathname + location.search);
  let uri = "";
  try {
    uri = decodeURIComponent(fragment);
  } catch {
    uri = "";
  }
  pairWith(uri);
  return true;
}

window.addEventListener("hashchange", pairFromFragment);
if (!pairFromFragment()) connect();
window.linchpinApp = { get device() { return device; } };
