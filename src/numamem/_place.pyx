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
"""
import os

from libc.errno cimport EINVAL, EIO, ENOMEM, errno
from libc.stdint cimport uintptr_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free as c_free, strtoll
from libc.string cimport memcpy, memset, strlen, strncpy, strstr
from posix.fcntl cimport O_CLOEXEC, O_RDONLY, open
from posix.unistd cimport _SC_PAGESIZE, close, read, sysconf

from numamem._libnuma cimport (
    MADV_POPULATE_WRITE, MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, MPOL_BIND, MPOL_MF_STRICT,
    MPOL_PREFERRED, PROT_READ, PROT_WRITE, madvise, mbind, mmap, move_pages, munmap,
    nm_set_errno, numa_max_possible_node, numa_node_size64,
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
CAPACITY_CHECK = CAPACITY_CHECK_BYTES
CGROUP_CHECK = CGROUP_CHECK_BYTES
STEPS = {name: step for step, name in STEP_NAMES.items()}
MODES = {"strict": PLACE_STRICT, "preferred": PLACE_PREFERRED, "bind-lazy": PLACE_BIND_LAZY,
         "preferred-lazy": PLACE_PREFERRED_LAZY}
POPULATED = {POPULATED_NONE: None, POPULATED_MADVISE: "madvise", POPULATED_TOUCH: "touch"}


# ---- capacity ----------------------------------------------------------------------------------
# The one capacity rule, for arrays (numamem._placement) and the pools' kernel chunk source alike:
# a request that will be faulted in now is refused before anything is mapped when it exceeds
#   * the headroom of the process's memory cgroup (limit - usage, the tightest over the cgroup
#     and its ancestors), under every policy, from CGROUP_CHECK_BYTES (a pool chunk) up:
#     populating past it calls the memory cgroup's OOM killer, whatever the NUMA policy; or
#   * for a strict (bind) request of CAPACITY_CHECK_BYTES or more, the node's available memory,
#     MemFree plus Inactive(file) from its sysfs meminfo (clean inactive page cache is what
#     reclaim takes first); smaller ones are left to populate under `preferred` and verification.
# Which cgroup files to read is resolved once (numamem._cgroup, at import or use_limits()) into a
# table of paths, so a check is two small file reads per limiting cgroup and no Python (none when
# no cgroup sets a limit); below the thresholds nothing is read, and a pool's blocks carved from
# mapped chunks never get here. A forked child inherits its parent's cgroup: the table stays valid.
DEF LIMIT_PATH = 512
DEF LIMIT_DIRS = 16


cdef struct LimitFiles:
    char node_dir[LIMIT_PATH]           # .../devices/system/node
    int version                         # 1 or 2 (0: no cgroup sets a limit)
    int count
    char dirs[LIMIT_DIRS][LIMIT_PATH]
    char limit_file[LIMIT_DIRS][LIMIT_PATH]
    char usage_file[LIMIT_DIRS][LIMIT_PATH]


# Swapped whole by use_limits() while checks may read the old table without a lock: old tables are
# kept (a few tens of KiB per call; it is called at import and by tests).
cdef LimitFiles *LIMITS = NULL
_OLD_LIMITS = []
_LIMIT_ROOTS = None
# v1 reports "no limit" as PAGE_COUNTER_MAX pages (0x7ffffffffffff000 with 4 KiB pages).
cdef long long V1_UNLIMITED = 1LL << 62


cdef Py_ssize_t _read_text(const char *path, char *buffer, size_t size) noexcept nogil:
    """Read up to ``size - 1`` bytes of ``path`` into ``buffer`` (NUL-terminated); length, or -1."""
    cdef int fd = open(path, O_RDONLY | O_CLOEXEC)
    cdef Py_ssize_t total = 0, got
    if fd < 0:
        return -1
    while <size_t>total < size - 1:
        got = read(fd, buffer + total, size - 1 - total)
        if got <= 0:
            break
        total += got
    close(fd)
    buffer[total] = 0
    return total


cdef long long _read_number(const char *path) noexcept nogil:
    """The integer in ``path``; -1 when it is ``max`` (no limit), unreadable or not a number."""
    cdef char buffer[64]
    cdef char *end
    cdef long long value
    if _read_text(path, buffer, sizeof(buffer)) <= 0 or buffer[0] < 48 or buffer[0] > 57:
        return -1
    value = strtoll(buffer, &end, 10)
    return value if end != buffer else -1


cdef long long _meminfo_kib(const char *text, const char *key) noexcept nogil:
    cdef const char *at = strstr(text, key)
    if at == NULL:
        return -1
    return strtoll(at + strlen(key), NULL, 10)


cdef long long node_available(int node) noexcept nogil:
    """Bytes ``node`` can give a new allocation now: ``MemFree`` plus ``Inactive(file)``; -1 if unknown.

    From the node's sysfs ``meminfo`` (as :func:`numamem._topology.node_available_memory`), else
    libnuma's ``MemFree``.
    """
    cdef char path[LIMIT_PATH + 32]
    cdef char text[8192]
    cdef long long free_kib, inactive_kib, free_bytes = -1
    cdef LimitFiles *files = LIMITS
    if files != NULL and node >= 0:
        snprintf(path, sizeof(path), "%s/node%d/meminfo", files.node_dir, node)
        if _read_text(path, text, sizeof(text)) > 0:
            free_kib = _meminfo_kib(text, "MemFree:")
            inactive_kib = _meminfo_kib(text, "Inactive(file):")
            if free_kib >= 0:
                return (free_kib + (inactive_kib if inactive_kib > 0 else 0)) * 1024
    if numa_node_size64(node, &free_bytes) < 0:
        return -1
    return free_bytes


cdef long long cgroup_headroom(PlaceResult *out) noexcept nogil:
    """Bytes the process's memory cgroup may still charge (the tightest over its ancestors); -1: no limit.

    The usage counts the cgroup's page cache, which it would reclaim first: a lower estimate.
    Fills ``out.cg_limit``, ``cg_usage``, ``cg_dir`` and ``cg_version`` for the tightest cgroup.
    """
    cdef LimitFiles *files = LIMITS
    cdef long long best = -1, limit, usage, room
    cdef int i
    if files == NULL:
        return -1
    for i in range(files.count):
        limit = _read_number(files.limit_file[i])
        usage = _read_number(files.usage_file[i])
        if limit < 0 or usage < 0 or (files.version == 1 and limit >= V1_UNLIMITED):
            continue
        room = limit - usage if limit > usage else 0
        if best < 0 or room < best:
            best = room
            out.cg_limit = limit
            out.cg_usage = usage
            out.cg_dir = files.dirs[i]
            out.cg_version = files.version
    return best


cdef int check_capacity(size_t length, int node, PlaceResult *out) noexcept nogil:
    """0 if a request of ``length`` bytes fits (or is below the checks), else -1 with STEP_CAPACITY.

    ``node >= 0``: a strict request, compared with the cgroup's headroom and the node's available
    memory; ``node < 0``: a request that may spill to other nodes, compared with the cgroup's
    headroom only (the thresholds are in the comment above). On -1, ``out.limit`` says which limit
    was short and ``out.available`` what it left.
    """
    cdef PlaceResult found
    cdef long long room
    if length < CGROUP_CHECK_BYTES:
        return 0
    memset(&found, 0, sizeof(PlaceResult))
    room = cgroup_headroom(&found)
    if room >= 0 and <unsigned long long>length > <unsigned long long>room:
        found.limit = LIMIT_CGROUP
    elif node >= 0 and length >= CAPACITY_CHECK_BYTES:
        room = node_available(node)
        if room < 0 or <unsigned long long>length <= <unsigned long long>room:
            return 0  # unknown: populate under `preferred` and the verification still guard
        found.limit = LIMIT_NODE
    else:
        return 0
    found.step = STEP_CAPACITY
    found.err = ENOMEM
    found.available = room
    memcpy(out, &found, sizeof(PlaceResult))
    return -1


def use_limits(sysfs=None, proc_self_cgroup=None, cgroup_fs=None):
    """Resolve which files the capacity check reads: the nodes' meminfo and the cgroup limits.

    Called at import with the system's paths. Call it again after the process moved to another
    cgroup or a limit was set on one that had none; tests pass fabricated trees.

    Parameters
    ----------
    sysfs : path, optional
        Replaces ``/sys`` for the nodes' ``devices/system/node/node<N>/meminfo``.
    proc_self_cgroup, cgroup_fs : path, optional
        As :func:`numamem._cgroup.cgroup_memory` takes them.

    Returns
    -------
    tuple
        The previous ``(sysfs, proc_self_cgroup, cgroup_fs)``, to restore them.
    """
    global LIMITS, _LIMIT_ROOTS
    from numamem import _cgroup

    cdef LimitFiles *files
    sysfs = str(sysfs or "/sys")
    proc_self_cgroup = str(proc_self_cgroup or _cgroup.PROC_SELF_CGROUP)
    cgroup_fs = str(cgroup_fs or _cgroup.CGROUP_FS)
    version, directories = _cgroup.limit_files(proc_self_cgroup, cgroup_fs)
    node_dir = (sysfs.rstrip("/") + "/devices/system/node").encode()
    if len(node_dir) >= LIMIT_PATH:
        raise ValueError(f"sysfs path too long ({len(node_dir)} bytes): {sysfs!r}")
    found = []
    for directory, limit_file, usage_file in directories:
        encoded = [os.fsencode(p) for p in (directory, limit_file, usage_file)]
        if max(len(e) for e in encoded) >= LIMIT_PATH:
            raise ValueError(f"cgroup path too long for the capacity check: {directory!r}")
        found.append(encoded)
    if len(found) > LIMIT_DIRS:
        found = found[:LIMIT_DIRS]  # the innermost ones (deeper trees than this are not seen)
    files = <LimitFiles *>calloc(1, sizeof(LimitFiles))
    if files == NULL:
        raise MemoryError("cannot allocate the capacity check's file table")
    strncpy(files.node_dir, node_dir, LIMIT_PATH - 1)
    files.version = version
    files.count = len(found)
    for i, (directory, limit_file, usage_file) in enumerate(found):
        strncpy(files.dirs[i], directory, LIMIT_PATH - 1)
        strncpy(files.limit_file[i], limit_file, LIMIT_PATH - 1)
        strncpy(files.usage_file[i], usage_file, LIMIT_PATH - 1)
    if LIMITS != NULL:
        _OLD_LIMITS.append(<uintptr_t>LIMITS)
    LIMITS = files
    previous, _LIMIT_ROOTS = _LIMIT_ROOTS, (sysfs, proc_self_cgroup, cgroup_fs)
    return previous


def capacity(size_t length, int node=-1):
    """Run the capacity check (:c:func:`check_capacity`) for a request of ``length`` bytes.

    Parameters
    ----------
    length : int
        Bytes that will be faulted in now.
    node : int
        The node of a strict (bind) request; -1 for a request that may spill (the cgroup only).

    Returns
    -------
    PlaceOutcome or None
        None when it fits (or is below ``CGROUP_CHECK``, or ``CAPACITY_CHECK`` for the node's
        memory); else an outcome whose ``step`` is
        ``"capacity"``, for :func:`numamem.errors.from_place_result`.
    """
    cdef PlaceResult result
    cdef int rc
    with nogil:
        rc = check_capacity(length, node, &result)
    return None if rc == 0 else result_object(&result, node)


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
        ``"verify"``, ``"bind"`` or ``"misplaced"``.
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


use_limits()
