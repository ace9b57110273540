# cython: boundscheck=False, wraparound=False, cdivision=True
"""The C allocator behind numamem's per-node pools.

Layout (every page of a chunk belongs to one node and one policy: invariant 2):

* A **chunk** is 2 MiB, 2 MiB-aligned, mapped by a **chunk source** (:c:type:`ChunkSource`, a
  struct of function pointers as NumPy's own allocator struct is). The kernel source maps it and
  places it with the one placement routine (``numamem._place.place_on_node``); the fake source
  runs the same routine over heap memory and faked system calls, with limits and injected
  failures, so that every failure branch is tested on a one-node machine.
* A chunk is cut into 32 **granules** of 64 KiB, tracked by a 32-bit free mask. A granule serves one
  **size class** (a *slab*: 64 B to 64 KiB, four classes per doubling, all multiples of 64 so
  blocks stay 64-byte aligned), or a **run** of 1-16 contiguous granules serves a middle-sized
  request (64 KiB to 1 MiB). A freed run, and a slab whose last block is freed, give their
  granules back to the mask, where they coalesce with free neighbours and serve any later run or
  slab: memory follows the live bytes, whatever the mix of sizes.
* Larger requests get a **direct mapping** of their own, registered like a chunk. A freed one is
  **cached** for reuse or unmapped: the cache and its rules (fit, cap, decay, never alongside
  growth) are :mod:`numamem._largecache`.
* A chunk with nothing live is **idle**; a pool keeps ``IDLE_CHUNKS_KEPT`` of them (so a loop
  allocating and freeing does not map and unmap each time) and unmaps the rest at once. Idle chunks
  stay on the pool's one chunk list (counted, not moved: a block cycling alone in a chunk makes it
  idle at every free). When a chunk cannot be mapped, the pool unmaps its idle chunks and tries once more (as
  cupy's ``_try_malloc`` does).
* A process-wide directory (``numamem._registry``) maps ``address >> 21`` to the chunk record, so
  ``free`` and ``realloc`` find size and pool from the pointer alone.

Locks: one mutex per pool, held only around list, mask and slab updates and the chunk source's
system calls, never while taking the GIL, so allocation from NumPy (GIL held) cannot deadlock with
another thread. The registry's ``pthread_atfork`` handlers take every pool lock before ``fork()``
and release them in both processes, so a child finds consistent pools.
"""
from libc.errno cimport ENOMEM
from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc as c_calloc, free as c_free
from libc.string cimport memcpy, memset
from posix.unistd cimport _SC_PAGESIZE, sysconf

from numamem._chunksource cimport fake_source_init, kernel_source
from numamem._arenatypes cimport chunk_of, chunk_push, chunk_register, chunk_unlink
from numamem._bitmaps cimport ALL_GRANULES, find_run, longest_run, slab_is_freed, slab_mark_freed
from numamem._largecache cimport (
    LARGE_CACHE_DECAY_MS, LARGE_CACHE_MAX, cache_detach_all, cache_expired, cache_put, cache_take,
    unmap_detached,
)
from numamem._registry cimport (
    directory_lock, directory_unlock, pthread_mutex_t, registry_add, registry_remove,
)
from numamem._place cimport POPULATED_TOUCH, STEP_MAP, PlaceResult

cdef extern from "<pthread.h>" nogil:
    int pthread_mutex_init(pthread_mutex_t *mutex, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)

cdef size_t BASE_PAGE = <size_t>sysconf(_SC_PAGESIZE)   # direct mappings are rounded to pages
cdef size_t CLASS_SIZE[NUM_CLASSES]
cdef unsigned char CLASS_OF[1025]   # (size + 63) // 64 -> class index, for sizes up to 64 KiB


cdef void _init_classes() noexcept:
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


cdef size_t class_size(int cls) noexcept nogil:
    return CLASS_SIZE[cls]


def class_sizes():
    """The size classes of small allocations, in bytes."""
    return [CLASS_SIZE[i] for i in range(NUM_CLASSES)]


cdef void arena_lock(NodePool *pool) noexcept nogil:
    pthread_mutex_lock(&pool.lock)


cdef void arena_unlock(NodePool *pool) noexcept nogil:
    pthread_mutex_unlock(&pool.lock)


