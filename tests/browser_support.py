"""Real-browser test helpers: Debian's Chromium driven by Playwright, MQTT.js from npm.

Playwright never downloads a browser here: it launches the system Chromium.
MQTT.js and axe-core are installed by npm once into ``.cache/npm`` at the
top of the checkout (ignored by git) and reused by later runs.  A small threaded HTTP
server serves test pages from a folder, so pages get a real ``http`` origin.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import http.server
import os
import shutil
import struct
import subprocess
import threading
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
]
MQTTJS_VERSION = "5.16.0"
AXE_VERSION = "4.10.2"
NPM_CACHE = os.path.join(ROOT, ".cache", "npm")


@contextlib.contextmanager
def chromium():
    """One headless Chromium (use one per test module: starting it costs a second)."""
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _npm_file(package: str, version: str, path: str) -> str:
    """``path`` inside npm package ``package@version``, installed into the cache when missing."""
    prefix = os.path.join(NPM_CACHE, f"{package}@{version}")  # one folder each: no install prunes another
    wanted = os.path.join(prefix, "node_modules", package, path)
    os.makedirs(NPM_CACHE, exist_ok=True)
    with open(os.path.join(NPM_CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # tests in parallel install once
        if not os.path.exists(wanted):
            subprocess.run(["npm", "install", "--prefix", prefix, "--no-audit", "--no-fund", "--no-save",
                            "--loglevel=error", f"{package}@{version}"], check=True, timeout=300,
                           stdin=subprocess.DEVNULL)
    return wanted


def mqttjs_bundle() -> str:
    """Path of MQTT.js's browser bundle (``dist/mqtt.min.js``)."""
    return _npm_file("mqtt", MQTTJS_VERSION, "dist/mqtt.min.js")


def axe_script() -> str:
    """axe-core, the accessibility rules engine, as one browser script."""
    return _npm_file("axe-core", AXE_VERSION, "axe.min.js")


def accessibility_violations(page) -> list:
    """axe-core's WCAG 2.1 A/AA violations on ``page`` (its context must have
    ``bypass_csp=True``: the engine is injected as a script)."""
    page.add_script_tag(path=axe_script())
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}});
        return r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
                                         nodes: v.nodes.map((n) => n.html.slice(0, 120))}));
    }""")
    return result


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class StaticServer:
    """Serves ``folder`` on 127.0.0.1 (a free port) from a thread."""

    def __init__(self, folder):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def handshake_origins(context, page) -> list:
    """Record the ``Origin`` header of every WebSocket handshake ``page`` sends (Chrome DevTools Protocol)."""
    origins = []
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.on("Network.webSocketWillSendHandshakeRequest",
           lambda event: origins.append({k.lower(): v for k, v in event["request"]["headers"].items()}.get("origin")))
    return origins


def png_gray(png: bytes) -> memoryview:
    """A screenshot (8-bit RGB or RGBA PNG, not interlaced) as a 2-D grayscale
    buffer, the shape a barcode reader takes."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, [], None
    while pos < len(png):
        (length,) = struct.unpack("!I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack("!IIBBBBB", data)
        elif kind == b"IDAT":
            idat.append(data)
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    previous = bytearray(stride)
    gray = bytearray()
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = previous[i]
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                corner = previous[i - bpp] if i >= bpp else 0
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        gray += bytes((line[i] + line[i + 1] + line[i + 2]) // 3 for i in range(0, stride, bpp))
        previous = line
    return memoryview(bytes(gray)).cast("B", (height, width))
