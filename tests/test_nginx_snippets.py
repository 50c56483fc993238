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

import pytest

from tests.nginx_support import DEPLOY, FakeSSO, Nginx, adapt
from tests.proxy_support import free_port
from tests.support import BIN, TIMEOUT, Process, SampleApp
from tests.tls_support import make_tls_files, ssl_context


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
    sso = FakeSSO()
    page = SampleApp()  # stands in for the pairing page: /echo-headers shows what reached it
    nginx = None
    try:
        nginx_port = free_port()
        http_conf = adapt((DEPLOY / "pairing-page-sso.conf").read_text(), nginx_port, tls,
                          {"127.0.0.1:4180": sso.address,
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
        sso.stop()
        page.kill()
        if nginx is not None:
            nginx.stop()
