cimport numpy as cnp


cdef class BufferOwner:
    # The memory an owner exports: [_address, _address + _size). Subclasses map and free it.
    cdef char *_address
    cdef size_t _size
    cdef Py_ssize_t _exports
    cdef bint _closed
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]
    cdef public dict info
    cdef object __weakref__

    cdef void _set_memory(self, char *address, size_t size)
    cdef int _check_open(self) except -1
    cdef int _check_no_exports(self) except -1
    cdef int _export(self, Py_buffer *buffer, int flags) except -1


cdef class Export:
    # The owner this export counts in (None while a subclass holds the memory itself, see
    # numamem._pool.PoolExport). Subclasses release it in their __dealloc__.
    cdef BufferOwner _owner

    cdef BufferOwner owner_object(self)


cdef class OwnerExport(Export):
    pass


cdef Export export_of(BufferOwner owner)
cdef object array_over(Export base, char *data, int nd, cnp.npy_intp *dims, cnp.dtype descr, bint fortran)
cdef object wrap_ndarray(BufferOwner exporter, char *data, size_t available, object shape, object dtype, str order)
