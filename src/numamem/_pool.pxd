# The pool's Python face (see _pool.pyx), declared for the creators' fast path (numamem._fast).
cimport numpy as cnp

from numamem._arena cimport NodePool
from numamem._ndarray cimport BufferOwner, Export
from numamem._place cimport PlaceResult


cdef class Pool:
    cdef NodePool *_pool
    cdef readonly int node
    cdef readonly str policy
    cdef readonly str source
    cdef object _capsule
    cdef object __weakref__

    cdef int _check(self, size_t address, str call) except -1
    cdef int _raise_failed(self, size_t size, PlaceResult *why) except -1


cdef class PoolAllocation(BufferOwner):
    cdef readonly Pool pool

    @staticmethod
    cdef PoolAllocation _create(Pool pool, size_t size, bint zero)


cdef class PoolExport(Export):
    # Until its owner is asked for, the export holds the block itself.
    cdef Pool _pool
    cdef char *_address
    cdef size_t _size
    cdef object _request
    cdef object _shape


cdef object pool_array(Pool pool, object request, object shape, size_t nbytes, int nd,
                       cnp.npy_intp *dims, cnp.dtype descr, bint fortran, bint zero)
