"""The phone app in Debian's Chromium at a phone's size (412 x 915, touch),
against the real gateway, connector and sample intranet app, all behind a
real nginx running deploy/nginx/intranet-with-phone-app.conf: the intranet
app at ``/``, the pairing page at ``/mobile/``, one sign-on (a ``session``
cookie names the user) in front of both.

The phone signs in inside the company (nginx up), pairs from the page's
``data-app-link``, then goes outside (nginx stopped): the same intranet URLs
keep working through its service worker and the end-to-end channel.  Also:
a link used twice or tampered with, the gateway away and back, the connector
restarted.  Screenshots go under the test's temporary folder.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from linchpin_connector.sample_app import pattern
from tests.nginx_support import DEPLOY, FakeSSO, Nginx, adapt_plain
from tests.support import TIMEOUT, Connector, Gateway, Process, SampleApp, cli, free_port

WAIT_MS = TIMEOUT * 1000
PHONE = {"viewport": {"width": 412, "height": 915}, "device_scale_factor": 2.625, "is_mobile": True,
         "has_touch": True}
FIVE_MIB = 5 * 1024 * 1024


class PhoneSystem:
    """Gateway, sample app and connector (pairing page on a fixed port), and
    nginx in front of the app and the page: the intranet's origin."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.gateway_port, self.web_port, self.nginx_port = free_port(), free_port(), free_port()
        self.start_gateway()
        self.app = SampleApp()
        self.connector_dir = tmp_path / "connector"
        cli("lmconnector", "--data-dir", self.connector_dir, "register", "--gateway", self.gateway.url)
        self.start_connector()
        self.sso = FakeSSO()
        self.origin = f"http://127.0.0.1:{self.nginx_port}"
        self.pairing_page = self.origin + "/mobile/"
        self.nginx = None
        self.hole = None
        self.nginx_runs = 0
        self.inside()

    def start_gateway(self):
        self.gateway = Gateway(self.tmp_path / "gw", port=self.gateway_port).for_fixture()

    def start_connector(self):
        self.connector = Connector(self.connector_dir, self.app.url, "--web",
                                   f"tcp:{self.web_port}:interface=127.0.0.1").for_fixture()
        self.connector.wait_online()

    def inside(self):
        """The phone is on the company's network: nginx answers."""
        if self.hole is not None:
            self.hole.close()
            self.hole = None
        if self.nginx is None:
            self.nginx_runs += 1
            conf = adapt_plain((DEPLOY / "intranet-with-phone-app.conf").read_text(), self.nginx_port,
                               {"127.0.0.1:4180": self.sso.address,
                                "http://127.0.0.1:8091/": f"http://127.0.0.1:{self.web_port}/",
                                "http://127.0.0.1:8090": self.app.url})
            self.nginx = Nginx(self.tmp_path / f"nginx-{self.nginx_runs}", http=conf)
            self.nginx.process.for_fixture()

    def outside(self, *, black_hole=False):
        """The phone left: the intranet's address no longer answers (with
        ``black_hole``, it takes connections and never answers: what a phone
        meets where the intranet's address is swallowed)."""
        self.nginx.stop()
        self.nginx = None
        if black_hole:
            self.hole = socket.socket()
            self.hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.hole.bind(("127.0.0.1", self.nginx_port))
            self.hole.listen(64)  # never accepted: the kernel completes connections, nobody reads

    def revoke(self, device_id):
        cli("lmconnector", "--data-dir", self.connector_dir, "device", "revoke", device_id)

    def stop(self):
        for proc in (self.nginx and self.nginx.process, self.connector, self.app, self.gateway):
            if proc is not None:
                proc.kill()
                Process.fixtures.discard(proc)
        self.sso.stop()
        if self.hole is not None:
            self.hole.close()


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    s = PhoneSystem(tmp_path_factory.mktemp("phone"))
    yield s
    s.stop()


def phone(browser, system, user):
    """The phone's browser, signed in to the company's SSO as ``user``."""
    context = browser.new_context(**PHONE, accept_downloads=True)
    context.add_cookies([{"name": "session", "value": user, "url": system.origin}])
    return context


def wait_state(page, state: str) -> None:
    page.wait_for_selector(f"#app[data-app-state={state}]", timeout=WAIT_MS)


def new_link(page, system) -> tuple[str, str]:
    """Pair a new device on the pairing page: (its id, its data-app-link)."""
    page.goto(system.pairing_page)
    before = set(re.findall(r'data-device-id="([0-9a-f]{32})"', page.content()))
    page.get_by_role("button", name="Pair a new device").click()
    page.wait_for_selector("[data-app-link]", timeout=WAIT_MS)
    for row in page.query_selector_all("[data-device-id]"):
        device_id = row.get_attribute("data-device-id")
        link = row.query_selector("[data-app-link]")
        if device_id not in before and link is not None:
            return device_id, link.get_attribute("data-app-link")
    raise AssertionError("no new device with a link")


