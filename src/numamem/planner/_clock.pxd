# cython: language_level=3
"""The clock and the Ctrl-C look of the packer's long C loops (:mod:`._greedy`, :mod:`._skyline`).

Inline functions only, so the loops call them without going through a module's function table:
``now()`` runs every 16 placements of the greedy pass and every 1024 nodes of the search.
"""
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cdef extern from "Python.h":
    # Declared without an exception spec: the loops call it under ``with gil`` from noexcept
    # code, and turn its -1 (a handler raised, e.g. KeyboardInterrupt on Ctrl-C) into a status
    # the Python-level caller raises from.
    int _check_signals "PyErr_CheckSignals" ()

# Milliseconds between two looks for a pending signal (Ctrl-C) inside the long C loops: each
# look takes the GIL, so not at every step, but often enough that Ctrl-C ends a pack promptly.
cdef enum:
    SIGNAL_EVERY_MS = 20


cdef inline double now() noexcept nogil:
    """CLOCK_MONOTONIC seconds (what ``time.monotonic()`` reads: deadlines compare with it)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + 1e-9 * ts.tv_nsec


cdef inline bint interrupted(double t, double* last_look) noexcept nogil:
    """Run pending signal handlers if :data:`SIGNAL_EVERY_MS` passed since ``*last_look`` (then
    set to ``t``); True when one raised (its exception is then set: see :func:`raise_pending`)."""
    cdef int r
    if t - last_look[0] < SIGNAL_EVERY_MS / 1000.0:
        return False
    last_look[0] = t
    with gil:
        r = _check_signals()
    return r < 0


cdef inline int raise_pending() except -1:
    """Propagate the exception :func:`interrupted` left set."""
    return -1