# ---- directory: address -> pool --------------------------------------------------------------
cdef NodePool *arena_pool_of(void *ptr) noexcept nogil:
    """The pool whose chunk or direct mapping holds ``ptr``, or NULL for other memory.

    Any address may be asked about (``numamem.owner``): the record is read under the directory's
    lock, and an address in the last 2 MiB slot of a direct mapping but past its end is not the pool's.
    """
    cdef Chunk *chunk
    cdef NodePool *pool = NULL
    directory_lock()
    chunk = chunk_of(ptr)
    if chunk != NULL and chunk.base <= <char *>ptr < chunk.base + chunk.length:
        pool = <NodePool *>chunk.pool
    directory_unlock()
    return pool


# ---- pools -----------------------------------------------------------------------------------
cdef NodePool *arena_create(int node, int mode, FakeSourceState *fake) noexcept nogil:
    """A new pool for ``node`` (``fake``: the fake source's settings, else the kernel source).

    Returns NULL when ``MAX_POOLS`` pools exist or memory is short.
    """
    cdef NodePool *pool = <NodePool *>c_calloc(1, sizeof(NodePool))
    if pool == NULL:
        return NULL
    pthread_mutex_init(&pool.lock, NULL)
    pool.node = node
    pool.mode = mode
    pool.cache_max = LARGE_CACHE_MAX
    pool.cache_decay_ns = <long long>LARGE_CACHE_DECAY_MS * 1000000
    if fake != NULL:
        pool.fake = fake[0]
        fake_source_init(&pool.source, &pool.fake, node)
    else:
        kernel_source(&pool.source)
    if registry_add(&pool.lock) != 0:
        pthread_mutex_destroy(&pool.lock)
        c_free(pool)
        return NULL
    return pool


cdef void _free_chunk_list(NodePool *pool, Chunk *chunk) noexcept nogil:
    cdef Chunk *next
    while chunk != NULL:
        next = chunk.next
        chunk_register(chunk, False)
        pool.source.unmap(pool.source.ctx, chunk.base, chunk.length)
        c_free(chunk)
        chunk = next


cdef void arena_destroy(NodePool *pool) noexcept nogil:
    """Unregister ``pool`` and unmap all its memory (nothing may use it any more)."""
    registry_remove(&pool.lock)
    _free_chunk_list(pool, pool.chunks)
    _free_chunk_list(pool, pool.direct)
    _free_chunk_list(pool, pool.cached)
    pthread_mutex_destroy(&pool.lock)
    c_free(pool)


# ---- chunks ----------------------------------------------------------------------------------
cdef Chunk *_new_chunk(NodePool *pool, size_t length, size_t request, PlaceResult *why) noexcept nogil:
    """Map a chunk (or a direct mapping) from the pool's source; caller holds the lock."""
    cdef PlaceResult scratch
    cdef PlaceResult *out = why if why != NULL else &scratch
    cdef Chunk *chunk = <Chunk *>c_calloc(1, sizeof(Chunk))
    cdef int i
    if chunk == NULL:
        memset(out, 0, sizeof(PlaceResult))
        out.step = STEP_MAP
        out.err = ENOMEM
        return NULL
    if pool.cached != NULL:
        # Mapped memory grows only when nothing is cached (numamem._largecache).
        unmap_detached(pool, cache_detach_all(pool))
    pool.maps += 1
    chunk.base = pool.source.map(pool.source.ctx, length, pool.node, pool.mode, out)
    if chunk.base == NULL:
        c_free(chunk)
        return NULL
    if out.populated_by == POPULATED_TOUCH:
        pool.touched += 1
    chunk.length = length
    chunk.request = request
    chunk.pool = pool
    chunk.free_mask = ALL_GRANULES
    chunk.largest_free = GRANULES
    for i in range(GRANULES):
        chunk.kind[i] = KIND_FREE
        chunk.slab[i].index = i
        chunk.slab[i].chunk = chunk
    if chunk_register(chunk, True) != 0:
        pool.source.unmap(pool.source.ctx, chunk.base, length)
        c_free(chunk)
        memset(out, 0, sizeof(PlaceResult))
        out.step = STEP_MAP
        out.err = ENOMEM
        return NULL
    pool.mapped += length
    if pool.mapped > pool.peak_mapped:
        pool.peak_mapped = pool.mapped
    return chunk


