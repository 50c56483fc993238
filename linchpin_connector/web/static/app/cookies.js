// The cookie jar of the tunnel (RFC 6265, for one origin).  A response that
// comes through the end-to-end channel is made by the service worker, and the
// browser keeps no cookie from such a response: the worker keeps them here and
// sends them back with the next tunnelled requests, as the browser would have.
// Pure functions on plain objects: the worker stores the jar in IndexedDB.

export const MAX_COOKIES = 100;
export const MAX_COOKIE_BYTES = 4096;

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** RFC 6265 5.1.4: the folder of a request path, a cookie's path when it names none. */
export function defaultPath(path) {
  if (!path.startsWith("/")) return "/";
  const last = path.lastIndexOf("/");
  return last <= 0 ? "/" : path.slice(0, last);
}

/** RFC 6265 5.1.4: does ``cookiePath`` cover ``path``? */
export function pathMatches(path, cookiePath) {
  if (path === cookiePath) return true;
  if (!path.startsWith(cookiePath)) return false;
  return cookiePath.endsWith("/") || path[cookiePath.length] === "/";
}

/**
 * One ``Set-Cookie`` value, received for ``path`` at ``now`` (ms): a cookie
 * ``{name, value, path, expires}`` (``expires``: ms, or null for the session),
 * or null when the header is malformed.  Domain is ignored: the jar serves one
 * origin, so every cookie is host-only.
 */
export function parseSetCookie(header, path, now) {
  if (header.length > MAX_COOKIE_BYTES) return null;
  const [pair, ...attributes] = header.split(";");
  const equals = pair.indexOf("=");
  if (equals < 0) return null;
  const name = pair.slice(0, equals).trim();
  const value = pair.slice(equals + 1).trim();
  if (!TOKEN.test(name)) return null;
  const cookie = { name, value, path: defaultPath(path), expires: null };
  let maxAge = null;
  for (const attribute of attributes) {
    const at = attribute.indexOf("=");
    const key = (at < 0 ? attribute : attribute.slice(0, at)).trim().toLowerCase();
    const arg = at < 0 ? "" : attribute.slice(at + 1).trim();
    if (key === "path" && arg.startsWith("/")) cookie.path = arg;
    else if (key === "max-age" && /^-?\d+$/.test(arg)) maxAge = Number(arg);
    else if (key === "expires") {
      const when = Date.parse(arg);
      if (!Number.isNaN(when) && maxAge === null) cookie.expires = when;
    }
  }
  if (maxAge !== null) cookie.expires = maxAge <= 0 ? 0 : now + maxAge * 1000; // Max-Age wins over Expires
  return cookie;
}

/** The jar (a list of cookies) after ``setCookies`` (header values) came for ``path``. */
export function store(jar, setCookies, path, now) {
  let next = jar.filter((c) => c.expires === null || c.expires > now);
  for (const header of setCookies) {
    const cookie = parseSetCookie(header, path, now);
    if (!cookie) continue;
    next = next.filter((c) => !(c.name === cookie.name && c.path === cookie.path));
    if (cookie.expires === null || cookie.expires > now) next.push(cookie);
  }
  return next.slice(-MAX_COOKIES); // the oldest go first
}

/** The ``Cookie`` header for a request to ``path`` (longer paths first), or "". */
export function cookieHeader(jar, path, now) {
  return jar
    .map((cookie, order) => ({ cookie, order }))
    .filter(({ cookie }) => (cookie.expires === null || cookie.expires > now) && pathMatches(path, cookie.path))
    .sort((a, b) => b.cookie.path.length - a.cookie.path.length || a.order - b.order)
    .map(({ cookie }) => `${cookie.name}=${cookie.value}`)
    .join("; ");
}
