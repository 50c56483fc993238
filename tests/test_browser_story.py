"""The whole story in a real browser (Chromium through Playwright), with the real commands.

An employee opens the pairing page (the browser sends the identity header as
the SSO proxy would), pairs a phone (``lmdevice pair -``), watches the page
mark it paired by itself, browses the intranet through ``lmdevice serve``,
then removes the device and sees the next page load refused.  Plus what must
not work: another user's view, no identity header, a forged POST, a foreign
Host.  Screenshots are written under the test's temporary folder.

One browser and one set of processes (gateway, sample app, connector with
the pairing page) serve the whole module; each test uses its own users.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.request

import pytest
import zxingcpp

from tests.browser_support import StaticServer, accessibility_violations, png_gray
from tests.support import BIN, TIMEOUT, Connector, Process, System, cli

WAIT_MS = TIMEOUT * 1000
USER_HEADER = "X-Forwarded-User"


class PairingSystem(System):
    """Gateway, sample app and a connector serving the pairing page."""

    def start_connector(self):
        self.connector = Connector(self.connector_dir, self.app.url, "--web", "tcp:0:interface=127.0.0.1")
        seen = {}
        while len(seen) < 2:
            m = self.connector.wait_for(r"pairing page listening on 127\.0\.0\.1:(\d+)|connected to the gateway")
            seen["web" if m.group(1) else "online"] = m.group(1)
        self.web_url = f"http://127.0.0.1:{seen['web']}/"


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    s = PairingSystem(tmp_path_factory.mktemp("story"))
    yield s
    s.stop()


def as_user(browser, user, **options):
    """A browser context whose every request carries the SSO proxy's identity header."""
    return browser.new_context(extra_http_headers={USER_HEADER: user}, **options)


def rows(page):
    return {el.get_attribute("data-device-id"): el.get_attribute("data-state")
            for el in page.query_selector_all("[data-device-id]")}


def test_pair_browse_and_remove(browser, system, tmp_path, shots):
    desk = as_user(browser, "alice", viewport={"width": 390, "height": 844})  # a phone screen
    phone = browser.new_context(accept_downloads=True)
    serve = None
    try:
        page = desk.new_page()
        response = page.goto(system.web_url)
        assert response.status == 200
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        page.wait_for_selector("html[data-live=yes]", timeout=WAIT_MS)  # the event stream is open
        page.screenshot(path=shots / "01-no-devices.png", full_page=True)

        page.get_by_role("button", name="Pair a new device").click()
        holder = page.wait_for_selector("[data-pairing-uri]", timeout=WAIT_MS)
        uri = holder.get_attribute("data-pairing-uri")
        assert uri.startswith("linchpin-mobile://pair?v=1&")
        assert page.get_by_label("Or copy this pairing link into the app").input_value() == uri
        # the QR code on the screen, as a phone's camera would read it
        [code] = zxingcpp.read_barcodes(png_gray(page.locator("[data-pairing-uri] svg").screenshot()))
        assert code.format == zxingcpp.BarcodeFormat.QRCode and code.text == uri
        [(device_id, state)] = rows(page).items()
        assert state == "pending"
        page.screenshot(path=shots / "02-qr-code.png", full_page=True)

        page.wait_for_selector("html[data-live=yes]", timeout=WAIT_MS)
        page.evaluate("window.notReloaded = true")
        state_file = tmp_path / "phone.json"
        cli("lmdevice", "--state", state_file, "pair", "-", stdin=(uri + "\n").encode())
        page.wait_for_selector(f'[data-device-id="{device_id}"][data-state="paired"]', timeout=WAIT_MS)
        assert page.locator("[data-pairing-uri]").count() == 0  # the QR code is gone
        assert page.evaluate("window.notReloaded") is True  # updated by itself, no reload
        page.screenshot(path=shots / "03-paired.png", full_page=True)

        serve = Process([os.path.join(BIN, "lmdevice"), "--state", state_file, "serve", "--listen",
                         "tcp:0:interface=127.0.0.1"])
        local = serve.wait_for(r"serving the intranet at (http://127\.0\.0\.1:\d+)/").group(1)
        serve.wait_for("connector online")
        page.wait_for_selector(f'[data-device-id="{device_id}"][data-state="connected"]', timeout=WAIT_MS)

        # -- the intranet through the device --------------------------------------------
        app = phone.new_page()
        assert app.goto(local + "/").status == 200
        assert app.locator("h1").inner_text() == "Hello, alice"
        assert app.locator("h1").evaluate("e => getComputedStyle(e).color") == "rgb(11, 79, 138)"  # stylesheet
        assert app.locator("img.logo").evaluate("e => e.complete && e.naturalWidth") == 32  # image
        assert app.locator("#visits").inner_text() == "Visit number 1"
        app.screenshot(path=shots / "04-intranet-through-the-device.png", full_page=True)

        app.get_by_label("Note").fill("lunch at noon")
        with app.expect_navigation():
            app.get_by_role("button", name="Save note").click()
        assert app.url == local + "/notes"  # the app's absolute redirect stayed on the local server
        assert app.locator("#note-list li").all_inner_texts() == ["lunch at noon"]

        app.goto(local + "/")
        assert app.locator("#visits").inner_text() == "Visit number 2"  # the cookie came back

        with app.expect_download() as download_info:
            app.locator("#download").click()
        download = download_info.value
        relayed = open(download.path(), "rb").read()
        with urllib.request.urlopen(f"{system.app.url}/download?size=1048576", timeout=TIMEOUT) as r:
            direct = r.read()
        assert download.suggested_filename == "pattern-1048576.bin"
        assert len(relayed) == 1048576 and hashlib.sha256(relayed).digest() == hashlib.sha256(direct).digest()

        # a page that names another host (DNS rebinding) gets nothing
        host, port = local[len("http://"):].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
        conn.request("GET", "/", headers={"Host": f"rebound.example:{port}"})
        foreign = conn.getresponse()
        assert foreign.status == 403 and b"Hello" not in foreign.read()

        # -- removal: at once, and the device is refused -------------------------------------
        row = page.locator(f'[data-device-id="{device_id}"]')
        with page.expect_navigation():
            row.get_by_role("button", name=re.compile("Remove")).click()
        assert rows(page) == {}
        page.screenshot(path=shots / "05-removed.png", full_page=True)
        refused = app.goto(local + "/")
        text = app.locator("body").inner_text()
        assert refused.status == 403 and "no longer paired" in text and "revoked" in text, text
        app.screenshot(path=shots / "06-refused.png", full_page=True)
        assert serve.terminate() == 0
    finally:
        if serve is not None:
            serve.kill()
        desk.close()
        phone.close()


