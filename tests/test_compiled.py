"""The compiled hot path (setup.py: Cython) and its pure-Python fallback.

Where Cython and a C compiler are present, ``make install`` compiles
``wsframes`` and ``contract.wire`` from their own ``.py`` (typed by their
``.pxd``) and ``_wsmask.pyx``; these tests check that what runs is that
build and that it is current, that the compiled and the pure-Python modules
give the same results on random and broken input, cut anywhere, and that the
codec suites pass on the pure-Python modules too (run again in a child with
``LINCHPIN_PURE_PYTHON=1``, which every process honours:
linchpin_common/hotpath.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linchpin_common import hotpath, wsframes
from linchpin_common.contract import wire
from linchpin_common.hotpath import load_pure
from tests.test_wire import packets
from tests.test_wsframes import frame

ROOT = Path(__file__).resolve().parent.parent

# Pure Python on purpose (the child run), or because this machine cannot
# compile (INTERFACE.md: make test needs nothing but Python and make).
PURE = bool(os.environ.get("LINCHPIN_PURE_PYTHON")) or not hotpath.can_compile()
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
pure_wsframes = load_pure("linchpin_common.wsframes", "pure_wsframes")
pure_wire = load_pure("linchpin_common.contract.wire", "pure_wire")


def test_what_runs_is_the_current_build():
    """Compiled (and not older than any of its sources) wherever Cython and
    a C compiler are; the .py modules under LINCHPIN_PURE_PYTHON or
    without them."""
    if PURE:
        assert wsframes.__file__.endswith("wsframes.py") and wire.__file__.endswith("wire.py")
        assert wsframes.unmask is wsframes.unmask_python
        assert hotpath.describe() == "pure Python"
        return
    from linchpin_common import _wsmask

    for module, sources in [(_wsmask, ["_wsmask.pyx"]), (wsframes, ["wsframes.py", "wsframes.pxd"]),
                            (wire, ["contract/wire.py", "contract/wire.pxd"])]:
        built = Path(module.__file__)
        assert built.name.endswith(SUFFIX), f"{module.__name__} is not compiled: run make install"
        for source in sources:
            assert built.stat().st_mtime >= (ROOT / "linchpin_common" / source).stat().st_mtime, (
                f"{built.name} is older than {source}: run make install")
    assert wsframes.unmask is _wsmask.unmask
    assert hotpath.describe() == "compiled (Cython)"
    assert not hotpath.is_compiled(pure_wsframes) and not hotpath.is_compiled(pure_wire)


def test_the_switch_to_pure_python_comes_before_the_imports_or_not_at_all():
    with pytest.raises(RuntimeError, match="too late .*linchpin_common.wsframes"):
        hotpath.use_pure_python()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2100), st.binary(min_size=4, max_size=4), st.sampled_from([bytes, bytearray, memoryview]))
def test_unmask_agrees_with_the_definition(data, mask, kind):
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert wsframes.unmask(kind(data), mask) == expected
    assert wsframes.unmask_python(kind(data), mask) == expected


@pytest.mark.parametrize("mask", [b"", b"abc", b"abcde"])
def test_the_c_masker_refuses_a_key_that_is_not_4_bytes(mask):
    if PURE:  # then there is none to import
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("linchpin_common._wsmask")
        return
    from linchpin_common._wsmask import unmask

    with pytest.raises(ValueError, match="4 bytes"):
        unmask(b"payload", mask)


# ---------------------------------------------------------------------------
# WebSocket frames: random streams of valid and broken frames.


@st.composite
def raw_frames(draw) -> bytes:
    opcode = draw(st.one_of(st.sampled_from([0, 1, 2, 8, 9, 10]), st.integers(0, 15)))
    size = draw(st.sampled_from([0, 1, 2, 60, 125, 126, 300, 1500]))
    payload = draw(st.binary(min_size=size, max_size=size))
    fin = draw(st.booleans()) if opcode < 8 else draw(st.sampled_from([True, True, True, False]))
    natural = 7 if size < 126 else 16
    form = draw(st.sampled_from([natural] * 6 + [16, 64]))
    claimed = draw(st.sampled_from([None, None, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1])) if form == 64 else None
    return frame(opcode, payload, fin=fin, rsv=draw(st.sampled_from([0] * 9 + [1, 4])),
                 masked=draw(st.sampled_from([True] * 12 + [False])), length=claimed, form=form)


def reader_run(module, stream: bytes, cuts, caps) -> tuple:
    reader = module.FrameReader(*caps)
    events = []
    start = 0
    for cut in sorted(cuts) + [len(stream)]:
        events += reader.feed(stream[start:cut])
        start = cut
    return events, reader.failed, reader._buffered if reader._chunks else 0


@settings(max_examples=400, deadline=None)
@given(st.lists(raw_frames(), min_size=1, max_size=8), st.data())
def test_the_frame_readers_agree(frames, data):
    stream = b"".join(frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    caps = (data.draw(st.sampled_from([0, 125, 400, 2000])), data.draw(st.sampled_from([0, 300, 3000])), True)
    assert reader_run(wsframes, stream, cuts, caps) == reader_run(pure_wsframes, stream, cuts, caps)


# ---------------------------------------------------------------------------
# MQTT: valid streams, damaged streams, random bytes, cut anywhere.


def parser_run(module, stream: bytes, cuts, cap: int) -> tuple:
    parser = module.Parser(cap)
    out = []
    start = 0
    for cut in sorted(cuts) + [len(stream)]:
        got, error = parser.feed_to_error(stream[start:cut])
        out += [(type(p).__name__, dataclasses.astuple(p)) for p in got]
        if error is not None:
            out.append((type(error).__name__, str(error)))
            break
        start = cut
    return out, parser.buffered


@settings(max_examples=400, deadline=None)
@given(st.lists(packets, min_size=1, max_size=5), st.data())
def test_the_mqtt_parsers_agree(stream, data):
    raw = bytearray(b"".join(map(wire.encode, stream)))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    raw = bytes(raw + data.draw(st.binary(max_size=8)))
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
    cap = data.draw(st.sampled_from([wire.DEFAULT_MAX_REMAINING_LENGTH, 64, 0]))
    assert parser_run(wire, raw, cuts, cap) == parser_run(pure_wire, raw, cuts, cap)


# ---------------------------------------------------------------------------
# The codec suites again, on the pure-Python modules.


def test_the_codec_suites_pass_in_pure_python():
    env = {**os.environ, "LINCHPIN_PURE_PYTHON": "1"}
    suites = ["tests/test_wsframes.py", "tests/test_wsframes_client.py", "tests/test_wire.py",
              "tests/test_inmemory_relay.py", "tests/test_compiled.py",
              "--deselect", "tests/test_compiled.py::test_the_codec_suites_pass_in_pure_python"]  # not itself again
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suites], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
