"""Keep the C allocator from returning message-sized buffers to the kernel.

A body message is up to 256 KiB and a WebSocket message up to 512 KiB.
glibc's malloc serves blocks of 128 KiB and more with a fresh ``mmap`` and
gives them back with ``munmap`` when freed, and trims the top of its heap
once 128 KiB there are free; so every large message a relay process
receives, seals or forwards costs page faults to map it and system calls to
unmap it.  Measured on the download through the relay (docs/benchmarks.md),
that doubled the CPU per MiB with 256 KiB messages.

:func:`keep_large_buffers` raises both thresholds once, at process start,
so such buffers are reused from the heap.  The heap then keeps up to
``trim`` bytes of free memory instead of returning it; nothing else
changes.  On a C library other than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 4 * 1024 * 1024  # above a 512 KiB message and its copies
TRIM_THRESHOLD = 16 * 1024 * 1024


def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def keep_large_buffers(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD,
                       libc=None) -> bool:
    """Tell glibc to serve blocks below ``mmap_threshold`` from its heap and
    to keep up to ``trim_threshold`` free bytes at its top; True when it
    took both."""
    libc = libc if libc is not None else _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                       trim_threshold))
