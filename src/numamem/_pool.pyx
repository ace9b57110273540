# cython: boundscheck=False, wraparound=False, cdivision=True
"""Per-node memory pools and the NEP 49 allocator built on them.

Layout (every page of a chunk belongs to one node and one policy: invariant 2):

* A **chunk** is 2 MiB, 2 MiB-aligned, mapped by a *chunk source*: the kernel source maps it,
  applies the node's policy, pre-faults and verifies it (the same sequence as ``arrays.py``, in C so
  that it runs without the GIL inside NumPy's allocation calls); a fake source (``posix_memalign``)
  lets the pool logic be tested on any machine.
* A chunk is cut into 32 **granules** of 64 KiB. A granule serves one **size class** (64 B to
  64 KiB, four classes per doubling, all multiples of 64 so blocks stay 64-byte aligned), or a
  **run** of 1-16 granules serves a middle-sized request (64 KiB to 1 MiB).
* Larger requests get a **direct mapping** of their own, registered like a chunk.
* Freed blocks go on per-class free lists, freed runs on per-length free lists, of the pool the
  memory came from (found from the address, whichever pool or thread frees it).
* A global two-level directory maps ``address >> 21`` to the chunk record, so ``free`` and
  ``realloc`` find size and pool from the pointer alone.

Locks: one mutex per pool, held only around list and bump-pointer updates and never while taking
the GIL, so allocation from NumPy (GIL held) cannot deadlock with another thread. The chunk source
runs under the pool mutex; it makes system calls only. ``pthread_atfork`` takes every pool lock
before ``fork()`` and releases them in both processes, so a child finds consistent pools.
"""
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport uint8_t, uintptr_t
from libc.stdlib cimport calloc as c_calloc, free as c_free
from libc.string cimport memcpy, memset, strncpy

from numamem._libnuma cimport (
    MADV_POPULATE_WRITE, MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, MPOL_BIND, MPOL_MF_STRICT,
    MPOL_PREFERRED, PROT_READ, PROT_WRITE, errno, madvise, mbind, mmap, move_pages, munmap,
    numa_max_possible_node,
)
from numamem._ndarray cimport BufferOwner

cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *mutex, void *attr)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)

cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyDataMemAllocator:
        void *ctx
        void *(*malloc)(void *ctx, size_t size) noexcept nogil
        void *(*calloc)(void *ctx, size_t nelem, size_t elsize) noexcept nogil
        void *(*realloc)(void *ctx, void *ptr, size_t new_size) noexcept nogil
        void (*free)(void *ctx, void *ptr, size_t size) noexcept nogil
    ctypedef struct PyDataMem_Handler:
        char name[127]
        uint8_t version
        PyDataMemAllocator allocator
    object PyDataMem_SetHandler(object handler)
    object PyDataMem_GetHandler()

DEF CHUNK_SHIFT = 21
DEF CHUNK_SIZE = 2097152
DEF GRANULE_SHIFT = 16
DEF GRANULE = 65536
DEF GRANULES = 32
DEF NUM_CLASSES = 36
DEF RUN_MAX = 16          # granules: runs serve requests up to 1 MiB
DEF SOURCE_KERNEL = 0
DEF SOURCE_FAKE = 1
DEF KIND_FREE = -1
DEF KIND_RUN_HEAD = -2
DEF KIND_RUN_BODY = -3
DEF DIR_BITS = 13
DEF DIR_SIZE = 8192
DEF BASE_PAGE = 4096
DEF MAX_POOLS = 1024

SMALL_MAX = GRANULE
MIDDLE_MAX = RUN_MAX * GRANULE
CHUNK_BYTES = CHUNK_SIZE

cdef struct FreeBlock:
    FreeBlock *next

cdef struct Chunk:
    char *base
    size_t length           # CHUNK_SIZE for pooled chunks; the mapping length for direct ones
    size_t request          # bytes asked for a direct mapping (0 for pooled chunks)
    void *pool              # the NodePool it belongs to
    int bump                # next never-used granule
    long live_bytes
    signed char kind[GRANULES]        # class index, or KIND_*
    unsigned char run_len[GRANULES]   # granules in the run starting here
    Chunk *next