def paired_phone(browser, system, user):
    """A phone of ``user`` paired from the page, its app ``ready``: (context, app page, device id)."""
    context = phone(browser, system, user)
    page = context.new_page()
    device_id, link = new_link(page, system)
    page.goto(system.pairing_page + link)
    wait_state(page, "ready")
    return context, page, device_id


def test_the_intranet_at_its_own_address_inside_then_outside(browser, system, shots):
    context = phone(browser, system, "carol")
    try:
        page = context.new_page()
        page.goto(system.pairing_page + "app/")
        wait_state(page, "unpaired")
        page.screenshot(path=shots / "01-unpaired.png")

        # -- pairing, inside ------------------------------------------------------------
        device_id, link = new_link(page, system)
        assert link.startswith("app/#pair=") and unquote(link[len("app/#pair="):]).startswith("linchpin-mobile://pair?")
        page.click(f"[data-device-id='{device_id}'] [data-app-link]")
        page.wait_for_selector("#app[data-app-state=pairing], #app[data-app-state=ready]", timeout=WAIT_MS)
        page.screenshot(path=shots / "02-pairing.png")
        wait_state(page, "ready")
        page.screenshot(path=shots / "03-ready.png")
        assert "pair=" not in page.url and page.evaluate("location.hash") == ""  # the secret left at once
        page.go_back()  # the entry with the secret was replaced: back is the pairing page
        assert page.url == system.pairing_page
        page.go_forward()
        wait_state(page, "ready")  # from the state kept in IndexedDB
        page.reload()
        wait_state(page, "ready")
        manifest = page.evaluate("fetch('manifest.webmanifest').then(r => r.json())")
        assert manifest["display"] == "standalone" and {i["sizes"] for i in manifest["icons"]} == {"192x192", "512x512"}
        assert page.evaluate("navigator.serviceWorker.controller.scriptURL") == system.pairing_page + "app/sw.js"
        assert page.evaluate("navigator.serviceWorker.getRegistration('/').then(r => r.scope)") == system.origin + "/"

        # inside, the intranet answers at its own address (through nginx)
        response = page.goto(system.origin + "/")
        assert response.headers["server"].startswith("nginx")
        assert page.locator("h1").inner_text() == "Hello, carol"

        # -- outside: the same URLs, through the end-to-end channel ----------------------------
        system.outside()
        # a form posted as the network fails is not sent twice: it may have reached the server
        page.get_by_label("Note").fill("posted while leaving")
        with page.expect_navigation():
            page.get_by_role("button", name="Save note").click()
        assert "was not sent" in page.text_content("#message")
        response = page.goto(system.origin + "/")
        assert response.status == 200 and not response.headers.get("server", "").startswith("nginx")
        assert page.locator("h1").inner_text() == "Hello, carol"  # as the paired user
        assert page.locator("h1").evaluate("e => getComputedStyle(e).color") == "rgb(11, 79, 138)"  # stylesheet
        assert page.locator("img.logo").evaluate("e => e.complete && e.naturalWidth") == 32  # image
        assert page.locator("#visits").inner_text() == "Visit number 1"  # the tunnel's jar starts empty
        page.reload()
        assert page.locator("#visits").inner_text() == "Visit number 2"  # the app's cookie came back
        page.screenshot(path=shots / "04-intranet-outside.png")

        page.get_by_label("Note").fill("written outside")
        with page.expect_navigation():
            page.get_by_role("button", name="Save note").click()
        assert page.url == system.origin + "/notes"  # the app's absolute redirect stayed on this origin
        assert page.locator("#note-list li").all_inner_texts() == ["written outside"]

        # a form another site (here the app's own port: another origin) posts to the intranet is refused
        page.goto(system.app.url + "/")
        page.evaluate(f"""() => {{ const f = document.createElement("form"); f.method = "post";
                                   f.action = "{system.origin}/notes"; const i = document.createElement("input");
                                   i.name = "note"; i.value = "forged"; f.append(i); document.body.append(f);
                                   f.submit(); }}""")
        page.wait_for_url(system.origin + "/notes", timeout=WAIT_MS)
        assert "Another site asked" in page.text_content("#message")
        page.goto(system.origin + "/notes")
        assert page.locator("#note-list li").all_inner_texts() == ["written outside"]  # nothing forged

        page.goto(system.origin + "/")
        page.evaluate(f"""() => {{ const a = document.createElement("a"); a.id = "big";
                                   a.href = "/download?size={FIVE_MIB}"; a.textContent = "5 MiB";
                                   document.body.append(a); }}""")
        with page.expect_download(timeout=WAIT_MS) as download:
            page.click("#big")
        digest = hashlib.sha256(Path(download.value.path()).read_bytes()).hexdigest()
        assert digest == hashlib.sha256(b"".join(pattern(FIVE_MIB))).hexdigest()
        assert download.value.suggested_filename == f"pattern-{FIVE_MIB}.bin"

        page.goto(system.pairing_page)  # the pairing page is only inside: a page saying so
        assert "only from inside" in page.text_content("#message")

        # -- revoked --------------------------------------------------------------------
        system.revoke(device_id)
        response = page.goto(system.origin + "/")
        page.wait_for_selector("main[data-app-state=revoked]", timeout=WAIT_MS)
        assert response.status == 403 and "access to the intranet was removed" in page.text_content("#message")
        page.screenshot(path=shots / "06-intranet-revoked.png")
        page.goto(system.pairing_page + "app/")  # the app, from the worker's cache
        wait_state(page, "revoked")
        page.screenshot(path=shots / "05-revoked.png")
    finally:
        context.close()
        system.inside()
    for name in ("01-unpaired", "02-pairing", "03-ready", "04-intranet-outside", "05-revoked"):
        assert (shots / f"{name}.png").stat().st_size > 1000


