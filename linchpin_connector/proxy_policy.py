"""What the connector's HTTP proxy lets through (PROTOCOL.md section 5,
"Proxying"): paths, methods and headers of a device's ``req``, and the headers
of the backend's answer.  No I/O: :mod:`linchpin_connector.proxy` runs the
requests and asks this module what passes.

Decisions where PROTOCOL.md leaves room:

* ``path`` must be printable ASCII (0x21-0x7E): control characters, DEL,
  space and non-ASCII are refused (percent-encode them, as RFC 3986 asks),
  and so is ``#`` (a fragment never goes to a server; the query would lose
  its tail). In the part before ``?`` every ``%`` must start a valid escape,
  and a segment is refused when, decoded once, it contains ``/``, ``\\`` or a
  control character, or is ``.``/``..`` before any ``;`` parameters
  (``/a/..;/b``). The allow-list is matched on the raw path, segment-wise and
  case-sensitively. The query is only checked for characters.
* Header names must be HTTP tokens (a ``:`` in a name would let a device
  forge another header); values may not hold control characters other than
  HTAB. Device header text is latin-1 on the wire when it fits (what
  Python's http.client does), else UTF-8; backend header bytes go to the
  device decoded as latin-1 (lossless). The identity header is the user name
  in UTF-8.
* Response headers pass minus hop-by-hop ones. Twisted's HTTP client already
  keeps Connection, Keep-Alive, TE, Transfer-Encoding, Upgrade and
  Content-Length out of them, so names that the backend lists in its own
  ``Connection`` header cannot be seen and pass. ``Content-Length`` is put
  back from the parsed length (not for HEAD, 204, 304) as a hint for progress
  bars; the body itself is framed by ``body`` messages.
* Forwarding headers (every ``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``
  and the like, see ``FORWARDING``) are never taken from a device: the
  connector sets ``X-Forwarded-Proto: https`` (the device's channel is
  encrypted end to end) and, when configured, ``X-Forwarded-Host``.
"""

from __future__ import annotations

import re

from linchpin_common.contract.e2e import MAX_BODY_CHUNK, MessageError, encode_message

from .config import TOKEN, USER_HEADER, check_public_host

__all__ = ["MAX_ID", "FORWARDING", "HeaderPolicy", "is_id", "path_allowed", "path_prefixes", "req_problem",
           "response_headers", "fits"]

MAX_ID = 2**53 - 1
HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"})
# Besides every X-Forwarded-*: what proxies and CDNs use to tell a backend
# who the client is or which host and URL it asked for.
FORWARDING = frozenset({
    "forwarded", "x-real-ip", "x-client-ip", "client-ip", "true-client-ip", "x-cluster-client-ip",
    "cf-connecting-ip", "fastly-client-ip", "x-original-forwarded-for", "x-original-host", "x-original-url",
    "x-rewrite-url", "x-host", "x-proxyuser-ip", "via",
})

_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls except HTAB
_PATH_CHARS = re.compile(r"[\x21-\x7e]+")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def is_id(value) -> bool:
    """A request id as the contract allows it (an integer JSON carries exactly)."""
    return type(value) is int and 0 <= value <= MAX_ID


def _norm(name: str) -> str:
    """Header names compare case-insensitively with ``_`` read as ``-``."""
    return name.lower().replace("_", "-")


def _wire(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _segment_ok(segment: str) -> bool:
    escapes = _ESCAPE.findall(segment)
    if segment.count("%") != len(escapes):
        return False  # a malformed escape: backends disagree on what it means
    decoded = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), segment)
    if any(c in "/\\" or c < " " or c == "\x7f" for c in decoded):
        return False
    return decoded.split(";", 1)[0] not in (".", "..")


def path_prefixes(allow_paths) -> tuple[str, ...]:
    """``--allow-path`` values as :func:`path_allowed` matches them (no
    trailing ``/``; ``"/"`` becomes ``""``, which allows everything)."""
    prefixes = []
    for prefix in allow_paths:
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValueError(f"allowed path prefix {prefix!r} must start with /")
        prefixes.append(prefix.rstrip("/"))
    return tuple(prefixes)


