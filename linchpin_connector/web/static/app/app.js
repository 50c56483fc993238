// The phone app's page: pairs from `#pair=` (or a pasted link), stores the
// device's state in IndexedDB, starts the service worker (which holds the
// device: sw.js) and shows where things stand in `data-app-state`: unpaired,
// pairing, ready, offline, revoked.  Where no service worker can run, this page
// holds the device itself.

import { pair, parsePairingUri } from "./device.js";
import { b64uEncode } from "./bytes.js";
import { Keeper } from "./keeper.js";
import { forgetCookies, loadState, saveState } from "./store.js";

const root = document.getElementById("app");
const detail = document.getElementById("detail");
// The pairing page at a path of the intranet's origin (e.g. /mobile/): the
// worker takes the whole origin, and brings the intranet's URLs from anywhere.
const PAIRING_PAGE = new URL("../", location.href).pathname;
const WATCH_MS = 20000; // the worker is asked for news this often, which keeps it running
let registration = null;
let keeper = null; // this page's own, when no service worker runs
let pairing = false;
let pairingError = ""; // why the last pairing failed: shown until the next one

function show(state, text = "") {
  if (pairing && state !== "pairing") return; // the pairing under way has the last word
  root.dataset.appState = state;
  detail.textContent = text || (state === "unpaired" ? pairingError : "");
}

function worker() {
  return navigator.serviceWorker.controller || registration?.active;
}

/** Ask whoever holds the device to connect (or to start again from a new pairing). */
function nudge(type = "watch") {
  if (keeper) return type === "paired" ? keeper.reload() : keeper.ensure();
  worker()?.postMessage({ type });
}

/** Resolves once the registration's worker runs; rejects if it fails to install. */
function activated(reg) {
  const candidate = reg.installing || reg.waiting;
  if (!candidate) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const check = () => {
      if (candidate.state === "activating" || candidate.state === "activated") resolve();
      else if (candidate.state === "redundant") reject(new Error("the service worker did not install"));
    };
    candidate.addEventListener("statechange", check);
    check();
  });
}

async function start() {
  const scope = PAIRING_PAGE === "/" ? "./" : "/";
  try {
    navigator.serviceWorker.addEventListener("message", (event) => {
      if (event.data?.type === "app-state") show(event.data.state, event.data.detail);
    });
    navigator.serviceWorker.startMessages();
    registration = await navigator.serviceWorker.register("sw.js", { type: "module", scope, updateViaCache: "none" });
    await activated(registration);
  } catch {
    // A new version that failed to install leaves the one that runs: it keeps the device.
    registration = await navigator.serviceWorker?.getRegistration(scope).catch(() => null);
    if (!registration?.active) {
      registration = null;
      keeper = new Keeper({ onChange: show }); // no worker at all: this page holds the device
    }
  }
  nudge();
  setInterval(nudge, WATCH_MS);
}

// This company's connector, as the connector that served this page says: a
// link naming another connector would send the intranet's URLs elsewhere.
const CONNECTOR_KEY = document.querySelector('meta[name="linchpin-connector-key"]')?.content || "";

/** Why ``uri`` must not pair this app, or "" (before anything is sent). */
async function refusal(uri) {
  let info;
  try {
    info = parsePairingUri(uri);
  } catch (e) {
    return e.message;
  }
  if (CONNECTOR_KEY && b64uEncode(info.connectorKey) !== CONNECTOR_KEY) {
    return "this pairing link is for another company's connector, not this one";
  }
  const stored = await loadState().catch(() => null);
  const current = root.dataset.appState;
  if (stored && current !== "revoked" && current !== "unpaired"
      && !confirm("This phone is already paired. Replace its pairing with this link?")) {
    return "the phone's pairing was kept";
  }
  return "";
}

async function pairWith(uri) {
  const refused = await refusal(uri);
  if (refused) {
    pairingError = refused;
    const current = root.dataset.appState;
    return show(current && current !== "pairing" ? current : "unpaired", refused);
  }
  pairing = true;
  pairingError = "";
  show("pairing");
  try {
    const state = await pair(uri);
    await forgetCookies(); // the intranet's cookies of an earlier pairing are not this one's
    await saveState(state);
  } catch (e) {
    pairing = false;
    pairingError = e.message;
    return show("unpaired");
  }
  pairing = false;
  await ready;
  nudge("paired");
}

document.getElementById("paste").addEventListener("submit", (event) => {
  event.preventDefault();
  pairWith(document.getElementById("uri").value);
});

/** A pairing link opened on this page (`#pair=`). */
function pairFromFragment() {
  if (!location.hash.startsWith("#pair=")) return;
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
}

document.getElementById("intranet").hidden = PAIRING_PAGE === "/"; // the pairing page has an origin of its own
const ready = start();
window.addEventListener("hashchange", pairFromFragment);
pairFromFragment();
