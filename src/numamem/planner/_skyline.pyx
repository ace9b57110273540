# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""The exact search of the memory packer (see :mod:`numamem.planner.packing`), a measured hot loop.

:class:`SkylineSearch` decides whether the buffers fit under a capacity with a depth-first branch
and bound over canonical "skyline" placements (the method of MiniMalloc, Moffitt, ASPLOS 2023):
buffers are placed in non-decreasing offset order, each exactly on top of the placed buffers it
overlaps in time, with section-sum inference, dominance pruning and dynamic temporal
decomposition. It runs after the greedy portfolio (:mod:`numamem.planner._greedy`), on
capacities between the lower bound and the best greedy peak.

Everything here works in *units* (sizes already divided by the alignment) and on validated,
preprocessed arrays; the Python layer owns validation, alignment and the search schedule.
"""
from libc.stdint cimport int64_t, INT64_MAX
from libc.stdlib cimport malloc, free, qsort

from numamem.planner._clock cimport interrupted, now, raise_pending
from numamem.planner._skyline_items cimport (
    OrderItem, PreItem, Vec, cmp_order, cmp_pre, sort_order, vec_reserve,
)

import numpy as np


cdef enum:
    ST_OK = 0
    ST_NOTFOUND = 1
    ST_ABORTED = 2      # node budget used up
    ST_DEADLINE = 3     # wall-clock deadline passed
    ST_NOMEM = 4
    ST_INTERRUPTED = 5  # a signal handler raised (Ctrl-C); its exception is set

cdef enum:
    LOG_MINOFF = 0
    LOG_FLOOR = 1

# The static preorderings tried in turn (MiniMalloc's defaults): W = lifetime width,
# A = area (size x width), T = largest section total the buffer takes part in.
HEURISTICS = ("WAT", "TAW", "TWA")


cdef class SkylineSearch:
    """Decision search: do the buffers fit under a capacity? (MiniMalloc-style.)

    Parameters
    ----------
    size : int64 array, shape (n,)
        Buffer sizes in units, all positive.
    width : int64 array, shape (n,)
        Lifetime lengths (for the preorderings).
    sec_lo, sec_hi : int64 arrays, shape (n,)
        Buffer ``i`` takes part in the sections ``sec_lo[i] <= s < sec_hi[i]`` (sections are
        the maximal sets of co-live buffers, in time order; every buffer has at least one).
    nbr_start, nbr : int64 arrays
        CSR lists of the buffers overlapping each buffer in time.
    sec_start, sec_mem : int64 arrays
        CSR lists of the buffers in each section.

    Notes
    -----
    The arrays must describe one instance consistently (``pack`` builds them); indices and
    offsets are validated, so bad input raises ``ValueError`` rather than reading out of bounds,
    but inconsistent neighbour lists would yield packings that ``packing.check`` rejects.
    Built once per instance by :func:`numamem.planner.packing.pack`; :meth:`solve` may be called
    many times with different capacities and budgets. Every call leaves the internal state as it
    found it, so results depend only on the arguments (the deadline aside).
    """

    cdef Py_ssize_t n, nsec
    cdef int64_t cap
    cdef int64_t[::1] size, width, slo, shi, nbr_start, nbr, sec_start, sec_mem
    cdef int64_t[::1] offset, solution, min_off, floor_, total, cuts, witness
    cdef int64_t[::1] sec_cnt, where, bpos
    cdef int64_t[::1] total0, cuts0
    cdef Vec log      # triples (kind, index, old value)
    cdef Vec arena    # scratch lists of the recursion
    cdef int heuristic
    cdef int64_t nodes_left
    cdef int64_t nodes
    cdef double deadline
    cdef double last_signal

    def __cinit__(self):
        self.log.data = NULL
        self.log.size = self.log.cap = 0
        self.arena.data = NULL
        self.arena.size = self.arena.cap = 0

    def __init__(self, size, width, sec_lo, sec_hi, nbr_start, nbr, sec_start, sec_mem):
        self.size = np.ascontiguousarray(size, dtype=np.int64)
        self.width = np.ascontiguousarray(width, dtype=np.int64)
        self.slo = np.ascontiguousarray(sec_lo, dtype=np.int64)
        self.shi = np.ascontiguousarray(sec_hi, dtype=np.int64)
        self.nbr_start = np.ascontiguousarray(nbr_start, dtype=np.int64)
        self.nbr = np.ascontiguousarray(nbr, dtype=np.int64)
        self.sec_start = np.ascontiguousarray(sec_start, dtype=np.int64)
        self.sec_mem = np.array(sec_mem, dtype=np.int64)   # a private copy: reordered in search
        self.n = self.size.shape[0]
        self.nsec = self.sec_start.shape[0] - 1
        n, nsec = self.n, self.nsec
        if n == 0 or nsec < 1:
            raise ValueError("SkylineSearch needs at least one buffer and one section")
        for name, arr, length in (("width", self.width, n), ("sec_lo", self.slo, n),
                                  ("sec_hi", self.shi, n), ("nbr_start", self.nbr_start, n + 1)):
            if arr.shape[0] != length:
                raise ValueError(f"{name} must have length {length}")
        sz = np.asarray(self.size)
        lo, hi = np.asarray(self.slo), np.asarray(self.shi)
        if (sz <= 0).any():
            raise ValueError("SkylineSearch sizes must be positive")
        if (lo < 0).any() or (hi > nsec).any() or (lo >= hi).any():
            raise ValueError("section spans must be non-empty and inside [0, nsec)")
        # The C loops trust these offsets (no bounds checks), so they are checked here in full.
        for name, starts, items in (("nbr_start", self.nbr_start, self.nbr),
                                    ("sec_start", self.sec_start, self.sec_mem)):
            st = np.asarray(starts)
            if st[0] != 0 or st[st.size - 1] != items.shape[0] or (np.diff(st) < 0).any():
                raise ValueError(f"{name} is not a valid CSR offset array")
        nb, sm = np.asarray(self.nbr), np.asarray(self.sec_mem)
        if nb.size and ((nb < 0).any() or (nb >= n).any()):
            raise ValueError("neighbour index out of range")
        if sm.size and ((sm < 0).any() or (sm >= n).any()):
            raise ValueError("section member index out of range")
        # Section totals and cuts (buffers spanning the boundary s | s+1), by difference arrays.
        diff = np.zeros(nsec + 1, dtype=np.int64)
        np.add.at(diff, lo, sz)
        np.add.at(diff, hi, -sz)
        self.total0 = np.cumsum(diff[:nsec])
        cdiff = np.zeros(nsec + 1, dtype=np.int64)
        multi = hi - lo > 1
        np.add.at(cdiff, lo[multi], 1)
        np.add.at(cdiff, hi[multi] - 1, -1)
        self.cuts0 = np.cumsum(cdiff[:nsec])
        self.offset = np.full(n, -1, dtype=np.int64)
        self.solution = np.full(n, -1, dtype=np.int64)
        self.min_off = np.zeros(n, dtype=np.int64)
        self.floor_ = np.zeros(nsec, dtype=np.int64)
        self.total = np.array(self.total0, dtype=np.int64)
        self.cuts = np.array(self.cuts0, dtype=np.int64)
        if (np.diff(np.asarray(self.sec_start)) < 1).any():
            raise ValueError("every section needs at least one member")
        self.witness = np.array(sm[np.asarray(self.sec_start)[:nsec]], dtype=np.int64)
        # Each section's member list keeps its unplaced buffers first (sec_cnt of them): placing
        # a buffer swaps it behind them, and undoing (always in reverse order) just counts it
        # back in. where[bpos[b] + s - sec_lo[b]] is b's position in section s's list.
        self.sec_cnt = np.diff(np.asarray(self.sec_start))
        self.bpos = np.concatenate([[0], np.cumsum(hi - lo)]).astype(np.int64)
        bp = np.asarray(self.bpos)
        sec_of = np.repeat(np.arange(nsec, dtype=np.int64), np.asarray(self.sec_cnt))
        if sm.size != bp[n] or ((sec_of < lo[sm]) | (sec_of >= hi[sm])).any():
            raise ValueError("section member lists do not match the section spans")
        slot = bp[sm] + sec_of - lo[sm]
        if (np.bincount(slot, minlength=sm.size) != 1).any():
            raise ValueError("a buffer is listed twice in a section or missing from one")
        where = np.empty(sm.size, dtype=np.int64)
        where[slot] = np.arange(sm.size, dtype=np.int64)
        self.where = where

    def __dealloc__(self):
        free(self.log.data)
        free(self.arena.data)

    def solve(self, int64_t capacity, int64_t node_limit, double deadline, int heuristic):
        """Search for a packing under ``capacity`` with one preordering heuristic.

        Parameters
        ----------
        capacity : int
            Largest allowed ``offset + size`` (units).
        node_limit : int
            Search nodes allowed (the deterministic budget).
        deadline : float
            ``time.monotonic()``-style wall-clock deadline (CLOCK_MONOTONIC seconds); ``inf``
            for none.
        heuristic : int
            Index into :data:`HEURISTICS`.

        Returns
        -------
        status : str
            ``"ok"``, ``"infeasible"`` (proven: the search was exhaustive), ``"budget"``
            or ``"deadline"``.
        offsets : numpy.ndarray or None
            int64 offsets (units) when ``status == "ok"``.
        nodes : int
            Search nodes used.
        """
        if not 0 <= heuristic < len(HEURISTICS):
            raise ValueError(f"heuristic must be in [0, {len(HEURISTICS)})")
        if node_limit < 1:
            raise ValueError("node_limit must be positive")
        self.cap = capacity
        self.heuristic = heuristic
        self.nodes_left = node_limit
        self.nodes = 0
        self.deadline = deadline
        self.last_signal = now()
        cdef int st
        with nogil:
            st = self._solve_all()
        self.log.size = 0
        self.arena.size = 0
        if st == ST_NOMEM:
            raise MemoryError("skyline search: out of memory")
        if st == ST_INTERRUPTED:
            raise_pending()
        names = {ST_OK: "ok", ST_NOTFOUND: "infeasible", ST_ABORTED: "budget",
                 ST_DEADLINE: "deadline"}
        offsets = np.array(self.solution, dtype=np.int64) if st == ST_OK else None
        return names[st], offsets, int(self.nodes)

    cdef int _solve_all(self) noexcept nogil:
        # The initial partitions are the time components: boundaries with no cut.
        cdef Py_ssize_t s, first = 0, i
        cdef int st = ST_OK
        cdef Py_ssize_t part
        cdef int64_t cnt
        for i in range(self.n):
            self.offset[i] = -1
            self.solution[i] = -1
            self.min_off[i] = 0
        for s in range(self.nsec):
            self.floor_[s] = 0
            self.sec_cnt[s] = self.sec_start[s + 1] - self.sec_start[s]
            self.total[s] = self.total0[s]
            self.cuts[s] = self.cuts0[s]
        # Quick infeasibility: a section whose total exceeds the capacity.
        for s in range(self.nsec):
            if self.total[s] > self.cap:
                return ST_NOTFOUND
        for s in range(self.nsec):
            if s == self.nsec - 1 or self.cuts[s] == 0:
                # Sections [first, s] form a component: collect its buffers.
                part = self.arena.size
                cnt = 0
                for i in range(self.n):
                    if self.slo[i] >= first and self.shi[i] <= s + 1:
                        if vec_reserve(&self.arena, 1) < 0:
                            return ST_NOMEM
                        self.arena.data[self.arena.size] = i
                        self.arena.size += 1
                        cnt += 1
                if cnt > 0:
                    st = self._subsolve(part, cnt, first, s + 1)
                self.arena.size = part
                if st != ST_OK:
                    return st
                first = s + 1
        return ST_OK

    cdef int _subsolve(self, Py_ssize_t part, int64_t m, int64_t s_lo, int64_t s_hi) noexcept nogil:
        # Sort the partition's buffers by the static preordering, then search.
        cdef PreItem* items = <PreItem*> malloc(m * sizeof(PreItem))
        cdef Py_ssize_t k, s, ordpos
        cdef int64_t b, tot, area, w
        cdef int st
        if items == NULL:
            return ST_NOMEM
        for k in range(m):
            b = self.arena.data[part + k]
            tot = 0
            for s in range(self.slo[b], self.shi[b]):
                if self.total[s] > tot:
                    tot = self.total[s]
            w = self.width[b]
            # Saturate instead of overflowing: the area is only a sort key.
            area = self.size[b] * w if w <= 0 or self.size[b] <= INT64_MAX // w else INT64_MAX
            items[k].b = b
            if self.heuristic == 0:      # WAT
                items[k].k1 = w
                items[k].k2 = area
                items[k].k3 = tot
            elif self.heuristic == 1:    # TAW
                items[k].k1 = tot
                items[k].k2 = area
                items[k].k3 = w
            else:                        # TWA
                items[k].k1 = tot
                items[k].k2 = w
                items[k].k3 = area
        qsort(items, m, sizeof(PreItem), cmp_pre)
        for k in range(m):
            self.arena.data[part + k] = items[k].b
        free(items)
        # The initial candidate list: every preorder index.
        ordpos = self.arena.size
        if vec_reserve(&self.arena, 2 * m) < 0:
            return ST_NOMEM
        for k in range(m):
            self.arena.data[ordpos + 2 * k] = 0
            self.arena.data[ordpos + 2 * k + 1] = k
        self.arena.size += 2 * m
        st = self._search(part, m, s_lo, s_hi, ordpos, m, 0, 0)
        self.arena.size = ordpos
        return st

    cdef int _search(self, Py_ssize_t part, int64_t m, int64_t s_lo, int64_t s_hi,
                     Py_ssize_t prev, int64_t prev_m, int64_t min_offset, int64_t min_p) noexcept nogil:
        cdef Py_ssize_t ordpos, k, j, logmark, affpos, s, kept, i1, i2
        cdef int64_t cnt = 0, nkept = 0, nmoved = 0, p, b, o, min_height, h, t, checked = -1
        cdef int st
        cdef double tnow
        if self.nodes_left <= 0:
            return ST_ABORTED
        self.nodes_left -= 1
        self.nodes += 1
        if (self.nodes & 1023) == 0:
            tnow = now()
            if tnow > self.deadline:
                return ST_DEADLINE
            if interrupted(tnow, &self.last_signal):
                return ST_INTERRUPTED
        # The unplaced buffers of this partition, by (lowest feasible offset, preorder). The
        # previous list is already in that order; only entries whose offset rose since are out
        # of place, so those alone are sorted and merged back (cheaper than a full sort).
        ordpos = self.arena.size
        if vec_reserve(&self.arena, 4 * prev_m) < 0:
            return ST_NOMEM
        kept = ordpos + 2 * prev_m          # scratch: entries whose key is unchanged, in order
        for k in range(prev_m):
            o = self.arena.data[prev + 2 * k]
            p = self.arena.data[prev + 2 * k + 1]
            b = self.arena.data[part + p]
            if self.offset[b] >= 0:
                continue
            if self.min_off[b] == o:
                self.arena.data[kept + 2 * nkept] = o
                self.arena.data[kept + 2 * nkept + 1] = p
                nkept += 1
            else:   # moved entries go to the front of the final area for now
                self.arena.data[ordpos + 2 * nmoved] = self.min_off[b]
                self.arena.data[ordpos + 2 * nmoved + 1] = p
                nmoved += 1
        cnt = nkept + nmoved
        if cnt == 0:
            for k in range(m):
                b = self.arena.data[part + k]
                self.solution[b] = self.offset[b]
            return ST_OK
        if nmoved > 1:
            sort_order(<OrderItem*> &self.arena.data[ordpos], nmoved)
        # Merge from the back so the moved entries (at the front) are never overwritten unread.
        i1 = nkept - 1
        i2 = nmoved - 1
        k = cnt - 1
        while i2 >= 0:
            if i1 >= 0 and cmp_order(&self.arena.data[kept + 2 * i1],
                                     &self.arena.data[ordpos + 2 * i2]) > 0:
                self.arena.data[ordpos + 2 * k] = self.arena.data[kept + 2 * i1]
                self.arena.data[ordpos + 2 * k + 1] = self.arena.data[kept + 2 * i1 + 1]
                i1 -= 1
            else:
                self.arena.data[ordpos + 2 * k] = self.arena.data[ordpos + 2 * i2]
                self.arena.data[ordpos + 2 * k + 1] = self.arena.data[ordpos + 2 * i2 + 1]
                i2 -= 1
            k -= 1
        while i1 >= 0:
            self.arena.data[ordpos + 2 * k] = self.arena.data[kept + 2 * i1]
            self.arena.data[ordpos + 2 * k + 1] = self.arena.data[kept + 2 * i1 + 1]
            i1 -= 1
            k -= 1
        self.arena.size = ordpos + 2 * cnt
        # Dominance: placing anything at or above the lowest possible top of an unplaced
        # buffer would leave a gap that buffer could take instead.
        min_height = INT64_MAX
        for k in range(cnt):
            p = self.arena.data[ordpos + 2 * k + 1]
            b = self.arena.data[part + p]
            h = self.arena.data[ordpos + 2 * k] + self.size[b]
            if h < min_height:
                min_height = h
        for k in range(cnt):
            o = self.arena.data[ordpos + 2 * k]
            p = self.arena.data[ordpos + 2 * k + 1]
            b = self.arena.data[part + p]
            # Canonical order: offsets never decrease; equal offsets go in preorder.
            if o < min_offset or (o == min_offset and p < min_p):
                continue
            if o >= min_height:
                break       # candidates come by offset: all later ones are dominated too
            # Placing never lowers a floor, so the check at offset o before placing is a
            # necessary condition; it only gets harder as o grows, so a failure ends the loop
            # without paying for the placement.
            if o != checked:
                if not self._check(s_lo, s_hi, o):
                    break
                checked = o
            self.offset[b] = o
            logmark = self.log.size
            affpos = self.arena.size
            st = self._place(b)
            if st == ST_OK:
                st = ST_NOTFOUND
                if self._check(s_lo, s_hi, o):
                    st = self._decompose(part, m, s_lo, s_hi, ordpos, cnt, o, p, b)
            # Undo, newest change first.
            j = self.log.size
            while j > logmark:
                j -= 3
                t = self.log.data[j]
                if t == LOG_MINOFF:
                    self.min_off[self.log.data[j + 1]] = self.log.data[j + 2]
                else:
                    self.floor_[self.log.data[j + 1]] = self.log.data[j + 2]
            self.log.size = logmark
            for s in range(self.slo[b], self.shi[b]):
                self.total[s] += self.size[b]
                self.sec_cnt[s] += 1    # b sits right behind the unplaced members again
            self.offset[b] = -1
            self.arena.size = affpos
            if st != ST_NOTFOUND:
                self.arena.size = ordpos
                return st
        self.arena.size = ordpos
        return ST_NOTFOUND

    cdef int _place(self, int64_t b) noexcept nogil:
        # Raise the lowest feasible offset of b's unplaced neighbours to b's top, then raise
        # the floors of b's sections and of sections whose unplaced buffers all sit higher.
        cdef int64_t height = self.offset[b] + self.size[b]
        cdef int64_t j, q, s, lowest, f, last
        cdef int64_t aff_lo = self.nsec, aff_hi = 0
        cdef Py_ssize_t k
        for k in range(self.nbr_start[b], self.nbr_start[b + 1]):
            j = self.nbr[k]
            if self.offset[j] >= 0 or self.min_off[j] >= height:
                continue
            if vec_reserve(&self.log, 3) < 0:
                return ST_NOMEM
            self.log.data[self.log.size] = LOG_MINOFF
            self.log.data[self.log.size + 1] = j
            self.log.data[self.log.size + 2] = self.min_off[j]
            self.log.size += 3
            self.min_off[j] = height
            # Every neighbour's section span meets b's, so the affected sections form one range.
            if self.slo[j] < aff_lo:
                aff_lo = self.slo[j]
            if self.shi[j] > aff_hi:
                aff_hi = self.shi[j]
        for s in range(self.slo[b], self.shi[b]):
            if vec_reserve(&self.log, 3) < 0:
                return ST_NOMEM
            self.log.data[self.log.size] = LOG_FLOOR
            self.log.data[self.log.size + 1] = s
            self.log.data[self.log.size + 2] = self.floor_[s]
            self.log.size += 3
            self.floor_[s] = height
            self.total[s] -= self.size[b]
            # Move b just behind the unplaced members of s.
            q = self.where[self.bpos[b] + s - self.slo[b]]
            last = self.sec_start[s] + self.sec_cnt[s] - 1
            j = self.sec_mem[last]
            self.sec_mem[last] = b
            self.sec_mem[q] = j
            self.where[self.bpos[b] + s - self.slo[b]] = last
            self.where[self.bpos[j] + s - self.slo[j]] = q
            self.sec_cnt[s] -= 1
        for s in range(aff_lo, aff_hi):
            f = self.floor_[s]
            # witness[s] is a hint: an unplaced member that recently sat at or below the floor.
            # If it still does, the floor stands and the scan is skipped; the hint is never
            # undone on backtracking because it only saves work and never changes a result.
            if self.sec_cnt[s] == 0:
                continue        # nothing unplaced here
            j = self.witness[s]
            if self.offset[j] < 0 and self.min_off[j] <= f:
                continue
            lowest = INT64_MAX
            for q in range(self.sec_start[s], self.sec_start[s] + self.sec_cnt[s]):
                j = self.sec_mem[q]
                if self.min_off[j] < lowest:
                    lowest = self.min_off[j]
                    self.witness[s] = j
                    if lowest <= f:
                        break   # the floor stands; no need to look further
            if lowest != INT64_MAX and f < lowest:
                if vec_reserve(&self.log, 3) < 0:
                    return ST_NOMEM
                self.log.data[self.log.size] = LOG_FLOOR
                self.log.data[self.log.size + 1] = s
                self.log.data[self.log.size + 2] = f
                self.log.size += 3
                self.floor_[s] = lowest
        return ST_OK

    cdef bint _check(self, int64_t s_lo, int64_t s_hi, int64_t o) noexcept nogil:
        # Everything still unplaced in a section must fit above its floor (and above o,
        # since later placements never go lower).
        cdef int64_t s, f
        for s in range(s_lo, s_hi):
            f = self.floor_[s]
            if f < o:
                f = o
            if f + self.total[s] > self.cap:
                return False
        return True

    cdef int _decompose(self, Py_ssize_t part, int64_t m, int64_t s_lo, int64_t s_hi,
                        Py_ssize_t ordpos, int64_t cnt, int64_t o, int64_t p, int64_t b) noexcept nogil:
        # Placing b may leave no unplaced buffer across some section boundaries; the pieces
        # between such boundaries are then independent and are solved one after the other.
        cdef Py_ssize_t cutpos = self.arena.size, ncut, c, k, sub
        cdef int64_t s, a, z, j, subm
        cdef int st = ST_OK
        self.solution[b] = o
        if vec_reserve(&self.arena, 1) < 0:
            return ST_NOMEM
        self.arena.data[self.arena.size] = s_lo
        self.arena.size += 1
        for s in range(self.slo[b], self.shi[b] - 1):
            self.cuts[s] -= 1
            if self.cuts[s] == 0:
                if vec_reserve(&self.arena, 1) < 0:
                    st = ST_NOMEM
                    break
                self.arena.data[self.arena.size] = s + 1
                self.arena.size += 1
        ncut = self.arena.size - cutpos
        if st == ST_OK:
            if ncut == 1:
                st = self._search(part, m, s_lo, s_hi, ordpos, cnt, o, p)
            elif vec_reserve(&self.arena, 1) < 0:
                st = ST_NOMEM
            else:
                self.arena.data[self.arena.size] = s_hi
                self.arena.size += 1
                ncut += 1
                for c in range(1, ncut):
                    a = self.arena.data[cutpos + c - 1]
                    z = self.arena.data[cutpos + c]
                    sub = self.arena.size
                    subm = 0
                    for k in range(m):
                        j = self.arena.data[part + k]
                        if self.offset[j] >= 0:
                            continue
                        if self.shi[j] > a and self.slo[j] < z:
                            if vec_reserve(&self.arena, 1) < 0:
                                st = ST_NOMEM
                                break
                            self.arena.data[self.arena.size] = j
                            self.arena.size += 1
                            subm += 1
                    if st == ST_OK and subm > 0:
                        st = self._subsolve(sub, subm, a, z)
                    self.arena.size = sub
                    if st != ST_OK:
                        break
        for s in range(self.slo[b], self.shi[b] - 1):
            self.cuts[s] += 1
        self.arena.size = cutpos
        return st
