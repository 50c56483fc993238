"""deploy/: the systemd units pass ``systemd-analyze verify`` and name only
options our daemons accept.

``verify`` insists that ExecStart's program exists, so it runs on copies
whose ``/opt/linchpin/bin/`` is this virtualenv's bin folder; nothing else
is changed. It exits 0 even for an unknown or unparsable directive (it only
warns), so its output must be empty too.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from twisted.python import usage

from tests.support import BIN, TIMEOUT

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = {"lmgateway": DEPLOY / "systemd" / "lmgateway.service",
         "lmconnector": DEPLOY / "systemd" / "lmconnector.service",
         "lmconnector@": DEPLOY / "systemd" / "lmconnector@.service"}  # several connectors: a template
INSTALLED_BIN = "/opt/linchpin/bin/"


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: run tools/system-packages.sh"
    return found


def local_copy(unit: Path, folder: Path, text: str | None = None) -> Path:
    """A copy whose programs are this virtualenv's (a template as its instance ``a``)."""
    copy = folder / unit.name.replace("@.", "@a.")
    copy.write_text((text or unit.read_text()).replace(INSTALLED_BIN, BIN + os.sep))
    return copy


def verify(*units: Path) -> subprocess.CompletedProcess:
    return subprocess.run([analyze(), "verify", "--man=no", *map(str, units)], capture_output=True, text=True,
                          timeout=TIMEOUT)


def directives(unit: Path) -> dict[str, list[str]]:
    """Service-section directives as {name: [values]} (repeated keys kept)."""
    values: dict[str, list[str]] = {}
    section = None
    text = unit.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            name, _, value = line.partition("=")
            values.setdefault(name, []).append(value)
    return values


def test_units_pass_systemd_analyze_verify(tmp_path):
    copies = [local_copy(unit, tmp_path) for unit in UNITS.values()]
    done = verify(*copies)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_verify_would_catch_a_mistake(tmp_path):
    # The check above can fail: a misspelt directive and a bad value are reported.
    text = UNITS["lmconnector"].read_text()
    broken = local_copy(UNITS["lmconnector"], tmp_path,
                        text.replace("ProtectHome=yes", "ProtectHome=maybe\nProtectHomme=yes"))
    out = verify(broken)
    assert "ProtectHomme" in out.stdout + out.stderr and "protect home" in (out.stdout + out.stderr).lower()


@pytest.mark.parametrize("name", UNITS)
def test_units_hold_the_promised_hardening(name):
    d = directives(UNITS[name])
    state = name.replace("@", "-%i")
    for key, value in [("DynamicUser", "yes"), ("StateDirectory", state), ("StateDirectoryMode", "0700"),
                       ("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                       ("Restart", "on-failure"), ("KillSignal", "SIGTERM"), ("UMask", "0077")]:
        assert d.get(key) == [value], (key, d.get(key))
    if name == "lmgateway":
        assert d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
        assert d["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
        assert any(v.startswith("tls-key:") for v in d["LoadCredential"])
    else:
        assert d["CapabilityBoundingSet"] == [""] and "AmbientCapabilities" not in d
    # secrets come from a root-only file or a credential, never the command line
    daemon = name.rstrip("@")
    assert d["EnvironmentFile"] == [f"-/etc/{daemon}/{daemon}.env"]
    assert not re.search(r"token|password", " ".join(d["ExecStart"]), re.IGNORECASE)


@pytest.mark.parametrize("name", UNITS)
def test_exposure_is_low(name, tmp_path):
    done = subprocess.run([analyze(), "security", "--offline=yes", "--no-pager",
                           str(local_copy(UNITS[name], tmp_path))], capture_output=True, text=True, timeout=TIMEOUT)
    level = re.search(rf"Overall exposure level for {name.replace('@', '@a')}\.service: ([\d.]+)", done.stdout)
    assert level, done.stdout + done.stderr
    assert float(level.group(1)) <= 2.0, done.stdout  # systemd's own scale: up to 2.0 is "OK"


@pytest.mark.parametrize("name", UNITS)
def test_exec_start_options_are_accepted_by_the_daemon(name, tmp_path):
    """The options in ExecStart parse with the daemon's own Options (systemd
    specifiers replaced by what systemd would put there)."""
    argv = shlex.split(directives(UNITS[name])["ExecStart"][0])
    daemon = name.rstrip("@")
    assert argv[0] == INSTALLED_BIN + "twistd" and argv[1:4] == ["--nodaemon", "--pidfile=", daemon]
    specifiers = {"%S": str(tmp_path), "%d": str(tmp_path / "credentials"), "%i": "a", "%l": "host",
                  "${LMCONNECTOR_STORE}": "postgresql://lmconnector@db.example/lmconnector"}
    args = []
    for a in argv[4:]:
        for specifier, value in specifiers.items():
            a = a.replace(specifier, value)
        args.append(a)
    if name == "lmgateway":
        from linchpin_gateway.tap import Options
    else:
        from linchpin_connector.tap import Options
    options = Options()
    options.parseOptions(args)
    assert options["data-dir"] == str(tmp_path / name.replace("@", "-a"))
    if name == "lmconnector@":  # each instance its own name, all the shared state
        assert options["name"] == "host-a" and options["store"].startswith("postgresql://")
    if name == "lmgateway":
        (listen,) = options["listen"]
        assert listen.startswith("ssl:443:privateKey=" + str(tmp_path / "credentials" / "tls-key"))
    with pytest.raises(usage.UsageError):
        Options().parseOptions(args + ["--no-such-option"])


def test_nginx_snippets_pass_the_client_address_and_the_identity_header():
    tls = (DEPLOY / "nginx" / "gateway-tls.conf").read_text()
    assert re.search(r"^\s*proxy_protocol on;", tls, re.MULTILINE)  # the gateway's per-address limits
    assert "haproxy:tcp:8080:interface=127.0.0.1" in tls
    sso = (DEPLOY / "nginx" / "pairing-page-sso.conf").read_text()
    assert re.search(r"^\s*auth_request /oauth2/auth;", sso, re.MULTILINE)
    # the header is always set by nginx from the SSO's answer, never passed from the browser
    assert re.search(r"^\s*proxy_set_header X-Forwarded-User \$sso_user;", sso, re.MULTILINE)
    assert "proxy_pass       http://127.0.0.1:8091;" in sso


def test_units_parse_as_ini():
    for unit in UNITS.values():
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(unit.read_text())
        assert parser.sections() == ["Unit", "Service", "Install"]
        assert parser["Install"]["WantedBy"] == "multi-user.target"
