# cython: boundscheck=False, wraparound=False, cdivision=True
"""The one strict-placement routine, and the mapping helpers it shares with regions and pools.

:c:func:`place_on_node` puts an already mapped, untouched range on one node. For a strict request
(``PLACE_STRICT``, what ``policy="bind"`` means) the sequence is, in this order for a reason each:

1. ``mbind(MPOL_PREFERRED, node)``: populating under ``MPOL_BIND`` past the node's capacity is an
   OOM kill (seen in a guest); under ``preferred`` a shortfall spills to another node instead, which
   step 3 then sees;
2. populate with ``MADV_POPULATE_WRITE`` (Linux 5.14+); where the kernel lacks it (``EINVAL``), touch
   one byte per page, for base pages only: touching a hugetlb page with none free is a SIGBUS;
3. verify with ``move_pages``: every page of a range up to 2 MiB, else one page per 2 MiB plus the
   last page (a full query costs ~130 ns per 4 KiB page), with the kernel's own walk in step 4
   catching the pages between samples;
4. ``mbind(MPOL_BIND, node, MPOL_MF_STRICT)``, so later faults (after swap or migration) stay, and
   ``EIO`` if any page is off the node.

It runs without the GIL (the pool calls it inside NumPy's allocation calls), never unmaps (the
caller owns the range) and reports how it went in a :c:type:`PlaceResult`: the failing step, its
errno, and, when pages are off the node, a histogram of where every page of the range is (counted
in first-seen order: no sort, whose result the emulated guests have got wrong). One translator,
:func:`numamem.errors.from_place_result`, turns a result into the exception.

The three calls go through a :c:type:`PlaceOps` table: the kernel's, or a fault-injecting one
(:class:`Faults`) so that every failure branch runs in tests on a one-node machine.

The capacity check run before mapping (cgroup headroom, node memory) is :mod:`numamem._capacity`:
its callers are arrays and the pools' chunk source, not this routine; it reports a shortfall in
the same :c:type:`PlaceResult` (``STEP_CAPACITY``), which :c:func:`result_object` reads.
"""
import os

from libc.errno cimport EINVAL, EIO, ENOMEM, errno
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free as c_free
from libc.string cimport memset
from posix.unistd cimport _SC_PAGESIZE, sysconf

from numamem._libnuma cimport (
    MADV_POPULATE_WRITE, MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, MPOL_BIND, MPOL_MF_STRICT,
    MPOL_PREFERRED, PROT_READ, PROT_WRITE, madvise, mbind, mmap, move_pages, munmap,
    nm_set_errno, numa_max_possible_node,
)

cdef size_t BASE_PAGE = <size_t>sysconf(_SC_PAGESIZE)
# Ranges up to this size are verified page by page; larger ones on a sample of this stride.
cdef size_t FULL_VERIFY_BYTES = 2 * 1024 * 1024
cdef size_t SAMPLE_STRIDE = 2 * 1024 * 1024
# move_pages is asked about this many pages per call (a bounded buffer on the stack, so a
# histogram of a terabyte needs no allocation).
DEF QUERY_BATCH = 512

STEP_NAMES = {
    STEP_NONE: "none", STEP_MAP: "map", STEP_PREFER: "prefer", STEP_POPULATE: "populate",
    STEP_VERIFY: "verify", STEP_BIND: "bind", STEP_MISPLACED: "misplaced", STEP_CAPACITY: "capacity",
}
STEPS = {name: step for step, name in STEP_NAMES.items()}
MODES = {"strict": PLACE_STRICT, "preferred": PLACE_PREFERRED, "bind-lazy": PLACE_BIND_LAZY,
         "preferred-lazy": PLACE_PREFERRED_LAZY}
POPULATED = {POPULATED_NONE: None, POPULATED_MADVISE: "madvise", POPULATED_TOUCH: "touch"}


# ---- node masks ------------------------------------------------------------------------------
cdef int mask_words() noexcept nogil:
    """Words of a node mask sized for every node the kernel could report (at least 64 bits).

    ``get_mempolicy`` fails with EINVAL for a mask shorter than ``nr_node_ids``.
    """
    cdef int possible = numa_max_possible_node() + 1
    if possible < 64:
        possible = 64
    return (possible + 63) // 64


