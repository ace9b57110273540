# Raw declarations of the C interfaces numamem uses: libnuma (numa.h, numaif.h), mmap (sys/mman.h)
# and the project's own header. Declarations only, all nogil; the placement sequence lives in
# _place.pyx and the mapping of failures to exceptions in errors.py (one place each), never here.

cdef extern from "<numa.h>" nogil:
    struct bitmask:
        unsigned long size
        unsigned long *maskp

    int numa_available()
    int numa_max_node()
    int numa_max_possible_node()
    int numa_num_configured_cpus()
    long long numa_node_size64(int node, long long *freep)
    int numa_distance(int node1, int node2)
    int numa_node_to_cpus(int node, bitmask *mask)
    bitmask *numa_allocate_cpumask()
    void numa_free_cpumask(bitmask *mask)
    bitmask *numa_allocate_nodemask()
    void numa_free_nodemask(bitmask *mask)
    bitmask *numa_get_mems_allowed()
    void numa_bitmask_free(bitmask *mask)
    int numa_bitmask_isbitset(const bitmask *mask, unsigned int n)
    unsigned int numa_bitmask_nbytes(bitmask *mask)
    bitmask *numa_nodes_ptr
    bitmask *numa_all_nodes_ptr
    int numa_pagesize()

cdef extern from "<numaif.h>" nogil:
    long get_mempolicy(int *mode, unsigned long *nmask, unsigned long maxnode,
                       void *addr, unsigned flags)
    long mbind(void *start, unsigned long len, int mode, const unsigned long *nmask,
               unsigned long maxnode, unsigned flags)
    long set_mempolicy(int mode, const unsigned long *nmask, unsigned long maxnode)
    long move_pages(int pid, unsigned long count, void **pages, const int *nodes,
                    int *status, int flags)

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
    void *MAP_FAILED
    int PROT_READ
    int PROT_WRITE
    int MAP_PRIVATE
    int MAP_ANONYMOUS

cdef extern from "<errno.h>" nogil:
    int errno

cdef extern from "numamem/numamem.h" nogil:
    int MPOL_DEFAULT
    int MPOL_PREFERRED
    int MPOL_BIND
    int MPOL_INTERLEAVE
    int MPOL_LOCAL
    int MPOL_MF_STRICT
    int MPOL_MF_MOVE
    int MPOL_F_NODE
    int MPOL_F_ADDR
    int MADV_HUGEPAGE
    int MADV_NOHUGEPAGE
    int MADV_POPULATE_WRITE
    int MAP_HUGETLB
    int MAP_HUGE_2MB
    int MAP_HUGE_1GB
    int MAP_NORESERVE
    int nm_align_up(size_t x, size_t align, size_t *out)
    int nm_mul(size_t a, size_t b, size_t *out)
    int nm_add(size_t a, size_t b, size_t *out)
    void nm_set_errno(int err)
