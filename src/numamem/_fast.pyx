# cython: boundscheck=False, wraparound=False
"""The creators' fast path: a small pooled array in one call, at NumPy's speed.

``numamem.empty(512, np.uint8, node=0)`` is the library's most common call. When its placement
keywords are a request already validated (the memo of :func:`numamem._request.request`, keyed by
exact types and values, per topology snapshot) whose node pool serves arrays of this size, this
takes a block from that pool and builds the ndarray over it without another Python frame. Any
other call (a first call, a block split, a page kind, an unusual spelling of an argument, a bad
argument) is answered ``None``, and the creator takes the general path, which validates and
raises exactly as before. So nothing here decides a rule: the request memo, the pool limit, the
dtype rule and the pool's block are each defined where the general path defines them.
"""
from cpython.dict cimport PyDict_GetItemWithError
from cpython.ref cimport Py_DECREF, PyObject

cimport numpy as cnp

from numamem._pool cimport Pool, pool_array

from numamem import _request, _topology

cdef extern from "numpy/arrayobject.h":
    int PyArray_DescrConverter(object obj, cnp.PyArray_Descr **descr) except 0
    enum:
        NPY_ITEM_REFCOUNT

cdef extern from *:
    bint __builtin_mul_overflow(size_t a, size_t b, size_t *out) nogil

cnp.import_array()

import functools

__all__ = ["pooled_array", "fast_path"]

cdef enum:
    MAX_DIMS = 64  # NumPy's NPY_MAXDIMS

# Read in place, never copied: _request clears its memo rather than rebinding it, and the topology
# snapshot is compared by identity, as _request.request compares it.
cdef dict _MEMO = _request._SIMPLE_CACHE
cdef dict _TOPOLOGY = _topology.__dict__
cdef size_t _POOL_MAX = _request.POOL_MAX_BYTES

# One-entry caches in front of the memo and of NumPy's dtype conversion: a program calls the same
# spelling again and again (``node=0`` and the defaults are the same objects every call), and a
# few pointer comparisons cost less than building, hashing and comparing a key tuple (a tenth of
# np.empty's time). An identical object of an exact builtin type has the same value, so a hit
# here is a hit in the memo; the entry is still checked against the topology snapshot.
cdef object _last_node = None, _last_align = None, _last_pages = None, _last_policy = None
cdef tuple _last_entry = (None,)
cdef object _last_dtype = None
cdef cnp.dtype _last_descr = None


def pooled_array(shape, dtype, order, node, nodes, axis, policy, align, pages, populate, bint zero):
    """A new pooled array for a memoised request, or None for the general path to answer.

    The Python face of :func:`fast_path`'s first step (for tests and tools).
    """
    return _pooled_array(shape, dtype, order, node, nodes, axis, policy, align, pages, populate, zero)


def fast_path(bint zero):
    """Decorate a creator (``empty``, ``zeros``) so that its common call never enters Python.

    The decorated function keeps its name, docstring and signature (``__wrapped__``); its
    parameters must be :func:`numamem.empty`'s, with the same defaults (checked here, once). A
    call whose arrays :func:`pooled_array` can serve returns that array; any other call is the
    decorated function's.

    Why a Cython function rather than a Python one calling :func:`pooled_array`: the frame of a
    Python function with ten parameters costs more than the whole of ``np.empty``.
    """
    def decorate(general):
        if general.__defaults__ != _DEFAULTS or general.__kwdefaults__ != _KWDEFAULTS:
            raise TypeError(f"{general.__qualname__}'s defaults differ from the fast path's: "
                            f"{general.__defaults__} {general.__kwdefaults__}")

        def creator(shape, dtype=float, order="C", *, node=None, nodes=None, axis=None, policy="bind",
                    align=DEFAULT_ALIGN, pages="auto", populate=None):
            array = _pooled_array(shape, dtype, order, node, nodes, axis, policy, align, pages, populate, zero)
            if array is None:
                array = general(shape, dtype, order, node=node, nodes=nodes, axis=axis, policy=policy,
                                align=align, pages=pages, populate=populate)
            return array

        return functools.update_wrapper(creator, general)
    return decorate


cdef object DEFAULT_ALIGN = _request.DEFAULT_ALIGN
_DEFAULTS = (float, "C")
_KWDEFAULTS = {"node": None, "nodes": None, "axis": None, "policy": "bind", "align": DEFAULT_ALIGN,
               "pages": "auto", "populate": None}


