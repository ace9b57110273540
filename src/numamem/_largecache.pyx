# cython: boundscheck=False, wraparound=False, cdivision=True
"""The cache of freed direct mappings of numamem's pools (the allocator is :mod:`numamem._arena`).

As cupy's pool and jemalloc's large extents keep freed large blocks: a loop of multi-MiB
temporaries would otherwise pay map + placement + unmap (about 1 ms per 2 MiB) for each array. A
freed direct mapping stays mapped, placed and registered (its directory entry now names a block
that is not live, so a double free is refused and no lookup finds a live block) on the pool's
``cached`` list, and serves the next direct request it fits without a map or a placement check: its
pages are those placed on the pool's node. The rules keep issue 12 item 5's contract (peak mapped
follows the peak of live bytes within a stated factor; idle memory goes back on its own):

* **Fit**: a cached mapping serves a request only if it exceeds the request's page-rounded length
  by at most 1/16 (``LARGE_FIT_SHIFT``), best fit first. Repeated temporaries have the same size,
  so a tight bound loses little reuse, and a live reused block wastes at most 6.25%, below the 10%
  that the stated factor (1.1) allows. No splitting: a cached mapping is reused whole or not at all.
* **Never alongside growth**: before the pool maps anything new (a chunk, or a direct request no
  cached mapping fits) it unmaps every cached mapping. Mapped memory grows only when nothing is
  cached, so its peak follows live bytes exactly as without the cache.
* **Cap**: at most ``cache_max`` bytes cached (``LARGE_CACHE_MAX``, 64 MiB, by default; per pool,
  :func:`arena_set_cache`), the oldest unmapped first; a larger mapping is unmapped at once.
* **Decay**: a mapping is unmapped once it has been cached longer than ``cache_decay_ns`` (1 s by
  default), or once the pool has handed out more than ``cache_max`` bytes (in granules and direct
  mappings) while it stayed unused: the workload has moved on to other sizes. Blocks in rotation
  are reused well within that (all of them fit in the cache, so each waits less than a cache's
  worth of requests). Both are checked when the pool takes granules, frees a run, or allocates or
  frees a direct mapping; the size-class fast path neither checks nor counts (a new slab granule
  does). There is no background thread: a process that stops allocating keeps its cache until
  ``release()``. Mapping anything new gives everything back at once.
* ``calloc`` of a reused mapping clears it (a fresh mapping is zero already).

Where: ``_arena`` calls :func:`cache_expired` and :func:`cache_detach_all` only when the pool's
``cached`` list is not empty, so the size-class and run paths make no call here while nothing is
cached. The functions below work under the pool's lock, held by the caller; the mappings they take
off the pool come back chained, and :func:`unmap_detached` unmaps them once the lock is released
(where the caller can: the system calls need not hold up other threads).
"""
from libc.stdlib cimport free as c_free
from posix.time cimport clock_gettime, timespec

from numamem._arenatypes cimport chunk_push, chunk_register, chunk_unlink
from numamem._registry cimport pthread_mutex_t

cdef extern from "<pthread.h>" nogil:
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)

cdef extern from "<time.h>" nogil:
    int CLOCK_MONOTONIC_COARSE   # a few ms resolution, no system call: ample for the decay


cdef inline long long _now_ns() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now)
    return <long long>now.tv_sec * 1000000000 + now.tv_nsec


cdef Chunk *_cache_trim(NodePool *pool, size_t keep, bint aged) noexcept nogil:
    """Take cached mappings off the pool beyond ``keep`` bytes (the newest are kept) and, if
    ``aged``, those past the decay (see above); caller holds the lock.

    They are unregistered and no longer counted as mapped; returns them chained by ``next``, for
    :func:`unmap_detached` (after the lock is released, where the caller can).
    """
    cdef Chunk *chunk = pool.cached
    cdef Chunk *next
    cdef Chunk *detached = NULL
    cdef size_t kept = 0
    cdef long long now = _now_ns() if aged else 0
    while chunk != NULL:
        next = chunk.next
        if kept + chunk.length > keep or (aged and (now - chunk.cached_at >= pool.cache_decay_ns
                                                    or pool.served - chunk.served_at > pool.cache_max)):
            chunk_unlink(&pool.cached, chunk)
            pool.cached_count -= 1
            pool.cached_bytes -= chunk.length
            pool.mapped -= chunk.length
            chunk_register(chunk, False)
            chunk.next = detached
            detached = chunk
        else:
            kept += chunk.length
        chunk = next
    return detached


cdef Chunk *cache_expired(NodePool *pool) noexcept nogil:
    """Take off the cached mappings past the decay or beyond the cap; caller holds the lock."""
    return _cache_trim(pool, pool.cache_max, True)


cdef Chunk *cache_detach_all(NodePool *pool) noexcept nogil:
    """Take off every cached mapping (the pool is about to map something new, or releases); caller holds the lock."""
    return _cache_trim(pool, 0, False)


cdef void unmap_detached(NodePool *pool, Chunk *chunk) noexcept nogil:
    """Unmap and forget the mappings chained by ``next`` that the functions here took off ``pool``."""
    cdef Chunk *next
    while chunk != NULL:
        next = chunk.next
        pool.source.unmap(pool.source.ctx, chunk.base, chunk.length)
        c_free(chunk)
        chunk = next


cdef Chunk *cache_take(NodePool *pool, size_t length) noexcept nogil:
    """The cached mapping that fits ``length`` best (see the fit rule above), made live; or NULL."""
    cdef Chunk *chunk = pool.cached
    cdef Chunk *best = NULL
    cdef size_t most = length + (length >> LARGE_FIT_SHIFT)
    while chunk != NULL:
        if length <= chunk.length <= most and (best == NULL or chunk.length < best.length):
            best = chunk
            if chunk.length == length:
                break
        chunk = chunk.next
    if best != NULL:
        chunk_unlink(&pool.cached, best)
        pool.cached_count -= 1
        pool.cached_bytes -= best.length
        pool.reuses += 1
    return best


cdef Chunk *cache_put(NodePool *pool, Chunk *chunk) noexcept nogil:
    """Keep a freed direct mapping (already off the pool's ``direct`` list and counted as not in
    use) for the next request it fits; caller holds the lock.

    Returns the mappings to unmap after the lock is released: those the cap or the decay now
    takes off, or ``chunk`` itself (unregistered, no longer counted as mapped) when it is larger
    than the cap.
    """
    if chunk.length > pool.cache_max:
        pool.mapped -= chunk.length
        chunk_register(chunk, False)
        chunk.next = NULL
        return chunk
    # Kept registered and placed, its directory entry naming a block that is not live.
    chunk.live_bytes = 0
    chunk.cached_at = _now_ns()
    chunk.served_at = pool.served
    chunk_push(&pool.cached, chunk)
    pool.cached_count += 1
    pool.cached_bytes += chunk.length
    return _cache_trim(pool, pool.cache_max, True)


cdef size_t arena_set_cache(NodePool *pool, size_t max_bytes, long long decay_ns) noexcept nogil:
    """Set the pool's cache of freed direct mappings; return the bytes unmapped to meet it."""
    cdef Chunk *detached
    cdef size_t before
    pthread_mutex_lock(&pool.lock)
    pool.cache_max = max_bytes
    pool.cache_decay_ns = decay_ns
    before = pool.cached_bytes
    detached = _cache_trim(pool, max_bytes, False)
    before -= pool.cached_bytes
    pthread_mutex_unlock(&pool.lock)
    unmap_detached(pool, detached)
    return before