cdef Chunk *_map_with_retry(NodePool *pool, size_t length, size_t request, PlaceResult *why) noexcept nogil:
    # When the source fails, the node may be short of memory this pool holds idle: give it back
    # and try once more.
    cdef Chunk *chunk = _new_chunk(pool, length, request, why)
    if chunk == NULL and pool.idle_count > 0:
        _release_idle(pool, 0)
        chunk = _new_chunk(pool, length, request, why)
    return chunk


cdef void _evict(NodePool *pool, Chunk *chunk) noexcept nogil:
    """Unmap an idle chunk (nothing live in it); caller holds the lock."""
    cdef int g
    cdef signed char kind
    for g in range(GRANULES):
        kind = chunk.kind[g]
        # Only the slab a class is carving from can be left in a chunk with nothing live.
        if kind >= 0 and pool.classes[kind].current == &chunk.slab[g]:
            pool.classes[kind].current = NULL
    chunk_unlink(&pool.chunks, chunk)
    pool.idle_count -= 1
    pool.chunk_count -= 1
    chunk_register(chunk, False)
    pool.mapped -= chunk.length
    pool.source.unmap(pool.source.ctx, chunk.base, chunk.length)
    c_free(chunk)


cdef size_t _release_idle(NodePool *pool, int keep) noexcept nogil:
    """Unmap idle chunks beyond the ``keep`` nearest the head of the list (the newest); return the bytes."""
    cdef Chunk *chunk = pool.chunks
    cdef Chunk *next
    cdef int seen = 0
    cdef size_t released = 0
    while chunk != NULL and pool.idle_count > keep:
        next = chunk.next
        if chunk.live_bytes == 0:
            seen += 1
            if seen > keep:
                released += chunk.length
                _evict(pool, chunk)
        chunk = next
    return released


cdef inline void _add_live(NodePool *pool, Chunk *chunk, size_t nbytes) noexcept nogil:
    if chunk.live_bytes == 0:
        pool.idle_count -= 1
    chunk.live_bytes += nbytes
    pool.in_use += nbytes
    pool.allocations += 1


cdef inline void _sub_live(NodePool *pool, Chunk *chunk, size_t nbytes) noexcept nogil:
    chunk.live_bytes -= nbytes
    pool.in_use -= nbytes
    pool.allocations -= 1
    if chunk.live_bytes == 0:
        pool.idle_count += 1
        if pool.idle_count > IDLE_CHUNKS_KEPT:
            _release_idle(pool, IDLE_CHUNKS_KEPT)


# ---- granules --------------------------------------------------------------------------------
cdef char *_take_granules(NodePool *pool, int count, signed char kind, PlaceResult *why) noexcept nogil:
    """``count`` contiguous free granules, marked ``kind``; caller holds the lock.

    Best fit over the chunks in use (the one whose longest free run is shortest and still fits),
    so partly used chunks fill up and the others drain (an idle chunk, all free, comes last);
    then a new one.
    """
    cdef Chunk *chunk = pool.chunks
    cdef Chunk *best = NULL
    cdef int first
    if pool.cached != NULL:
        # Cached mappings left unused while the pool serves other sizes are given back (decay).
        unmap_detached(pool, cache_expired(pool))
    while chunk != NULL:
        if chunk.largest_free >= count and (best == NULL or chunk.largest_free < best.largest_free):
            best = chunk
            if chunk.largest_free == count:
                break
        chunk = chunk.next
    if best == NULL:
        best = _map_with_retry(pool, CHUNK_SIZE, 0, why)
        if best == NULL:
            return NULL
        pool.chunk_count += 1
        # Nothing is live in it yet: it is idle until the caller counts its first block.
        chunk_push(&pool.chunks, best)
        pool.idle_count += 1
    first = find_run(best.free_mask, count)
    if first < 0:
        # Unreachable (best.largest_free >= count), but it guards the writes below: without it a
        # broken mask would write kind[-1] into the chunk header (gcc's -Wstringop-overflow).
        return NULL
    best.free_mask &= ~(((<unsigned int>1 << count) - 1) << first)   # count <= RUN_MAX < 32
    best.kind[first] = kind
    best.run_len[first] = count
    if count > 1:
        memset(&best.kind[first + 1], KIND_RUN_BODY, count - 1)
    best.largest_free = longest_run(best.free_mask)
    pool.served += <size_t>count << GRANULE_SHIFT
    return best.base + (<size_t>first << GRANULE_SHIFT)


