# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""C loops of ``numamem bench``: a dependent pointer chase and a streaming read.

Both release the GIL, so several node-bound threads can measure at once. They are kept in C
because a Python loop would measure the interpreter (about 30 ns per step), not the memory.
"""
from libc.stdint cimport int64_t, uint64_t


def chase(const int64_t[::1] links, Py_ssize_t start, Py_ssize_t steps, Py_ssize_t stride=8):
    """Follow ``steps`` links from slot ``start`` and return the slot reached.

    Slot ``i`` is ``links[i * stride]`` and holds the index of the next slot, so every load
    depends on the one before: the time per step is the memory latency (no prefetching or
    overlapping helps). With ``stride=8`` each slot is its own 64-byte cache line.

    Parameters
    ----------
    links : 1-D C-contiguous int64 array
    start : int
        First slot.
    steps : int
        Number of dependent loads.
    stride : int
        Elements between slots.

    Returns
    -------
    int
        The slot reached (use it, so the loop cannot be optimised away).
    """
    cdef Py_ssize_t i, p = start, n = links.shape[0]
    if stride < 1 or start < 0 or start * stride >= n:
        raise ValueError("start and stride must address a slot of links")
    with nogil:
        for i in range(steps):
            p = <Py_ssize_t>links[p * stride]
    return p


def read_sum(const uint64_t[::1] data, Py_ssize_t repeats=1):
    """Read every element of ``data`` ``repeats`` times and return their wrapped sum.

    Four independent accumulators let the compiler vectorise and keep several loads in flight,
    so one thread reaches the bandwidth a core can draw, as a streaming kernel does.

    Parameters
    ----------
    data : 1-D C-contiguous uint64 array
    repeats : int

    Returns
    -------
    int
        The sum modulo 2**64.
    """
    cdef Py_ssize_t i, r, n = data.shape[0], n4 = data.shape[0] - data.shape[0] % 4
    cdef uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0
    with nogil:
        for r in range(repeats):
            i = 0
            while i < n4:
                s0 += data[i]
                s1 += data[i + 1]
                s2 += data[i + 2]
                s3 += data[i + 3]
                i += 4
            while i < n:
                s0 += data[i]
                i += 1
    return s0 + s1 + s2 + s3
