"""The connector and the device behind a real HTTP proxy (tinyproxy on loopback).

The gateway speaks TLS with a certificate from a test CA, so the tunnel
carries TLS to the gateway, verified as without a proxy.
"""

from __future__ import annotations

import json

import pytest

from tests.proxy_support import TinyProxy, command, environment, free_port
from tests.support import Connector, SampleApp
from tests.tls_support import TLSGateway, make_tls_files


def one_line_error(done, code: int, *expected: str) -> str:
    err = done.stderr.decode(errors="replace")
    assert done.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], err
    return lines[0]


@pytest.fixture
def world(tmp_path):
    tls = make_tls_files(tmp_path)
    gateway = TLSGateway(tmp_path / "gw", tls)
    app = SampleApp()
    yield tls, gateway, app
    for proc in (app, gateway):
        proc.kill()


def test_everything_goes_through_the_proxy(world, tmp_path):
    tls, gateway, app = world
    proxy = TinyProxy(tmp_path / "proxy", connect_ports=[gateway.port])
    data = tmp_path / "connector"
    admin = ("lmconnector", "--data-dir", data, "--ca-file", tls.ca, "--proxy", proxy.url)
    # TLS runs inside the tunnel and is verified as without a proxy: the test CA is needed
    untrusted = command("lmconnector", "--data-dir", data, "--proxy", proxy.url, "register", "--gateway",
                        gateway.url, check=False)
    one_line_error(untrusted, 3, "TLS with localhost:", "certificate verify failed")
    command(*admin, "register", "--gateway", gateway.url)
    connector = Connector(data, app.url, "--ca-file", str(tls.ca), "--proxy", proxy.url)
    try:
        connector.wait_for(r"reaching the gateway through the HTTP proxy http://127\.0\.0\.1:%d" % proxy.port)
        connector.wait_online()
        uri = command(*admin, "device", "add", "alice").stdout.decode().strip()

        # the device takes its proxy from the environment, as curl does
        env = environment(https_proxy=proxy.url)
        state = tmp_path / "alice.json"
        paired = command("lmdevice", "--ca-file", tls.ca, "--state", state, "pair", "-", stdin=(uri + "\n").encode(),
                         env=env)
        assert b"end-to-end key agreed" in paired.stderr
        who = command("lmdevice", "--state", state, "request", "/api/whoami", env=env)
        assert json.loads(who.stdout) == {"user": "alice", "method": "GET", "path": "/api/whoami", "query": ""}

        device_id = json.load(open(state))["device_id"]
        listing = command(*admin, "device", "list").stdout.decode()
        assert listing.startswith(f"{device_id}\talice\t")
        command(*admin, "device", "revoke", device_id)
        assert command(*admin, "device", "list").stdout == b""

        # the untrusted try, register, the daemon's WebSocket and its device
        # list, device add, pairing (REST + WebSocket), the request's WebSocket, revoke
        target = f"CONNECT localhost:{gateway.port} HTTP/1.1"
        seen = proxy.requests(9)
        assert set(seen) == {target}, seen
        assert connector.terminate() == 0
    finally:
        connector.kill()
        proxy.kill()


