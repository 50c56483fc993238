// What the service worker changes on a request it sends through the
// end-to-end channel, and on the response it hands to the browser.  The
// tunnel reaches only the intranet app, so it follows the same rules as
// `lmdevice serve` (linchpin_connector/device/serve_policy.py): a Location
// never leaves this origin; the browser's own cookies are not sent (they are
// not the worker's to read), the tunnel's jar is (cookies.js).

import { RETRIED_METHODS } from "./device.js";

const BLANKS = /[\t\n\r]/g;
const EDGES = /^[\x00-\x20]+|[\x00-\x20]+$/g; // eslint-disable-line no-control-regex
const HTTP_SCHEME = /^https?:/i;

/**
 * A ``Location`` on this origin: an absolute http(s) URL, or one a browser
 * would read as another host (``//x``, ``/\x``, with tabs or blanks), becomes
 * its path (and query and fragment); anything else is kept as it is.  The same
 * function as serve_policy.rewrite_location (tests/vectors/contract.json).
 */
export function rewriteLocation(value) {
  let slashed = value.replace(BLANKS, "").replace(EDGES, "").replaceAll("\\", "/");
  const scheme = HTTP_SCHEME.exec(slashed);
  if (scheme) slashed = "//" + slashed.slice(scheme[0].length).replace(/^\/+/, "");
  if (!slashed.startsWith("//")) return value;
  const rest = slashed.slice(2);
  const end = rest.search(/[/?#]/);
  let tail = end < 0 ? "" : rest.slice(end);
  let fragment = "", query = "";
  const hash = tail.indexOf("#");
  if (hash >= 0) [tail, fragment] = [tail.slice(0, hash), tail.slice(hash + 1)];
  const mark = tail.indexOf("?");
  if (mark >= 0) [tail, query] = [tail.slice(0, mark), tail.slice(mark + 1)];
  return "/" + tail.replace(/^\/+/, "") + (query ? "?" + query : "") + (fragment ? "#" + fragment : "");
}

/**
 * True for a request another site made the browser send: a navigation with
 * an unsafe method (a form posted from another site) whose referrer is not
 * this origin.  Inside, the browser would send such a POST without the
 * intranet's SameSite cookies; through the tunnel the connector would
 * vouch for the user, so it is refused instead (as `lmdevice serve` does).
 * Other requests reach the worker only from pages of this origin.
 */
export function crossSite(request, origin) {
  if (request.mode !== "navigate" || RETRIED_METHODS.has(request.method)) return false;
  try {
    return new URL(request.referrer).origin !== origin;
  } catch {
    return true; // no referrer: nothing says this origin asked
  }
}

// The tunnel sets these itself (or they belong to one hop).
const REQUEST_DROPPED = new Set(["cookie", "host", "content-length", "accept-encoding", "connection", "keep-alive",
  "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"]);
const RESPONSE_DROPPED = new Set(["set-cookie", "set-cookie2", "connection", "keep-alive", "transfer-encoding",
  "trailer", "upgrade"]);
const NULL_BODY = new Set([101, 103, 204, 205, 304]);
const DECODED = new Set(["gzip", "deflate"]);

/**
 * The headers a tunnelled request carries: the page's, the jar's cookies, no
 * compression, and what a browser adds itself on the network but a worker
 * does not see (``request``: the fetch event's): ``User-Agent``, a ``Referer``
 * of this origin, and ``Origin`` on an unsafe method, so that an app's CSRF
 * checks (Django, Rails) accept a form sent through the tunnel as they do
 * inside.  Only this origin's pages reach the tunnel (crossSite).
 */
export function requestHeaders(request, origin, cookie, userAgent) {
  const pairs = [];
  for (const [name, value] of request.headers) if (!REQUEST_DROPPED.has(name.toLowerCase())) pairs.push([name, value]);
  const has = new Set(pairs.map(([name]) => name.toLowerCase()));
  const add = (name, value) => has.has(name.toLowerCase()) || pairs.push([name, value]);
  if (userAgent) add("User-Agent", userAgent);
  let referrer = null;
  try {
    referrer = new URL(request.referrer);
  } catch {
    // "" (no referrer) or about:client
  }
  if (referrer?.origin === origin) {
    referrer.hash = ""; // never sent
    add("Referer", referrer.href);
  }
  if (!RETRIED_METHODS.has(request.method)) add("Origin", origin);
  if (cookie) pairs.push(["Cookie", cookie]);
  pairs.push(["Accept-Encoding", "identity"]); // a body the worker hands on must be plain
  return pairs;
}

// A request the connector refused (its `err` code, PROTOCOL.md section 5), as HTTP says it.
const REFUSED = { bad_request: 400, forbidden: 403, too_large: 413, backend_unreachable: 502, busy: 503,
  timeout: 504 };
const TITLES = { 400: "Refused", 403: "Not allowed from the phone", 413: "Too large", 431: "Headers too large",
  502: "Intranet out of reach", 503: "Intranet out of reach", 504: "No answer in time" };

/** [status, title] of the page for a request that failed with DeviceError ``error``. */
export function failure(error) {
  let status = 503;
  if (error.kind === "refused") status = REFUSED[error.code] || 503;
  else if (error.kind === "too_large") status = 431; // its address and headers: never sent
  else if (error.kind === "timeout") status = 504;
  return [status, TITLES[status]];
}

/** The ``Set-Cookie`` values of a tunnelled response. */
export function setCookies(headers) {
  return headers.filter(([name]) => name.toLowerCase() === "set-cookie").map(([, value]) => value);
}

/**
 * The browser's Response for a tunnelled one: ``status``, ``headers`` (pairs)
 * and ``body`` (a ReadableStream, never read whole here).
 */
export function browserResponse(method, status, headers, body) {
  if (status < 200 || status > 599) {
    body?.cancel();
    return servicePage(502, "Bad answer", `The intranet answered with status ${status}, which a browser cannot take.`);
  }
  const encoding = (headers.find(([name]) => name.toLowerCase() === "content-encoding")?.[1] || "").trim()
    .toLowerCase();
  const decode = DECODED.has(encoding);
  const out = new Headers();
  for (const [name, value] of headers) {
    const lower = name.toLowerCase();
    if (RESPONSE_DROPPED.has(lower) || (decode && (lower === "content-encoding" || lower === "content-length"))) {
      continue;
    }
    try {
      out.append(name, lower === "location" ? rewriteLocation(value) : value);
    } catch {
      // a header value no browser takes: dropped, as a browser would
    }
  }
  if (method === "HEAD" || NULL_BODY.has(status)) {
    body?.cancel();
    return new Response(null, { status, headers: out });
  }
  const stream = decode ? body.pipeThrough(new DecompressionStream(encoding)) : body;
  return new Response(stream, { status, headers: out });
}

const PAGE_STYLE = "body{font-family:system-ui,sans-serif;margin:0;color:#111}main{max-width:36rem;margin:0 auto;" +
  "padding:1.25rem}h1{font-size:1.4rem;color:#1f3a5f}";

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A page of the worker's own (the device revoked, the intranet out of reach). */
export function servicePage(status, title, text, { link = null, state = null } = {}) {
  // link: [href, text]
  const more = link ? `<p><a href="${escapeHtml(link[0])}">${escapeHtml(link[1])}</a></p>` : "";
  const html = `<!doctype html><html lang="en"><head><meta charset="utf-8">` +
    `<meta name="viewport" content="width=device-width, initial-scale=1"><title>${escapeHtml(title)}</title>` +
    `<style>${PAGE_STYLE}</style></head><body><main${state ? ` data-app-state="${state}"` : ""}>` +
    `<h1>${escapeHtml(title)}</h1><p id="message">${escapeHtml(text)}</p>${more}</main></body></html>`;
  return new Response(html, {
    status,
    headers: { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
      "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'" },
  });
}