def test_a_link_used_twice_or_tampered_with_pairs_nothing(browser, system):
    context = phone(browser, system, "dave")
    other = phone(browser, system, "dave")  # another phone
    try:
        page = context.new_page()
        _, link = new_link(page, system)
        page.goto(system.pairing_page + link)
        wait_state(page, "ready")
        def refused(link):
            """Why the other phone's app, opened fresh at ``link``, paired nothing."""
            again = other.new_page()
            again.goto(system.pairing_page + link)
            again.wait_for_selector("#detail:not(:empty)", timeout=WAIT_MS)  # only a refusal writes it here
            assert again.get_attribute("#app", "data-app-state") == "unpaired"
            why = again.text_content("#detail")
            again.close()
            return why

        assert "already used" in refused(link)  # the same link on the other phone
        uri = unquote(link[len("app/#pair="):])
        tampered = re.sub(r"setup_key=[^&]+", "setup_key=AAAAAAAAAAAAAAAAAAAAAA", uri)
        assert "unknown" in refused("app/#pair=" + quote(tampered, safe=""))
        assert "lacks" in refused("app/#pair=" + quote("linchpin-mobile://pair?v=1&gateway=x", safe=""))

        # a link naming another company's connector is refused before anything is sent...
        _, fresh = new_link(page, system)
        fresh_uri = unquote(fresh[len("app/#pair="):])
        foreign = re.sub(r"connector_key=[^&]+", "connector_key=" + "A" * 43, fresh_uri)
        assert "another company's connector" in refused("app/#pair=" + quote(foreign, safe=""))
        # ...and a paired phone keeps its pairing when its user says no to a new link
        page.goto(system.pairing_page + "app/")
        wait_state(page, "ready")
        page.on("dialog", lambda dialog: dialog.dismiss())
        page.goto(system.pairing_page + fresh)
        page.wait_for_selector("#detail:has-text('was kept')", timeout=WAIT_MS)  # the page's CSP forbids eval
        assert page.get_attribute("#app", "data-app-state") == "ready"
        again = other.new_page()
        again.goto(system.pairing_page + fresh)  # so the link was never used
        wait_state(again, "ready")
    finally:
        other.close()
        context.close()


def test_the_gateway_away_then_back(browser, system):
    context, page, _ = paired_phone(browser, system, "erin")
    try:
        system.gateway.kill()
        wait_state(page, "offline")
        system.start_gateway()  # where the phone expects it
        wait_state(page, "ready")  # by itself
    finally:
        context.close()


def test_the_connector_restarted(browser, system):
    context, page, _ = paired_phone(browser, system, "frank")
    try:
        assert system.connector.terminate() == 0  # drains: RESET to its devices
        wait_state(page, "offline")
        assert page.reload().status == 200  # nginx answers 502 for the page: the worker's copy
        wait_state(page, "offline")
        system.start_connector()
        wait_state(page, "ready")  # a new session, by itself
        # outside where the intranet's address swallows connections: the worker does not wait for TCP to give up
        system.outside(black_hole=True)
        page.goto(system.origin + "/api/whoami")
        assert '"user": "frank"' in page.text_content("body")
        # what a browser adds on the network is added in the tunnel too: an app's CSRF check passes
        echoed = page.evaluate("fetch('/echo-headers', {method: 'POST', body: 'x'}).then(r => r.json())")
        headers = {name.lower(): value for name, value in echoed["headers"]}
        assert headers["origin"] == system.origin and headers["referer"] == system.origin + "/api/whoami"
        assert headers["user-agent"] == page.evaluate("navigator.userAgent")
        # a request whose headers cannot be sent is answered at once, as HTTP says it
        status = page.evaluate("fetch('/api/whoami', {headers: {'X-Big': 'a'.repeat(70000)}}).then(r => r.status)")
        assert status == 431
    finally:
        context.close()
        system.inside()
