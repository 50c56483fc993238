"""The phone app (``<root>/app/`` of the pairing page) in Debian's Chromium at a
phone's size (412 x 915, touch), against the real gateway, connector and
pairing page: pairing from ``data-app-link``, the secret gone from the address
bar, the state kept across a reload, a link used twice or tampered with, a
revoked device.  Screenshots go under the test's temporary folder."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

import pytest

from tests.support import TIMEOUT, cli
from tests.test_browser_story import USER_HEADER, PairingSystem

WAIT_MS = TIMEOUT * 1000
PHONE = {"viewport": {"width": 412, "height": 915}, "device_scale_factor": 2.625, "is_mobile": True,
         "has_touch": True}


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    s = PairingSystem(tmp_path_factory.mktemp("phone"))
    yield s
    s.stop()


def phone(browser, system, user):
    """The phone's browser, inside the company: the SSO proxy names the user
    to the pairing page (and to nothing else: the gateway is another origin)."""
    context = browser.new_context(**PHONE)
    context.route(system.web_url + "**",
                  lambda route: route.continue_(headers={**route.request.headers, USER_HEADER: user}))
    return context


def app_state(page) -> str:
    return page.get_attribute("#app", "data-app-state")


def wait_state(page, state: str) -> None:
    page.wait_for_selector(f"#app[data-app-state={state}]", timeout=WAIT_MS)


def new_link(page, system) -> tuple[str, str]:
    """Pair a new device on the pairing page: (its id, its data-app-link)."""
    page.goto(system.web_url)
    before = set(re.findall(r'data-device-id="([0-9a-f]{32})"', page.content()))
    page.get_by_role("button", name="Pair a new device").click()
    page.wait_for_selector("[data-app-link]", timeout=WAIT_MS)
    for row in page.query_selector_all("[data-device-id]"):
        device_id = row.get_attribute("data-device-id")
        link = row.query_selector("[data-app-link]")
        if device_id not in before and link is not None:
            return device_id, link.get_attribute("data-app-link")
    raise AssertionError("no new device with a link")


def test_pair_the_phone_from_the_link_keep_it_then_see_it_revoked(browser, system, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    context = phone(browser, system, "carol")
    try:
        page = context.new_page()
        page.goto(system.web_url + "app/")
        wait_state(page, "unpaired")
        page.screenshot(path=shots / "01-unpaired.png")
        device_id, link = new_link(page, system)
        assert link.startswith("app/#pair=") and unquote(link[len("app/#pair="):]).startswith("linchpin-mobile://pair?")
        page.click(f"[data-device-id='{device_id}'] [data-app-link]")
        page.wait_for_selector("#app[data-app-state=pairing], #app[data-app-state=ready]", timeout=WAIT_MS)
        page.screenshot(path=shots / "02-pairing.png")
        wait_state(page, "ready")
        page.screenshot(path=shots / "03-ready.png")
        assert "pair=" not in page.url and page.evaluate("location.hash") == ""  # the secret left at once
        page.go_back()  # the entry with the secret was replaced: back is the pairing page
        assert page.url == system.web_url
        page.go_forward()
        wait_state(page, "ready")  # from the state kept in IndexedDB
        page.reload()
        wait_state(page, "ready")
        manifest = page.evaluate("fetch('manifest.webmanifest').then(r => r.json())")
        assert manifest["display"] == "standalone" and {i["sizes"] for i in manifest["icons"]} == {"192x192", "512x512"}
        cli("lmconnector", "--data-dir", system.connector_dir, "device", "revoke", device_id)
        wait_state(page, "revoked")
        page.screenshot(path=shots / "05-revoked.png")
    finally:
        context.close()
    for name in ("01-unpaired", "02-pairing", "03-ready", "05-revoked"):
        assert (shots / f"{name}.png").stat().st_size > 1000


def test_a_link_used_twice_or_tampered_with_pairs_nothing(browser, system):
    context = phone(browser, system, "dave")
    try:
        page = context.new_page()
        _, link = new_link(page, system)
        page.goto(system.web_url + link)
        wait_state(page, "ready")
        other = phone(browser, system, "dave")  # another phone
        try:
            again = other.new_page()
            again.goto(system.web_url + link)
            wait_state(again, "unpaired")
            assert "already used" in again.text_content("#detail")
            uri = unquote(link[len("app/#pair=") :])
            tampered = re.sub(r"setup_key=[^&]+", "setup_key=AAAAAAAAAAAAAAAAAAAAAA", uri)
            again.goto(system.web_url + "app/#pair=" + quote(tampered, safe=""))
            wait_state(again, "unpaired")
            assert again.text_content("#detail")
            again.goto(system.web_url + "app/#pair=" + quote("linchpin-mobile://pair?v=1&gateway=x", safe=""))
            wait_state(again, "unpaired")
            assert "lacks" in again.text_content("#detail")
        finally:
            other.close()
    finally:
        context.close()
