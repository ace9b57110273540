# cython: boundscheck=False, wraparound=False, cdivision=True
"""Chunk sources of the pools: where a pool's 2 MiB chunks (and direct mappings) come from.

A :c:type:`ChunkSource` is ``{map, unmap, ctx}``. ``map`` returns ``length`` bytes, 2 MiB-aligned and
placed on the node as the pool's mode says, or NULL with a :c:type:`PlaceResult` saying which step
failed and why; ``unmap`` gives them back.

* The **kernel** source maps anonymous memory (trimmed to 2 MiB alignment) and places it with the
  one placement routine, ``numamem._place.place_on_node``.
* The **fake** source takes ``posix_memalign`` memory and runs the same routine over faked system
  calls (``numamem._place.fault_ops``): with a limit of chunks mapped at once ("exhausted"), pages
  reported off the node ("misplaced"), or a call failing with a chosen errno ("populate refused",
  "mbind refused", "move_pages failed"), so the pool's failure paths run on a one-node machine.

**When the kernel refuses memory policies** (``EPERM`` from ``mbind``: a container's seccomp
profile, see docs/memory.md "Containers"), a *preferred* kernel source does not fail: it faults the
chunk in by first touch from a thread bound to the node's CPUs (:c:func:`touch_on_node`; the
calling thread itself when it is already bound there), asks ``move_pages`` where the pages went
when that call is allowed, and counts the chunk in the node's :c:type:`FallbackRecord`
(:func:`fallback_stats`, shown by ``numamem.pool_stats()``). A strict (``bind``) source never does:
its requests fail with the refusal, as strict placement must.
"""
from libc.errno cimport EINVAL, ENOMEM, EPERM, errno
from libc.stdlib cimport free as c_free
from libc.string cimport memcpy, memset
from posix.unistd cimport _SC_PAGESIZE, sysconf

from numamem._libnuma cimport (
    MAP_ANONYMOUS, MAP_PRIVATE, bitmask, munmap, numa_allocate_cpumask, numa_bitmask_isbitset,
    numa_bitmask_nbytes, numa_free_cpumask, numa_node_to_cpus,
)
from numamem._capacity cimport check_capacity
from numamem._place cimport (
    PLACE_PREFERRED, PLACE_STRICT, STEP_MAP, STEP_PREFER, PlaceOps, PlaceResult, fault_ops, kernel_ops,
    map_aligned, page_histogram, place_on_node, populate_range, result_object,
)

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef extern from "<sched.h>" nogil:
    # pyconfig.h defines _GNU_SOURCE, which these need.
    ctypedef struct cpu_set_t:
        pass
    void CPU_ZERO(cpu_set_t *cpus)
    void CPU_SET(int cpu, cpu_set_t *cpus)
    int CPU_ISSET(int cpu, cpu_set_t *cpus)
    int CPU_COUNT(cpu_set_t *cpus)
    void CPU_AND(cpu_set_t *dest, cpu_set_t *a, cpu_set_t *b)
    int CPU_EQUAL(cpu_set_t *a, cpu_set_t *b)
    int CPU_SETSIZE
    int sched_getaffinity(int pid, size_t size, cpu_set_t *cpus)

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_attr_t:
        pass
    int pthread_attr_init(pthread_attr_t *attr)
    int pthread_attr_destroy(pthread_attr_t *attr)
    int pthread_attr_setaffinity_np(pthread_attr_t *attr, size_t size, const cpu_set_t *cpus)
    int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*start)(void *) noexcept nogil,
                       void *arg)
    int pthread_join(pthread_t thread, void **result)

cdef size_t BASE_PAGE = <size_t>sysconf(_SC_PAGESIZE)
cdef size_t CHUNK_SIZE = 2097152
DEF QUERY_BATCH = 512
TOUCHED_BY = {TOUCH_BOUND_THREAD: "a thread bound to the node's CPUs",
              TOUCH_CALLER_BOUND: "the calling thread (already bound to the node's CPUs)",
              TOUCH_UNBOUND: "the calling thread (no thread could be bound to the node's CPUs)"}
# Per node: how its preferred kernel pools fell back to first touch (see the module's docstring).
cdef FallbackRecord FALLBACK[MAX_FALLBACK_NODES]


# ---- first touch from the node's CPUs ---------------------------------------------------------
cdef int _node_cpus(int node, cpu_set_t *cpus) noexcept nogil:
    """The CPUs of ``node`` in ``cpus``; their count (0 when it has none, or they are unknown).

    Not narrowed to this thread's affinity: the thread may be bound elsewhere. The kernel narrows
    a new thread's affinity to the cpuset, and refuses it (``pthread_create`` fails) when none of
    the node's CPUs is allowed; the caller then touches from its own thread.
    """
    cdef bitmask *mask = numa_allocate_cpumask()
    cdef unsigned int cpu, bits
    CPU_ZERO(cpus)
    if mask == NULL:
        return 0
    if numa_node_to_cpus(node, mask) == 0:
        bits = numa_bitmask_nbytes(mask) * 8
        for cpu in range(bits):
            if cpu < <unsigned int>CPU_SETSIZE and numa_bitmask_isbitset(mask, cpu):
                CPU_SET(cpu, cpus)
    numa_free_cpumask(mask)
    return CPU_COUNT(cpus)


