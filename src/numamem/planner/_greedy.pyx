# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""The greedy pass of the memory packer (see :mod:`numamem.planner.packing`), a measured hot loop.

:func:`greedy` places buffers one by one, in a given order, at the best-fitting (or first) gap
left by the already placed buffers that are live at the same time; :func:`greedy_until` stops
searching gaps at a deadline. :func:`dense_ranks` turns times into the exact ranks the pass
compares. The exact search that follows the greedy portfolio is :mod:`numamem.planner._skyline`.

Everything here works in *units* (sizes already divided by the alignment) and on validated,
preprocessed arrays; the Python layer owns validation, alignment and the search schedule.
"""
from libc.stdint cimport int64_t, INT64_MAX
from libc.string cimport memmove
from libc.math cimport INFINITY

from numamem.planner._clock cimport interrupted, now, raise_pending

import numpy as np

def dense_ranks(values):
    """Rank of each value among the distinct values (0 = smallest), as int64.

    Written with a stable sort and ``searchsorted`` rather than ``np.unique(return_inverse=True)``:
    that one uses NumPy's default (SIMD-dispatched) argsort, which returned wrong orders inside the
    QEMU-emulated guests of the multi-node tier (54 of 160 random cases) while the stable sort
    stayed correct; ranks must be exact or the packer places co-live buffers on top of each other.
    """
    values = np.asarray(values)
    ordered = np.sort(values, kind="stable")
    distinct = ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if ordered.size else ordered
    return np.searchsorted(distinct, values).astype(np.int64)


# Entries examined per branch-free filtering pass of the greedy scan.
cdef enum:
    _CHUNK = 512


def greedy(const int64_t[::1] lower, const int64_t[::1] upper, const int64_t[::1] size,
           const int64_t[::1] order, bint best_fit):
    """Place buffers greedily in ``order``; return their offsets.

    Parameters
    ----------
    lower, upper : int64 arrays
        Half-open lifetimes ``[lower[i], upper[i])``.
    size : int64 array
        Sizes (in units; zero-size buffers should be left out of ``order``).
    order : int64 array
        The buffers to place, in placement order (distinct indices).
    best_fit : bool
        Take the smallest gap that fits (ties: the lowest); otherwise the lowest gap that fits.
        A buffer that fits no gap goes on top of everything it overlaps.

    Returns
    -------
    numpy.ndarray
        int64 offsets, ``-1`` for buffers not in ``order``.

    Raises
    ------
    KeyboardInterrupt
        On Ctrl-C (the loop looks for signals every few milliseconds).
    """
    return greedy_until(lower, upper, size, order, best_fit, INFINITY)[0]


def greedy_until(const int64_t[::1] lower, const int64_t[::1] upper, const int64_t[::1] size,
                 const int64_t[::1] order, bint best_fit, double deadline):
    """:func:`greedy` that stops searching gaps at ``deadline``.

    The scan over placed buffers makes each placement cost up to the number placed before it,
    so a large instance (200,000 buffers: about 40 s) cannot honour a time limit otherwise.
    Past ``deadline`` (``time.monotonic()`` seconds) the remaining buffers of ``order`` are
    stacked, in order, above everything placed: still a valid packing, at once.

    Returns
    -------
    offsets : numpy.ndarray
        As :func:`greedy`.
    placed : int
        How many buffers of ``order`` were placed by the gap search (``len(order)`` when the
        deadline did not cut it).
    """
    cdef Py_ssize_t n = size.shape[0]
    cdef Py_ssize_t m = order.shape[0]
    if lower.shape[0] != n or upper.shape[0] != n:
        raise ValueError("lower, upper and size must have the same length")
    out = np.full(n, -1, dtype=np.int64)
    if m == 0:
        return out, 0
    idx = np.asarray(order)
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError("order holds an index that is not a buffer")
    # (a sort, not np.unique: that one is hash based and 70x slower on large orders)
    ordered = np.sort(idx)
    if m > 1 and (ordered[1:] == ordered[:-1]).any():
        raise ValueError("order holds an index twice")
    # Times as int32 ranks: the scan below reads two of them per placed buffer, so halving
    # their width halves the memory it streams through.
    ranks = dense_ranks(np.concatenate([np.asarray(lower), np.asarray(upper)]))
    cdef int[::1] rlo = np.ascontiguousarray(ranks[:n], dtype=np.intc)
    cdef int[::1] rup = np.ascontiguousarray(ranks[n:], dtype=np.intc)
    cdef int64_t[::1] off = out
    cdef int[::1] plo = np.empty(m, dtype=np.intc)
    cdef int[::1] pup = np.empty(m, dtype=np.intc)
    cdef int64_t[::1] poff = np.empty(m, dtype=np.int64)
    cdef int64_t[::1] pend = np.empty(m, dtype=np.int64)
    cdef int[::1] hits = np.empty(_CHUNK, dtype=np.intc)
    cdef Py_ssize_t placed
    with nogil:
        placed = _greedy(m, &rlo[0], &rup[0], &size[0], &order[0], best_fit, &off[0],
                         &plo[0], &pup[0], &poff[0], &pend[0], &hits[0], deadline)
    if placed < 0:
        raise_pending()
    return out, int(placed)


cdef Py_ssize_t _greedy(Py_ssize_t m, const int* lo, const int* up, const int64_t* sz,
                        const int64_t* order, bint best_fit, int64_t* off,
                        int* plo, int* pup, int64_t* poff, int64_t* pend, int* hits,
                        double deadline) noexcept nogil:
    # The placed buffers are kept sorted by offset (parallel arrays plo/pup/poff/pend), so one
    # pass over them meets the overlapping buffers bottom-up and sees every gap between them
    # (``top`` = highest end met so far). The pass goes chunk by chunk: a branch-free loop
    # first collects the chunk's entries that overlap in time, then only those are examined.
    # Returns how many buffers the pass placed before ``deadline`` (the rest are stacked on
    # top), or -1 when a signal handler raised.
    cdef Py_ssize_t k, j, c, h, nh, count = 0, a, b, mid, base
    cdef int64_t i, s, top, gap, best_gap, best_off, o, highest = 0
    cdef int l, u
    cdef bint done
    cdef double t, last_signal = now()
    for k in range(m):
        if (k & 15) == 0 and k > 0:
            t = now()
            if t >= deadline:
                # Out of time: stack the rest above everything placed, in order.
                for j in range(k, m):
                    i = order[j]
                    off[i] = highest
                    highest += sz[i]
                return k
            if interrupted(t, &last_signal):
                return -1
        i = order[k]
        l = lo[i]
        u = up[i]
        s = sz[i]
        top = 0
        best_off = -1
        best_gap = INT64_MAX
        done = False
        base = 0
        while base < count and not done:
            c = count - base
            if c > _CHUNK:
                c = _CHUNK
            nh = 0
            for j in range(c):
                hits[nh] = <int> j
                nh += (plo[base + j] < u) & (l < pup[base + j])
            for h in range(nh):
                j = base + hits[h]
                o = poff[j]
                if o > top:
                    gap = o - top
                    if gap >= s and gap < best_gap:
                        best_gap = gap
                        best_off = top
                        # The first fit, or a perfect fit, cannot be bettered.
                        if not best_fit or gap == s:
                            done = True
                            break
                if pend[j] > top:
                    top = pend[j]
            base += c
        if best_off < 0:
            best_off = top
        off[i] = best_off
        if best_off + s > highest:
            highest = best_off + s
        # Insert after every entry with offset <= best_off (binary search, then shift).
        a = 0
        b = count
        while a < b:
            mid = (a + b) >> 1
            if poff[mid] <= best_off:
                a = mid + 1
            else:
                b = mid
        if a < count:
            memmove(&plo[a + 1], &plo[a], (count - a) * sizeof(int))
            memmove(&pup[a + 1], &pup[a], (count - a) * sizeof(int))
            memmove(&poff[a + 1], &poff[a], (count - a) * sizeof(int64_t))
            memmove(&pend[a + 1], &pend[a], (count - a) * sizeof(int64_t))
        plo[a] = l
        pup[a] = u
        poff[a] = best_off
        pend[a] = best_off + s
        count += 1
    return m