cdef bint _converts_alike(dtype):
    # Whether ``dtype`` means the same descriptor every time it is converted, so that the same
    # object may skip the conversion: a dtype, a dtype string, NumPy's scalar types and the
    # builtins NumPy maps to them. Not any object with a ``.dtype`` attribute, which may change.
    return (isinstance(dtype, (cnp.dtype, str))
            or (isinstance(dtype, type) and (issubclass(dtype, cnp.generic) or dtype in (float, int, complex, bool))))


cdef object _pooled_array(shape, dtype, order, node, nodes, axis, policy, align, pages, populate, bint zero):
    # Parameters are those of numamem.empty (zero: clear it, for zeros). Returns an array whose
    # .base is a PoolExport of a block of the request's pool, with its memory, alignment and node
    # guarantees, or None.
    cdef PyObject *hit
    cdef PyObject *snapshot
    cdef tuple entry
    cdef cnp.npy_intp dims[MAX_DIMS]
    cdef Py_ssize_t extent
    cdef size_t nbytes = 1
    cdef int nd = 1, i
    cdef bint fortran
    cdef cnp.PyArray_Descr *raw_descr = NULL
    cdef cnp.dtype descr
    # The memo's own fast key (numamem._request.request): every argument of an exact builtin type.
    if (nodes is not None or axis is not None or populate is not None or type(node) is not int
            or type(align) is not int or type(pages) is not str or type(policy) is not str):
        return None
    global _last_node, _last_align, _last_pages, _last_policy, _last_entry, _last_dtype, _last_descr
    snapshot = PyDict_GetItemWithError(_TOPOLOGY, "_cached")
    if snapshot == NULL:
        return None
    if (node is _last_node and align is _last_align and pages is _last_pages and policy is _last_policy
            and <object>snapshot is _last_entry[0]):
        entry = _last_entry
    else:
        hit = PyDict_GetItemWithError(_MEMO, (node, align, pages, policy))
        if hit == NULL or <object>snapshot is not (<tuple>hit)[0]:
            return None
        entry = <tuple>hit
        _last_node, _last_align, _last_pages, _last_policy, _last_entry = node, align, pages, policy, entry
    pool = entry[2]
    # Strict pools only: a "preferred" pool may have fallen back to first touch where the kernel
    # refuses mbind, and the general path (_placement.allocate) is where that is warned about.
    if pool is None or (<Pool>pool).policy != "bind":
        return None
    if type(order) is not str:
        return None
    if order == "C":
        fortran = False
    elif order == "F":
        fortran = True
    else:
        return None
    if type(shape) is int:
        try:
            extent = shape
        except OverflowError:
            return None
        if extent < 0:
            return None
        dims[0] = extent
        nbytes = <size_t>extent
    elif type(shape) is tuple:
        nd = len(<tuple>shape)
        if nd > MAX_DIMS:
            return None
        for i in range(nd):
            item = (<tuple>shape)[i]
            if type(item) is not int:
                return None
            try:
                extent = item
            except OverflowError:
                return None
            if extent < 0 or __builtin_mul_overflow(nbytes, <size_t>extent, &nbytes):
                return None
            dims[i] = extent
    else:
        return None
    if dtype is _last_dtype:
        descr = _last_descr
    else:
        try:
            PyArray_DescrConverter(dtype, &raw_descr)
        except Exception:
            return None  # the general path names the argument
        descr = <cnp.dtype>raw_descr
        Py_DECREF(descr)  # the converter's reference; the cast above holds one
        if _converts_alike(dtype):
            _last_dtype, _last_descr = dtype, descr
    if (cnp.PyDataType_FLAGS(descr) & NPY_ITEM_REFCOUNT or cnp.PyDataType_HASSUBARRAY(descr)
            or cnp.PyDataType_ELSIZE(descr) == 0):
        return None  # refused or reshaped by the general path (check_dtype)
    if __builtin_mul_overflow(nbytes, <size_t>cnp.PyDataType_ELSIZE(descr), &nbytes) or nbytes > _POOL_MAX:
        return None
    return pool_array(<Pool>pool, entry[1], shape, nbytes, nd, dims, descr, fortran, zero)