cdef struct TouchJob:
    char *base
    size_t length
    size_t page_size
    int rc
    PlaceResult result


cdef void *_touch_job(void *arg) noexcept nogil:
    cdef TouchJob *job = <TouchJob *>arg
    job.rc = populate_range(kernel_ops(), job.base, job.length, job.page_size, &job.result)
    return NULL


cdef int _where_pages_are(char *base, size_t length, size_t page_size, int node, PlaceResult *out) noexcept nogil:
    """Histogram of the range's pages by node from ``move_pages`` (query mode); 0, or its errno.

    The placement routine's own histogram (one loop for both); a refused query is not a failed
    placement here, so the step it records is cleared.
    """
    if page_histogram(kernel_ops(), base, length, page_size, node, out) == 0:
        return 0
    out.step = 0
    return out.err


cdef int touch_on_node(char *base, size_t length, int node, size_t page_size, PlaceResult *out,
                       int *touched_by, int *query_err) noexcept nogil:
    """Fault ``[base, base + length)`` in by first touch from the CPUs of ``node``, with no policy.

    The fallback when the kernel refuses ``mbind``: under the default policy a page goes to the node
    of the CPU that first touches it, so the range is populated from a thread bound to the node's
    CPUs (the calling thread when it is bound there already). ``touched_by`` says which
    (``TOUCH_*``); ``query_err`` is 0 when ``move_pages`` could say where the pages went (then
    ``out`` holds the histogram) or its errno (EPERM where it is refused too). Returns 0, or -1
    with ``out.step``/``out.err`` from the populate.
    """
    cdef cpu_set_t cpus, mine, inside
    cdef pthread_attr_t attr
    cdef pthread_t thread
    cdef TouchJob job
    cdef int have = _node_cpus(node, &cpus)
    memset(&job, 0, sizeof(TouchJob))
    job.base = base
    job.length = length
    job.page_size = page_size
    touched_by[0] = TOUCH_UNBOUND
    if have > 0 and sched_getaffinity(0, sizeof(cpu_set_t), &mine) == 0:
        CPU_AND(&inside, &mine, &cpus)
        if CPU_COUNT(&inside) == CPU_COUNT(&mine):
            # Every CPU this thread may run on is the node's: it is bound there already.
            touched_by[0] = TOUCH_CALLER_BOUND
    if have > 0 and touched_by[0] == TOUCH_UNBOUND:
        pthread_attr_init(&attr)
        if pthread_attr_setaffinity_np(&attr, sizeof(cpu_set_t), &cpus) == 0 and \
                pthread_create(&thread, &attr, _touch_job, &job) == 0:
            pthread_join(thread, NULL)
            touched_by[0] = TOUCH_BOUND_THREAD
        pthread_attr_destroy(&attr)
    if touched_by[0] != TOUCH_BOUND_THREAD:
        # Already bound there, or no thread could be bound (no allowed CPU on the node, no thread
        # to spare): this thread touches, and the histogram below says where that put the pages.
        _touch_job(&job)
    memcpy(out, &job.result, sizeof(PlaceResult))
    if job.rc != 0:
        return -1
    query_err[0] = _where_pages_are(base, length, page_size, node, out)
    return 0


cdef char *_kernel_map(void *ctx, size_t length, int node, int mode, PlaceResult *out) noexcept nogil:
    cdef int err = 0
    cdef char *base
    # A large mapping is refused before anything is mapped when it exceeds the cgroup's headroom
    # or, strict, the node's available memory: the rule numamem.empty's follow (numamem._capacity).
    if check_capacity(length, node if mode == PLACE_STRICT else -1, out) != 0:
        return NULL
    base = map_aligned(length, CHUNK_SIZE, MAP_PRIVATE | MAP_ANONYMOUS, BASE_PAGE, &err)
    if base == NULL:
        memset(out, 0, sizeof(PlaceResult))
        out.step = STEP_MAP
        out.err = err
        return NULL
    if place_on_node(base, length, node, mode, BASE_PAGE, kernel_ops(), out) != 0:
        if mode == PLACE_PREFERRED and out.step == STEP_PREFER and out.err == EPERM and \
                _fall_back(base, length, node, out) == 0:
            return base
        munmap(base, length)
        return NULL
    return base