def path_allowed(path: str, prefixes) -> bool:
    """PROTOCOL.md "Proxying" path rules; ``prefixes`` come from :func:`path_prefixes`."""
    if not path.startswith("/") or path.startswith("//"):
        return False
    if not _PATH_CHARS.fullmatch(path) or "\\" in path or "#" in path:
        return False
    route = path.split("?", 1)[0]
    if not all(_segment_ok(s) for s in route.split("/")[1:]):
        return False
    return any(not p or route == p or route.startswith(p + "/") for p in prefixes)


def req_problem(header: dict, body: bytes) -> str | None:
    """The reason a ``req`` is malformed, or None."""
    method = header.get("method")
    if not isinstance(method, str) or not TOKEN.fullmatch(method):
        return "method must be an HTTP token"
    if not isinstance(header.get("path"), str):
        return "path must be a string"
    if not isinstance(header.get("end"), bool):
        return "end must be a boolean"
    headers = header.get("headers")
    if not isinstance(headers, list):
        return "headers must be a list"
    for pair in headers:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            return "each header must be a [name, value] pair of strings"
        if not TOKEN.fullmatch(pair[0]) or _BAD_VALUE.search(pair[1]):
            return "header name or value holds forbidden characters"
    if len(body) > MAX_BODY_CHUNK:
        return "body over 256 KiB"
    return None


def _drop_set(pairs, extra=()) -> set[str]:
    drop = set(HOP_BY_HOP).union(extra)
    for name, value in pairs:
        if _norm(name) == "connection":
            drop.update(_norm(token.strip()) for token in value.split(","))
    return drop


def _forwarding(name: str) -> bool:
    """Headers a backend behind a proxy trusts for the client's address,
    scheme or host: never taken from a device."""
    n = _norm(name)
    return n in FORWARDING or n.startswith("x-forwarded-")


def _kept(name: str, drop: set[str]) -> bool:
    n = _norm(name)
    return n not in drop and not n.startswith("proxy-")


def response_headers(raw_headers, length, method: str, code: int) -> list[list[str]]:
    """The backend's headers as the device gets them: ``raw_headers`` are
    ``(name, [values])`` in bytes; ``length`` the parsed body length, if any."""
    pairs = [(name.decode("latin-1"), value.decode("latin-1")) for name, values in raw_headers for value in values]
    drop = _drop_set(pairs, ("content-length",))
    kept = [[name, value] for name, value in pairs if _kept(name, drop)]
    if isinstance(length, int) and method != "HEAD" and code not in (204, 304):
        kept.append(["Content-Length", str(length)])
    return kept


def fits(header: dict) -> bool:
    """True when ``header`` fits one E2E message."""
    try:
        encode_message(header)
    except MessageError:
        return False
    return True


class HeaderPolicy:
    """The headers a device's request reaches the backend with, for one user:
    the device's own minus hop-by-hop, proxy and forwarding headers, plus the
    ones the connector sets (the user's identity, ``X-Forwarded-Proto`` and
    ``X-Forwarded-Host``)."""

    def __init__(self, user: str, *, user_header: str = USER_HEADER, public_host: str | None = None):
        if not TOKEN.fullmatch(user_header):
            raise ValueError("user_header must be an HTTP token")
        if not isinstance(user, str) or _BAD_VALUE.search(user):
            raise ValueError("user must be a string without control characters")
        check_public_host(public_host)
        self._user_header = user_header
        self._set = [(b"X-Forwarded-Proto", b"https")]
        if public_host:
            self._set.append((b"X-Forwarded-Host", public_host.encode("ascii")))
        self._set.append((user_header.encode("ascii"), user.encode("utf-8")))

    def backend_headers(self, pairs) -> list[tuple[bytes, bytes]]:
        """``pairs`` are the ``req``'s checked ``[name, value]`` strings."""
        drop = _drop_set(pairs, ("host", "content-length", _norm(self._user_header)))
        kept = [(name.encode("ascii"), _wire(value)) for name, value in pairs
                if _kept(name, drop) and not _forwarding(name)]
        return kept + self._set
