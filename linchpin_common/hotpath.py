"""Which of the relay's hot-path modules run compiled, and their pure-Python
twins on demand.

setup.py compiles ``linchpin_common.wsframes`` and
``linchpin_common.contract.wire`` (their own ``.py``, typed by a ``.pxd``)
and ``linchpin_common._wsmask`` with Cython when it can; an import finds
the compiled module before the ``.py``.  With ``LINCHPIN_PURE_PYTHON`` set
in its environment a process runs the ``.py`` modules all the same
(``linchpin_common/__init__.py`` calls :func:`use_pure_python` before any
of them is imported): to rule the compiled code out, and for the tests and
benchmarks of the fallback.  The gateway logs :func:`describe` when it
starts; the benchmarks print it with their figures.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

COMPILED = ("linchpin_common._wsmask", "linchpin_common.wsframes", "linchpin_common.contract.wire")
SOURCES = {
    "linchpin_common.wsframes": Path(__file__).with_name("wsframes.py"),
    "linchpin_common.contract.wire": Path(__file__).parent / "contract" / "wire.py",
}


def can_compile() -> bool:
    """Whether an install here compiles the hot path: Cython importable and
    the C compiler Python was built with on the PATH (setup.py's
    extensions are optional, so without them it installs as pure Python)."""
    import shlex
    import shutil
    import sysconfig

    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]
    return shutil.which(cc) is not None and importlib.util.find_spec("Cython") is not None


def is_compiled(module: ModuleType) -> bool:
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)


def compiled_modules() -> dict[str, bool]:
    """Each hot-path module: True when what is imported is compiled."""
    found = {}
    for name in COMPILED:
        try:
            found[name] = is_compiled(importlib.import_module(name))
        except ImportError:
            found[name] = False
    return found


def describe() -> str:
    compiled = compiled_modules()
    if all(compiled.values()):
        return "compiled (Cython)"
    if not any(compiled.values()):
        return "pure Python"
    return "partly compiled: " + ", ".join(name for name, yes in compiled.items() if yes)


def load_pure(name: str, alias: str) -> ModuleType:
    """A second copy of module ``name`` (a key of :data:`SOURCES`) made from
    its ``.py``, registered as ``alias``, beside whatever is imported."""
    spec = importlib.util.spec_from_file_location(alias, SOURCES[name])
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class _PurePythonFinder(importlib.abc.MetaPathFinder):
    """Finds the ``.py`` of each compiled module; a compiled-only module
    (``_wsmask``) is not found, so its importer takes its fallback."""

    def find_spec(self, name, path, target=None):
        source = SOURCES.get(name)
        if source is not None:
            return importlib.util.spec_from_file_location(name, source)
        if name in COMPILED:
            raise ModuleNotFoundError(f"{name} is left out: LINCHPIN_PURE_PYTHON is set", name=name)
        return None


def use_pure_python() -> None:
    """From now on imports of the hot path take the ``.py`` modules."""
    loaded = [name for name in COMPILED if name in sys.modules]
    if loaded:
        raise RuntimeError(f"too late for the pure-Python hot path: {', '.join(loaded)} already imported")
    if not any(isinstance(finder, _PurePythonFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PurePythonFinder())
