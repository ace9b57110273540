# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""The overlap sweep behind :func:`numamem.planner.packing.check`, in C.

Kept apart from the packer's loops (:mod:`numamem.planner._greedy`, :mod:`numamem.planner._skyline`) on purpose: the check is the
independent witness of every packing, and shares no code with what it checks. It runs after
every ``pack()``, so it must be fast: the Python loop it replaces took 1.6 s on 200,000 buffers.
"""
from libc.stdint cimport int64_t

import numpy as np



def first_overlap(const int64_t[::1] who, const signed char[::1] starts, const int64_t[::1] rank,
                  const int64_t[::1] by_rank, const int64_t[::1] offset, const int64_t[::1] end):
    """The first pair of live buffers that overlap in memory, met by a sweep over time.

    The sweep of :func:`numamem.planner.packing.check`, which shares no code with the packing
    loops of :mod:`numamem.planner._greedy` and :mod:`numamem.planner._skyline`. The live buffers are kept as a set of ranks in (offset, index) order, in a
    Fenwick tree; a starting buffer is checked against its live neighbours in that order (the
    one below must end at or before its offset, the one above start at or after its end). That
    suffices while the live buffers are disjoint, which holds until the first overlap is found.
    O(events x log(buffers)).

    Parameters
    ----------
    who, starts : arrays
        Events in sweep order: the buffer, and 1 for its start or 0 for its end.
    rank, by_rank : int64 arrays
        Each buffer's rank in (offset, index) order, and its inverse.
    offset, end : int64 arrays
        Each buffer's offset and ``offset + size``.

    Returns
    -------
    tuple of int or None
        ``(a, b)``: ``a`` below ``b`` (``a`` met first when they start together), or None.
    """
    cdef Py_ssize_t n = rank.shape[0]
    cdef Py_ssize_t ne = who.shape[0]
    if starts.shape[0] != ne or by_rank.shape[0] != n or offset.shape[0] != n or end.shape[0] != n:
        raise ValueError("first_overlap: arrays of mismatched lengths")
    if ne == 0:
        return None
    tree = np.zeros(n + 1, dtype=np.int64)
    cdef int64_t[::1] t = tree
    cdef int64_t a = -1, b = -1
    with nogil:
        _sweep(ne, &who[0], &starts[0], &rank[0], &by_rank[0], &offset[0], &end[0], n, &t[0], &a, &b)
    return None if a < 0 else (int(a), int(b))


cdef inline Py_ssize_t _kth(const int64_t* t, Py_ssize_t n, Py_ssize_t top, int64_t k) noexcept nogil:
    """Smallest 1-based position whose prefix count reaches ``k`` (Fenwick descent)."""
    cdef Py_ssize_t pos = 0, step = top
    while step > 0:
        if pos + step <= n and t[pos + step] < k:
            pos += step
            k -= t[pos]
        step >>= 1
    return pos + 1


cdef void _sweep(Py_ssize_t ne, const int64_t* who, const signed char* starts, const int64_t* rank,
                 const int64_t* by_rank, const int64_t* offset, const int64_t* end, Py_ssize_t n,
                 int64_t* t, int64_t* a, int64_t* b) noexcept nogil:
    cdef Py_ssize_t e, i, top = 1
    cdef int64_t x, below, live = 0, p
    while top * 2 <= n:
        top *= 2
    for e in range(ne):
        x = who[e]
        if not starts[e]:
            i = rank[x] + 1
            while i <= n:
                t[i] -= 1
                i += i & -i
            live -= 1
            continue
        below = 0
        i = rank[x]
        while i > 0:
            below += t[i]
            i -= i & -i
        if below > 0:
            p = by_rank[_kth(t, n, top, below) - 1]
            if end[p] > offset[x]:
                a[0] = p
                b[0] = x
                return
        if below < live:
            p = by_rank[_kth(t, n, top, below + 1) - 1]
            if offset[p] < end[x]:
                a[0] = x
                b[0] = p
                return
        i = rank[x] + 1
        while i <= n:
            t[i] += 1
            i += i & -i
        live += 1
