"""Owners of numamem memory and the ndarrays built over them.

:class:`BufferOwner` is the base of every owner type (regions, pool allocations). It exports its
bytes through the buffer protocol and counts the exports. Every array numamem returns has an
:class:`Export` of its owner as ``.base``: one counted export, like a ``memoryview`` but a single
small object, so the count says whether any array or view is alive, and an owner refuses to free
its memory (``BufferError``) until it is zero.

Why not the owner itself as ``.base``: NumPy gives no signal when an array dies other than the
reference it drops on its base, and a reference count cannot tell the arrays holding an owner from
the variables holding it (``a.base.close()`` and ``own.close()`` after ``del a`` see the same
count), so ``close()`` could not refuse exactly while arrays live. An export per array can: its
deallocation is that signal.
"""
cimport cython
from cpython.buffer cimport PyBUF_FORMAT
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject, PyTypeObject

cimport numpy as cnp
import numpy as np
import operator

cdef extern from "numpy/arrayobject.h":
    # Declared here rather than taken from NumPy's pxd so the reference it steals from the
    # descriptor is explicit at the call site.
    PyObject *PyArray_NewFromDescr(PyTypeObject *subtype, cnp.PyArray_Descr *descr, int nd,
                                   cnp.npy_intp *dims, cnp.npy_intp *strides, void *data,
                                   int flags, PyObject *obj) except NULL
    # Steals the reference to ``obj``, even on failure.
    int PyArray_SetBaseObject(cnp.ndarray arr, PyObject *obj) except -1

cnp.import_array()

cdef char *BYTE_FORMAT = b"B"


cdef class BufferOwner:
    """Base of numamem's memory owners: exports ``nbytes`` bytes at ``address``, writable."""

    def __cinit__(self, *args, **kwargs):
        # Subclasses' constructor arguments reach every __cinit__ of the hierarchy: accept them.
        self._address = NULL
        self._closed = True
        self.info = {}

    cdef void _set_memory(self, char *address, size_t size):
        self._address = address
        self._size = size
        self._shape[0] = size
        self._strides[0] = 1
        self._closed = False

    cdef int _check_open(self) except -1:
        if self._closed:
            raise ValueError(f"operation on a closed {type(self).__name__}")
        return 0

    cdef int _check_no_exports(self) except -1:
        if self._exports:
            raise BufferError(
                f"cannot close {type(self).__name__}: {self._exports} exported buffer(s) "
                "(arrays or views) still use it")
        return 0

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        self._export(buffer, flags)

    cdef int _export(self, Py_buffer *buffer, int flags) except -1:
        # One buffer export of the owner (counted; released by __releasebuffer__).
        self._check_open()
        buffer.buf = self._address
        buffer.obj = self
        buffer.len = self._size
        buffer.readonly = 0
        buffer.itemsize = 1
        buffer.format = BYTE_FORMAT if (flags & PyBUF_FORMAT) else NULL
        buffer.ndim = 1
        buffer.shape = self._shape
        buffer.strides = self._strides
        buffer.suboffsets = NULL
        buffer.internal = NULL
        self._exports += 1
        return 0

    def __releasebuffer__(self, Py_buffer *buffer):
        self._exports -= 1

    def ndarray(self, shape, dtype, str order="C", size_t offset=0):
        """Return an ndarray over the owner's bytes starting at ``offset``.

        The array's ``.base`` is an :class:`Export` of this owner: that counted export keeps the
        memory alive while the array or any view of it exists (``close()`` refuses until then).

        Parameters
        ----------
        shape : tuple of int
            Non-negative extents; their product times the item size must fit.
        dtype : numpy.dtype
        order : {"C", "F"}
        offset : int
            Byte offset of the first element.
        """
        self._check_open()
        if offset > self._size:
            raise ValueError(f"offset {offset} does not fit the {self._size}-byte {type(self).__name__}")
        return wrap_ndarray(self, self._address + offset, self._size - offset, shape, dtype, order)

    @property
    def address(self):
        """Address of the first byte (an ``int``)."""
        self._check_open()
        return <size_t>self._address

    @property
    def nbytes(self):
        """Bytes the caller asked for."""
        return self._size

    @property
    def exports(self):
        """Number of live exports: arrays built on this owner (their :class:`Export`) and memoryviews."""
        return self._exports

    @property
    def closed(self):
        """True once the memory is given back."""
        return self._closed


