"""The JavaScript device (linchpin_connector/web/static/app/, ES modules run
as served) agrees byte for byte with the Python side: the vectors of
tests/vectors/contract.json, which linchpin_common.contract.vectors makes
from the Python implementation, checked here in Debian's Chromium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from linchpin_common.contract import vectors
from tests.browser_support import StaticServer, chromium

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "linchpin_connector" / "web" / "static" / "app"
VECTORS = ROOT / "tests" / "vectors" / "contract.json"

# Runs in the page: every check of the vectors, each failure named.
CHECKS = """
import { fromHex, toHex, equal, concat } from "./app/bytes.js";
import * as e2e from "./app/e2e.js";
import * as mqtt from "./app/mqtt.js";
import * as messages from "./app/messages.js";

const v = await (await fetch("./contract.json")).json();
const failures = [];
const same = (what, got, want) => { if (got !== want) failures.push(`${what}: ${got} != ${want}`); };
const sameBytes = (what, got, want) => same(what, toHex(got), want);

const keys = v.keys;
for (const [name, raw] of [["e_d", keys.e_d], ["e_c", keys.e_c], ["s_c", keys.s_c]]) {
  sameBytes(`public key ${name}`, await e2e.publicRaw(await e2e.x25519KeyPair(fromHex(raw))), keys[name + "_public"]);
}
for (const hs of v.handshakes) {
  const K = fromHex(hs.K);
  sameBytes(`k_hs ${hs.key_kind}`, await e2e.handshakeKey(K, v.device_id), hs.k_hs);
  const device = await e2e.DeviceHandshake.start(v.device_id, K, hs.key_kind, fromHex(keys.s_c_public),
    { ephemeral: await e2e.x25519KeyPair(fromHex(keys.e_d)), nonce: fromHex(v.hello_nonce) });
  sameBytes(`HELLO ${hs.key_kind}`, device.hello, hs.hello);
  const result = await device.finish(fromHex(hs.welcome));
  if (!result) { failures.push(`WELCOME ${hs.key_kind} refused`); continue; }
  sameBytes(`k_up ${hs.key_kind}`, result.kUp, hs.k_up);
  sameBytes(`k_down ${hs.key_kind}`, result.kDown, hs.k_down);
  same(`device secret ${hs.key_kind}`, result.deviceSecretKey ? toHex(result.deviceSecretKey) : null,
       hs.device_secret_key);
  same(`second WELCOME ${hs.key_kind}`, await device.finish(fromHex(hs.welcome)), null);
  for (const [i, m] of hs.data_up.entries()) {
    const env = await result.session.seal(e2e.encodeMessage(m.header, fromHex(m.body)));
    sameBytes(`DATA up ${hs.key_kind}.${i}`, env, m.envelope);
  }
  for (const [i, m] of hs.data_down.entries()) {
    const plain = await result.session.open(e2e.parseEnvelope(fromHex(m.envelope)));
    if (!plain) { failures.push(`DATA down ${hs.key_kind}.${i} refused`); continue; }
    const [header, body] = e2e.decodeMessage(plain);
    same(`DATA down ${hs.key_kind}.${i} header`, JSON.stringify(header), JSON.stringify(m.header));
    sameBytes(`DATA down ${hs.key_kind}.${i} body`, body, m.body);
  }
  // a replay is dropped, a tampered DATA is dropped, a gap ends the session
  same(`replay ${hs.key_kind}`, await result.session.open(e2e.parseEnvelope(fromHex(hs.data_down[0].envelope))), null);
  const tampered = fromHex(hs.data_down[1].envelope); tampered[tampered.length - 1] ^= 1;
  same(`tampered ${hs.key_kind}`, await result.session.open(e2e.parseEnvelope(tampered)), null);
  const tamperedWelcome = fromHex(hs.welcome); tamperedWelcome[20] ^= 1;
  const again = await e2e.DeviceHandshake.start(v.device_id, K, hs.key_kind, fromHex(keys.s_c_public),
    { ephemeral: await e2e.x25519KeyPair(fromHex(keys.e_d)), nonce: fromHex(v.hello_nonce) });
  same(`tampered WELCOME ${hs.key_kind}`, await again.finish(tamperedWelcome), null);
}
sameBytes("RESET", concat(Uint8Array.of(1, 4), fromHex(v.session_id)), v.reset);
same("RESET parsed", toHex(e2e.parseEnvelope(fromHex(v.reset)).sessionId), v.session_id);
same("REJECT parsed", e2e.parseEnvelope(fromHex(v.reject)).type, e2e.REJECT);
for (const m of v.messages) {
  sameBytes(`message ${m.header.t}`, e2e.encodeMessage(m.header, fromHex(m.body)), m.encoded);
  const [header, body] = e2e.decodeMessage(fromHex(m.encoded));
  same(`message ${m.header.t} read`, JSON.stringify(header), JSON.stringify(m.header));
  sameBytes(`message ${m.header.t} body`, body, m.body);
}
const built = {
  req: messages.req(7, "GET", "/wiki/Caf%C3%A9?q=a+b", [["Accept", "text/html"], ["X-Tag", "ü"]], true),
  ack: messages.ack(8, 262144), err: messages.err(9, "forbidden", "this path is not allowed"),
};
for (const [t, header] of Object.entries(built)) {
  const want = v.messages.find((m) => m.header.t === t && JSON.stringify(m.header) === JSON.stringify(header));
  if (!want) failures.push(`builder ${t} makes another header: ${JSON.stringify(header)}`);
}
const packets = Object.fromEntries(v.mqtt.map((p) => [p.name, p.bytes]));
sameBytes("CONNECT", mqtt.connect({ username: v.device_id, password: fromHex("70772dc3a9"), keepAlive: 30 }),
          packets.connect);
