# The cache of freed direct mappings of numamem's pools (see _largecache.pyx). The caller holds the
# pool's lock around each function, except arena_set_cache (which takes it) and unmap_detached
# (called once the lock is released, where the caller can).
from numamem._arenatypes cimport Chunk, NodePool

cdef enum:
    LARGE_CACHE_MAX = 67108864    # default bytes of freed direct mappings a pool keeps for reuse (64 MiB)
    LARGE_CACHE_DECAY_MS = 1000   # default: a cached mapping unused this long is given back
    LARGE_FIT_SHIFT = 4           # a cached mapping serves a request it exceeds by at most 1/16

cdef Chunk *cache_expired(NodePool *pool) noexcept nogil
cdef Chunk *cache_detach_all(NodePool *pool) noexcept nogil
cdef Chunk *cache_take(NodePool *pool, size_t length) noexcept nogil
cdef Chunk *cache_put(NodePool *pool, Chunk *chunk) noexcept nogil
cdef void unmap_detached(NodePool *pool, Chunk *chunk) noexcept nogil
cdef size_t arena_set_cache(NodePool *pool, size_t max_bytes, long long decay_ns) noexcept nogil
