# C types for wsframes.py when Cython compiles it (setup.py); the .py stays
# the pure-Python module it was, and is what runs when nothing was compiled.
cimport cython

cdef class FrameReader:
    cdef public Py_ssize_t max_frame, max_message, max_fragments
    cdef Py_ssize_t _key, _total, _fragments
    cdef readonly Py_ssize_t _buffered  # readonly: what the tests look at
    cdef readonly list _chunks, _parts
    cdef object _need  # a Python int: a frame may claim up to 2**63 - 1 bytes
    cdef int _opcode
    cdef public bint failed

    @cython.locals(buf=bytes, pos=Py_ssize_t, end=Py_ssize_t, max_frame=Py_ssize_t, key=Py_ssize_t,
                   b0=int, b1=int, opcode=int, length=Py_ssize_t, start=Py_ssize_t, stop=Py_ssize_t,
                   fin=int, events=list)
    cpdef list feed(self, data)
