// The app's service worker.  It holds the device (keeper.js) and:
// - keeps the app's own files in a cache, so the app opens when the
//   connector's page cannot be reached (network first, then the cache);
// - when the pairing page sits at a path of the intranet app's own origin
//   (`/mobile/` to the connector, the rest to the app), takes the whole origin
//   as its scope (the connector sends `Service-Worker-Allowed: /`) and brings
//   the intranet's own URLs to the phone from anywhere: a request goes to the
//   network while the intranet answers, and through the end-to-end channel as
//   the paired user when it cannot be reached.
// Registered by app.js as a module worker.

import * as cookies from "./cookies.js";
import { RETRIED_METHODS } from "./device.js";
import { Keeper } from "./keeper.js";
import { changeCookies, loadCookies } from "./store.js";
import { browserResponse, crossSite, failure, requestHeaders, servicePage, setCookies } from "./tunnel.js";

const APP = new URL("./", self.location.href).pathname; // <root>/app/
const ROOT = new URL("../", self.location.href).pathname; // the pairing page
// The pairing page at a path of an origin: the rest of the origin is the intranet app.
const TUNNELS = ROOT !== "/";
const CACHE = "linchpin-app-1";
const SHELL = ["./", "app.js", "app.css", "device.js", "link.js", "e2e.js", "mqtt.js", "messages.js", "bytes.js",
  "store.js", "keeper.js", "manifest.webmanifest", "icon-192.png", "icon-512.png"];
// After the network failed, requests go straight through the tunnel for this long.
const OUTSIDE_MS = 30000;
let outsideUntil = 0;
// A safe request without an answer for this long asks the probe, which waits this long at most, whether the
// phone is outside.
const SLOW_MS = 5000, PROBE_MS = 4000;

const keeper = new Keeper({ onChange: tell });

async function tell(state, detail) {
  for (const client of await self.clients.matchAll({ type: "window", includeUncontrolled: true })) {
    client.postMessage({ type: "app-state", state, detail });
  }
}

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  keeper.claim();
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name !== CACHE) await caches.delete(name);
    await self.clients.claim();
  })());
});

self.addEventListener("message", (event) => {
  const kind = event.data?.type;
  const done = kind === "paired" ? keeper.reload() : keeper.ensure();
  event.waitUntil(done);
  if (keeper.state) event.source?.postMessage({ type: "app-state", state: keeper.state, detail: keeper.detail });
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return; // not ours: the browser's own
  if (url.pathname.startsWith(APP)) {
    if (request.method === "GET") event.respondWith(shell(request));
  } else if (url.pathname.startsWith(ROOT)) {
    if (request.mode === "navigate") event.respondWith(pairingPage(request));
  } else if (TUNNELS) {
    event.respondWith(intranet(request));
  }
});

/** The app's files: the network's, kept; the cache's when the network fails or answers 5xx. */
async function shell(request) {
  const cache = await caches.open(CACHE);
  let response = null;
  try {
    response = await fetch(request);
  } catch (e) {
    const kept = await cache.match(request, { ignoreSearch: true });
    if (kept) return kept;
    throw e;
  }
  if (response.ok && response.type === "basic") await cache.put(request, response.clone());
  else if (response.status >= 500) return (await cache.match(request, { ignoreSearch: true })) || response;
  return response;
}

async function pairingPage(request) {
  try {
    return await fetch(request);
  } catch {
    return servicePage(503, "Pairing page out of reach",
      "The pairing page can be reached only from inside the company. The intranet still works on this phone.",
      { link: [APP, "Open the intranet app on this phone"] });
  }
}

/** True when this origin's own files cannot be fetched either (or not in time): the phone is outside. */
async function unreachable() {
  try {
    await fetch(new URL("manifest.webmanifest", self.location.href),
      { cache: "no-store", signal: AbortSignal.timeout(PROBE_MS) });
    return false;
  } catch {
    return true;
  }
}

class Outside extends Error {}

