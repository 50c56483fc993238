"""The whole system with the real commands: twistd lmgateway, twistd lmconnector, lmdevice, a backend."""

import hashlib
import json
import os
import stat
import subprocess
import urllib.request

import pytest

from tests.secrets_scan import find_secrets, secrets_in_text
from tests.support import BIN, TIMEOUT, Connector, Gateway, System, cli, free_port, scrape


@pytest.fixture
def system(tmp_path):
    s = System(tmp_path)
    yield s
    s.stop()


def device(state, *args, check=True):
    return cli("lmdevice", "--state", state, *args, check=check)


def test_pair_and_request_as_the_paired_user(system, tmp_path):
    state = system.pair("alice")
    mode = stat.S_IMODE(os.stat(state).st_mode)
    assert mode == 0o600
    saved = json.load(open(state))
    assert saved["setup_secret"] is None and saved["device_secret"]  # key agreed at pairing time

    page = device(state, "request", "-i", "/").stdout.decode()
    assert page.startswith("HTTP/1.1 200 OK\r\n") and "Hello, alice" in page

    who = json.loads(device(state, "request", "/api/whoami?x=1&y=%2F").stdout)
    assert who == {"user": "alice", "method": "GET", "path": "/api/whoami", "query": "x=1&y=%2F"}

    seen = json.loads(device(state, "request", "-H", "X-Forwarded-User: mallory", "-H", "x-forwarded_user: eve",
                             "/echo-headers").stdout)
    identity = [v for k, v in seen["headers"] if k.lower().replace("_", "-") == "x-forwarded-user"]
    assert identity == ["alice"]

    listing = cli("lmconnector", "--data-dir", system.connector_dir, "device", "list").stdout.decode().split("\t")
    assert listing[1] == "alice" and listing[2].strip() == "paired"


