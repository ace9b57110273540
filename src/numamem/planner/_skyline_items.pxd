# cython: language_level=3
"""The skyline search's scratch stack and the two orders its items sort in (:mod:`._skyline`).

Inline functions only: the search calls them at every node, and ``qsort`` takes the comparators'
addresses, so they are compiled into :mod:`._skyline` itself rather than called through a module's
function table.
"""
from libc.stdint cimport int64_t
from libc.stdlib cimport realloc, qsort

# A growable stack of int64 values. Recursion levels push their scratch lists on it and pop
# them on return; they keep *indices* into it, never pointers, because it may move on growth.
cdef struct Vec:
    int64_t* data
    Py_ssize_t size
    Py_ssize_t cap

# A candidate of the search: its lowest feasible offset and its preorder index.
cdef struct OrderItem:
    int64_t off
    int64_t p

# A buffer with its three preordering keys (see ``HEURISTICS`` in ._skyline).
cdef struct PreItem:
    int64_t k1
    int64_t k2
    int64_t k3
    int64_t b


cdef inline int vec_reserve(Vec* v, Py_ssize_t extra) noexcept nogil:
    # Room for ``extra`` more values (doubling, at least 4096); -1 when out of memory.
    cdef Py_ssize_t cap
    cdef int64_t* data
    if v.size + extra <= v.cap:
        return 0
    cap = 2 * v.cap
    if cap < v.size + extra:
        cap = v.size + extra
    if cap < 4096:
        cap = 4096
    data = <int64_t*> realloc(v.data, cap * sizeof(int64_t))
    if data == NULL:
        return -1
    v.data = data
    v.cap = cap
    return 0


cdef inline int cmp_order(const void* a, const void* b) noexcept nogil:
    # By offset, then preorder index: the canonical order of the skyline placements.
    cdef const OrderItem* x = <const OrderItem*> a
    cdef const OrderItem* y = <const OrderItem*> b
    if x.off != y.off:
        return -1 if x.off < y.off else 1
    if x.p != y.p:
        return -1 if x.p < y.p else 1
    return 0


cdef inline void sort_order(OrderItem* items, Py_ssize_t count) noexcept nogil:
    # Insertion sort for the short runs that dominate (no call per comparison), qsort beyond.
    cdef Py_ssize_t i, j
    cdef OrderItem x
    if count > 24:
        qsort(items, count, sizeof(OrderItem), cmp_order)
        return
    for i in range(1, count):
        x = items[i]
        j = i
        while j > 0 and (items[j - 1].off > x.off or
                         (items[j - 1].off == x.off and items[j - 1].p > x.p)):
            items[j] = items[j - 1]
            j -= 1
        items[j] = x


cdef inline int cmp_pre(const void* a, const void* b) noexcept nogil:
    # Larger keys first; the buffer index breaks ties so the order is total (determinism).
    cdef const PreItem* x = <const PreItem*> a
    cdef const PreItem* y = <const PreItem*> b
    if x.k1 != y.k1:
        return -1 if x.k1 > y.k1 else 1
    if x.k2 != y.k2:
        return -1 if x.k2 > y.k2 else 1
    if x.k3 != y.k3:
        return -1 if x.k3 > y.k3 else 1
    if x.b != y.b:
        return -1 if x.b < y.b else 1
    return 0
