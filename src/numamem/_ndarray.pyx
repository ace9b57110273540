"""Building ndarrays over memory that an owner object exports through the buffer protocol.

One function shared by every owner type (regions, pool allocations): the array's ``.base`` is a
``memoryview`` of the owner, so the owner's export count says whether any view is alive.
"""
from cpython.memoryview cimport PyMemoryView_FromObject
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

cnp.import_array()


cdef object wrap_ndarray(object exporter, char *data, size_t available, object shape, object dtype, str order):
    cdef cnp.dtype descr = np.dtype(dtype)
    cdef tuple dims = tuple(operator.index(extent) for extent in shape)
    cdef int nd = len(dims)
    cdef cnp.npy_intp c_dims[64]
    cdef size_t needed = descr.itemsize
    cdef int i
    cdef int flags = cnp.NPY_ARRAY_WRITEABLE
    if nd > 64:
        raise ValueError(f"at most 64 dimensions, not {nd}")
    for i in range(nd):
        if dims[i] < 0:
            raise ValueError(f"negative dimension {dims[i]} in shape {dims}")
        c_dims[i] = dims[i]
        needed *= <size_t>dims[i]
    if needed > available:
        raise ValueError(f"an array of {needed} bytes does not fit the {available} bytes available")
    if order == "F":
        flags |= cnp.NPY_ARRAY_F_CONTIGUOUS
    elif order != "C":
        raise ValueError(f"order must be 'C' or 'F', not {order!r}")
    export = PyMemoryView_FromObject(exporter)
    Py_INCREF(descr)  # stolen by PyArray_NewFromDescr
    cdef PyObject *raw = PyArray_NewFromDescr(
        <PyTypeObject *>np.ndarray, <cnp.PyArray_Descr *>descr, nd, c_dims, NULL, data, flags, NULL)
    cdef cnp.ndarray array = <cnp.ndarray>raw
    Py_DECREF(array)  # the cast above took its own reference; drop the one returned
    cnp.set_array_base(array, export)
    return array