sameBytes("SUBSCRIBE", mqtt.subscribe(1, [[`devices/${v.device_id}/down`, 1], ["$gateway/status", 0]]),
          packets.subscribe);
sameBytes("PUBLISH 0", mqtt.publish(`devices/${v.device_id}/up`, Uint8Array.from({ length: 200 }, (_, i) => i)),
          packets.publish_qos0);
sameBytes("PUBLISH 1", mqtt.publish(`devices/${v.device_id}/up`, Uint8Array.of(1, 3), 1, 2), packets.publish_qos1);
sameBytes("PUBACK", mqtt.puback(2), packets.puback);
sameBytes("PINGREQ", mqtt.pingreq(), packets.pingreq);
sameBytes("DISCONNECT", mqtt.disconnect(), packets.disconnect);
// what the gateway sends, fed one byte at a time and all at once
const stream = concat(...["connack_accepted", "connack_refused", "suback", "pingresp", "publish_long",
                          "publish_qos1"].map((n) => fromHex(packets[n])));
for (const step of [1, stream.length]) {
  const parser = new mqtt.Parser();
  const got = [];
  for (let at = 0; at < stream.length; at += step) got.push(...parser.feed(stream.subarray(at, at + step)));
  same(`parsed count (step ${step})`, got.length, 6);
  same("CONNACK 0", got[0].returnCode, 0);
  same("CONNACK 4", got[1].returnCode, 4);
  same("SUBACK", JSON.stringify(got[2].returnCodes), "[1,128]");
  same("PINGRESP", got[3].type, mqtt.PINGRESP);
  same("long PUBLISH", got[4].payload.length + " " + got[4].topic, "20000 $gateway/status");
  same("PUBLISH 1", got[5].packetId + " " + toHex(got[5].payload), "2 0103");
}
window.result = failures;
"""


def test_the_vectors_file_is_what_the_python_side_makes():
    """Regenerate with ``python -m linchpin_common.contract.vectors > tests/vectors/contract.json``."""
    assert json.loads(VECTORS.read_text()) == json.loads(json.dumps(vectors.make()))


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def page_result(browser, folder, script: str, head: str = ""):
    """Run ``script`` (a module that sets ``window.result``) in a page served
    from ``folder``, the app's modules under ``app/``: (the result, the
    page's errors)."""
    shutil.copytree(APP, folder / "app")
    (folder / "index.html").write_text(
        f'<!doctype html><meta charset="utf-8">{head}<script type="module">{script}</script>', encoding="utf-8")
    server = StaticServer(folder)
    try:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/index.html")
        page.wait_for_function("window.result !== undefined", timeout=30_000)
        return page.evaluate("window.result"), errors
    finally:
        server.stop()


