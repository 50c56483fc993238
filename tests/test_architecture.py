"""The layering rule of docs/architecture.md, checked on the source.

The gateway, the connector daemon and the device client never import each
other: each imports only ``linchpin_common`` (the contract and the shared
plumbing).  ``linchpin_common.contract`` imports nothing from Twisted, and the
seams of docs/architecture.md (SEAMS) hold: a module on one side does not
import what is on the other.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Which packages each part may import from this project.  Tools that play
# several parts at once (the demo drives a device) are listed on their own.
PARTS = {
    "linchpin_common.contract": ("linchpin_common.contract",),
    "linchpin_common": ("linchpin_common",),
    "linchpin_gateway": ("linchpin_gateway", "linchpin_common"),
    "linchpin_connector.device": ("linchpin_connector.device", "linchpin_common"),
    "linchpin_connector.demo": ("linchpin_connector.device", "linchpin_connector.demo", "linchpin_common"),
    "linchpin_connector": ("linchpin_connector", "linchpin_common"),
}
FORBIDDEN_IN_CONNECTOR = ("linchpin_connector.device",)
SANS_IO = ("twisted", "autobahn", "treq", "txredisapi", "hiredis", "zope")
IO = SANS_IO + ("socket", "psycopg", "psycopg_pool", "sqlite3", "redis")

# The seams of docs/architecture.md: what a module on one side of a seam
# must not import, so that the seam stays where the document draws it.
SEAMS = {
    # the MQTT session is fed bytes; its WebSocket adapter is linchpin_gateway.websocket
    "linchpin_gateway.session": ("autobahn", "linchpin_gateway.websocket"),
    # the router reaches other nodes only through the IClusterPeer seam
    "linchpin_gateway.router": ("linchpin_gateway.cluster", "linchpin_gateway.bus", "linchpin_gateway.busmessages",
                                "linchpin_gateway.redis_client", "txredisapi"),
    # what nodes say to each other: a codec, no I/O
    "linchpin_gateway.busmessages": IO,
    "linchpin_gateway.peers": ("linchpin_gateway.cluster", "linchpin_gateway.bus", "txredisapi"),
    # decisions without I/O, next to the modules that do the I/O
    "linchpin_connector.proxy_policy": IO + ("linchpin_connector.proxy",),
    "linchpin_connector.device.serve_policy": IO + ("linchpin_connector.device.serve",),
    "linchpin_connector.config": IO,
    "linchpin_common.machine": IO,
    # the connector's state: its SQL for both databases here, psycopg only in pgstate
    "linchpin_connector.state": ("psycopg", "psycopg_pool", "twisted"),
    # the health check decides readiness; draining is the service's
    "linchpin_connector.health": ("linchpin_connector.connector", "linchpin_connector.proxy"),
    # the device's request bodies know nothing of pairing or the MQTT client
    "linchpin_connector.device.bodies": ("linchpin_connector.device.pairing", "linchpin_common.mqtt_client",
                                         "linchpin_common.gateway_client"),
}


def _within(module: str, packages) -> bool:
    """True when ``module`` is one of ``packages`` or inside one (whole names:
    ``linchpin_connector.devices`` is not inside ``linchpin_connector.device``)."""
    return any(module == p or module.startswith(p + ".") for p in packages)


def _part(module: str) -> str:
    """The most specific part a module belongs to."""
    return max((p for p in PARTS if module == p or module.startswith(p + ".")), key=len)


def _imports(path: str, module: str):
    """(line, imported module) for every import in the file, relative ones resolved."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            yield node.lineno, name
            for alias in node.names:  # `from . import e2e` imports a module too
                yield node.lineno, f"{name}.{alias.name}"


