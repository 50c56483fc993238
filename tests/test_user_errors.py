"""What a user sees for the usual mistakes: one line saying what to do next,
never a traceback; and ``--version`` on every command."""

from __future__ import annotations

import os
import subprocess

import pytest

from linchpin_common import __version__
from tests.proxy_support import environment
from tests.support import BIN, TIMEOUT


def run(*argv, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, argv[0]), *map(str, argv[1:])], capture_output=True, text=True,
                          timeout=TIMEOUT, env=environment(), cwd=cwd)


@pytest.mark.parametrize("argv, name", [(["lmconnector", "--version"], "lmconnector"),
                                        (["lmdevice", "--version"], "lmdevice"),
                                        (["twistd", "lmgateway", "--version"], "lmgateway"),
                                        (["twistd", "lmconnector", "--version"], "lmconnector")])
def test_version(argv, name):
    done = run(*argv)
    assert done.returncode == 0 and done.stdout == f"{name} {__version__}\n", done.stdout + done.stderr


def one_line(done, code, *expected):
    err = done.stderr.strip()
    assert done.returncode == code, err
    assert "Traceback" not in done.stderr + done.stdout and len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err


def test_daemon_before_registering(tmp_path):
    done = run("twistd", "-n", "--pidfile=", "lmconnector", "--data-dir", tmp_path / "c", "--backend",
               "http://127.0.0.1:9", cwd=tmp_path)
    one_line(done, 1, "no connector registered", "lmconnector --data-dir", "register --gateway URL")
    assert not (tmp_path / "c").exists()


def test_admin_and_device_before_setting_up(tmp_path):
    one_line(run("lmconnector", "--data-dir", tmp_path / "c", "device", "add", "alice"), 1,
             "no connector registered", "run 'lmconnector register --gateway URL' first")
    one_line(run("lmdevice", "--state", tmp_path / "phone.json", "request", "/"), 1,
             "no device state", "run 'lmdevice pair URI' first")
    one_line(run("lmdevice", "--state", tmp_path / "phone.json", "request", "--data", f"@{tmp_path / 'none'}", "/"),
             1, "cannot read", "none")
    one_line(run("lmdevice", "--state", tmp_path / "phone.json", "request", "--data", f"@{tmp_path}", "/"), 1,
             "cannot read", "directory")


def test_proxy_mistakes(tmp_path):
    one_line(run("lmconnector", "--proxy", "https://proxy:3128", "device", "list"), 2, "only http:// proxies")
    # a password in --proxy is taken (INTERFACE.md), with a warning that does not repeat it
    done = run("lmdevice", "--state", tmp_path / "none.json", "--proxy", "http://bob:s3cret@proxy:3128", "request",
               "/")
    assert "warning: the password in --proxy is visible in ps" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr and "Traceback" not in done.stderr
    assert "no device state" in done.stderr  # it went on past the proxy settings


def test_device_with_the_gateway_away_says_what_to_check(tmp_path):
    import json

    from tests.proxy_support import free_port

    state = tmp_path / "phone.json"
    state.write_text(json.dumps({"gateway_url": f"http://127.0.0.1:{free_port()}", "device_id": "d" * 32,
                                 "device_password": "pw", "connector_key": "A" * 43, "device_secret": "A" * 43}))
    one_line(run("lmdevice", "--state", state, "request", "/"), 3, "lmdevice: gateway unreachable at",
             "check the network and any proxy settings")
