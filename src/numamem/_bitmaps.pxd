# The bit arithmetic of numamem's pool allocator (_arena.pyx): a chunk's 32-bit mask of free
# granules and a slab's bitmap of freed blocks. Inline functions only, no module of its own: they
# compile into the module that cimports them, so the allocation paths make no call between modules.
from libc.stdint cimport uintptr_t

from numamem._arenatypes cimport GRANULE, Slab

cdef extern from *:
    int __builtin_ctz(unsigned int x) nogil
    const unsigned int ALL_GRANULES "0xFFFFFFFFU"   # every granule of a chunk free


cdef inline int longest_run(unsigned int mask) noexcept nogil:
    """Length of the longest run of set bits (free granules) in ``mask``."""
    # One step per run of free granules (not per granule): this runs on every run and slab change.
    cdef int best = 0, ones
    while mask:
        mask >>= __builtin_ctz(mask)
        if mask == ALL_GRANULES:
            return 32 if best < 32 else best
        ones = __builtin_ctz(~mask)
        if ones > best:
            best = ones
        mask >>= ones
    return best


cdef inline int find_run(unsigned int mask, int count) noexcept nogil:
    """Lowest granule starting ``count`` free granules in ``mask``, or -1."""
    # After each step bit i of `fits` says granules i .. i + have - 1 are free; `have` doubles.
    cdef unsigned int fits = mask
    cdef int have = 1, step
    while have < count:
        step = have if have < count - have else count - have
        fits &= fits >> step
        have += step
    return __builtin_ctz(fits) if fits else -1


# A slab's freed bits (Slab.freed, _arenatypes.pxd): bit (offset in the granule >> 6) per block.
cdef inline unsigned int _block_bit(Slab *slab, void *ptr) noexcept nogil:
    return <unsigned int>(((<uintptr_t>ptr) & (GRANULE - 1)) >> 6)


cdef inline bint slab_is_freed(Slab *slab, void *ptr) noexcept nogil:
    cdef unsigned int bit = _block_bit(slab, ptr)
    return (slab.freed[bit >> 6] >> (bit & 63)) & 1


cdef inline void slab_mark_freed(Slab *slab, void *ptr, bint freed) noexcept nogil:
    cdef unsigned int bit = _block_bit(slab, ptr)
    if freed:
        slab.freed[bit >> 6] |= (<unsigned long long>1) << (bit & 63)
    else:
        slab.freed[bit >> 6] &= ~((<unsigned long long>1) << (bit & 63))