cdef struct ClassState:
    FreeBlock *free
    char *cursor
    char *limit

cdef struct NodePool:
    pthread_mutex_t lock
    int node
    int mode                # MPOL_BIND or MPOL_PREFERRED
    int source              # SOURCE_KERNEL or SOURCE_FAKE
    long fake_chunk_limit   # fake source: chunks it will still hand out (-1: no limit)
    ClassState classes[NUM_CLASSES]
    FreeBlock *runs[RUN_MAX + 1]
    Chunk *chunks           # pooled chunks, newest first
    Chunk *direct           # direct mappings, newest first
    Chunk *current          # chunk whose unused granules are carved next
    size_t in_use
    size_t mapped
    size_t allocations
    int last_errno
    PyDataMem_Handler handler

cdef size_t CLASS_SIZE[NUM_CLASSES]
cdef unsigned char CLASS_OF[1025]   # (size + 63) // 64 -> class index, for sizes up to 64 KiB

cdef Chunk **DIRECTORY[DIR_SIZE]
cdef pthread_mutex_t DIRECTORY_LOCK
cdef NodePool *ALL_POOLS[MAX_POOLS]
cdef int POOL_COUNT = 0
cdef pthread_mutex_t POOLS_LOCK


cdef void _init_classes():
    cdef size_t size = 64, step
    cdef int index = 0, group
    # 64, 128, 192, 256, then four classes per doubling: 320, 384, 448, 512, 640, ...
    for index in range(4):
        CLASS_SIZE[index] = 64 * (index + 1)
    index = 4
    size = 256
    while index < NUM_CLASSES:
        step = size // 4
        for group in range(4):
            size += step
            CLASS_SIZE[index] = size
            index += 1
    cdef int units, cls = 0
    for units in range(1025):
        while CLASS_SIZE[cls] < <size_t>units * 64:
            cls += 1
        CLASS_OF[units] = cls


_init_classes()
pthread_mutex_init(&DIRECTORY_LOCK, NULL)
pthread_mutex_init(&POOLS_LOCK, NULL)


def class_sizes():
    """The size classes of small allocations, in bytes."""
    return [CLASS_SIZE[i] for i in range(NUM_CLASSES)]


# ---- fork safety ----------------------------------------------------------------------------
# Lock order everywhere: POOLS_LOCK, then a pool's lock, then DIRECTORY_LOCK.
cdef void _before_fork() noexcept nogil:
    cdef int i
    pthread_mutex_lock(&POOLS_LOCK)
    for i in range(POOL_COUNT):
        pthread_mutex_lock(&ALL_POOLS[i].lock)
    pthread_mutex_lock(&DIRECTORY_LOCK)


cdef void _after_fork() noexcept nogil:
    cdef int i
    pthread_mutex_unlock(&DIRECTORY_LOCK)
    for i in range(POOL_COUNT):
        pthread_mutex_unlock(&ALL_POOLS[i].lock)
    pthread_mutex_unlock(&POOLS_LOCK)


pthread_atfork(_before_fork, _after_fork, _after_fork)


# ---- directory: address -> chunk --------------------------------------------------------------
cdef inline Chunk *_lookup(void *ptr) noexcept nogil:
    cdef uintptr_t index = (<uintptr_t>ptr) >> CHUNK_SHIFT
    cdef Chunk **table = DIRECTORY[(index >> DIR_BITS) & (DIR_SIZE - 1)]
    if table == NULL or (index >> (2 * DIR_BITS)) != 0:
        return NULL
    return table[index & (DIR_SIZE - 1)]