# Exports are made and dropped once per array: a free list spares the allocator, and an export
# holds no reference that could close a cycle (its owner holds none back), so the garbage collector
# need not track it. Each concrete export has exactly one __dealloc__ (Cython saves and restores
# the exception state around each one, a cost paid per array).
@cython.no_gc
cdef class Export:
    """The ``.base`` of every array numamem builds: one counted export of its owner.

    ``obj`` is the owner (as a ``memoryview``'s ``obj`` is its exporter). While the export lives,
    the owner's ``exports`` counts it and ``close()`` refuses; views of the array keep the array,
    hence the export, alive. Not picklable (memory is not data): pickling an array copies its
    values, never its base.
    """

    cdef BufferOwner owner_object(self):
        return self._owner

    @property
    def obj(self):
        """The owner of the memory (a :class:`~numamem._region.Region` or :class:`~numamem._pool.PoolAllocation`)."""
        return self.owner_object()

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        # NumPy asks an array's base for a writable buffer when the array is made writeable again
        # (ndarray.setflags(write=True)); lend the owner's, as a memoryview base did. The buffer's
        # obj is the owner, so the owner counts and releases it.
        self.owner_object()._export(buffer, flags)

    def __reduce__(self):
        raise TypeError(f"cannot pickle {type(self).__name__}: it stands for memory, not data")

    def __repr__(self):
        return f"<numamem export of {self.owner_object()!r}>"


@cython.no_gc
@cython.freelist(64)
cdef class OwnerExport(Export):
    """An :class:`Export` of an owner that exists (a Region, a PoolAllocation)."""

    def __dealloc__(self):
        if self._owner is not None:
            self._owner._exports -= 1


cdef Export export_of(BufferOwner owner):
    """A new export of ``owner`` (counted until the export is gone)."""
    cdef OwnerExport export = OwnerExport.__new__(OwnerExport)
    export._owner = owner
    owner._exports += 1
    return export


cdef object array_over(Export base, char *data, int nd, cnp.npy_intp *dims, cnp.dtype descr, bint fortran):
    # The array itself, over checked bounds: C- or F-contiguous, writable, ``.base`` = ``base``.
    cdef int flags = cnp.NPY_ARRAY_WRITEABLE | (cnp.NPY_ARRAY_F_CONTIGUOUS if fortran else 0)
    Py_INCREF(descr)  # stolen by PyArray_NewFromDescr
    cdef PyObject *raw = PyArray_NewFromDescr(
        <PyTypeObject *>cnp.ndarray, <cnp.PyArray_Descr *>descr, nd, dims, NULL, data, flags, NULL)
    cdef cnp.ndarray array = <cnp.ndarray>raw
    Py_DECREF(array)  # the cast above took its own reference; drop the one returned
    Py_INCREF(base)  # stolen by PyArray_SetBaseObject
    PyArray_SetBaseObject(array, <PyObject *>base)
    return array


cdef object wrap_ndarray(BufferOwner exporter, char *data, size_t available, object shape, object dtype, str order):
    # The one place numamem builds an array over memory it did not get from NumPy: every check
    # that keeps such an array from reading outside its owner, or from holding references NumPy
    # would follow, is made here, so every owner type and caller gets it.
    cdef cnp.dtype descr = np.dtype(dtype)
    if (<object>descr).hasobject:
        # Raw bytes read as PyObject pointers would be dereferenced (a crash), and references
        # stored into them would never be released: NumPy's own allocator must own such arrays.
        raise TypeError(f"dtype {descr} holds Python object references; an array over raw memory "
                        "can hold plain data only")
    cdef tuple dims = tuple(operator.index(extent) for extent in shape)
    cdef int nd = len(dims)
    cdef cnp.npy_intp c_dims[64]
    cdef object needed = descr.itemsize  # a Python int: the product of the extents cannot wrap
    cdef int i
    if nd > 64:
        raise ValueError(f"at most 64 dimensions, not {nd}")
    for i in range(nd):
        if dims[i] < 0:
            raise ValueError(f"negative dimension {dims[i]} in shape {dims}")
        needed *= dims[i]
    if needed > available:
        raise ValueError(f"an array of {needed} bytes does not fit the {available} bytes available")
    for i in range(nd):
        c_dims[i] = dims[i]  # each fits: their product does
    if order != "C" and order != "F":
        raise ValueError(f"order must be 'C' or 'F', not {order!r}")
    return array_over(export_of(exporter), data, nd, c_dims, descr, order == "F")
