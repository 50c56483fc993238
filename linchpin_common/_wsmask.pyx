# cython: language_level=3, boundscheck=False, wraparound=False
"""RFC 6455 masking in C: the compiled twin of ``wsframes.unmask``.

Built at install when Cython and a C compiler are there (setup.py);
``linchpin_common.wsframes`` falls back to its pure-Python ``unmask``
otherwise, and tests/test_compiled.py checks that both give the same bytes.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy


def unmask(data, bytes mask):
    """``data`` (bytes or any buffer) XOR the repeated 4-byte ``mask``."""
    cdef Py_buffer view
    cdef Py_ssize_t n, i = 0
    cdef const unsigned char *src
    cdef unsigned char *dst
    cdef const unsigned char *key
    cdef uint32_t key4
    cdef uint64_t key8, word
    if len(mask) != 4:
        raise ValueError("a WebSocket masking key is 4 bytes")
    key = <const unsigned char *> PyBytes_AS_STRING(mask)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        n = view.len
        if n == 0:
            return b""
        out = PyBytes_FromStringAndSize(NULL, n)
        dst = <unsigned char *> PyBytes_AS_STRING(out)
        src = <const unsigned char *> view.buf
        memcpy(&key4, key, 4)
        key8 = (<uint64_t> key4 << 32) | key4  # the mask's bytes in order, whatever the byte order
        while i + 8 <= n:
            memcpy(&word, src + i, 8)
            word ^= key8
            memcpy(dst + i, &word, 8)
            i += 8
        while i < n:
            dst[i] = src[i] ^ key[i & 3]
            i += 1
        return out
    finally:
        PyBuffer_Release(&view)