cdef int _register(Chunk *chunk, bint add) noexcept nogil:
    # Every 2 MiB slot the chunk covers points at it, so interior pointers of direct mappings
    # resolve too. Tables are created on demand and never freed (64 KiB each).
    cdef uintptr_t first = (<uintptr_t>chunk.base) >> CHUNK_SHIFT
    cdef uintptr_t last = ((<uintptr_t>chunk.base) + chunk.length - 1) >> CHUNK_SHIFT
    cdef uintptr_t index
    cdef Chunk **table
    pthread_mutex_lock(&DIRECTORY_LOCK)
    index = first
    while index <= last:
        if (index >> (2 * DIR_BITS)) != 0:
            pthread_mutex_unlock(&DIRECTORY_LOCK)
            return -1
        table = DIRECTORY[index >> DIR_BITS]
        if table == NULL:
            if not add:
                index += 1
                continue
            table = <Chunk **>c_calloc(DIR_SIZE, sizeof(Chunk *))
            if table == NULL:
                pthread_mutex_unlock(&DIRECTORY_LOCK)
                return -1
            DIRECTORY[index >> DIR_BITS] = table
        table[index & (DIR_SIZE - 1)] = chunk if add else NULL
        index += 1
    pthread_mutex_unlock(&DIRECTORY_LOCK)
    return 0


# ---- chunk sources ---------------------------------------------------------------------------
cdef int _mask_words() noexcept nogil:
    cdef int possible = numa_max_possible_node() + 1
    if possible < 64:
        possible = 64
    return (possible + 63) // 64