cdef void _give_granules(Chunk *chunk, int first, int count) noexcept nogil:
    memset(&chunk.kind[first], <unsigned char>KIND_FREE, count)
    chunk.run_len[first] = 0
    chunk.free_mask |= ((<unsigned int>1 << count) - 1) << first
    chunk.largest_free = longest_run(chunk.free_mask)


# ---- slabs -----------------------------------------------------------------------------------
cdef inline void _slab_unlist(ClassState *state, Slab *slab) noexcept nogil:
    if slab.prev != NULL:
        slab.prev.next = slab.next
    else:
        state.partial = slab.next
    if slab.next != NULL:
        slab.next.prev = slab.prev
    slab.prev = NULL
    slab.next = NULL
    slab.listed = 0


cdef inline void _slab_list(ClassState *state, Slab *slab) noexcept nogil:
    slab.prev = NULL
    slab.next = state.partial
    if state.partial != NULL:
        state.partial.prev = slab
    state.partial = slab
    slab.listed = 1


cdef inline char *_slab_base(Slab *slab) noexcept nogil:
    return (<Chunk *>slab.chunk).base + (<size_t>slab.index << GRANULE_SHIFT)


cdef void *_class_alloc(NodePool *pool, int cls, PlaceResult *why) noexcept nogil:
    """A block of class ``cls``; caller holds the lock."""
    cdef ClassState *state = &pool.classes[cls]
    cdef Slab *slab = state.current
    cdef size_t size = CLASS_SIZE[cls]
    cdef char *memory
    cdef FreeBlock *block
    if slab == NULL or (slab.free == NULL and slab.bump + size > GRANULE):
        # The current slab is full (it joins the partial list when a block of it is freed).
        slab = state.partial
        if slab != NULL:
            _slab_unlist(state, slab)
        else:
            memory = _take_granules(pool, 1, <signed char>cls, why)
            if memory == NULL:
                return NULL
            slab = &chunk_of(memory).slab[((<uintptr_t>memory) >> GRANULE_SHIFT) & (GRANULES - 1)]
            slab.free = NULL
            slab.bump = 0
            memset(slab.freed, 0, sizeof(slab.freed))
            slab.live = 0
            slab.listed = 0
        state.current = slab
    block = slab.free
    if block != NULL:
        slab.free = block.next
        memory = <char *>block
        slab_mark_freed(slab, memory, False)
    else:
        memory = _slab_base(slab) + slab.bump
        slab.bump += size
    slab.live += 1
    _add_live(pool, <Chunk *>slab.chunk, size)
    return memory


cdef int _class_free(NodePool *pool, Chunk *chunk, int granule, void *ptr) noexcept nogil:
    """Free a block of a size class; -1 (nothing changed) if it is already free."""
    cdef Slab *slab = &chunk.slab[granule]
    cdef signed char kind = chunk.kind[granule]
    cdef ClassState *state = &pool.classes[kind]
    cdef FreeBlock *block = <FreeBlock *>ptr
    if slab_is_freed(slab, ptr):
        return -1
    slab_mark_freed(slab, ptr, True)
    block.next = slab.free
    slab.free = block
    slab.live -= 1
    if slab != state.current:
        if slab.live == 0:
            # Empty and not being carved: its granule goes back to the chunk, for any size.
            if slab.listed:
                _slab_unlist(state, slab)
            _give_granules(chunk, granule, 1)
        elif not slab.listed:
            _slab_list(state, slab)
    _sub_live(pool, chunk, CLASS_SIZE[kind])
    return 0


# ---- allocation ------------------------------------------------------------------------------
cdef void *arena_alloc(NodePool *pool, size_t size, PlaceResult *why) noexcept nogil:
    """``size`` bytes from ``pool``, 64-byte aligned; NULL (with ``why`` filled if given) on failure."""
    cdef int granules
    cdef char *memory
    if size == 0:
        size = 1
    if size <= GRANULE:
        pthread_mutex_lock(&pool.lock)
        memory = <char *>_class_alloc(pool, CLASS_OF[(size + 63) >> 6], why)
        pthread_mutex_unlock(&pool.lock)
        return memory
    if size <= RUN_MAX * GRANULE:
        granules = <int>((size + GRANULE - 1) >> GRANULE_SHIFT)
        pthread_mutex_lock(&pool.lock)
        memory = _take_granules(pool, granules, KIND_RUN_HEAD, why)
        if memory != NULL:
            _add_live(pool, chunk_of(memory), <size_t>granules << GRANULE_SHIFT)
        pthread_mutex_unlock(&pool.lock)
        return memory
    return _direct_alloc(pool, size, why, False)