def test_the_javascript_device_makes_and_reads_the_same_bytes(browser, tmp_path):
    shutil.copy(VECTORS, tmp_path / "contract.json")
    failures, errors = page_result(browser, tmp_path, CHECKS)
    assert errors == [] and failures == []


# The whole device in the page, against the real twistd lmgateway and twistd
# lmconnector: pair through the setup call (CORS), handshake, then requests
# with a multi-MiB body each way.
STORY = """
import { Device, pair } from "./app/device.js";
import { toHex } from "./app/bytes.js";

const params = new URLSearchParams(location.hash.slice(1));
const out = { statuses: [] };
try {
  let saved = null;
  const state = await pair(params.get("uri"));
  out.paired = state.deviceId;
  const device = new Device(state, { saveState: async (s) => { saved = s; },
                                     onStatus: (s) => out.statuses.push(s) });
  await device.open();
  await device.handshake();
  out.setupSecretForgotten = saved !== null && saved.setupSecret === null && !!saved.deviceSecret;
  const who = await device.request("GET", "/api/whoami");
  out.whoami = JSON.parse(new TextDecoder().decode(await who.bytes()));
  try {  // headers over 64 KiB: refused at once, not sent (and not waited for)
    await device.request("GET", "/api/whoami", { headers: [["X-Big", "a".repeat(70000)]] });
    out.big = "sent";
  } catch (e) {
    out.big = e.kind;
  }
  const upload = new Uint8Array(3 * 1024 * 1024 + 7);
  for (let i = 0; i < upload.length; i++) upload[i] = (i * 7) & 255;
  const posted = await device.request("POST", "/upload", { headers: [["Content-Type", "application/octet-stream"]],
                                                            body: upload });
  out.upload = JSON.parse(new TextDecoder().decode(await posted.bytes()));
  out.uploadDigest = toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", upload)));
  const download = await device.request("GET", "/download?size=" + params.get("size"));
  const body = await download.bytes();
  out.download = { status: download.status, length: body.length,
                   sha256: toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", body))) };
  device.close();
} catch (e) {
  out.error = `${e.kind || e.name}: ${e.message}`;
}
window.result = out;
"""


def test_the_javascript_device_pairs_and_requests_through_the_real_gateway_and_connector(browser, tmp_path):
    import hashlib

    from linchpin_connector.sample_app import pattern
    from tests.support import System

    system = System(tmp_path)
    uri = system.add_device("alice")
    folder = tmp_path / "page"
    shutil.copytree(APP, folder / "app")
    (folder / "index.html").write_text(f'<!doctype html><meta charset="utf-8"><script type="module">{STORY}</script>',
                                       encoding="utf-8")
    server = StaticServer(folder)  # another origin than the gateway's: the setup call needs its CORS
    size = 5 * 1024 * 1024
    try:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        from urllib.parse import quote

        page.goto(f"{server.url}/index.html#uri={quote(uri, safe='')}&size={size}")
        page.wait_for_function("window.result !== undefined", timeout=60_000)
        result = page.evaluate("window.result")
    finally:
        server.stop()
        system.stop()
    assert errors == [] and "error" not in result, result
    assert result["statuses"][:1] == ["online"] and result["setupSecretForgotten"]
    assert result["whoami"]["user"] == "alice" and result["big"] == "too_large"
    assert result["upload"] == {"bytes": 3 * 1024 * 1024 + 7, "sha256": result["uploadDigest"]}
    expected = hashlib.sha256(b"".join(pattern(size))).hexdigest()
    assert result["download"] == {"status": 200, "length": size, "sha256": expected}