cdef char *_kernel_map(NodePool *pool, size_t length) noexcept nogil:
    """Map ``length`` bytes (a multiple of 2 MiB) 2 MiB-aligned, placed and verified for the pool.

    Returns NULL with ``pool.last_errno`` set on failure (ENOMEM when the node lacks memory).
    """
    cdef size_t span = length + CHUNK_SIZE
    cdef char *raw = <char *>mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    cdef char *base
    cdef unsigned long mask[16]
    cdef int words = _mask_words()
    cdef size_t pages, i, count, step
    cdef void **addresses
    cdef int *status
    cdef long rc
    cdef bint misplaced = False
    if <void *>raw == MAP_FAILED:
        pool.last_errno = errno
        return NULL
    base = <char *>(((<uintptr_t>raw) + CHUNK_SIZE - 1) & ~(<uintptr_t>CHUNK_SIZE - 1))
    if base != raw:
        munmap(raw, base - raw)
    if raw + span > base + length:
        munmap(base + length, (raw + span) - (base + length))
    if words > 16:
        words = 16
    memset(mask, 0, sizeof(mask))
    mask[pool.node // 64] = (<unsigned long>1) << (pool.node % 64)
    # Populate under `preferred`, so a full node spills (then we refuse) instead of OOM-killing.
    if mbind(base, length, MPOL_PREFERRED, mask, words * 64 + 1, 0) != 0:
        pool.last_errno = errno
        munmap(base, length)
        return NULL
    if madvise(base, length, MADV_POPULATE_WRITE) != 0:
        if errno != 22:  # EINVAL: the kernel predates MADV_POPULATE_WRITE; touch instead
            pool.last_errno = errno
            munmap(base, length)
            return NULL
        i = 0
        while i < length:
            (<volatile char *>(base + i))[0] = 0
            i += BASE_PAGE
    if pool.mode == MPOL_BIND:
        # Verify every page of a chunk; for a large direct mapping, one page per 2 MiB and the
        # kernel's own strict walk below.
        pages = length // BASE_PAGE
        step = BASE_PAGE if pages <= 512 else CHUNK_SIZE
        count = (length + step - 1) // step
        addresses = <void **>c_calloc(count, sizeof(void *))
        status = <int *>c_calloc(count, sizeof(int))
        if addresses == NULL or status == NULL:
            c_free(addresses)
            c_free(status)
            pool.last_errno = 12
            munmap(base, length)
            return NULL
        for i in range(count):
            addresses[i] = base + i * step
        rc = move_pages(0, count, addresses, NULL, status, 0)
        if rc != 0:
            misplaced = True
        else:
            for i in range(count):
                if status[i] != pool.node:
                    misplaced = True
                    break
        c_free(addresses)
        c_free(status)
        if misplaced or mbind(base, length, MPOL_BIND, mask, words * 64 + 1, MPOL_MF_STRICT) != 0:
            pool.last_errno = 12  # ENOMEM: the node could not hold it
            munmap(base, length)
            return NULL
    return base


cdef char *_source_map(NodePool *pool, size_t length) noexcept nogil:
    cdef void *memory = NULL
    if pool.source == SOURCE_FAKE:
        if pool.fake_chunk_limit == 0:
            pool.last_errno = 12
            return NULL
        if posix_memalign(&memory, CHUNK_SIZE, length) != 0:
            pool.last_errno = 12
            return NULL
        if pool.fake_chunk_limit > 0:
            pool.fake_chunk_limit -= 1
        # Fresh chunks are zero, as anonymous mappings are.
        memset(memory, 0, length)
        return <char *>memory
    return _kernel_map(pool, length)


cdef void _source_unmap(NodePool *pool, char *base, size_t length) noexcept nogil:
    if pool.source == SOURCE_FAKE:
        c_free(base)
    else:
        munmap(base, length)


cdef Chunk *_new_chunk(NodePool *pool, size_t length, size_t request) noexcept nogil:
    cdef Chunk *chunk = <Chunk *>c_calloc(1, sizeof(Chunk))
    cdef int i
    if chunk == NULL:
        pool.last_errno = 12
        return NULL
    chunk.base = _source_map(pool, length)
    if chunk.base == NULL:
        c_free(chunk)
        return NULL
    chunk.length = length
    chunk.request = request
    chunk.pool = pool
    for i in range(GRANULES):
        chunk.kind[i] = KIND_FREE
    if _register(chunk, True) != 0:
        _source_unmap(pool, chunk.base, length)
        c_free(chunk)
        pool.last_errno = 12
        return NULL
    pool.mapped += length
    return chunk


# ---- allocation ------------------------------------------------------------------------------
cdef char *_take_granules(NodePool *pool, int count, signed char kind) noexcept nogil:
    """``count`` contiguous granules from the current chunk (or a new one); caller holds the lock."""
    cdef Chunk *chunk = pool.current
    cdef int first, i
    if chunk == NULL or chunk.bump + count > GRANULES:
        chunk = _new_chunk(pool, CHUNK_SIZE, 0)
        if chunk == NULL:
            return NULL
        chunk.next = pool.chunks
        pool.chunks = chunk
        pool.current = chunk
    first = chunk.bump
    chunk.bump += count
    chunk.kind[first] = kind
    chunk.run_len[first] = count
    for i in range(first + 1, first + count):
        chunk.kind[i] = KIND_RUN_BODY if kind == KIND_RUN_HEAD else kind
        chunk.run_len[i] = 0
    return chunk.base + (<size_t>first << GRANULE_SHIFT)


cdef void *_pool_alloc(NodePool *pool, size_t size) noexcept nogil:
    cdef int cls, granules
    cdef ClassState *state
    cdef FreeBlock *block
    cdef char *memory
    cdef Chunk *chunk
    cdef size_t length
    if size == 0:
        size = 1
    if size <= GRANULE:
        cls = CLASS_OF[(size + 63) >> 6]
        state = &pool.classes[cls]
        pthread_mutex_lock(&pool.lock)
        block = state.free
        if block != NULL:
            state.free = block.next
            memory = <char *>block
        else:
            if state.cursor == NULL or state.cursor + CLASS_SIZE[cls] > state.limit:
                state.cursor = _take_granules(pool, 1, cls)
                if state.cursor == NULL:
                    pthread_mutex_unlock(&pool.lock)
                    return NULL
                state.limit = state.cursor + GRANULE
            memory = state.cursor
            state.cursor += CLASS_SIZE[cls]
        _lookup(memory).live_bytes += CLASS_SIZE[cls]
        pool.in_use += CLASS_SIZE[cls]
        pool.allocations += 1
        pthread_mutex_unlock(&pool.lock)
        return memory
    if size <= RUN_MAX * GRANULE:
        granules = <int>((size + GRANULE - 1) >> GRANULE_SHIFT)
        pthread_mutex_lock(&pool.lock)
        block = pool.runs[granules]
        if block != NULL:
            pool.runs[granules] = block.next
            memory = <char *>block
        else:
            memory = _take_granules(pool, granules, KIND_RUN_HEAD)
            if memory == NULL:
                pthread_mutex_unlock(&pool.lock)
                return NULL
        _lookup(memory).live_bytes += <size_t>granules << GRANULE_SHIFT
        pool.in_use += <size_t>granules << GRANULE_SHIFT
        pool.allocations += 1
        pthread_mutex_unlock(&pool.lock)
        return memory
    # A direct mapping of its own, rounded to whole chunks so the directory can find it.
    length = (size + CHUNK_SIZE - 1) & ~(<size_t>CHUNK_SIZE - 1)
    if length < size:
        pool.last_errno = 12
        return NULL
    pthread_mutex_lock(&pool.lock)
    chunk = _new_chunk(pool, length, size)
    if chunk == NULL:
        pthread_mutex_unlock(&pool.lock)
        return NULL
    chunk.live_bytes = length
    chunk.next = pool.direct
    pool.direct = chunk
    pool.in_use += length
    pool.allocations += 1
    pthread_mutex_unlock(&pool.lock)
    return chunk.base


cdef size_t _usable_size(Chunk *chunk, void *ptr) noexcept nogil:
    cdef int granule
    cdef signed char kind
    if chunk.request:
        return chunk.length
    granule = <int>(((<char *>ptr) - chunk.base) >> GRANULE_SHIFT)
    kind = chunk.kind[granule]
    if kind >= 0:
        return CLASS_SIZE[kind]
    if kind == KIND_RUN_HEAD:
        return (<size_t>chunk.run_len[granule]) << GRANULE_SHIFT
    return 0


cdef void _unlink_direct(NodePool *pool, Chunk *chunk) noexcept nogil:
    cdef Chunk **link = &pool.direct
    while link[0] != NULL and link[0] != chunk:
        link = &link[0].next
    if link[0] == chunk:
        link[0] = chunk.next


cdef int _pool_free(void *ptr) noexcept nogil:
    """Return ``ptr`` to the pool it came from; -1 if numamem does not know the pointer."""
    cdef Chunk *chunk
    cdef NodePool *pool
    cdef int granule
    cdef signed char kind
    cdef FreeBlock *block
    if ptr == NULL:
        return 0
    chunk = _lookup(ptr)
    if chunk == NULL:
        return -1
    pool = <NodePool *>chunk.pool
    pthread_mutex_lock(&pool.lock)
    if chunk.request:
        _unlink_direct(pool, chunk)
        pool.in_use -= chunk.length
        pool.mapped -= chunk.length
        pool.allocations -= 1
        pthread_mutex_unlock(&pool.lock)
        _register(chunk, False)
        _source_unmap(pool, chunk.base, chunk.length)
        c_free(chunk)
        return 0
    granule = <int>(((<char *>ptr) - chunk.base) >> GRANULE_SHIFT)
    kind = chunk.kind[granule]
    block = <FreeBlock *>ptr
    if kind >= 0:
        block.next = pool.classes[kind].free
        pool.classes[kind].free = block
        chunk.live_bytes -= CLASS_SIZE[kind]
        pool.in_use -= CLASS_SIZE[kind]
    elif kind == KIND_RUN_HEAD and (<char *>ptr) == chunk.base + (<size_t>granule << GRANULE_SHIFT):
        block.next = pool.runs[chunk.run_len[granule]]
        pool.runs[chunk.run_len[granule]] = block
        chunk.live_bytes -= (<size_t>chunk.run_len[granule]) << GRANULE_SHIFT
        pool.in_use -= (<size_t>chunk.run_len[granule]) << GRANULE_SHIFT
    else:
        pthread_mutex_unlock(&pool.lock)
        return -1
    pool.allocations -= 1
    pthread_mutex_unlock(&pool.lock)
    return 0


cdef void *_pool_realloc(NodePool *pool, void *ptr, size_t new_size) noexcept nogil:
    cdef Chunk *chunk
    cdef size_t old_size
    cdef void *fresh
    if ptr == NULL:
        return _pool_alloc(pool, new_size)
    chunk = _lookup(ptr)
    if chunk == NULL:
        return NULL
    old_size = _usable_size(chunk, ptr)
    if new_size != 0 and new_size <= old_size and (chunk.request == 0 or new_size > old_size // 2):
        # Still fits its block (and would not waste most of a direct mapping): keep it.
        return ptr
    # The new block comes from the pool the old one belongs to: realloc keeps the node.
    fresh = _pool_alloc(<NodePool *>chunk.pool, new_size)
    if fresh == NULL:
        return NULL
    memcpy(fresh, ptr, old_size if old_size < new_size else new_size)
    _pool_free(ptr)
    return fresh


cdef size_t _release(NodePool *pool) noexcept nogil:
    """Unmap pooled chunks with nothing live in them; return the bytes given back."""
    cdef Chunk **link
    cdef Chunk *chunk
    cdef Chunk *dead = NULL
    cdef FreeBlock **free_link
    cdef size_t released = 0
    cdef int cls, length
    pthread_mutex_lock(&pool.lock)
    link = &pool.chunks
    while link[0] != NULL:
        chunk = link[0]
        if chunk.live_bytes == 0:
            link[0] = chunk.next
            chunk.next = dead
            dead = chunk
            _register(chunk, False)
        else:
            link = &chunk.next
    if dead != NULL:
        # Drop free-list entries that point into the dead chunks (their directory slots are
        # cleared, so a lookup finds no chunk), and cursors carving from them.
        for cls in range(NUM_CLASSES):
            free_link = &pool.classes[cls].free
            while free_link[0] != NULL:
                if _lookup(free_link[0]) == NULL:
                    free_link[0] = free_link[0].next
                else:
                    free_link = &free_link[0].next
            if pool.classes[cls].cursor != NULL and _lookup(pool.classes[cls].cursor) == NULL:
                pool.classes[cls].cursor = NULL
                pool.classes[cls].limit = NULL
        for length in range(RUN_MAX + 1):
            free_link = &pool.runs[length]
            while free_link[0] != NULL:
                if _lookup(free_link[0]) == NULL:
                    free_link[0] = free_link[0].next
                else:
                    free_link = &free_link[0].next
        if pool.current != NULL and _lookup(pool.current.base) == NULL:
            pool.current = NULL
    while dead != NULL:
        chunk = dead
        dead = chunk.next
        pool.mapped -= chunk.length
        released += chunk.length
        _source_unmap(pool, chunk.base, chunk.length)
        c_free(chunk)
    pthread_mutex_unlock(&pool.lock)
    return released


# ---- NEP 49 handler functions ---------------------------------------------------------------
cdef void *_handler_malloc(void *ctx, size_t size) noexcept nogil:
    return _pool_alloc(<NodePool *>ctx, size)


cdef void *_handler_calloc(void *ctx, size_t nelem, size_t elsize) noexcept nogil:
    cdef size_t size
    cdef void *memory
    if elsize != 0 and nelem > (<size_t>-1) // elsize:
        return NULL
    size = nelem * elsize
    memory = _pool_alloc(<NodePool *>ctx, size)
    if memory != NULL:
        # Pool blocks may be recycled: zero them. Direct mappings are fresh, hence zero already.
        if size <= RUN_MAX * GRANULE:
            memset(memory, 0, size)
    return memory


cdef void *_handler_realloc(void *ctx, void *ptr, size_t new_size) noexcept nogil:
    return _pool_realloc(<NodePool *>ctx, ptr, new_size)


cdef void _handler_free(void *ctx, void *ptr, size_t size) noexcept nogil:
    _pool_free(ptr)


# ---- Python layer ------------------------------------------------------------------------------
cdef dict _POOLS = {}


cdef class Pool:
    """A node's memory pool for one policy.

    Parameters
    ----------
    node : int
        The node every page of the pool is on.
    policy : {"bind", "preferred"}
    source : {"kernel", "fake"}
        Where chunks come from: node-bound kernel mappings, or aligned ``malloc`` memory that
        stands in for them in tests of the pool logic.
    fake_chunk_limit : int
        With ``source="fake"``: how many chunks the source hands out before failing (-1: no limit).

    Notes
    -----
    Pools made with ``source="kernel"`` are shared per (node, policy) through :func:`get_pool` and
    live as long as the process (NumPy arrays may point into them at exit).
    """
    cdef NodePool *_pool
    cdef readonly int node
    cdef readonly str policy
    cdef readonly str source
    cdef object _capsule
    cdef bint _owned

    def __cinit__(self, int node, str policy="bind", str source="kernel", long fake_chunk_limit=-1):
        global POOL_COUNT
        if policy not in ("bind", "preferred"):
            raise ValueError(f"pool policy must be 'bind' or 'preferred', not {policy!r}")
        if source not in ("kernel", "fake"):
            raise ValueError(f"source must be 'kernel' or 'fake', not {source!r}")
        if node < 0 or node >= 64 * 16:
            raise ValueError(f"node {node} is outside the range pools support")
        self._pool = <NodePool *>c_calloc(1, sizeof(NodePool))
        if self._pool == NULL:
            raise MemoryError("cannot allocate a pool")
        pthread_mutex_init(&self._pool.lock, NULL)
        self._pool.node = node
        self._pool.mode = MPOL_BIND if policy == "bind" else MPOL_PREFERRED
        self._pool.source = SOURCE_KERNEL if source == "kernel" else SOURCE_FAKE
        self._pool.fake_chunk_limit = fake_chunk_limit
        self.node = node
        self.policy = policy
        self.source = source
        name = f"numamem_node{node}_{policy}{'_fake' if source == 'fake' else ''}".encode()
        strncpy(self._pool.handler.name, name, 126)
        self._pool.handler.version = 1
        self._pool.handler.allocator.ctx = self._pool
        self._pool.handler.allocator.malloc = _handler_malloc
        self._pool.handler.allocator.calloc = _handler_calloc
        self._pool.handler.allocator.realloc = _handler_realloc
        self._pool.handler.allocator.free = _handler_free
        self._capsule = PyCapsule_New(&self._pool.handler, "mem_handler", NULL)
        pthread_mutex_lock(&POOLS_LOCK)
        if POOL_COUNT >= MAX_POOLS:
            pthread_mutex_unlock(&POOLS_LOCK)
            raise MemoryError(f"at most {MAX_POOLS} pools per process")
        ALL_POOLS[POOL_COUNT] = self._pool
        POOL_COUNT += 1
        pthread_mutex_unlock(&POOLS_LOCK)
        # The C pool is never freed: arrays made through the NEP 49 handler may outlive this
        # object, and NumPy calls the handler's free with this pool as context.

    def malloc(self, size_t size):
        """Allocate ``size`` bytes; return the address (an int).

        Raises ``MemoryError`` (with the node) if the chunk source cannot supply memory.
        """
        cdef void *memory
        with nogil:
            memory = _pool_alloc(self._pool, size)
        if memory == NULL:
            self._raise_exhausted(size)
        return <uintptr_t>memory

    def calloc(self, size_t nelem, size_t elsize):
        """Allocate ``nelem * elsize`` zeroed bytes; return the address."""
        cdef void *memory
        with nogil:
            memory = _handler_calloc(self._pool, nelem, elsize)
        if memory == NULL:
            self._raise_exhausted(nelem * elsize)
        return <uintptr_t>memory

    def realloc(self, uintptr_t address, size_t new_size):
        """Resize the block at ``address`` (0 for a new one), keeping its node and content."""
        cdef void *memory
        with nogil:
            memory = _pool_realloc(self._pool, <void *>address, new_size)
        if memory == NULL:
            self._raise_exhausted(new_size)
        return <uintptr_t>memory

    def free(self, uintptr_t address):
        """Return the block at ``address`` to the pool it came from (any pool, any thread)."""
        cdef int rc
        with nogil:
            rc = _pool_free(<void *>address)
        if rc != 0:
            raise ValueError(f"address {address:#x} was not allocated by a numamem pool")

    def usable_size(self, uintptr_t address):
        """Bytes usable at ``address`` (the block's size class, run or mapping size)."""
        cdef Chunk *chunk = _lookup(<void *>address)
        if chunk == NULL:
            raise ValueError(f"address {address:#x} was not allocated by a numamem pool")
        return _usable_size(chunk, <void *>address)

    def release(self):
        """Give chunks with nothing live in them back to the kernel; return the bytes released."""
        cdef size_t released
        with nogil:
            released = _release(self._pool)
        return released

    def stats(self):
        """Return ``{"in_use", "mapped", "cached", "allocations", "chunks", "direct"}`` (bytes, counts)."""
        cdef Chunk *chunk
        cdef int chunks = 0, direct = 0
        pthread_mutex_lock(&self._pool.lock)
        chunk = self._pool.chunks
        while chunk != NULL:
            chunks += 1
            chunk = chunk.next
        chunk = self._pool.direct
        while chunk != NULL:
            direct += 1
            chunk = chunk.next
        result = {
            "in_use": self._pool.in_use,
            "mapped": self._pool.mapped,
            "cached": self._pool.mapped - self._pool.in_use,
            "allocations": self._pool.allocations,
            "chunks": chunks,
            "direct": direct,
        }
        pthread_mutex_unlock(&self._pool.lock)
        return result

    @property
    def handler(self):
        """The NEP 49 ``mem_handler`` capsule that allocates from this pool."""
        return self._capsule

    def allocation(self, size_t size, bint zero=False):
        """Allocate an owner object (:class:`PoolAllocation`) of ``size`` bytes."""
        return PoolAllocation._create(self, size, zero)

    cdef _raise_exhausted(self, size_t size):
        from numamem.errors import NodeMemoryError
        err = self._pool.last_errno
        raise NodeMemoryError(self.node, size, None,
                              f"the {self.policy} pool could not map a new chunk (errno {err})")

    def __repr__(self):
        s = self.stats()
        return (f"<numamem Pool node={self.node} policy={self.policy} source={self.source} "
                f"in_use={s['in_use']} mapped={s['mapped']}>")


def get_pool(int node, str policy="bind"):
    """Return the process-wide kernel pool of ``node`` for ``policy`` (created on first use)."""
    key = (node, policy)
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS.setdefault(key, Pool(node, policy))
    return pool


def pools():
    """All process-wide kernel pools made so far, as ``{(node, policy): Pool}``."""
    return dict(_POOLS)


cdef class PoolAllocation(BufferOwner):
    """The owner of a block carved from a :class:`Pool` (the root of an array's ``.base`` chain).

    Exports its bytes through the buffer protocol like :class:`numamem.Region`; returns the block to
    its pool exactly once, when the last export and reference are gone (or at ``close()``).
    """
    cdef readonly Pool pool

    @staticmethod
    cdef PoolAllocation _create(Pool pool, size_t size, bint zero):
        cdef PoolAllocation self = PoolAllocation.__new__(PoolAllocation)
        cdef void *memory
        with nogil:
            memory = _pool_alloc(pool._pool, size)
        if memory == NULL:
            pool._raise_exhausted(size)
        if zero:
            memset(memory, 0, size)
        self._set_memory(<char *>memory, size)
        self.pool = pool
        return self

    def __dealloc__(self):
        if not self._closed and self._address != NULL:
            _pool_free(self._address)
        self._closed = True
        self._address = NULL

    def close(self):
        """Return the block to its pool now; ``BufferError`` while arrays or views use it."""
        if self._closed:
            return
        self._check_no_exports()
        _pool_free(self._address)
        self._closed = True
        self._address = NULL

    @property
    def page_size(self):
        """The base page size (pool chunks are made of base pages, or THP where the kernel folds them)."""
        return BASE_PAGE

    def __repr__(self):
        return f"<numamem.PoolAllocation {self._size} bytes node={self.pool.node} {self.pool.policy}>"




def set_handler(handler):
    """Install ``handler`` (a ``mem_handler`` capsule) for the current context; return the previous one."""
    return PyDataMem_SetHandler(handler)


def get_handler():
    """The ``mem_handler`` capsule NumPy uses in the current context."""
    return PyDataMem_GetHandler()