def violations(root: str = ROOT) -> list[str]:
    found = []
    for top in ("linchpin_common", "linchpin_gateway", "linchpin_connector"):
        for folder, _, files in os.walk(os.path.join(root, top)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                module = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
                part = _part(module)
                for line, imported in _imports(path, module):
                    where = f"{os.path.relpath(path, root)}:{line} imports {imported}"
                    if part == "linchpin_common.contract" and imported.split(".")[0] in SANS_IO:
                        found.append(f"{where} (the contract is sans-IO)")
                    seam = SEAMS.get(module, ())
                    if _within(imported, seam):
                        found.append(f"{where} (a seam: {module} does not import {imported})")
                    if not imported.startswith("linchpin_"):
                        continue
                    if not _within(imported, PARTS[part]):
                        found.append(f"{where} ({part} may import only {', '.join(PARTS[part])})")
                    elif part == "linchpin_connector" and _within(imported, FORBIDDEN_IN_CONNECTOR):
                        found.append(f"{where} (the connector daemon does not import the device client)")
    return found


def test_parties_import_only_the_common_package():
    assert violations() == []


def test_every_seam_names_a_module_that_exists():
    for module in SEAMS:
        path = os.path.join(ROOT, *module.split(".")) + ".py"
        assert os.path.exists(path), module


@pytest.mark.parametrize("module, line", [
    ("linchpin_connector/connector.py", "from linchpin_gateway.router import Router"),
    ("linchpin_connector/proxy.py", "from .device import client"),
    ("linchpin_connector/device/client.py", "from linchpin_connector import state"),
    ("linchpin_gateway/api.py", "import linchpin_connector.cli"),
    ("linchpin_common/contract/topics.py", "from twisted.internet import defer"),
    ("linchpin_common/files.py", "from linchpin_gateway import store"),
    ("linchpin_common/contract/ids.py", "from linchpin_common import files"),
    ("linchpin_gateway/session.py", "from autobahn.twisted.websocket import WebSocketServerProtocol"),
    ("linchpin_gateway/router.py", "from .cluster import Cluster"),
    ("linchpin_gateway/busmessages.py", "from twisted.internet import defer"),
    ("linchpin_connector/proxy_policy.py", "from twisted.web.http_headers import Headers"),
    ("linchpin_connector/device/serve_policy.py", "import socket"),
    ("linchpin_common/machine.py", "from twisted.logger import Logger"),
    ("linchpin_connector/state.py", "import psycopg"),
])
def test_the_rule_catches_a_wrong_import(tmp_path, module, line):
    """A copy of the tree with one wrong import added fails the rule."""
    for top in ("linchpin_common", "linchpin_gateway", "linchpin_connector"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    src = os.path.join(folder, name)
                    dst = tmp_path / os.path.relpath(src, ROOT)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.write_text(open(src, encoding="utf-8").read())
    assert violations(str(tmp_path)) == []
    target = tmp_path / module
    target.write_text(target.read_text() + "\n" + line + "\n")
    found = violations(str(tmp_path))
    assert found and all(f.startswith(f"{module}:") for f in found), found


def test_connector_and_device_entry_points_load_no_gateway_and_hash_nothing():
    """Starting ``lmconnector``, ``twistd lmconnector`` or ``lmdevice`` loads
    no gateway module and runs no PBKDF2."""
    script = textwrap.dedent("""
        import hashlib, sys
        calls = []
        real = hashlib.pbkdf2_hmac
        hashlib.pbkdf2_hmac = lambda *a, **k: calls.append(a) or real(*a, **k)
        import linchpin_connector.cli, linchpin_connector.tap, linchpin_connector.device.cli
        import linchpin_connector.device
        loaded = sorted(m for m in sys.modules if m.startswith("linchpin_gateway"))
        print(loaded, len(calls))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[] 0", out.stdout + out.stderr


def test_gateway_import_runs_no_pbkdf2():
    script = textwrap.dedent("""
        import hashlib
        calls = []
        real = hashlib.pbkdf2_hmac
        hashlib.pbkdf2_hmac = lambda *a, **k: calls.append(a) or real(*a, **k)
        import linchpin_gateway.tap, linchpin_gateway.service
        print(len(calls))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "0", out.stdout + out.stderr
