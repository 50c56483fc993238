"""The relay processes keep message-sized buffers in the heap
(linchpin_common.malloc): counted in page faults, not in time."""

import subprocess
import sys

import pytest

from linchpin_common import malloc

PROBE = """
import resource, sys
from linchpin_common.malloc import keep_large_buffers
if sys.argv[1] == "tuned":
    assert keep_large_buffers()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = b"x" * (256 * 1024)
for _ in range(5):  # warm up
    bytes(bytearray(block))
before = faults()
for _ in range(200):  # a 256 KiB message copied and freed, as a relay does
    bytes(bytearray(block))
print(faults() - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_large_messages_stop_costing_page_faults():
    plain, tuned = page_faults("plain"), page_faults("tuned")
    # Without the thresholds every 256 KiB buffer is a fresh mmap: about 64
    # faults each (one per 4 KiB page), 12,800 for 200 messages.
    assert plain > 200 * 32, plain
    assert tuned < 200, tuned


def test_settings_go_to_mallopt():
    calls = []

    class LibC:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    assert malloc.keep_large_buffers(libc=LibC())
    assert calls == [(malloc.M_MMAP_THRESHOLD, malloc.MMAP_THRESHOLD), (malloc.M_TRIM_THRESHOLD, malloc.TRIM_THRESHOLD)]


def test_a_refused_setting_is_reported():
    class LibC:
        def mallopt(self, param, value):
            return 0

    assert not malloc.keep_large_buffers(libc=LibC())


def test_the_gateway_the_connector_and_lmdevice_take_the_setting(monkeypatch, tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    from linchpin_connector import tap as connector_tap
    from linchpin_connector.device import cli
    from linchpin_connector.state import ConnectorState
    from linchpin_gateway import tap

    calls = []
    monkeypatch.setattr(tap, "keep_large_buffers", lambda: calls.append("gateway"))
    monkeypatch.setattr(connector_tap, "keep_large_buffers", lambda: calls.append("connector"))

    class Started(Exception):
        pass

    def device_start():
        calls.append("lmdevice")
        raise Started  # before any work: the setting comes first

    monkeypatch.setattr(cli, "keep_large_buffers", device_start)
    options = tap.Options()
    options.parseOptions(["--data-dir", str(tmp_path / "gw"), "--listen", "tcp:0:interface=127.0.0.1"])
    tap.makeService(options, MemoryReactorClock())
    ConnectorState(str(tmp_path / "connector"))  # the state file a registered connector has
    options = connector_tap.Options()
    options.parseOptions(["--data-dir", str(tmp_path / "connector"), "--backend", "http://intranet.local:8090"])
    connector_tap.makeService(options, MemoryReactorClock())
    with pytest.raises(Started):
        cli.main(["--state", str(tmp_path / "none.json"), "request", "/"])
    assert calls == ["gateway", "connector", "lmdevice"]