def test_proxy_authentication(world, tmp_path):
    tls, gateway, app = world
    proxy = TinyProxy(tmp_path / "proxy", connect_ports=[gateway.port], basic_auth=("bob", "right-pw"))
    data = tmp_path / "connector"
    user_url = proxy.url.replace("http://", "http://bob@")
    wrong = tmp_path / "wrong-pw"
    wrong.write_text("wrong-pw\n")
    right = tmp_path / "right-pw"
    right.write_text("right-pw\n")
    register = ("lmconnector", "--data-dir", data, "--ca-file", tls.ca, "register", "--gateway", gateway.url)

    none = command(*register, env=environment(https_proxy=proxy.url), check=False)
    one_line_error(none, 3, "lmconnector: proxy 127.0.0.1", "requires authentication (407; no credentials given)")
    bad = command(*register, env=environment(https_proxy=user_url, LINCHPIN_PROXY_PASSWORD="wrong-pw"), check=False)
    # tinyproxy answers wrong credentials with 401, not 407: the same error
    line = one_line_error(bad, 3, "requires authentication (401; wrong user name or password)",
                          "--proxy-password-file")
    assert "wrong-pw" not in line
    command(*register, env=environment(https_proxy=user_url, LINCHPIN_PROXY_PASSWORD="right-pw"))
    # INTERFACE.md's --proxy http://user:password@host:port works too, with a warning about ps
    in_ps = command("lmconnector", "--data-dir", tmp_path / "second", "--ca-file", tls.ca,
                    "--proxy", proxy.url.replace("http://", "http://bob:right-pw@"), "register", "--gateway",
                    gateway.url)
    said = (in_ps.stdout + in_ps.stderr).decode()
    assert "visible in ps" in said and "right-pw" not in said

    # the daemon with a wrong password: one line per attempt, retried with its backoff
    daemon = ("--ca-file", str(tls.ca), "--proxy", user_url)
    connector = Connector(data, app.url, *daemon, "--proxy-password-file", str(wrong))
    try:
        for _ in range(2):
            connector.wait_for(r"cannot reach the gateway: proxy 127\.0\.0\.1:\d+ requires authentication "
                               r"\(401; wrong user name or password\)")
        assert connector.terminate() == 0
        assert "wrong-pw" not in connector.text() and "right-pw" not in connector.text()
    finally:
        connector.kill()
    connector = Connector(data, app.url, *daemon, "--proxy-password-file", str(right))
    try:
        connector.wait_online()
        assert "right-pw" not in connector.text()
        assert connector.terminate() == 0
    finally:
        connector.kill()
        proxy.kill()


def test_refused_unreachable_and_no_proxy(world, tmp_path):
    tls, gateway, app = world
    proxy = TinyProxy(tmp_path / "proxy", connect_ports=[1])  # CONNECT to the gateway's port is not allowed
    data = tmp_path / "connector"
    register = ("lmconnector", "--data-dir", data, "--ca-file", tls.ca, "register", "--gateway", gateway.url)

    refused = command(*register, "--force", env=environment(https_proxy=proxy.url), check=False)
    one_line_error(refused, 3, f"refused CONNECT localhost:{gateway.port}: HTTP/1.1 403 Access violation")

    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = command(*register, env=environment(https_proxy=nowhere), check=False)
    one_line_error(unreachable, 3, f"proxy {nowhere[7:]} unreachable")

    # NO_PROXY naming the gateway's host: straight to the gateway
    command(*register, env=environment(https_proxy=nowhere, NO_PROXY="example.com,localhost"))
    uri = command("lmconnector", "--data-dir", data, "--ca-file", tls.ca, "--proxy", "", "device", "add",
                  "carol").stdout.decode().strip()
    state = tmp_path / "carol.json"
    pair = command("lmdevice", "--ca-file", tls.ca, "--state", state, "pair", uri,
                   env=environment(https_proxy=nowhere), check=False)
    one_line_error(pair, 3, "lmdevice: proxy", "unreachable")
    command("lmdevice", "--ca-file", tls.ca, "--state", state, "pair", uri,
            env=environment(https_proxy=nowhere, no_proxy="localhost"))
    request = command("lmdevice", "--state", state, "--proxy", nowhere, "request", "/", check=False)
    one_line_error(request, 3, "lmdevice: proxy", "unreachable")
    assert proxy.requests(1) == [f"CONNECT localhost:{gateway.port} HTTP/1.1"]  # only the refused one
    proxy.kill()


def test_daemon_waits_out_a_proxy_that_is_down(world, tmp_path):
    tls, gateway, app = world
    port = free_port()
    data = tmp_path / "connector"
    command("lmconnector", "--data-dir", data, "--ca-file", tls.ca, "register", "--gateway", gateway.url)
    connector = Connector(data, app.url, "--ca-file", str(tls.ca), "--proxy", f"http://127.0.0.1:{port}")
    proxy = None
    try:
        connector.wait_for(rf"cannot reach the gateway: proxy 127\.0\.0\.1:{port} unreachable")
        proxy = TinyProxy(tmp_path / "proxy", connect_ports=[gateway.port], port=port)
        connector.wait_online()  # at its next attempt, without a restart
        assert proxy.requests(1)[0] == f"CONNECT localhost:{gateway.port} HTTP/1.1"
        assert connector.terminate() == 0
    finally:
        connector.kill()
        if proxy is not None:
            proxy.kill()
