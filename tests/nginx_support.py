"""A real nginx on loopback running the deploy/nginx/ snippets, and a stand-in
for the company's SSO (``auth_request`` to oauth2-proxy in the snippets).

Snippets are used as written, with only what a deployment changes replaced:
ports, certificate paths, the IPv6 ``listen`` lines (loopback IPv4 only here).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support import TIMEOUT, Process

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    assert found and Path(STREAM_MODULE).exists(), "nginx is missing: run tools/system-packages.sh"
    return found


def _replace(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def adapt(text: str, port: int, tls, replacements: dict[str, str]) -> str:
    """A snippet on ``127.0.0.1:port`` with the test CA's certificate."""
    text = re.sub(r"^\s*listen \[::\]:443 ssl;\n", "", text, flags=re.MULTILINE)
    text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    text = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {tls.server_cert};", text)
    text = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {tls.server_key};", text)
    return _replace(text, replacements)


def adapt_plain(text: str, port: int, replacements: dict[str, str]) -> str:
    """A snippet on plain ``http://127.0.0.1:port``, a secure context for a
    browser (loopback) whose certificate it need not trust."""
    text = re.sub(r"^\s*listen \[::\]:443 ssl;\n", "", text, flags=re.MULTILINE)
    text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{port};")
    text = re.sub(r"^\s*ssl_\w+\s+[^;]+;\n", "", text, flags=re.MULTILINE)
    return _replace(text, replacements)


class Nginx:
    def __init__(self, folder: Path, stream: str = "", http: str = ""):
        folder.mkdir()
        conf = folder / "nginx.conf"
        conf.write_text(f"""load_module {STREAM_MODULE};
pid {folder}/nginx.pid;
daemon off;
master_process on;
worker_processes 1;
error_log stderr notice;
events {{ worker_connections 64; }}
{stream}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
{http}
}}
""")
        binary = nginx_binary()
        check = subprocess.run([binary, "-t", "-q", "-p", str(folder), "-e", "stderr", "-c", str(conf)],
                               capture_output=True, text=True, timeout=TIMEOUT)
        assert check.returncode == 0, check.stderr
        self.process = Process([binary, "-p", str(folder), "-e", "stderr", "-c", str(conf)])
        self.process.wait_for(r"start worker process")

    def stop(self):
        self.process.kill()


class _SSOHandler(BaseHTTPRequestHandler):
    """``/oauth2/auth``: 202 naming the user of the request's ``session``
    cookie, else 401; any other path is the sign-in page."""

    def do_GET(self):
        if self.path.startswith("/oauth2/auth"):
            session = re.search(r"(?:^|;\s*)session=([a-z]+)", self.headers.get("Cookie") or "")
            if session:
                self.send_response(202)
                self.send_header("X-Auth-Request-User", session.group(1))
            else:
                self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            body = b"sign in here"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


class FakeSSO:
    """The SSO's ``auth_request`` endpoint on a thread: a ``session=NAME``
    cookie signs NAME in."""

    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _SSOHandler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
