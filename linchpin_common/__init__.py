"""What the three parties share: the wire contract and the Twisted plumbing.

``linchpin_common.contract`` is PROTOCOL.md as sans-IO code (no Twisted);
the other modules are the plumbing each daemon and client needs (workers,
private files, SQLite schemas, TLS trust, the gateway clients, metrics).
"""

__version__ = "0.1.0"

import os as _os

if _os.environ.get("LINCHPIN_PURE_PYTHON"):  # the hot path's .py modules even where they are compiled
    from . import hotpath as _hotpath

    _hotpath.use_pure_python()
