# The records of numamem's pool allocator, shared by the modules that make it up: _arena.pyx (chunks,
# granules, size classes, the pool's calls) and _largecache.pyx (the cache of freed direct
# mappings). Declarations and a few inline helpers (chunk lists, the address directory), no module
# of its own: both modules cimport it, so the cache needs nothing from _arena and neither cimports
# the other's records.
from numamem._chunksource cimport ChunkSource, FakeSourceState

from numamem._registry cimport directory_lookup, directory_set, pthread_mutex_t

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


# The pool's chunk lists (pooled chunks, direct mappings, cached mappings) are doubly linked by
# Chunk.prev/next; a pool's lock is held around every change.
cdef inline void chunk_unlink(Chunk **head, Chunk *chunk) noexcept nogil:
    if chunk.prev != NULL:
        chunk.prev.next = chunk.next
    else:
        head[0] = chunk.next
    if chunk.next != NULL:
        chunk.next.prev = chunk.prev
    chunk.prev = NULL
    chunk.next = NULL


cdef inline void chunk_push(Chunk **head, Chunk *chunk) noexcept nogil:
    chunk.prev = NULL
    chunk.next = head[0]
    if head[0] != NULL:
        head[0].prev = chunk
    head[0] = chunk


# The process-wide directory (numamem._registry) maps every 2 MiB slot of a chunk or direct mapping
# to its record, so a free finds size and pool from the pointer alone.
cdef inline Chunk *chunk_of(void *ptr) noexcept nogil:
    return <Chunk *>directory_lookup(ptr)


cdef inline int chunk_register(Chunk *chunk, bint add) noexcept nogil:
    return directory_set(chunk.base, chunk.length, chunk if add else NULL)
