# Where a pool's chunks come from (see _chunksource.pyx).
from numamem._place cimport Faults, PlaceResult

# A struct of function pointers, as NumPy's PyDataMemAllocator is: the pool calls map and unmap
# with ctx and never knows which source it has.
ctypedef struct ChunkSource:
    void *ctx
    char *(*map)(void *ctx, size_t length, int node, int mode, PlaceResult *out) noexcept nogil
    void (*unmap)(void *ctx, char *base, size_t length) noexcept nogil

# The fake source's state: heap memory placed by the real routine over faked system calls.
cdef struct FakeSourceState:
    long limit                # chunks (2 MiB each) it may have mapped at once; -1: no limit
    long mapped_chunks
    Faults faults

cdef void kernel_source(ChunkSource *source) noexcept nogil
cdef void fake_source_init(ChunkSource *source, FakeSourceState *state, int node) noexcept nogil

# How first touch was done by touch_on_node (the fallback when the kernel refuses mbind).
cdef enum:
    TOUCH_UNBOUND = 0         # the calling thread, unbound (the node has no CPU this process may use)
    TOUCH_BOUND_THREAD = 1    # a thread started bound to the node's CPUs
    TOUCH_CALLER_BOUND = 2    # the calling thread, already bound to the node's CPUs
    MAX_FALLBACK_NODES = 1024

# Per node: chunks the preferred kernel source placed by first touch because mbind was refused.
cdef struct FallbackRecord:
    size_t chunks             # chunks placed by first touch
    size_t unverified         # of those, chunks move_pages could not check (it was refused too)
    size_t pages_checked      # pages move_pages reported on
    size_t pages_elsewhere    # of those, pages off the node
    int touched_by            # TOUCH_* of the latest chunk
    int query_errno           # errno of the latest refused move_pages, or 0

cdef int touch_on_node(char *base, size_t length, int node, size_t page_size, PlaceResult *out,
                       int *touched_by, int *query_err) noexcept nogil