def test_the_javascript_device_handles_reset_and_moved(browser, tmp_path):
    """A connector taking its old one over (the same name) has no sessions:
    the device's next request meets RESET, handshakes again and is sent once
    more.  Then a second connector; the first is killed: `moved`, and the
    next request goes through the other."""
    from urllib.parse import quote

    from tests.support import Connector, System

    system = System(tmp_path, "--name", "first")
    uri = system.add_device("bob")
    folder = tmp_path / "page"
    shutil.copytree(APP, folder / "app")
    (folder / "index.html").write_text(
        '<!doctype html><meta charset="utf-8"><script type="module">'
        'import { Device, pair } from "./app/device.js";'
        'window.statuses = [];'
        'const state = await pair(decodeURIComponent(location.hash.slice(1)));'
        'window.device = new Device(state, { onStatus: (s) => window.statuses.push(s) });'
        'await window.device.open(); await window.device.handshake(); window.ready = true;'
        '</script>', encoding="utf-8")
    server = StaticServer(folder)
    whoami = ("async () => { const r = await window.device.request('GET', '/api/whoami');"
              " return JSON.parse(new TextDecoder().decode(await r.bytes())).user; }")
    try:
        page = browser.new_page()
        page.goto(f"{server.url}/index.html#{quote(uri, safe='')}")
        page.wait_for_function("window.ready === true", timeout=30_000)
        assert page.evaluate(whoami) == "bob"
        again = Connector(system.connector_dir, system.app.url, "--name", "first")  # takes "first" over
        again.wait_online()
        system.connector.kill()  # before it comes back for its name (it would, 1 s after the takeover)
        assert page.evaluate(whoami) == "bob"  # RESET, HELLO, sent once more
        again.wait_for(r"E2E session with device [0-9a-f]{32} established")  # a new session, on the new process
        assert "moved" not in page.evaluate("window.statuses")
        second = Connector(system.connector_dir, system.app.url, "--name", "second")
        second.wait_online()
        again.kill()  # kill -9 of the one serving the device
        page.wait_for_function("window.statuses.includes('moved')", timeout=30_000)
        assert page.evaluate(whoami) == "bob"
    finally:
        server.stop()
        system.stop()


# What the service worker changes on the way (tunnel.js, cookies.js), run in
# the page: a Location becomes a path exactly as serve_policy.rewrite_location
# makes it, and the tunnel's cookie jar follows RFC 6265 for one origin.
LOCATIONS = ["/notes", "notes?x=1", "http://intranet.corp:8090/notes?x=1#top", "HTTPS://evil.example",
             "https:evil.example/a", "http:/\\evil.example/b", "//evil.example//c?", "/\\evil.example\\d",
             " \t//evil.example/e", "\x01https://evil.example", "https://evil.example?q#f", "mailto:a@b",
             "ftp://files.corp/x", "", "#frag", "http://h/%2e%2e/x?a=%20"]
