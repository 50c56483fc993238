"""docs/operations.md tells the truth: every metric the daemons export is
described, and the backup and restore commands work on a live gateway."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support import TIMEOUT, Gateway, RestAccounts, rest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "operations.md"


def exported_metrics() -> set[str]:
    """Metric names as the code declares them (counters gain ``_total`` when exposed)."""
    names = set()
    for source in list((ROOT / "linchpin_gateway").glob("*.py")) + list((ROOT / "linchpin_connector").glob("*.py")):
        for kind, name in re.findall(r'(Counter|Gauge)MetricFamily\(\s*"(\w+)"', source.read_text()):
            names.add(name + "_total" if kind == "Counter" else name)
    return names


def test_every_metric_is_described():
    text = DOC.read_text()
    names = exported_metrics()
    assert len(names) >= 15  # the scan found them
    table = text[text.index("## Metrics and alerts"):text.index("## Capacity per node")]
    missing = [name for name in sorted(names) if f"`{name}" not in table]
    assert not missing, missing


def doc_block(tag: str) -> str:
    m = re.search(rf"<!-- test: {tag} -->\n```sh\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert m, tag
    return m.group(1)


def run_block(code: str, tmp_path: Path) -> str:
    code = code.replace("/var/lib/", f"{tmp_path}/lib/").replace("/var/backups/", f"{tmp_path}/backups/")
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, code + "\n" + done.stdout + done.stderr
    return done.stdout


def test_backup_and_restore_as_documented(tmp_path):
    (tmp_path / "backups").mkdir()
    data = tmp_path / "lib" / "lmgateway"
    gateway = Gateway(data)
    try:
        world = RestAccounts(gateway.url)
        kept = world.register()
        out = run_block(doc_block("backup"), tmp_path)  # while the gateway runs
        assert out.strip() == "ok"
        assert (tmp_path / "backups" / "lmgateway.sqlite").stat().st_mode & 0o077 == 0
        later = world.register()  # after the backup: gone after the restore
        assert gateway.terminate() == 0
    finally:
        gateway.kill()
    run_block(doc_block("restore"), tmp_path)
    assert (data / "lmgateway.sqlite").stat().st_mode & 0o777 == 0o600
    gateway = Gateway(data)
    try:
        devices = gateway.url + "/api/v1/devices"
        assert rest("GET", devices, auth=kept)[0] == 200
        assert rest("GET", devices, auth=later)[0] == 401
        assert gateway.terminate() == 0
    finally:
        gateway.kill()


def test_links_between_the_operator_docs_resolve():
    for name in ("getting-started.md", "operations.md"):
        text = (ROOT / "docs" / name).read_text()
        targets = re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", text)
        assert "security.md" in targets
        for target in targets:
            assert (ROOT / "docs" / target).is_file(), (name, target)
        anchors = re.findall(r"\]\(#([^)]+)\)", text)
        headings = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                    for h in re.findall(r"^#+ (.*)$", text, re.MULTILINE)}
        for anchor in anchors:
            assert anchor in headings, (name, anchor)