cdef void *arena_calloc(NodePool *pool, size_t size, PlaceResult *why) noexcept nogil:
    """``size`` zeroed bytes from ``pool``: recycled blocks are cleared, fresh mappings are zero."""
    cdef void *memory
    if size > RUN_MAX * GRANULE:
        return _direct_alloc(pool, size, why, True)
    memory = arena_alloc(pool, size, why)
    if memory != NULL:
        memset(memory, 0, size)
    return memory


cdef void *_direct_alloc(NodePool *pool, size_t size, PlaceResult *why, bint zero) noexcept nogil:
    cdef Chunk *chunk
    cdef Chunk *expired
    cdef size_t length
    # A direct mapping of its own, 2 MiB-aligned (so no chunk shares a directory slot with it)
    # and rounded to whole pages only: rounding to 2 MiB doubled a 1 MiB + 1 byte request.
    length = (size + BASE_PAGE - 1) & ~(BASE_PAGE - 1)
    if length < size:
        if why != NULL:
            memset(why, 0, sizeof(PlaceResult))
            why.step = STEP_MAP
            why.err = ENOMEM
        return NULL
    pthread_mutex_lock(&pool.lock)
    expired = NULL
    if pool.cached != NULL:
        expired = cache_expired(pool)
    chunk = cache_take(pool, length)
    if chunk == NULL:
        zero = False    # a fresh mapping is zero already (a reused one holds its last user's bytes)
        chunk = _map_with_retry(pool, length, size, why)
        if chunk == NULL:
            pthread_mutex_unlock(&pool.lock)
            unmap_detached(pool, expired)
            return NULL
        chunk.free_mask = 0
        chunk.largest_free = 0
    chunk.request = size
    chunk.live_bytes = chunk.length
    chunk_push(&pool.direct, chunk)
    pool.direct_count += 1
    pool.in_use += chunk.length
    pool.served += chunk.length
    pool.allocations += 1
    pthread_mutex_unlock(&pool.lock)
    unmap_detached(pool, expired)
    if zero:
        memset(chunk.base, 0, size)
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


cdef size_t arena_usable_size(void *ptr) noexcept nogil:
    """Bytes usable at ``ptr`` (0 if no pool knows it)."""
    cdef Chunk *chunk = chunk_of(ptr)
    return 0 if chunk == NULL else _usable_size(chunk, ptr)


cdef int _free_locked(NodePool *pool, Chunk *chunk, void *ptr) noexcept nogil:
    """Free a block known to be live; caller holds the lock, which this releases."""
    cdef int granule, granule_count
    cdef signed char kind
    cdef Chunk *detached
    if chunk.request:
        if chunk.live_bytes == 0:
            pthread_mutex_unlock(&pool.lock)
            return -1   # cached: freed already
        chunk_unlink(&pool.direct, chunk)
        pool.direct_count -= 1
        pool.in_use -= chunk.length
        pool.allocations -= 1
        # Cached for the next request it fits, or (larger than the cap) detached to be unmapped.
        detached = cache_put(pool, chunk)
        pthread_mutex_unlock(&pool.lock)
        unmap_detached(pool, detached)
        return 0
    granule = <int>(((<char *>ptr) - chunk.base) >> GRANULE_SHIFT)
    kind = chunk.kind[granule]
    if kind >= 0:
        if _class_free(pool, chunk, granule, ptr) != 0:
            pthread_mutex_unlock(&pool.lock)
            return -1
    elif kind == KIND_RUN_HEAD and (<char *>ptr) == chunk.base + (<size_t>granule << GRANULE_SHIFT):
        granule_count = chunk.run_len[granule]
        _give_granules(chunk, granule, granule_count)
        _sub_live(pool, chunk, (<size_t>granule_count) << GRANULE_SHIFT)
        if pool.cached != NULL:
            # Runs are freed often enough to find a cache past its decay (not the size classes:
            # their free path stays as short as can be).
            detached = cache_expired(pool)
            pthread_mutex_unlock(&pool.lock)
            unmap_detached(pool, detached)
            return 0
    else:
        pthread_mutex_unlock(&pool.lock)
        return -1
    pthread_mutex_unlock(&pool.lock)
    return 0


