# The C allocator behind numamem's pools (see _arena.pyx): chunks, granules, size classes, the
# address directory, chunk sources and fork safety. Its records are in _arenatypes.pxd, the cache of
# freed direct mappings in _largecache.pyx; _pool.pyx puts Python and NumPy on top.
from numamem._chunksource cimport FakeSourceState
from numamem._place cimport PlaceResult

from numamem._registry cimport MAX_POOLS

# The records (chunks, slabs, pools) and layout constants, shared with _largecache.pyx.
from numamem._arenatypes cimport (
    CHUNK_SHIFT, CHUNK_SIZE, GRANULE, GRANULE_SHIFT, GRANULES, IDLE_CHUNKS_KEPT, KIND_FREE,
    KIND_RUN_BODY, KIND_RUN_HEAD, NUM_CLASSES, RUN_MAX, Chunk, ClassState, FreeBlock, NodePool, Slab,
)

# Answers of arena_check (why a pointer may not be freed through the public API).
cdef enum:
    CHECK_OK = 0
    CHECK_FOREIGN = 1         # not memory of any numamem pool
    CHECK_OTHER_POOL = 2      # a block of another pool
    CHECK_INTERIOR = 3        # inside a block, not its start
    CHECK_NOT_LIVE = 4        # the start of a block that is free (a double free)

cdef size_t class_size(int cls) noexcept nogil
cdef NodePool *arena_create(int node, int mode, FakeSourceState *fake) noexcept nogil
cdef void arena_destroy(NodePool *pool) noexcept nogil
cdef void *arena_alloc(NodePool *pool, size_t size, PlaceResult *why) noexcept nogil
cdef void *arena_calloc(NodePool *pool, size_t size, PlaceResult *why) noexcept nogil
cdef void *arena_realloc(NodePool *pool, void *ptr, size_t new_size, PlaceResult *why) noexcept nogil
cdef int arena_free(void *ptr) noexcept nogil
cdef int arena_check(NodePool *pool, void *ptr) noexcept nogil
cdef int arena_free_checked(NodePool *pool, void *ptr) noexcept nogil
cdef size_t arena_usable_size(void *ptr) noexcept nogil
cdef NodePool *arena_pool_of(void *ptr) noexcept nogil
cdef size_t arena_release(NodePool *pool) noexcept nogil
cdef void arena_lock(NodePool *pool) noexcept nogil
cdef void arena_unlock(NodePool *pool) noexcept nogil
