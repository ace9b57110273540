/*
 * numamem.h - kernel constants older headers may lack, and overflow-checked alignment arithmetic.
 *
 * Values are the Linux UAPI ones (include/uapi/linux/mempolicy.h, asm-generic/mman-common.h,
 * asm-generic/hugetlb_encode.h); they are ABI and never change, so defining them here is safe
 * when the build machine's glibc headers predate them.
 */
#ifndef NUMAMEM_NUMAMEM_H
#define NUMAMEM_NUMAMEM_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <numaif.h>

/* Memory policies (set_mempolicy/mbind modes). */
#ifndef MPOL_DEFAULT
#define MPOL_DEFAULT 0
#endif
#ifndef MPOL_PREFERRED
#define MPOL_PREFERRED 1
#endif
#ifndef MPOL_BIND
#define MPOL_BIND 2
#endif
#ifndef MPOL_INTERLEAVE
#define MPOL_INTERLEAVE 3
#endif
#ifndef MPOL_LOCAL
#define MPOL_LOCAL 4            /* Linux 3.8 */
#endif
#ifndef MPOL_PREFERRED_MANY
#define MPOL_PREFERRED_MANY 5   /* Linux 5.15 */
#endif

/* mbind flags. */
#ifndef MPOL_MF_STRICT
#define MPOL_MF_STRICT (1 << 0)
#endif
#ifndef MPOL_MF_MOVE
#define MPOL_MF_MOVE (1 << 1)
#endif
#ifndef MPOL_MF_MOVE_ALL
#define MPOL_MF_MOVE_ALL (1 << 2)
#endif

/* get_mempolicy flags. */
#ifndef MPOL_F_NODE
#define MPOL_F_NODE (1 << 0)
#endif
#ifndef MPOL_F_ADDR
#define MPOL_F_ADDR (1 << 1)
#endif

/* madvise advice. */
#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif
#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE 15
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22   /* Linux 5.14 */
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  /* Linux 5.14 */
#endif

/* mmap flags for hugetlbfs pages of a given size. */
#ifndef MAP_HUGETLB
#define MAP_HUGETLB 0x40000
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif
#ifndef MAP_HUGE_1GB
#define MAP_HUGE_1GB (30 << MAP_HUGE_SHIFT)
#endif
#ifndef MAP_NORESERVE
#define MAP_NORESERVE 0x4000
#endif

/* Round x up to a multiple of align (a power of two). Returns 0 and stores the result, or -1 on
 * overflow, so a huge request becomes a clean error instead of a wrapped-around small mapping. */
static inline int nm_align_up(size_t x, size_t align, size_t *out)
{
    size_t mask = align - 1;
    if (align == 0 || (align & mask) != 0)
        return -1;
    if (x > SIZE_MAX - mask)
        return -1;
    *out = (x + mask) & ~mask;
    return 0;
}

/* a * b without wrap-around: 0 and the product, or -1 on overflow. */
static inline int nm_mul(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}

/* a + b without wrap-around. */
static inline int nm_add(size_t a, size_t b, size_t *out)
{
    return __builtin_add_overflow(a, b, out) ? -1 : 0;
}

/* Set errno (Cython would make an assignment to it a local variable): fake system calls in the
 * fault-injecting call table fail as the kernel's do, with -1 and errno. */
static inline void nm_set_errno(int err)
{
    errno = err;
}

#endif /* NUMAMEM_NUMAMEM_H */
