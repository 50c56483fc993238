"""TLS end to end: ``--listen ssl:...`` serves HTTPS and WSS, and the connector
and device verify the gateway's certificate (system roots by default, a
private CA with ``--ca-file``). Real processes on loopback, certificates from
a CA generated for the test (tests/tls_support.py)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest

from tests.support import Connector, SampleApp, cli
from tests.tls_support import TLSGateway, make_tls_files, ssl_context

QUICK = 15  # refusals must come at once; a hang would be a bug


class TLSSystem:
    def __init__(self, root):
        self.root = root
        self.tls = make_tls_files(root)
        self.gateway = TLSGateway(root / "gw", self.tls, wrong_name=True)
        try:
            self.app = SampleApp()
            self.connector_dir = root / "connector"
            done = cli("lmconnector", "--ca-file", self.tls.ca, "--data-dir", self.connector_dir, "register",
                       "--gateway", self.gateway.url)
            assert f"at {self.gateway.url}" in done.stderr.decode()
        except BaseException:
            self.stop()
            raise

    def add_device(self, user: str) -> str:
        return cli("lmconnector", "--ca-file", self.tls.ca, "--data-dir", self.connector_dir, "device", "add",
                   user).stdout.decode().strip()

    def stop(self):
        for proc in (getattr(self, "app", None), self.gateway):
            if proc is not None:
                proc.kill()


@pytest.fixture(scope="module")
def tls_system(tmp_path_factory):
    system = TLSSystem(tmp_path_factory.mktemp("tls-system"))
    yield system
    system.stop()


@pytest.fixture(scope="module")
def paired_state(tls_system):
    """A device paired over HTTPS (connector offline: the E2E key waits for the first request)."""
    state = tls_system.root / "paired.json"
    cli("lmdevice", "--ca-file", tls_system.tls.ca, "--state", state, "pair", "-",
        stdin=(tls_system.add_device("carol") + "\n").encode())
    return state


def one_line_error(done, *expected: str) -> str:
    err = done.stderr.decode(errors="replace")
    assert done.returncode != 0, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], err
    return lines[0]


def test_gateway_serves_https_with_the_generated_certificate(tls_system):
    tls, port = tls_system.tls, tls_system.gateway.port
    for url in (f"https://localhost:{port}/healthz", f"https://127.0.0.1:{port}/healthz"):  # DNS and IP SANs
        with urllib.request.urlopen(url, context=ssl_context(tls.ca), timeout=QUICK) as r:
            assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"https://localhost:{port}/healthz", context=ssl_context(tls.other_ca),
                               timeout=QUICK)
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)


def test_connector_and_device_work_over_https_and_wss(tls_system, tmp_path):
    tls, gateway = tls_system.tls, tls_system.gateway
    connector = Connector(tls_system.connector_dir, tls_system.app.url, "--ca-file", str(tls.ca))
    try:
        connector.wait_online()
        uri = tls_system.add_device("alice")
        assert uri.startswith(f"linchpin-mobile://pair?v=1&gateway={quote(gateway.url, safe='')}&")
        assert f"gateway=https%3A%2F%2Flocalhost%3A{gateway.port}&" in uri
        state = tmp_path / "alice.json"
        paired = cli("lmdevice", "--ca-file", tls.ca, "--state", state, "pair", "-", stdin=(uri + "\n").encode())
        assert b"end-to-end key agreed" in paired.stderr  # the WSS session and the E2E handshake worked
        assert json.load(open(state))["gateway_url"] == gateway.url

        # the CA given at pairing is remembered in the state file
        assert json.load(open(state))["ca_file"] == str(tls.ca)
        who = cli("lmdevice", "--state", state, "request", "/api/whoami")
        assert json.loads(who.stdout) == {"user": "alice", "method": "GET", "path": "/api/whoami", "query": ""}
        # a CA bundle counts every certificate in it, not only the first (here: the unrelated CA)
        page = cli("lmdevice", "--ca-file", tls.bundle, "--state", state, "request", "/")
        assert b"Hello, alice" in page.stdout
        assert connector.proc.poll() is None
    finally:
        assert connector.terminate() == 0


@pytest.mark.parametrize("trust", ["system roots", "unrelated CA"])
def test_untrusted_certificate_is_refused_with_a_clear_error(tls_system, paired_state, tmp_path, trust):
    tls = tls_system.tls
    ca = [] if trust == "system roots" else ["--ca-file", tls.other_ca]
    register = cli("lmconnector", *ca, "--data-dir", tmp_path / "connector", "register", "--gateway",
                   tls_system.gateway.url, check=False, timeout=QUICK)
    one_line_error(register, "lmconnector:", "TLS", "certificate verify failed", "--ca-file")
    not_saved = cli("lmconnector", "--data-dir", tmp_path / "connector", "device", "add", "x", check=False)
    one_line_error(not_saved, "no connector registered")  # nothing was saved from the refused gateway

    state = tmp_path / "phone.json"
    pair = cli("lmdevice", *ca, "--state", state, "pair", "-", stdin=(tls_system.add_device("bob") + "\n").encode(),
               check=False, timeout=QUICK)
    one_line_error(pair, "lmdevice:", "TLS", "certificate verify failed")
    assert not state.exists()

    # a device already paired: its WSS session is refused the same way (here
    # the CA it remembered is gone: system roots, or overridden by --ca-file)
    saved = json.load(open(paired_state))
    saved["ca_file"] = None
    other_state = tmp_path / "paired-elsewhere.json"
    other_state.write_text(json.dumps(saved))
    request = cli("lmdevice", *ca, "--state", other_state, "request", "/", check=False, timeout=QUICK)
    assert request.returncode == 3
    one_line_error(request, "lmdevice:", "TLS", "certificate verify failed")


def test_certificate_for_another_name_is_refused(tls_system, tmp_path):
    tls, url = tls_system.tls, tls_system.gateway.wrong_name_url
    register = cli("lmconnector", "--ca-file", tls.ca, "--data-dir", tmp_path / "connector", "register",
                   "--gateway", url, check=False, timeout=QUICK)
    one_line_error(register, "lmconnector:", "TLS", "not valid for that name")

    uri = tls_system.add_device("dave").replace(quote(tls_system.gateway.url, safe=""), quote(url, safe=""))
    pair = cli("lmdevice", "--ca-file", tls.ca, "--state", tmp_path / "dave.json", "pair", uri, check=False,
               timeout=QUICK)
    one_line_error(pair, "lmdevice:", "TLS", "not valid for that name")


def test_connector_daemon_with_the_wrong_ca_keeps_retrying(tls_system):
    connector = Connector(tls_system.connector_dir, tls_system.app.url, "--ca-file", str(tls_system.tls.other_ca))
    try:
        for _ in range(2):
            connector.wait_for(r"cannot reach the gateway: TLS .*certificate verify failed")
        assert connector.proc.poll() is None
        assert "connected to the gateway" not in connector.text()
        assert connector.terminate() == 0
    finally:
        connector.kill()


def test_unusable_ca_file_is_a_one_line_error(tls_system, paired_state, tmp_path):
    missing, junk = tmp_path / "missing.pem", tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    register = cli("lmconnector", "--ca-file", missing, "--data-dir", tmp_path / "c", "register", "--gateway",
                   tls_system.gateway.url, check=False, timeout=QUICK)
    one_line_error(register, "cannot read the CA file", str(missing))
    request = cli("lmdevice", "--ca-file", junk, "--state", paired_state, "request", "/", check=False,
                  timeout=QUICK)
    one_line_error(request, "holds no PEM certificate")
    daemon = Connector(tls_system.connector_dir, tls_system.app.url, "--ca-file", str(junk))
    assert daemon.proc.wait(QUICK) != 0
    assert "holds no PEM certificate" in daemon.text() and "Traceback" not in daemon.text()


@pytest.mark.parametrize("gateway", ["http://example.invalid", "http://10.255.255.1:9"])
def test_plain_http_to_a_remote_gateway_is_refused_before_any_network_use(tls_system, tmp_path, gateway):
    # 10.255.255.1 is routed nowhere: any connection attempt would hang past QUICK
    register = cli("lmconnector", "--data-dir", tmp_path / "connector", "register", "--gateway", gateway,
                   check=False, timeout=QUICK)
    host = gateway.split("//")[1].split(":")[0]
    one_line_error(register, f"refusing plain http to {host}", "--insecure")

    uri = tls_system.add_device("erin").replace(quote(tls_system.gateway.url, safe=""), quote(gateway, safe=""))
    state = tmp_path / "erin.json"
    pair = cli("lmdevice", "--state", state, "pair", "-", stdin=(uri + "\n").encode(), check=False, timeout=QUICK)
    one_line_error(pair, f"refusing plain http to {host}", "--insecure")
    assert not state.exists()
