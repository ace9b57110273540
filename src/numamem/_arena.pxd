# The C allocator behind numamem's pools (see _arena.pyx): chunks, granules, size classes, the
# address directory, chunk sources and fork safety. _pool.pyx puts Python and NumPy on top.
from numamem._chunksource cimport ChunkSource, FakeSourceState
from numamem._place cimport PlaceResult

from numamem._registry cimport MAX_POOLS, pthread_mutex_t

cdef enum:
    CHUNK_SHIFT = 21
    CHUNK_SIZE = 2097152
    GRANULE_SHIFT = 16
    GRANULE = 65536
    GRANULES = 32
    NUM_CLASSES = 36
    RUN_MAX = 16              # granules: runs serve requests up to 1 MiB
    KIND_FREE = -1
    KIND_RUN_HEAD = -2
    KIND_RUN_BODY = -3
    IDLE_CHUNKS_KEPT = 4      # chunks with nothing live a pool keeps mapped (8 MiB); more are unmapped
    LARGE_CACHE_MAX = 67108864    # default bytes of freed direct mappings a pool keeps for reuse (64 MiB)
    LARGE_CACHE_DECAY_MS = 1000   # default: a cached mapping unused this long is given back
    LARGE_FIT_SHIFT = 4           # a cached mapping serves a request it exceeds by at most 1/16

# Answers of arena_check (why a pointer may not be freed through the public API).
cdef enum:
    CHECK_OK = 0
    CHECK_FOREIGN = 1         # not memory of any numamem pool
    CHECK_OTHER_POOL = 2      # a block of another pool
    CHECK_INTERIOR = 3        # inside a block, not its start
    CHECK_NOT_LIVE = 4        # the start of a block that is free (a double free)

cdef struct FreeBlock:
    FreeBlock *next

# A granule serving one size class.
cdef struct Slab:
    FreeBlock *free           # its freed blocks
    unsigned int bump         # bytes carved from it so far
    unsigned int live         # blocks handed out and not freed
    Slab *prev                # in its class's list of slabs with free blocks
    Slab *next
    int listed
    int index                 # granule index in the chunk
    void *chunk
    # Bit (offset >> 6) set: the block at that offset is on the free list, so any free of it is a
    # double free, refused in O(1) on every path.
    unsigned long long freed[16]

cdef struct Chunk:
    char *base
    size_t length             # CHUNK_SIZE for pooled chunks; the mapping length for direct ones
    size_t request            # bytes asked for a direct mapping (0 for pooled chunks)
    long long cached_at       # a cached direct mapping (live_bytes 0): when it was freed (monotonic ns)
    size_t served_at          # and the pool's `served` then
    void *pool                # the NodePool it belongs to
    unsigned int free_mask    # bit g set: granule g is free
    int largest_free          # longest run of free granules
    size_t live_bytes
    signed char kind[GRANULES]        # class index, or KIND_*
    unsigned char run_len[GRANULES]   # granules in the run starting here
    Slab slab[GRANULES]
    Chunk *prev
    Chunk *next

cdef struct ClassState:
    Slab *current             # the slab blocks are carved from (may hold nothing live)
    Slab *partial             # other slabs with free blocks

cdef struct NodePool:
    pthread_mutex_t lock
    int node
    int mode                  # PLACE_STRICT or PLACE_PREFERRED (numamem._place)
    ChunkSource source
    FakeSourceState fake
    ClassState classes[NUM_CLASSES]
    Chunk *chunks             # pooled chunks, newest first
    int chunk_count
    int idle_count            # pooled chunks with nothing live
    Chunk *direct             # direct mappings
    int direct_count
    Chunk *cached             # freed direct mappings kept for reuse, newest first (still registered)
    int cached_count
    size_t cached_bytes
    size_t cache_max          # bytes of freed direct mappings kept at most (0: none kept)
    long long cache_decay_ns  # a cached mapping unused this long is unmapped at the next large call
    size_t maps               # mappings the source made since creation (chunks and direct)
    size_t reuses             # direct requests served by a cached mapping
    size_t served             # bytes handed out since creation in granules (runs, slabs) and direct mappings
    size_t in_use
    size_t mapped
    size_t peak_mapped
    size_t allocations
    size_t touched            # chunks populated by touching (the kernel lacks MADV_POPULATE_WRITE)

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
cdef size_t arena_set_cache(NodePool *pool, size_t max_bytes, long long decay_ns) noexcept nogil
cdef void arena_lock(NodePool *pool) noexcept nogil
cdef void arena_unlock(NodePool *pool) noexcept nogil