/**
 * ``request`` over the network.  A safe one that has no answer after SLOW_MS
 * (an address that swallows packets costs minutes before TCP gives up) is
 * given up if the probe says the phone is outside; a slow intranet that is
 * there is waited for.  An unsafe one is never given up: it may be running.
 */
async function network(request, safe) {
  if (!safe) return fetch(request);
  const giveUp = new AbortController(); // the page's abort, or ours (AbortSignal.any is too new for older phones)
  request.signal.addEventListener("abort", () => giveUp.abort(), { once: true });
  const attempt = fetch(request, {
    signal: giveUp.signal, referrer: request.referrer, referrerPolicy: request.referrerPolicy,
  });
  let timer;
  const slow = new Promise((resolve) => (timer = setTimeout(resolve, SLOW_MS, SLOW)));
  try {
    if ((await Promise.race([attempt, slow])) !== SLOW || !(await unreachable())) return await attempt;
  } finally {
    clearTimeout(timer);
  }
  giveUp.abort();
  attempt.catch(() => {});
  throw new Outside("no answer from the network");
}
const SLOW = Symbol("slow");

async function intranet(request) {
  const safe = RETRIED_METHODS.has(request.method); // the methods the contract may send twice
  const copy = safe ? request : request.clone();
  if (Date.now() >= outsideUntil) {
    try {
      return await network(request, safe);
    } catch (e) {
      // The page gave up, or the network answered something fetch refuses
      // (a redirect loop, CORS): the browser's error, not the tunnel's job.
      if (request.signal?.aborted || (!(e instanceof Outside) && (e.name === "AbortError" || !(await unreachable())))) {
        throw e;
      }
      outsideUntil = Date.now() + OUTSIDE_MS; // the phone is outside: the tunnel, for a while
      if (!safe) {
        // It may have reached the server before the network failed: never sent twice (PROTOCOL.md section 5).
        return servicePage(503, "Not sent",
          "The intranet could not be reached over the network, so this was not sent. Send it again: it will go " +
          "through this phone's encrypted channel.", { link: ["/", "Open the intranet"] });
      }
    }
  }
  return tunnel(copy);
}

async function tunnel(request) {
  const url = new URL(request.url);
  if (crossSite(request, self.location.origin)) {
    return servicePage(403, "Sent by another site",
      "Another site asked this phone to send a form to the intranet. Open the intranet yourself and send it from there.",
      { link: ["/", "Open the intranet"] });
  }
  const body = request.method === "GET" || request.method === "HEAD" ? new Uint8Array(0)
    : new Uint8Array(await request.arrayBuffer());
  let response;
  try {
    const device = await keeper.current();
    const deviceId = device.state.deviceId; // the jar is this device's: never another pairing's
    const jar = await loadCookies(deviceId);
    const headers = requestHeaders(request, self.location.origin, cookies.cookieHeader(jar, url.pathname, Date.now()),
      navigator.userAgent);
    response = await keeper.send(device, request.method, url.pathname + url.search, { headers, body });
    const received = setCookies(response.headers);
    if (received.length) {
      await changeCookies(deviceId, (kept) => cookies.store(kept, received, url.pathname, Date.now())).catch(() => {});
    }
  } catch (e) {
    return failed(e);
  }
  return browserResponse(request.method, response.status, response.headers, response.body);
}

/** The page for a request the tunnel could not bring. */
function failed(error) {
  if (keeper.state === "revoked") {
    return servicePage(403, "Access removed",
      "This phone's access to the intranet was removed. Pair it again from the company's pairing page if you " +
      "still need it.", { state: "revoked" });
  }
  if (keeper.state === "unpaired") {
    return servicePage(503, "Not paired", "This phone is not paired: open the intranet app to pair it.",
      { link: [APP, "Open the intranet app on this phone"] });
  }
  const [status, title] = failure(error);
  return servicePage(status, title, status === 503
    ? `The intranet cannot be reached from here right now (${error.message}). Try again in a moment.`
    : `The intranet's answer could not be brought to this phone: ${error.message}.`,
  { link: [APP, "Open the intranet app on this phone"] });
}
