"""README.md's way to pair without a browser works as written: its curl
commands play the pairing page's form against the real connector, and its
``lmdevice`` line pairs with the link they saved."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.logcheck import no_traceback
from tests.proxy_support import environment
from tests.support import BIN, TIMEOUT, cli
from tests.test_browser_story import PairingSystem

README = Path(__file__).resolve().parent.parent / "README.md"
WEB_PORT = "8091"  # as the README writes it
CURL = ("H='X-Forwarded-User: alice'", "> link.txt")  # play the page's form with curl, keep the link
PAIR = ("lmdevice --state ./var/phone.json pair -", "link.txt")  # pair with the link, remove it
README_BLOCKS = [CURL, PAIR]  # (the commands they use are checked by test_tooling.py)


def code_lines(start: str, end: str) -> str:
    """The README's code lines (indented four spaces) from the one starting
    with ``start`` to the first one holding ``end``, unindented."""
    lines = README.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("    " + start))
    last = next(i for i in range(first, len(lines)) if end in lines[i])
    block = lines[first:last + 1]
    assert all(line.startswith("    ") for line in block), block
    return "\n".join(line[4:] for line in block) + "\n"


def run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = environment(PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], capture_output=True, cwd=cwd, env=env,
                          timeout=TIMEOUT)
    no_traceback(code, done.stderr)
    assert done.returncode == 0, code + "\n" + done.stdout.decode() + done.stderr.decode()
    return done


def test_pairing_with_curl_as_the_readme_shows(tmp_path):
    curl = code_lines(*CURL)
    assert f"P=http://127.0.0.1:{WEB_PORT}" in curl and "curl" in curl
    pair = code_lines(*PAIR)
    system = PairingSystem(tmp_path / "system")
    try:
        port = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/", system.web_url).group(1)
        home = tmp_path / "home"
        home.mkdir()
        run(curl.replace(WEB_PORT, port), home)
        link = (home / "link.txt").read_text().strip()
        assert link.startswith("linchpin-mobile://pair?") and "&amp;" not in link
        run(pair, home)
        assert not (home / "link.txt").exists()  # the README removes the secret once used
        page = cli("lmdevice", "--state", home / "var" / "phone.json", "request", "/").stdout.decode()
        assert "Hello, alice" in page
        devices = cli("lmconnector", "--data-dir", system.connector_dir, "device", "list").stdout.decode()
        assert "\talice\t" in devices
    finally:
        system.stop()
