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
