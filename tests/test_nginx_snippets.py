"""deploy/nginx/ snippets, run by a real nginx on loopback.

The snippets are used as written, with only what a deployment changes
replaced: ports (free ones), certificate paths (a test CA's), and the
IPv6 ``listen`` lines dropped (loopback IPv4 only here).

- gateway-tls.conf: TLS at nginx, PROXY protocol to ``--listen haproxy:...``:
  a client registers through it and the gateway sees the client's own
  address (127.0.0.2), not nginx's.
- pairing-page-sso.conf: nginx asks the SSO who the user is and sets the
  identity header itself; a header the browser sends is replaced, and without
  a session the SSO's sign-in answers.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.proxy_support import free_port
from tests.support import BIN, TIMEOUT, Process, SampleApp
from tests.tls_support import make_tls_files, ssl_context

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    assert found and Path(STREAM_MODULE).exists(), "nginx is missing: run tools/system-packages.sh"
    return found


def adapt(text: str, port: int, tls, replacements: dict[str, str]) -> str:
    text = re.sub(r"^\s*listen \[::\]:443 ssl;\n", "", text, flags=re.MULTILINE)
    text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    text = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {tls.server_cert};", text)
    text = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {tls.server_key};", text)
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


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


class FakeSSO(BaseHTTPRequestHandler):
    """``/oauth2/auth``: 202 with the user for a request carrying our session cookie, else 401."""

    def do_GET(self):
        if self.path.startswith("/oauth2/auth"):
            if "session=alice" in (self.headers.get("Cookie") or ""):
                self.send_response(202)
                self.send_header("X-Auth-Request-User", "alice")
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


@pytest.fixture
def tls(tmp_path):
    return make_tls_files(tmp_path)


def https(port, tls, method, path, body=None, headers=None, source="127.0.0.1"):
    conn = http.client.HTTPSConnection("localhost", port, context=ssl_context(tls.ca), timeout=TIMEOUT,
                                       source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_tls_termination_passes_the_client_address(tmp_path, tls):
    gateway_port, nginx_port = free_port(), free_port()
    gateway = Process([f"{BIN}/twistd", "-n", "--pidfile=", "lmgateway", "--data-dir", str(tmp_path / "gw"),
                       "--listen", f"haproxy:tcp:{gateway_port}:interface=127.0.0.1",
                       "--public-url", f"https://localhost:{nginx_port}"])
    nginx = None
    try:
        gateway.wait_for(r"lmgateway listening on")
        stream = adapt((DEPLOY / "gateway-tls.conf").read_text(), nginx_port, tls,
                       {"server 127.0.0.1:8080;": f"server 127.0.0.1:{gateway_port};"})
        nginx = Nginx(tmp_path / "nginx", stream=stream)
        assert https(nginx_port, tls, "GET", "/healthz")[0] == 200
        status, body = https(nginx_port, tls, "POST", "/api/v1/instances", b"{}",
                             {"Content-Type": "application/json"}, source="127.0.0.2")
        assert status == 201, body
        instance = json.loads(body)["instance_id"]
        # the gateway's audit line names the client's address, which only the PROXY protocol told it
        gateway.wait_for(rf"{instance}.*127\.0\.0\.2|127\.0\.0\.2.*{instance}")
        # and a connector registers and works through it, TLS verified with the test CA
        from tests.proxy_support import command
        data = tmp_path / "connector"
        command("lmconnector", "--data-dir", data, "--ca-file", tls.ca, "register", "--gateway",
                f"https://localhost:{nginx_port}")
        assert command("lmconnector", "--data-dir", data, "--ca-file", tls.ca, "device", "add",
                       "alice").stdout.startswith(b"linchpin-mobile://pair?")
        assert gateway.terminate() == 0
    finally:
        gateway.kill()
        if nginx is not None:
            nginx.stop()


def test_pairing_page_behind_sso_gets_the_identity_from_nginx_only(tmp_path, tls):
    sso = ThreadingHTTPServer(("127.0.0.1", 0), FakeSSO)
    threading.Thread(target=sso.serve_forever, daemon=True).start()
    page = SampleApp()  # stands in for the pairing page: /echo-headers shows what reached it
    nginx = None
    try:
        nginx_port = free_port()
        http_conf = adapt((DEPLOY / "pairing-page-sso.conf").read_text(), nginx_port, tls,
                          {"127.0.0.1:4180": f"127.0.0.1:{sso.server_address[1]}",
                           "http://127.0.0.1:8091": page.url})
        nginx = Nginx(tmp_path / "nginx", http=http_conf)

        status, body = https(nginx_port, tls, "GET", "/echo-headers",
                             headers={"Cookie": "session=alice", "X-Forwarded-User": "mallory"})
        assert status == 200, body
        seen = [v for k, v in json.loads(body)["headers"] if k.lower() == "x-forwarded-user"]
        assert seen == ["alice"]  # set by nginx from the SSO; the browser's value never passes

        status, body = https(nginx_port, tls, "GET", "/echo-headers", headers={"X-Forwarded-User": "mallory"})
        assert status == 200 and body == b"sign in here"  # no session: the SSO's sign-in, not the page
    finally:
        sso.shutdown()
        sso.server_close()
        page.kill()
        if nginx is not None:
            nginx.stop()