cdef int arena_free(void *ptr) noexcept nogil:
    """Return ``ptr`` to the pool it came from (NumPy's free: trusted); -1 if no pool knows it."""
    cdef Chunk *chunk
    cdef NodePool *pool
    if ptr == NULL:
        return 0
    chunk = chunk_of(ptr)
    if chunk == NULL:
        return -1
    pool = <NodePool *>chunk.pool
    pthread_mutex_lock(&pool.lock)
    return _free_locked(pool, chunk, ptr)


cdef int _check_locked(NodePool *pool, Chunk *chunk, void *ptr) noexcept nogil:
    cdef int granule
    cdef signed char kind
    cdef size_t offset
    cdef Slab *slab
    if <NodePool *>chunk.pool != pool:
        return CHECK_OTHER_POOL
    if chunk.request:
        if (<char *>ptr) != chunk.base:
            return CHECK_INTERIOR
        return CHECK_OK if chunk.live_bytes else CHECK_NOT_LIVE   # 0: a cached mapping
    granule = <int>(((<char *>ptr) - chunk.base) >> GRANULE_SHIFT)
    kind = chunk.kind[granule]
    offset = <size_t>((<char *>ptr) - chunk.base) & (GRANULE - 1)
    if kind == KIND_FREE:
        return CHECK_NOT_LIVE
    if kind == KIND_RUN_BODY:
        return CHECK_INTERIOR
    if kind == KIND_RUN_HEAD:
        return CHECK_OK if offset == 0 else CHECK_INTERIOR
    if offset % CLASS_SIZE[kind] != 0:
        return CHECK_INTERIOR
    slab = &chunk.slab[granule]
    if offset >= slab.bump or slab_is_freed(slab, ptr):
        return CHECK_NOT_LIVE
    return CHECK_OK


cdef int arena_check(NodePool *pool, void *ptr) noexcept nogil:
    """Whether ``ptr`` is the start of a live block of ``pool`` (CHECK_OK) or why not."""
    cdef Chunk *chunk = chunk_of(ptr)
    cdef int answer
    if chunk == NULL:
        return CHECK_FOREIGN
    pthread_mutex_lock(&pool.lock)
    answer = _check_locked(pool, chunk, ptr)
    pthread_mutex_unlock(&pool.lock)
    return answer


cdef int arena_free_checked(NodePool *pool, void *ptr) noexcept nogil:
    """Free ``ptr`` only if it is the start of a live block of ``pool``; else return why not."""
    cdef Chunk *chunk = chunk_of(ptr)
    cdef int answer
    if chunk == NULL:
        return CHECK_FOREIGN
    pthread_mutex_lock(&pool.lock)
    answer = _check_locked(pool, chunk, ptr)
    if answer != CHECK_OK:
        pthread_mutex_unlock(&pool.lock)
        return answer
    _free_locked(pool, chunk, ptr)
    return CHECK_OK


cdef void *arena_realloc(NodePool *pool, void *ptr, size_t new_size, PlaceResult *why) noexcept nogil:
    cdef Chunk *chunk
    cdef size_t old_size
    cdef void *fresh
    if ptr == NULL:
        return arena_alloc(pool, new_size, why)
    chunk = chunk_of(ptr)
    if chunk == NULL:
        return NULL
    old_size = _usable_size(chunk, ptr)
    if new_size != 0 and new_size <= old_size and (chunk.request == 0 or new_size > old_size // 2):
        # Still fits its block (and would not waste most of a direct mapping): keep it.
        return ptr
    # The new block comes from the pool the old one belongs to: realloc keeps the node.
    fresh = arena_alloc(<NodePool *>chunk.pool, new_size, why)
    if fresh == NULL:
        return NULL
    memcpy(fresh, ptr, old_size if old_size < new_size else new_size)
    arena_free(ptr)
    return fresh


cdef size_t arena_release(NodePool *pool) noexcept nogil:
    """Unmap every chunk with nothing live in it and every cached mapping; return the bytes given back."""
    cdef size_t released
    cdef Chunk *detached
    pthread_mutex_lock(&pool.lock)
    released = _release_idle(pool, 0) + pool.cached_bytes
    detached = cache_detach_all(pool)
    pthread_mutex_unlock(&pool.lock)
    unmap_detached(pool, detached)
    return released
