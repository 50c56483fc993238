"""The distribution: ``python -m build`` gives an sdist and a wheel (the wheel
built from the sdist, so a file missing from the sdist shows), with complete
metadata; the wheel installed into a fresh virtualenv has the three commands,
and they work against each other on loopback.

Nothing is downloaded: the build runs without isolation (setuptools and wheel
of this virtualenv) and the wheel is installed with ``--no-deps --no-index``
into a virtualenv that sees this one's site-packages through a ``.pth`` line
(so its dependencies, but not this checkout: a ``.pth`` file inside a folder
added that way is not read).
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from linchpin_common import __version__
from linchpin_common.hotpath import can_compile
from tests.support import TIMEOUT, Process

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 300
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
SKIP = shutil.ignore_patterns(".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                              ".hypothesis", ".cache", "dropin.cache", "node_modules", "*.so", "*.c")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(sdist, wheel) built from a copy of this source tree."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=SKIP)
    out = work / "dist"
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def fresh_venv(dist, tmp_path_factory):
    """A new virtualenv with only the wheel installed (dependencies seen from ours)."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=TIMEOUT)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=TIMEOUT).stdout.strip()
    ours = sysconfig.get_paths()
    Path(purelib, "dependencies.pth").write_text(f"{ours['purelib']}\n{ours['platlib']}\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                           "--no-index", str(dist[1])], capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


def test_sdist_carries_docs_service_files_and_tests(dist):
    sdist, _ = dist
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for expected in ["README.md", "LICENSE", "Makefile", "requirements.lock", "docs/getting-started.md",
                     "docs/operations.md", "deploy/systemd/lmgateway.service", "deploy/systemd/lmconnector.service",
                     "deploy/nginx/gateway-tls.conf", "deploy/nginx/pairing-page-sso.conf", "deploy/README.md",
                     "linchpin_gateway/db-schemas/v1.sql", "linchpin_connector/db-schemas/v1.sql",
                     "twisted/plugins/lmgateway_plugin.py", "tests/test_packaging.py",
                     "linchpin_common/_wsmask.pyx", "linchpin_common/wsframes.pxd",
                     "linchpin_common/contract/wire.pxd", "pyproject.toml"]:
        assert expected in names, expected


def test_wheel_metadata_is_complete(dist):
    _, wheel = dist
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(whl.read(info))
    assert meta["Name"] == "linchpin-mobile-gateway" and meta["Version"] == __version__
    assert meta["License"] == "MIT" and meta["Requires-Python"] == ">=3.11"
    assert "License :: OSI Approved :: MIT License" in meta.get_all("Classifier")
    assert "Framework :: Twisted" in meta.get_all("Classifier")
    assert meta.get_all("Project-URL") is None  # no address is published for the project yet
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().lstrip().startswith("# Linchpin Mobile Gateway")
    assert "twisted[tls]>=23.10.0" in meta.get_all("Requires-Dist")
    for data in ["linchpin_gateway/db-schemas/v1.sql", "linchpin_connector/db-schemas/v1.sql",
                 "twisted/plugins/lmgateway_plugin.py", "twisted/plugins/lmconnector_plugin.py",
                 "linchpin_common/py.typed"]:
        assert data in names, data
    assert not any("/tests/" in n or n.startswith("tests/") or n.endswith("dropin.cache") for n in names)
    # built with Cython where it can be (setup.py): the hot path compiled, its .py kept
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for module in ["linchpin_common/_wsmask", "linchpin_common/wsframes", "linchpin_common/contract/wire"]:
        assert (module + suffix in names) is can_compile(), module
    assert "linchpin_common/wsframes.py" in names and not any(n.endswith((".c", ".pyx", ".pxd")) for n in names)


def run(venv: Path, *argv, env=None) -> subprocess.CompletedProcess:
    done = subprocess.run([*map(str, argv)], capture_output=True, text=True, timeout=TIMEOUT, env=env,
                          cwd=venv.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_wheel_in_a_fresh_virtualenv(fresh_venv, tmp_path):
    bin_ = fresh_venv / "bin"
    python = bin_ / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # the code comes from the wheel, not from this checkout
    where = run(fresh_venv, python, "-c", "import linchpin_common, linchpin_gateway.tap, linchpin_connector.cli; "
                "print(linchpin_common.__file__)", env=env).stdout
    assert where.startswith(str(fresh_venv)), where

    assert run(fresh_venv, bin_ / "lmconnector", "--version", env=env).stdout == f"lmconnector {__version__}\n"
    assert run(fresh_venv, bin_ / "lmdevice", "--version", env=env).stdout == f"lmdevice {__version__}\n"
    twistd = [python, "-c", TWISTD]
    assert run(fresh_venv, *twistd, "lmgateway", "--version", env=env).stdout == f"lmgateway {__version__}\n"
    assert run(fresh_venv, *twistd, "lmconnector", "--version", env=env).stdout == f"lmconnector {__version__}\n"
    assert "--backend" in run(fresh_venv, *twistd, "lmconnector", "--help", env=env).stdout

    # smoke: the installed gateway (schemas from the wheel) and connector CLI work together
    gateway = Process([str(python), "-c", TWISTD, "-n", "--pidfile=", "lmgateway", "--listen",
                       "tcp:0:interface=127.0.0.1", "--data-dir", str(tmp_path / "gw")], env=env)
    try:
        port = int(gateway.wait_for(r"lmgateway listening on .* at 127\.0\.0\.1:(\d+)").group(1))
        connector = [bin_ / "lmconnector", "--data-dir", tmp_path / "connector", "--proxy", ""]
        registered = run(fresh_venv, *connector, "register", "--gateway", f"http://127.0.0.1:{port}", env=env)
        assert "registered instance" in registered.stderr
        uri = run(fresh_venv, *connector, "device", "add", "alice", env=env).stdout
        assert uri.startswith("linchpin-mobile://pair?")
        assert run(fresh_venv, *connector, "device", "list", env=env).stdout.split("\t")[1] == "alice"
        assert gateway.terminate() == 0
    finally:
        gateway.kill()
