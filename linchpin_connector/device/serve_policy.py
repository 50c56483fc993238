"""What ``lmdevice serve`` lets through, and what it changes on the way.

Other web pages open in the same browser must not use the paired user's
access, and the intranet's cookies must not reach other local servers:

- :class:`HostCheck`: only the address it listens on is a valid ``Host``
  (DNS rebinding);
- :func:`cross_site`: a request another site made (``Sec-Fetch-Site``, else
  a foreign ``Origin`` or ``Referer``) is refused whatever its method, and
  so is every CORS preflight; a top-level navigation the user typed
  (``Sec-Fetch-Site: none`` with ``Sec-Fetch-Mode: navigate``) goes through;
- :func:`rewrite_location`: a ``Location`` never sends the browser off this
  server (an absolute or scheme-relative URL becomes a path, however a
  browser would read its slashes, backslashes and whitespace);
- :class:`CookieSeal`: cookies are scoped to this server.  Browsers send a
  cookie to every port of a host, so each cookie the app sets is renamed
  ``lm<port>_<name>`` and its value sealed (AES-256-GCM, a key of this
  process): another local server receives only opaque values, another
  ``lmdevice serve`` ignores them, and a cookie this server did not seal is
  never sent on to the app.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from urllib.parse import urlsplit, urlunsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

class HostCheck:
    """Which ``Host`` values name this server (a defence against DNS rebinding).

    Only the address it listens on, with its port; ``localhost`` too when
    that address is loopback; any IP address when it listens on all
    interfaces (a DNS name is never accepted: rebinding needs one).
    """

    def __init__(self, host: str, port: int):
        self.port = port
        address = ipaddress.ip_address(host)
        self.any_address = address.is_unspecified
        self.loopback = address.is_loopback
        self.names = {address.compressed}
        if address.is_loopback:
            self.names.add("localhost")

    def __call__(self, value: bytes | None) -> bool:
        if not value:
            return False
        try:
            parts = urlsplit("//" + value.decode("ascii"))
            name, port = parts.hostname, parts.port
        except (UnicodeDecodeError, ValueError):
            return False
        if port is None:
            port = 80
        if name is None or port != self.port or parts.path or parts.username is not None:
            return False
        if name in self.names:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return self.any_address


def _origin_of(url: bytes) -> bytes | None:
    try:
        parts = urlsplit(url.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower().encode()


def cross_site(request, host: bytes) -> bool:
    """True for a request that another site (or a page of no origin) made."""
    if request.getHeader(b"access-control-request-method") is not None:
        return True  # a CORS preflight: this server's own pages never need one
    own = b"http://" + host.lower()
    fetch_site = request.getHeader(b"sec-fetch-site")
    if fetch_site is not None:
        if fetch_site == b"same-origin":
            return False
        # "none": the user typed it or chose a bookmark; only a navigation
        return not (fetch_site == b"none" and request.getHeader(b"sec-fetch-mode") == b"navigate")
    origin = request.getHeader(b"origin")  # a browser that does not send Sec-Fetch-*
    if origin is not None and origin.lower() != own:
        return True
    referer = request.getHeader(b"referer")
    return referer is not None and _origin_of(referer) != own


_BLANKS = re.compile(r"[\t\n\r]")
_HTTP_SCHEME = re.compile(r"https?:", re.IGNORECASE)


def rewrite_location(value: str) -> str:
    """A Location on this server: an absolute http(s) URL, or one a browser
    would read as another host (``//x``, ``/\\x``, with tabs or blanks), becomes
    its path (and query); the tunnel only reaches the intranet app."""
    cleaned = _BLANKS.sub("", value).strip("\x00 \x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f"
                                            "\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f")
    slashed = cleaned.replace("\\", "/")
    special = _HTTP_SCHEME.match(slashed)
    if special:
        # A browser reads http(s): followed by any slashes (or none) as an
        # authority: "https:evil", "http:/\\evil" and "http://evil" alike.
        slashed = "//" + slashed[special.end():].lstrip("/")
    if not slashed.startswith("//"):
        return value
    parts = urlsplit("http:" + slashed)
    path = "/" + parts.path.lstrip("/")
    return urlunsplit(("", "", path, parts.query, parts.fragment))


_COOKIE_DOMAIN = re.compile(r";\s*domain=[^;]*", re.IGNORECASE)


class CookieSeal:
    """The app's cookies renamed and sealed for one ``lmdevice serve``."""

    def __init__(self, port: int, key: bytes | None = None):
        self.prefix = f"lm{port}_"
        self._aead = AESGCM(key or AESGCM.generate_key(bit_length=256))

    def set_cookie(self, value: str) -> str:
        """A ``Set-Cookie`` of the app, as this server sends it on."""
        pair, sep, attributes = value.partition(";")
        name, eq, content = pair.partition("=")
        if not eq:  # a browser keeps "value" as a cookie with an empty name
            name, content = "", name
        name = name.strip()
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, content.strip().encode("latin-1", "replace"), name.encode("latin-1"))
        token = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()
        return _COOKIE_DOMAIN.sub("", f"{self.prefix}{name}={token}{sep}{attributes}")

    def cookie_header(self, value: str) -> str | None:
        """The browser's ``Cookie`` header as the app set it: only cookies
        this server sealed, opened; None when none is left."""
        kept = []
        for item in value.split(";"):
            name, eq, token = item.strip().partition("=")
            if not eq or not name.startswith(self.prefix):
                continue
            original = name[len(self.prefix):]
            try:
                raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
                content = self._aead.decrypt(raw[:12], raw[12:], original.encode("latin-1"))
            except (ValueError, InvalidTag):
                continue
            kept.append(f"{original}={content.decode('latin-1')}" if original else content.decode("latin-1"))
        return "; ".join(kept) or None
