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
"""
from libc.errno cimport ENOMEM
from libc.stdlib cimport free as c_free
from libc.string cimport memset
from posix.unistd cimport _SC_PAGESIZE, sysconf

from numamem._libnuma cimport MAP_ANONYMOUS, MAP_PRIVATE, munmap
from numamem._place cimport (
    PLACE_STRICT, STEP_MAP, PlaceOps, PlaceResult, check_capacity, fault_ops, kernel_ops, map_aligned,
    place_on_node,
)

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef size_t BASE_PAGE = <size_t>sysconf(_SC_PAGESIZE)
cdef size_t CHUNK_SIZE = 2097152


cdef char *_kernel_map(void *ctx, size_t length, int node, int mode, PlaceResult *out) noexcept nogil:
    cdef int err = 0
    cdef char *base
    # A large strict mapping is refused before anything is mapped when the node lacks the memory,
    # as numamem.empty's are (the same threshold).
    if mode == PLACE_STRICT and check_capacity(length, node, out) != 0:
        return NULL
    base = map_aligned(length, CHUNK_SIZE, MAP_PRIVATE | MAP_ANONYMOUS, BASE_PAGE, &err)
    if base == NULL:
        memset(out, 0, sizeof(PlaceResult))
        out.step = STEP_MAP
        out.err = err
        return NULL
    if place_on_node(base, length, node, mode, BASE_PAGE, kernel_ops(), out) != 0:
        munmap(base, length)
        return NULL
    return base


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
