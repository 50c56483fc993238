"""A browser device: MQTT.js in Chromium reaches the gateway over WebSocket.

Two pages play the device: one from a real ``http`` origin, one loaded from
``file://`` (origin ``null``, what hybrid mobile apps send).  Each connects
with the device's credentials, subscribes, publishes up to the connector (a
paho client here) and receives what the connector publishes down.
"""

from __future__ import annotations

import json
import shutil
from urllib.parse import quote

import pytest

from tests.browser_support import StaticServer, handshake_origins, mqttjs_bundle
from tests.support import Paho, Gateway, RestAccounts

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MQTT.js device</title>
<script src="mqtt.min.js"></script><script src="device.js"></script></head>
<body><p id="state">starting</p></body></html>
"""

# The device's side, all in the page: parameters come in the URL fragment.
SCRIPT = """
const params = new URLSearchParams(location.hash.slice(1));
const device = params.get("device");
window.received = [];
window.errors = [];
window.subscribed = false;
const client = mqtt.connect(params.get("url"), {
  username: device, password: params.get("password"), protocolVersion: 4, clean: true,
  keepalive: 30, reconnectPeriod: 0,
});
client.on("connect", () => {
  client.subscribe([`devices/${device}/down`, "$gateway/status"], {qos: 1}, (err, granted) => {
    if (err) { window.errors.push(String(err)); return; }
    window.granted = granted.map((g) => g.qos);
    window.subscribed = true;
    document.getElementById("state").textContent = "subscribed";
  });
});
client.on("message", (topic, payload) => window.received.push([topic, payload.toString()]));
client.on("error", (e) => window.errors.push(String(e)));
client.on("close", () => window.subscribed || window.errors.push("connection closed"));
window.publishUp = (text) => new Promise((resolve, reject) =>
  client.publish(`devices/${device}/up`, text, {qos: 1}, (err) => err ? reject(String(err)) : resolve(true)));
"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mqttjs-pages")
    shutil.copy(mqttjs_bundle(), folder / "mqtt.min.js")
    (folder / "device.html").write_text(PAGE)
    (folder / "device.js").write_text(SCRIPT)
    server = StaticServer(folder)
    yield folder, server.url
    server.stop()


@pytest.fixture
def gateway_and_device(tmp_path):
    gw = Gateway(tmp_path / "gw")
    world = RestAccounts(gw.url)
    inst = world.register()
    device_id, password = world.pair(inst)
    connector = Paho(gw.port, *inst)
    assert connector.result == "Success"
    assert connector.subscribe("devices/+/up") == [1]
    yield gw, connector, device_id, password
    connector.close()
    gw.kill()


@pytest.mark.parametrize("origin", ["http", "null"])
def test_mqttjs_device_subscribes_publishes_and_receives(browser, pages, gateway_and_device, origin):
    folder, http_url = pages
    gw, connector, device_id, password = gateway_and_device
    fragment = f"url={quote(f'ws://127.0.0.1:{gw.port}/mqtt')}&device={device_id}&password={quote(password)}"
    page_url = (f"{http_url}/device.html" if origin == "http" else (folder / "device.html").as_uri()) + "#" + fragment

    context = browser.new_context()
    try:
        page = context.new_page()
        origins = handshake_origins(context, page)
        page.goto(page_url)
        page.wait_for_function("window.subscribed || window.errors.length", timeout=30_000)
        assert page.evaluate("window.errors") == []
        assert page.evaluate("window.granted") == [1, 1]
        assert origins == [http_url if origin == "http" else "null"]

        # the connector is online: the gateway says so right after the SUBACK
        page.wait_for_function("window.received.some(([t]) => t === '$gateway/status')", timeout=30_000)
        status = [json.loads(p) for t, p in page.evaluate("window.received") if t == "$gateway/status"]
        assert status[0] == {"connector": "online"}

        # up: browser -> gateway -> connector
        assert page.evaluate("window.publishUp('hello from the browser')") is True
        topic, payload, _, _ = connector.next_matching(f"devices/{device_id}/up")
        assert payload == b"hello from the browser"

        # down: connector -> gateway -> browser
        connector.publish(f"devices/{device_id}/down", b"hello from the connector")
        page.wait_for_function("window.received.some(([t]) => t.endsWith('/down'))", timeout=30_000)
        down = [p for t, p in page.evaluate("window.received") if t == f"devices/{device_id}/down"]
        assert down == ["hello from the connector"]
    finally:
        context.close()
