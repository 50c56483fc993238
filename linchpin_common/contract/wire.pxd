# C types for wire.py's stream parser when Cython compiles it (setup.py); the
# .py stays the pure-Python module it was, and is what runs when nothing was
# compiled.
cimport cython

@cython.locals(first=int, length=Py_ssize_t, shift=int, i=Py_ssize_t, byte=int)
cpdef tuple _parse_header(bytes data, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t cap)

@cython.locals(pos=Py_ssize_t, stop=Py_ssize_t, qos=int)
cpdef _decode_publish(int flags, bytes data, Py_ssize_t start, Py_ssize_t end)

cdef class Parser:
    cdef Py_ssize_t _cap
    cdef bytearray _buf
    cdef Py_ssize_t _header_len, _total
    cdef object _error

    @cython.locals(packets=list)
    cpdef list feed(self, data)

    @cython.locals(end=Py_ssize_t, pos=Py_ssize_t, cap=Py_ssize_t, header_len=Py_ssize_t, length=Py_ssize_t,
                   body=Py_ssize_t, stop=Py_ssize_t, first=int, parsed=tuple)
    cdef _feed(self, bytes data, list packets)