TUNNEL_CHECKS = """
import { rewriteLocation, requestHeaders, browserResponse, crossSite, failure } from "./app/tunnel.js";
import * as cookies from "./app/cookies.js";

const out = {};
out.locations = JSON.parse(document.getElementById("locations").textContent).map(rewriteLocation);
const now = Date.UTC(2030, 0, 1);
let jar = cookies.store([], ["visits=1; Path=/; HttpOnly; SameSite=Lax", "deep=d; Path=/wiki", "here=h",
                             "bad name=x", "noequals", "old=o; Expires=Thu, 01 Jan 2015 00:00:00 GMT",
                             "short=s; Max-Age=60; Expires=Thu, 01 Jan 2015 00:00:00 GMT"], "/wiki/Page", now);
out.names = jar.map((c) => `${c.name}@${c.path}`);
out.atWikiPage = cookies.cookieHeader(jar, "/wiki/Page", now);
out.atRoot = cookies.cookieHeader(jar, "/", now);
out.atWikiware = cookies.cookieHeader(jar, "/wikiware", now);
out.later = cookies.cookieHeader(jar, "/wiki/x", now + 61000);
jar = cookies.store(jar, ["visits=2; Path=/", "deep=; Path=/wiki; Max-Age=0"], "/", now);
out.replaced = cookies.cookieHeader(jar, "/wiki/x", now);
out.capped = cookies.store([], Array.from({ length: 150 }, (_, i) => `c${i}=${i}`), "/", now).length;
const own = "https://intranet.corp";
const pageHeaders = [["accept", "text/html"], ["cookie", "browser=1"], ["host", "x"], ["content-type", "text/plain"]];
out.headers = requestHeaders({ method: "POST", referrer: own + "/notes#top", headers: pageHeaders }, own, "visits=2",
                             "Phone/1");
out.getHeaders = requestHeaders({ method: "GET", referrer: "https://elsewhere.example/", headers: [] }, own, "",
                                "Phone/1");
out.failures = [{ kind: "refused", code: "forbidden" }, { kind: "refused", code: "too_large" },
                { kind: "refused", code: "backend_unreachable" }, { kind: "refused", code: "timeout" },
                { kind: "refused", code: "bad_request" }, { kind: "refused", code: "busy" },
                { kind: "too_large" }, { kind: "timeout" }, { kind: "unreachable" }].map((e) => failure(e)[0]);
const made = browserResponse("GET", 303, [["Location", "http://app.internal:8090/notes"], ["Set-Cookie", "a=b"],
                                          ["X-Kept", "yes"], ["Bad", "a\\nb"]], new ReadableStream());
out.response = { status: made.status, location: made.headers.get("location"), cookie: made.headers.get("set-cookie"),
                 kept: made.headers.get("x-kept") };
const gz = new Blob(["hello, intranet"]).stream().pipeThrough(new CompressionStream("gzip"));
const unzipped = browserResponse("GET", 200, [["Content-Encoding", "gzip"], ["Content-Length", "35"]], gz);
out.gzip = [await unzipped.text(), unzipped.headers.get("content-encoding"), unzipped.headers.get("content-length")];
out.noBody = browserResponse("GET", 304, [], new ReadableStream()).body;
out.odd = browserResponse("GET", 999, [], new ReadableStream()).status;
const navigation = (method, referrer) => ({ mode: "navigate", method, referrer });
out.crossSite = [crossSite(navigation("POST", "https://evil.example/form"), own),
                 crossSite(navigation("POST", own + "/notes"), own), crossSite(navigation("POST", ""), own),
                 crossSite(navigation("GET", "https://evil.example/"), own),
                 crossSite({ mode: "cors", method: "POST", referrer: "" }, own)];
window.result = out;
"""