cdef int node_mask(int node, unsigned long *mask, unsigned long *maxnode) noexcept nogil:
    """Fill ``mask`` (MASK_WORDS_MAX words) with ``node``; 0, or EINVAL for a node out of range."""
    cdef int words = mask_words()
    if words > MASK_WORDS_MAX:
        words = MASK_WORDS_MAX
    memset(mask, 0, MASK_WORDS_MAX * sizeof(unsigned long))
    if node < 0 or node >= words * 64:
        return EINVAL
    mask[node // 64] = (<unsigned long>1) << (node % 64)
    # libnuma passes size + 1 as maxnode: the kernel historically drops the last bit.
    maxnode[0] = words * 64 + 1
    return 0


# ---- the call tables ---------------------------------------------------------------------------
cdef long _kernel_mbind(void *ctx, void *start, unsigned long length, int mode, const unsigned long *mask,
                        unsigned long maxnode, unsigned flags) noexcept nogil:
    return mbind(start, length, mode, mask, maxnode, flags)


cdef int _kernel_madvise(void *ctx, void *start, size_t length, int advice) noexcept nogil:
    return madvise(start, length, advice)


cdef long _kernel_move_pages(void *ctx, unsigned long count, void **pages, int *status) noexcept nogil:
    return move_pages(0, count, pages, NULL, status, 0)


cdef PlaceOps KERNEL_OPS
KERNEL_OPS.ctx = NULL
KERNEL_OPS.mbind = _kernel_mbind
KERNEL_OPS.madvise = _kernel_madvise
KERNEL_OPS.move_pages = _kernel_move_pages


cdef const PlaceOps *kernel_ops() noexcept nogil:
    return &KERNEL_OPS


cdef long _fault_mbind(void *ctx, void *start, unsigned long length, int mode, const unsigned long *mask,
                       unsigned long maxnode, unsigned flags) noexcept nogil:
    cdef Faults *faults = <Faults *>ctx
    cdef int step = STEP_PREFER if mode == MPOL_PREFERRED else STEP_BIND
    if faults.fail_step == step:
        nm_set_errno(faults.fail_errno)
        return -1
    if faults.kernel:
        return mbind(start, length, mode, mask, maxnode, flags)
    return 0


cdef int _fault_madvise(void *ctx, void *start, size_t length, int advice) noexcept nogil:
    cdef Faults *faults = <Faults *>ctx
    if faults.fail_step == STEP_POPULATE:
        nm_set_errno(faults.fail_errno)
        return -1
    if faults.kernel:
        return madvise(start, length, advice)
    return 0


cdef long _fault_move_pages(void *ctx, unsigned long count, void **pages, int *status) noexcept nogil:
    cdef Faults *faults = <Faults *>ctx
    cdef unsigned long i
    cdef long rc = 0
    if faults.fail_step == STEP_VERIFY:
        nm_set_errno(faults.fail_errno)
        return -1
    if faults.kernel:
        rc = move_pages(0, count, pages, NULL, status, 0)
        if rc < 0:
            return rc
    else:
        for i in range(count):
            status[i] = faults.node
    if faults.misplace_every > 0:
        for i in range(count):
            if i % <unsigned long>faults.misplace_every == <unsigned long>(faults.misplace_every - 1):
                status[i] = faults.node + 1
    if faults.misplace_last and count:
        status[count - 1] = faults.node + 1
    return rc


cdef void fault_ops(Faults *faults, PlaceOps *ops) noexcept nogil:
    """Fill ``ops`` with the table that injects ``faults`` (over the kernel when ``faults.kernel``)."""
    ops.ctx = faults
    ops.mbind = _fault_mbind
    ops.madvise = _fault_madvise
    ops.move_pages = _fault_move_pages


# Test hook: faults injected into every Region.place of this process (see `injected`).
cdef Faults INJECTED_FAULTS
cdef PlaceOps INJECTED_OPS
cdef bint INJECTING = False


cdef const PlaceOps *injected_ops() noexcept nogil:
    """The table regions place with: the kernel's, or the faults a test injected."""
    return &INJECTED_OPS if INJECTING else &KERNEL_OPS


cdef int _check_fault_args(object step, int fail_errno, long misplace_every) except -1:
    if step is not None and step not in ("prefer", "populate", "verify", "bind"):
        raise ValueError(f"step must be 'prefer', 'populate', 'verify', 'bind' or None, not {step!r}")
    if (step is None) != (fail_errno == 0):
        raise ValueError("give step= and errno= together (a failing call and the errno it leaves)")
    if misplace_every < 0:
        raise ValueError(f"misplace_every must be >= 0, not {misplace_every}")
    return 0


cdef class injected:
    """Context manager (tests only): inject failures into every ``Region.place`` of the process.

    Parameters
    ----------
    step : {"prefer", "populate", "verify", "bind"}, optional
        The call that fails, with ``errno``; the other calls go to the kernel.
    errno : int
        The errno the failing call leaves.
    misplace_every : int
        ``k > 0``: every ``k``-th page of each ``move_pages`` answer is reported on another node.
    misplace_last : bool
        The last page of each ``move_pages`` answer is reported on another node.
    node : int
        The node the injected misplaced pages are reported off (they are reported on ``node + 1``).
    """
    cdef Faults faults

    def __cinit__(self, step=None, int errno=0, long misplace_every=0, bint misplace_last=False, int node=0):
        _check_fault_args(step, errno, misplace_every)
        self.faults.kernel = 1
        self.faults.fail_step = 0 if step is None else STEPS[step]
        self.faults.fail_errno = errno
        self.faults.misplace_every = misplace_every
        self.faults.misplace_last = misplace_last
        self.faults.node = node

    def __enter__(self):
        global INJECTING, INJECTED_FAULTS
        if INJECTING:
            raise RuntimeError("faults are already injected")
        INJECTED_FAULTS = self.faults
        fault_ops(&INJECTED_FAULTS, &INJECTED_OPS)
        INJECTING = True
        return self

    def __exit__(self, *exc):
        global INJECTING
        INJECTING = False
        return False


# ---- mapping ---------------------------------------------------------------------------------
cdef char *map_aligned(size_t length, size_t align, int flags, size_t page_size, int *err) noexcept nogil:
    """Map ``length`` bytes (a multiple of ``page_size``) at an ``align``-aligned address.

    Alignments above the page size are had by over-mapping and trimming both ends, so no page
    outside the aligned range stays mapped. Returns NULL with ``err`` set on failure (EOVERFLOW
    cannot happen: the caller has checked ``length + align`` with ``nm_add``).
    """
    cdef size_t span = length
    cdef char *raw
    cdef char *start
    if align > page_size:
        span = length + align - page_size
    raw = <char *>mmap(NULL, span, PROT_READ | PROT_WRITE, flags, -1, 0)
    if <void *>raw == MAP_FAILED:
        err[0] = errno
        return NULL
    start = raw
    if align > page_size:
        start = <char *>(((<uintptr_t>raw) + align - 1) & ~(<uintptr_t>align - 1))
        if start != raw:
            munmap(raw, start - raw)
        if raw + span > start + length:
            munmap(start + length, (raw + span) - (start + length))
    err[0] = 0
    return start


# ---- populate --------------------------------------------------------------------------------
cdef int populate_range(const PlaceOps *ops, char *base, size_t length, size_t page_size,
                        PlaceResult *out) noexcept nogil:
    """Fault every page of the range in for writing; 0, or -1 with ``out.step``/``out.err`` set."""
    cdef size_t position
    cdef volatile char *cursor
    if ops.madvise(ops.ctx, base, length, MADV_POPULATE_WRITE) == 0:
        out.populated_by = POPULATED_MADVISE
        return 0
    if errno != EINVAL or page_size != BASE_PAGE:
        # Only base pages fall back to touching: a hugetlb page with none free would be a SIGBUS.
        out.step = STEP_POPULATE
        out.err = errno
        return -1
    # The kernel predates MADV_POPULATE_WRITE: write each page (its own byte back, so content,
    # if any, is kept).
    position = 0
    while position < length:
        cursor = <volatile char *>(base + position)
        cursor[0] = cursor[0]
        position += page_size
    out.populated_by = POPULATED_TOUCH
    return 0


# ---- verification ----------------------------------------------------------------------------
cdef inline void _count(PlaceResult *out, int value, int node) noexcept nogil:
    cdef int i
    out.pages += 1
    if value != node:
        out.misplaced += 1
    for i in range(out.hist_len):
        if out.hist_value[i] == value:
            out.hist_count[i] += 1
            return
    if out.hist_len < HIST_SLOTS:
        out.hist_value[out.hist_len] = value
        out.hist_count[out.hist_len] = 1
        out.hist_len += 1
    else:
        out.hist_other += 1


cdef int page_histogram(const PlaceOps *ops, char *base, size_t length, size_t page_size, int node,
                    PlaceResult *out) noexcept nogil:
    """Where every page of the range is; 0, or -1 with the move_pages errno in ``out``."""
    cdef void *addresses[QUERY_BATCH]
    cdef int status[QUERY_BATCH]
    cdef size_t pages = (length + page_size - 1) // page_size
    cdef size_t done = 0, count, i
    out.pages = 0
    out.misplaced = 0
    out.hist_len = 0
    out.hist_other = 0
    while done < pages:
        count = pages - done if pages - done < QUERY_BATCH else QUERY_BATCH
        for i in range(count):
            addresses[i] = base + (done + i) * page_size
        if ops.move_pages(ops.ctx, count, addresses, status) < 0:
            out.step = STEP_VERIFY
            out.err = errno
            return -1
        for i in range(count):
            _count(out, status[i], node)
        done += count
    return 0


cdef int _verify(const PlaceOps *ops, char *base, size_t length, size_t page_size, int node,
                 PlaceResult *out) noexcept nogil:
    """Check the node of every page (small ranges) or of a sample plus the last page.

    Returns 0 when every page asked about is on ``node``; 1 when one is not (``out`` then holds the
    histogram of the whole range); -1 when ``move_pages`` itself failed.
    """
    cdef void *addresses[QUERY_BATCH]
    cdef int status[QUERY_BATCH]
    cdef size_t stride = page_size if (length <= FULL_VERIFY_BYTES or page_size >= SAMPLE_STRIDE) else SAMPLE_STRIDE
    cdef size_t offset = 0, count, i
    cdef bint last_done = False
    while not last_done:
        count = 0
        while count < QUERY_BATCH and offset < length:
            addresses[count] = base + offset
            count += 1
            offset += stride
        if offset >= length and count < QUERY_BATCH:
            # The sample always ends with the range's last page (the first page of a 2 MiB step
            # may be all a stride sees of a range that spilled at its end).
            if stride != page_size:
                addresses[count] = base + ((length - 1) // page_size) * page_size
                count += 1
            last_done = True
        if count == 0:
            break
        if ops.move_pages(ops.ctx, count, addresses, status) < 0:
            out.step = STEP_VERIFY
            out.err = errno
            return -1
        out.checked += count
        for i in range(count):
            if status[i] != node:
                if page_histogram(ops, base, length, page_size, node, out) != 0:
                    return -1
                # The histogram is the kernel's word; the first answer already proved one page off.
                if out.misplaced == 0:
                    out.misplaced = 1
                out.step = STEP_MISPLACED
                return 1
    return 0


# ---- the routine -----------------------------------------------------------------------------
cdef int place_on_node(char *base, size_t length, int node, int mode, size_t page_size,
                       const PlaceOps *ops, PlaceResult *out) noexcept nogil:
    """Place ``[base, base + length)`` (mapped, untouched, page-aligned) on ``node`` as ``mode`` says.

    Returns 0, or -1 with ``out`` saying where and why it stopped. Never unmaps.
    """
    cdef unsigned long mask[MASK_WORDS_MAX]
    cdef unsigned long maxnode = 0
    cdef int rc
    memset(out, 0, sizeof(PlaceResult))
    rc = node_mask(node, mask, &maxnode)
    if rc != 0:
        out.step = STEP_PREFER if mode != PLACE_BIND_LAZY else STEP_BIND
        out.err = rc
        return -1
    if mode == PLACE_BIND_LAZY:
        if ops.mbind(ops.ctx, base, length, MPOL_BIND, mask, maxnode, 0) != 0:
            out.step = STEP_BIND
            out.err = errno
            return -1
        return 0
    if ops.mbind(ops.ctx, base, length, MPOL_PREFERRED, mask, maxnode, 0) != 0:
        out.step = STEP_PREFER
        out.err = errno
        return -1
    if mode == PLACE_PREFERRED_LAZY:
        return 0
    if populate_range(ops, base, length, page_size, out) != 0:
        return -1
    if mode == PLACE_PREFERRED:
        return 0
    rc = _verify(ops, base, length, page_size, node, out)
    if rc != 0:
        return -1
    if ops.mbind(ops.ctx, base, length, MPOL_BIND, mask, maxnode, MPOL_MF_STRICT) != 0:
        out.err = errno
        if out.err != EIO:
            out.step = STEP_BIND
            return -1
        # EIO: the kernel's strict walk found a page off the node between the samples.
        if page_histogram(ops, base, length, page_size, node, out) != 0:
            return -1
        out.step = STEP_MISPLACED
        return -1
    return 0


# ---- the result, for Python ------------------------------------------------------------------
cdef class PlaceOutcome:
    """How a placement went (read by :func:`numamem.errors.from_place_result`).

    Attributes
    ----------
    step : str
        ``"none"`` (it succeeded), or where it stopped: ``"map"``, ``"prefer"``, ``"populate"``,
        ``"verify"``, ``"bind"``, ``"misplaced"`` or ``"capacity"`` (:mod:`numamem._capacity`).
    errno : int
        The failing call's errno (0 when ``move_pages`` found pages off the node).
    node : int
        The node asked for.
    populated_by : str or None
        ``"madvise"``, ``"touch"`` or None (not populated).
    checked : int
        Pages whose node the verification asked about.
    misplaced : int
        Pages found off the node.
    histogram : dict
        Node (or negative errno) -> pages, for the whole range, when pages were off the node.
    limit : str or None
        For ``step == "capacity"``: the limit that was short, ``"node"`` or ``"cgroup"``.
    available : int or None
        For ``step == "capacity"``: the bytes that limit leaves.
    capacity_detail : str
        For ``step == "capacity"``: the limit in words (which files, which cgroup).
    """
    cdef readonly str step
    cdef int _err
    cdef readonly int node
    cdef readonly object populated_by
    cdef readonly size_t checked
    cdef readonly size_t misplaced
    cdef readonly dict histogram
    cdef readonly object limit
    cdef readonly object available
    cdef readonly str capacity_detail

    @property
    def errno(self):
        """The failing call's errno (0 when ``move_pages`` found pages off the node)."""
        return self._err

    @property
    def ok(self):
        """True when the placement succeeded."""
        return self.step == "none"

    def __repr__(self):
        return (f"PlaceOutcome(step={self.step!r}, errno={self._err}, node={self.node}, "
                f"misplaced={self.misplaced}, histogram={self.histogram})")


cdef object result_object(PlaceResult *result, int node):
    cdef PlaceOutcome outcome = PlaceOutcome.__new__(PlaceOutcome)
    cdef int i
    outcome.step = STEP_NAMES.get(result.step, f"step-{result.step}")
    outcome._err = result.err
    outcome.node = node
    outcome.populated_by = POPULATED.get(result.populated_by)
    outcome.checked = result.checked
    outcome.misplaced = result.misplaced
    histogram = {}
    for i in range(result.hist_len):
        histogram[result.hist_value[i]] = result.hist_count[i]
    if result.hist_other:
        histogram["other"] = result.hist_other
    outcome.histogram = histogram
    outcome.limit = None
    outcome.available = None
    outcome.capacity_detail = ""
    if result.step == STEP_CAPACITY:
        outcome.available = result.available
        if result.limit == LIMIT_CGROUP:
            from numamem._cgroup import CgroupMemory

            outcome.limit = "cgroup"
            outcome.capacity_detail = CgroupMemory(os.fsdecode(<bytes>result.cg_dir), result.cg_limit,
                                                   result.cg_usage, result.cg_version).describe()
        else:
            outcome.limit = "node"
            outcome.capacity_detail = "free here counts MemFree plus inactive file pages"
    return outcome


def place_fake(size_t length, int node=0, str mode="strict", step=None, int errno=0,
               long misplace_every=0, bint misplace_last=False, size_t page_size=0):
    """Run :c:func:`place_on_node` over heap memory with every call faked (tests of its branches).

    Returns
    -------
    PlaceOutcome
    """
    cdef Faults faults
    cdef PlaceOps ops
    cdef PlaceResult result
    cdef void *memory = NULL
    cdef int mode_code
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, not {mode!r}")
    _check_fault_args(step, errno, misplace_every)
    mode_code = MODES[mode]
    if page_size == 0:
        page_size = BASE_PAGE
    memset(&faults, 0, sizeof(Faults))
    faults.fail_step = 0 if step is None else STEPS[step]
    faults.fail_errno = errno
    faults.misplace_every = misplace_every
    faults.misplace_last = misplace_last
    faults.node = node
    fault_ops(&faults, &ops)
    memory = _aligned_alloc(length, page_size)
    if memory == NULL:
        raise MemoryError(f"cannot allocate {length} bytes")
    with nogil:
        place_on_node(<char *>memory, length, node, mode_code, page_size, &ops, &result)
    c_free(memory)
    return result_object(&result, node)


cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)


cdef void *_aligned_alloc(size_t length, size_t align) noexcept nogil:
    cdef void *memory = NULL
    if posix_memalign(&memory, align, length if length else 1) != 0:
        return NULL
    memset(memory, 0, length)
    return memory
