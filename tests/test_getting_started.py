"""docs/getting-started.md works: its shell blocks, run in order with the real
commands of this virtualenv, on loopback with free ports.

An HTML comment right before a block tells how to run it:
``skip``; ``folder`` (the folder every later block runs in);
``daemon, wait for "REGEX"`` (runs on in the background, like a terminal
left open, until the end); ``expect "TEXT"`` (in its output);
``fails with N`` (its exit status). Every other block must exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.proxy_support import environment, free_port
from tests.support import BIN, TIMEOUT, Process

DOC = Path(__file__).resolve().parent.parent / "docs" / "getting-started.md"
BLOCK = re.compile(r"(?:<!-- test: (?P<how>.*?) -->\n)?```sh\n(?P<code>.*?)```", re.DOTALL)
GATEWAY_PORT, APP_PORT = "8080", "8090"  # as the page writes them


def blocks(text: str):
    """[(directive, code)] in order."""
    return [(m.group("how") or "", m.group("code")) for m in BLOCK.finditer(text)]


def test_the_page_has_the_steps_a_newcomer_needs():
    steps = blocks(DOC.read_text())
    hows = [how for how, _ in steps]
    assert sum(how.startswith("skip") for how in hows) == 1 and "folder" in hows
    assert sum(how.startswith("daemon") for how in hows) == 3  # gateway, app, connector
    code = "\n".join(c for _, c in steps)
    for command in ["twistd --nodaemon --pidfile= lmgateway", "lmconnector --data-dir ./connector register",
                    "twistd --nodaemon --pidfile= lmconnector", "device add alice", "lmdevice --state ./phone.json pair",
                    "lmdevice --state ./phone.json request /", "device revoke"]:
        assert command in code, command


def test_getting_started_runs_as_written(tmp_path):
    ports = {GATEWAY_PORT: str(free_port()), APP_PORT: str(free_port())}
    text = re.sub(rf"\b({GATEWAY_PORT}|{APP_PORT})\b", lambda m: ports[m.group(1)], DOC.read_text())
    home = tmp_path / "home"
    home.mkdir()
    env = environment(HOME=str(home), PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("VIRTUAL_ENV", None)
    cwd = home
    daemons: list[Process] = []
    transcript = []
    try:
        for how, code in blocks(text):
            if how.startswith("skip"):
                continue
            if how.startswith("daemon"):
                wait = re.fullmatch(r'daemon, wait for "(.*)"', how).group(1)
                daemon = Process(["bash", "-c", "exec " + code.strip()], env=env, cwd=cwd)
                daemons.append(daemon)
                daemon.wait_for(wait)
                transcript.append(f"$ {code.strip()}\n[running: {wait}]")
                continue
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], capture_output=True, text=True,
                                  env=env, cwd=cwd, timeout=TIMEOUT)
            output = done.stdout + done.stderr
            transcript.append(f"$ {code.strip()}\n{output}")
            failing = re.search(r"fails with (\d+)", how)
            expected = int(failing.group(1)) if failing else 0
            assert done.returncode == expected, f"{code}\nexited {done.returncode}:\n{output}"
            for text_expected in re.findall(r'expect "((?:[^"\\]|\\.)*)"', how):
                assert text_expected.replace('\\"', '"').replace('\\t', '\t') in output, f"{code}\n{output}"
            assert "Traceback" not in output, output
            if how == "folder":
                cwd = home / "linchpin-demo"
                assert cwd.is_dir()
        for daemon in reversed(daemons):
            assert daemon.terminate() == 0, daemon.text()
    finally:
        for daemon in daemons:
            daemon.kill()
        print("\n".join(transcript))
    # what the page promises about the files it makes
    assert oct((cwd / "alice.png").stat().st_mode & 0o777) == "0o600"
    assert oct((cwd / "phone.json").stat().st_mode & 0o777) == "0o600"
    assert oct((cwd / "gateway").stat().st_mode & 0o777) == "0o700"