def test_the_workers_rewrites_and_cookie_jar(browser, tmp_path):
    from linchpin_connector.device.serve_policy import rewrite_location

    out, errors = page_result(browser, tmp_path, TUNNEL_CHECKS,
                              head='<script type="application/json" id="locations">'
                              + json.dumps(LOCATIONS).replace("<", "\\u003c") + "</script>")
    assert errors == []
    assert out["locations"] == [rewrite_location(value) for value in LOCATIONS]
    assert out["names"] == ["visits@/", "deep@/wiki", "here@/wiki", "short@/wiki"]
    assert out["atWikiPage"] == "deep=d; here=h; short=s; visits=1"  # longer paths first
    assert out["atRoot"] == "visits=1" and out["atWikiware"] == "visits=1"  # /wiki does not cover /wikiware
    assert out["later"] == "deep=d; here=h; visits=1"  # Max-Age won over the old Expires, and ran out
    assert out["replaced"] == "here=h; short=s; visits=2"
    assert out["capped"] == 100
    # what the browser itself would add on the network: a form's CSRF check passes through the tunnel
    assert out["headers"] == [["accept", "text/html"], ["content-type", "text/plain"], ["User-Agent", "Phone/1"],
                              ["Referer", "https://intranet.corp/notes"], ["Origin", "https://intranet.corp"],
                              ["Cookie", "visits=2"], ["Accept-Encoding", "identity"]]
    # no Origin on a GET, no Referer from elsewhere, no empty Cookie
    assert out["getHeaders"] == [["User-Agent", "Phone/1"], ["Accept-Encoding", "identity"]]
    assert out["failures"] == [403, 413, 502, 504, 400, 503, 431, 504, 503]
    assert out["response"] == {"status": 303, "location": "/notes", "cookie": None, "kept": "yes"}
    assert out["gzip"] == ["hello, intranet", None, None]
    assert out["noBody"] is None and out["odd"] == 502
    # a form another site posts is refused; this origin's, a link followed, a page's own fetch pass
    assert out["crossSite"] == [True, False, True, False, False]


# The jar belongs to one device (store.js), and a link notices a connection
# that went silent (link.js), run in the page with a WebSocket that answers
# CONNECT, then a few PINGREQs, then nothing: a half-open TCP connection.
STORE_AND_LINK_CHECKS = """
import { changeCookies, loadCookies, saveState } from "./app/store.js";
import { MqttLink } from "./app/link.js";

const out = {};
await saveState({ deviceId: "a" });
out.written = await changeCookies("a", (jar) => [...jar, "one"]);
out.mine = await loadCookies("a");
await saveState({ deviceId: "b" });  // paired anew while a response of device a was on its way
out.late = await changeCookies("a", (jar) => [...jar, "two"]);
out.newDevice = await loadCookies("b");
out.newWritten = await changeCookies("b", (jar) => [...jar, "three"]);
out.after = [await loadCookies("a"), await loadCookies("b")];

class SilentAfterAWhile {
  static OPEN = 1;
  constructor() {
    this.readyState = 0;
    this.sent = [];
    this.answers = 3;  // PINGRESPs, then silence
    window.socket = this;
    setTimeout(() => { this.readyState = 1; this.onopen(); });
  }
  send(bytes) {
    this.sent.push(bytes[0]);
    let answer = null;
    if (bytes[0] === 0x10) answer = [0x20, 2, 0, 0];  // CONNACK 0
    else if (bytes[0] === 0xc0 && this.answers > 0) { this.answers -= 1; answer = [0xd0, 0]; }  // PINGRESP
    if (answer) setTimeout(() => this.onmessage?.({ data: Uint8Array.from(answer).buffer }));
  }
  close() { this.closeCalled = true; this.readyState = 3; }
}
globalThis.WebSocket = SilentAfterAWhile;
await new Promise((resolve) => {
  MqttLink.connect("http://gateway.test", "device", new Uint8Array(4), { keepAlive: 1, onClose: () => {
    const s = window.socket;
    out.link = { answersLeft: s.answers, pings: s.sent.filter((b) => b === 0xc0).length, closeCalled: !!s.closeCalled };
    resolve();
  } });
});
window.result = out;
"""


def test_the_jar_is_one_devices_and_a_silent_link_is_dropped(browser, tmp_path):
    out, errors = page_result(browser, tmp_path, STORE_AND_LINK_CHECKS)
    assert errors == []
    assert out["written"] is True and out["mine"] == ["one"]
    assert out["late"] is False and out["newDevice"] == []  # nothing of device a reaches b's jar
    assert out["newWritten"] is True and out["after"] == [[], ["three"]]
    # answered pings keep the link; once they go unanswered, it is dropped (and its socket closed)
    assert out["link"]["answersLeft"] == 0 and out["link"]["pings"] >= 4 and out["link"]["closeCalled"]