def test_upload_and_large_download(system, tmp_path):
    state = system.pair("bob")
    blob = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "blob").write_bytes(blob)
    answer = json.loads(device(state, "request", "--data", f"@{tmp_path / 'blob'}", "/upload").stdout)
    assert answer == {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    piped = cli("lmdevice", "--state", state, "request", "--data", "-", "/upload", stdin=blob).stdout
    assert json.loads(piped) == answer  # standard input streams as it is read

    size = 20 * 1024 * 1024
    relayed = device(state, "request", f"/download?size={size}").stdout
    with urllib.request.urlopen(f"{system.app.url}/download?size={size}") as r:
        direct = r.read()
    assert len(relayed) == size and relayed == direct

    # a reader that leaves early (| head -c 10): one line, not a traceback, nor "gateway lost"
    with subprocess.Popen([os.path.join(BIN, "lmdevice"), "--state", state, "request", f"/download?size={size}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as reader:
        assert len(reader.stdout.read(10)) == 10
        reader.stdout.close()
        try:
            reader.wait(TIMEOUT)
        finally:
            reader.kill()
        stderr = reader.stderr.read().decode()
    assert reader.returncode == 1 and stderr.startswith("lmdevice: cannot write the response: ") and \
        len(stderr.splitlines()) == 1, stderr


def test_refusals_and_exit_codes(system, tmp_path):
    state = system.pair("carol")
    forbidden = device(state, "request", "/a/../etc", check=False)
    assert forbidden.returncode == 8 and b"forbidden" in forbidden.stderr
    # an answer before the end of standard input: the command exits, it does not wait for the end
    with subprocess.Popen([os.path.join(BIN, "lmdevice"), "--state", state, "request", "--data", "-", "/a/../etc"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as piped:
        piped.stdin.write(b"a body that never ends")
        piped.stdin.flush()
        try:
            piped.wait(TIMEOUT)  # standard input stays open all along
        finally:
            piped.kill()
        stderr = piped.stderr.read()
    assert piped.returncode == 8 and b"forbidden" in stderr

    # connector offline: a clear error at once, not a timeout
    system.connector.terminate()
    offline = device(state, "request", "/", check=False)
    assert offline.returncode == 4 and b"connector is offline" in offline.stderr

    # gateway unreachable
    system.gateway.terminate()
    gone = device(state, "request", "/", check=False)
    assert gone.returncode == 3 and b"gateway unreachable" in gone.stderr
    assert len(gone.stderr.decode().strip().splitlines()) == 1


def test_revocation_cuts_the_device(system, tmp_path):
    png, svg = tmp_path / "dave.png", tmp_path / "dave.svg"
    added = cli("lmconnector", "--data-dir", system.connector_dir, "device", "add", "dave", "--qr-png", png,
                "--qr-svg", svg)
    lines = added.stdout.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("linchpin-mobile://pair?v=1&gateway=http%3A%2F%2F127.0.0.1%3A")
    assert png.read_bytes().startswith(b"\x89PNG") and b"<svg" in svg.read_bytes()
    assert stat.S_IMODE(os.stat(png).st_mode) == 0o600 == stat.S_IMODE(os.stat(svg).st_mode)
    state = tmp_path / "dave.json"
    cli("lmdevice", "--state", state, "pair", lines[0])
    device_id = json.load(open(state))["device_id"]
    cli("lmconnector", "--data-dir", system.connector_dir, "device", "revoke", device_id)
    assert cli("lmconnector", "--data-dir", system.connector_dir, "device", "list").stdout == b""
    refused = device(state, "request", "/", check=False)
    assert refused.returncode != 0 and b"revoked or unknown" in refused.stderr


def test_pairing_while_connector_offline_completes_at_first_request(system, tmp_path):
    system.connector.terminate()
    uri = system.add_device("erin")
    state = tmp_path / "erin.json"
    out = cli("lmdevice", "--state", state, "pair", "-", stdin=(uri + "\n").encode())
    assert b"connector offline" in out.stderr
    assert json.load(open(state))["setup_secret"]  # no WELCOME yet
    system.start_connector()
    page = device(state, "request", "/").stdout
    assert b"Hello, erin" in page
    assert json.load(open(state))["setup_secret"] is None


def test_connector_survives_gateway_down_at_start_and_restarts(tmp_path):
    system = System(tmp_path)
    try:
        state = system.pair("frank")
        port = system.gateway.port
        system.connector.terminate()
        assert system.gateway.terminate() == 0
        # the connector starts while the gateway is down, and keeps trying
        system.connector = Connector(system.connector_dir, system.app.url)
        system.connector.wait_for(r"cannot reach the gateway")
        system.gateway = Gateway(tmp_path / "gw", "--listen", f"tcp:{port}:interface=127.0.0.1")
        system.connector.wait_online()
        assert b"Hello, frank" in device(state, "request", "/").stdout
        assert system.connector.proc.poll() is None
        assert system.connector.terminate() == 0
    finally:
        system.stop()


def test_no_secrets_in_connector_logs_or_gateway_disk(system, tmp_path):
    uri = system.add_device("grace")
    state = tmp_path / "grace.json"
    cli("lmdevice", "--state", state, "pair", "-", stdin=(uri + "\n").encode())
    marker = "BODY-MARKER-" + os.urandom(8).hex()
    (tmp_path / "body").write_text(marker)
    device(state, "request", "--data", f"@{tmp_path / 'body'}", "/upload")
    saved = json.load(open(state))
    secrets = [saved["device_password"], saved["device_secret"], marker]
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(uri).query)
    secrets += [query["setup_key"][0], query["secret"][0]]
    system.connector.terminate()
    assert system.gateway.terminate() == 0
    assert find_secrets(tmp_path / "gw", secrets) == []
    for log in (system.gateway.text(), system.connector.text()):
        assert secrets_in_text(log, secrets) == []


def test_connector_metrics(tmp_path):
    port = free_port()
    system = System(tmp_path, "--metrics", f"tcp:{port}:interface=127.0.0.1")
    try:
        state = system.pair("heidi")
        assert b"Hello, heidi" in device(state, "request", "/").stdout
        values = scrape(f"http://127.0.0.1:{port}/metrics", "lmconnector_")
        assert values["lmconnector_gateway_connected"] == 1
        assert values["lmconnector_gateway_connects_total"] == 1
        assert values['lmconnector_handshake_answers_total{kind="welcome"}'] == 2  # pairing, then the request
        assert values['lmconnector_envelopes_total{direction="up"}'] >= 4
        assert values['lmconnector_envelope_bytes_total{direction="down"}'] > 100
        assert "lmconnector_requests_in_flight" in values and "lmconnector_e2e_sessions" in values
    finally:
        system.stop()