cdef int _fall_back(char *base, size_t length, int node, PlaceResult *out) noexcept nogil:
    """A preferred chunk whose ``mbind`` was refused: first touch from the node's CPUs, counted."""
    cdef int touched_by = 0, query_err = 0
    cdef FallbackRecord *record
    if touch_on_node(base, length, node, BASE_PAGE, out, &touched_by, &query_err) != 0:
        return -1
    if 0 <= node < MAX_FALLBACK_NODES:
        # Updated under the pool's lock; pools of one node share the record (see fallback_stats).
        record = &FALLBACK[node]
        record.chunks += 1
        record.touched_by = touched_by
        if query_err != 0:
            record.unverified += 1
            record.query_errno = query_err
        else:
            record.pages_checked += out.pages
            record.pages_elsewhere += out.misplaced
    out.step = 0
    out.err = 0
    return 0


def touch_range_on_node(size_t address, size_t length, int node, size_t page_size):
    """Populate a mapped range by first touch from ``node``'s CPUs (:c:func:`touch_on_node`).

    The fallback of ``policy="preferred"`` when the kernel refuses ``mbind``; the range must be
    mapped, page-aligned and untouched.

    Returns
    -------
    touched_by : str
        Which thread touched the pages.
    where : dict or None
        Node (or negative errno) -> pages, from ``move_pages``; None when ``move_pages`` is refused.
    query_errno : int
        0, or the errno of the refused ``move_pages``.

    Raises
    ------
    OSError
        The populate failed (through :func:`numamem.errors.oserror`).
    """
    cdef PlaceResult out
    cdef int touched_by = 0, query_err = 0, rc
    with nogil:
        rc = touch_on_node(<char *>address, length, node, page_size, &out, &touched_by, &query_err)
    if rc != 0:
        from numamem.errors import oserror

        raise oserror(out.err, f"madvise(MADV_POPULATE_WRITE, {length} bytes)", f"first touch on node {node}")
    where = None if query_err else dict(result_object(&out, node).histogram) or {}
    if where == {} and out.pages:
        where = {node: out.pages}
    return TOUCHED_BY[touched_by], where, query_err


def fallback_stats(int node):
    """How the preferred kernel pools of ``node`` fell back to first touch, or None if they never did.

    Returns
    -------
    dict or None
        ``chunks`` (chunks placed by first touch because ``mbind`` was refused), ``unverified``
        (of those, chunks ``move_pages`` could not check), ``pages_checked`` and
        ``pages_elsewhere`` (from ``move_pages`` where it is allowed), ``touched_by``,
        ``query_errno`` (the errno of the refused ``move_pages``, or 0).
    """
    if node < 0 or node >= MAX_FALLBACK_NODES or FALLBACK[node].chunks == 0:
        return None
    cdef FallbackRecord record = FALLBACK[node]
    return {"chunks": record.chunks, "unverified": record.unverified, "pages_checked": record.pages_checked,
            "pages_elsewhere": record.pages_elsewhere, "touched_by": TOUCHED_BY.get(record.touched_by),
            "query_errno": record.query_errno}


cdef void _kernel_unmap(void *ctx, char *base, size_t length) noexcept nogil:
    munmap(base, length)


cdef char *_fake_map(void *ctx, size_t length, int node, int mode, PlaceResult *out) noexcept nogil:
    cdef FakeSourceState *fake = <FakeSourceState *>ctx
    cdef long chunks = <long>((length + CHUNK_SIZE - 1) // CHUNK_SIZE)
    cdef void *memory = NULL
    cdef PlaceOps ops
    if (fake.limit >= 0 and fake.mapped_chunks + chunks > fake.limit) or \
            posix_memalign(&memory, CHUNK_SIZE, length) != 0:
        memset(out, 0, sizeof(PlaceResult))
        out.step = STEP_MAP
        out.err = ENOMEM
        return NULL
    # Fresh chunks are zero, as anonymous mappings are.
    memset(memory, 0, length)
    fault_ops(&fake.faults, &ops)
    if place_on_node(<char *>memory, length, node, mode, BASE_PAGE, &ops, out) != 0:
        c_free(memory)
        return NULL
    fake.mapped_chunks += chunks
    return <char *>memory


cdef void _fake_unmap(void *ctx, char *base, size_t length) noexcept nogil:
    cdef FakeSourceState *fake = <FakeSourceState *>ctx
    fake.mapped_chunks -= <long>((length + CHUNK_SIZE - 1) // CHUNK_SIZE)
    c_free(base)


cdef void kernel_source(ChunkSource *source) noexcept nogil:
    """Fill ``source`` with the kernel's."""
    source.ctx = NULL
    source.map = _kernel_map
    source.unmap = _kernel_unmap


cdef void fake_source_init(ChunkSource *source, FakeSourceState *state, int node) noexcept nogil:
    """Fill ``source`` with the fake one over ``state`` (which must live as long as the pool)."""
    state.mapped_chunks = 0
    state.faults.kernel = 0
    state.faults.node = node
    source.ctx = state
    source.map = _fake_map
    source.unmap = _fake_unmap