def test_another_user_neither_sees_nor_removes_the_device(browser, system):
    carol, dave = as_user(browser, "carol"), as_user(browser, "dave")
    try:
        mine = carol.new_page()
        mine.goto(system.web_url)
        mine.get_by_role("button", name="Pair a new device").click()
        mine.wait_for_selector("[data-pairing-uri]", timeout=WAIT_MS)
        [device_id] = rows(mine)

        theirs = dave.new_page()
        theirs.goto(system.web_url)
        assert rows(theirs) == {} and theirs.locator("[data-pairing-uri]").count() == 0
        assert device_id not in theirs.content()
        token = theirs.locator("form.pair input[name=csrf_token]").get_attribute("value")
        answer = theirs.request.post(system.web_url + "remove", form={"csrf_token": token, "device_id": device_id},
                                     max_redirects=0)
        assert answer.status == 404

        mine.reload()
        assert list(rows(mine)) == [device_id]
    finally:
        carol.close()
        dave.close()


def test_no_identity_header_gets_401(browser, system):
    context = browser.new_context()
    try:
        page = context.new_page()
        response = page.goto(system.web_url)
        assert response.status == 401
        assert "Sign-in required" in page.locator("h1").inner_text()
        assert "single sign-on" in page.locator("body").inner_text()
        assert page.request.post(system.web_url + "pair", form={}).status == 401
    finally:
        context.close()


def test_forged_posts_without_the_csrf_token_are_refused(browser, system, tmp_path):
    # Another site's page, open in the same browser as the signed-in user.
    (tmp_path / "evil.html").write_text(
        f'<!doctype html><html lang="en"><head><title>win a prize</title></head><body>'
        f'<form method="post" action="{system.web_url}pair"><button>Claim</button></form></body></html>')
    evil = StaticServer(tmp_path)
    context = as_user(browser, "erin")
    try:
        page = context.new_page()
        page.goto(evil.url + "/evil.html")
        with page.expect_navigation():
            page.get_by_role("button", name="Claim").click()
        assert "Form expired" in page.locator("h1").inner_text()

        # same origin, wrong or missing token
        assert page.request.post(system.web_url + "pair", form={}, max_redirects=0).status == 403
        assert page.request.post(system.web_url + "pair", form={"csrf_token": "x" * 43}, max_redirects=0).status == 403

        page.goto(system.web_url)
        assert rows(page) == {}  # nothing was created
    finally:
        context.close()
        evil.stop()


def test_pair_and_remove_with_javascript_off_and_the_keyboard(browser, system, shots):
    context = as_user(browser, "frank", java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(system.web_url)
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "pair-button"
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert page.locator("[data-pairing-uri] svg").count() == 1
        assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
        [(device_id, state)] = rows(page).items()
        assert state == "pending"
        page.screenshot(path=shots / "no-js-qr-code.png", full_page=True)
        with page.expect_navigation():
            page.get_by_role("button", name=f"Remove device {device_id[:8]}").click()
        assert rows(page) == {} and page.locator("[data-pairing-uri]").count() == 0
        assert cli("lmconnector", "--data-dir", system.connector_dir, "device", "list").stdout.decode().count(
            device_id) == 0
    finally:
        context.close()


def test_the_pairing_page_passes_an_accessibility_audit(browser, system):
    """axe-core's WCAG 2.1 AA rules (labels, contrast, names, landmarks...) on
    the page with a QR code and devices in each state, on a phone's screen."""
    context = as_user(browser, "grace", bypass_csp=True, viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        page.goto(system.web_url)
        assert accessibility_violations(page) == []
        for _ in range(2):
            page.get_by_role("button", name="Pair a new device").click()
            page.wait_for_selector("[data-pairing-uri]", timeout=WAIT_MS)
        assert len(rows(page)) == 2
        assert accessibility_violations(page) == []
        page.goto(system.web_url + "nope")
        assert accessibility_violations(page) == []
    finally:
        context.close()
