# The one strict-placement routine (see _place.pyx), shared by regions and the pool's chunk source.

# Where a placement stopped. STEP_NONE: it succeeded.
cdef enum:
    STEP_NONE = 0
    STEP_MAP = 1          # mmap (or the fake source's allocation) failed
    STEP_PREFER = 2       # mbind(MPOL_PREFERRED) failed
    STEP_POPULATE = 3     # madvise(MADV_POPULATE_WRITE) failed
    STEP_VERIFY = 4       # move_pages itself failed (never a capacity problem)
    STEP_BIND = 5         # mbind(MPOL_BIND[, MPOL_MF_STRICT]) or the lazy policy's mbind failed
    STEP_MISPLACED = 6    # pages were found off the node (by move_pages or by the strict walk's EIO)
    STEP_CAPACITY = 7     # the node's available memory or the cgroup's headroom was short, before mapping

# What to do (the `mode` argument of place_on_node).
cdef enum:
    PLACE_STRICT = 1          # preferred, populate, verify, then bind strictly
    PLACE_PREFERRED = 2       # preferred, populate
    PLACE_BIND_LAZY = 3       # bind only; pages are placed when first touched
    PLACE_PREFERRED_LAZY = 4  # preferred only

# Which limit a capacity check (numamem._capacity) found short (PlaceResult.limit).
cdef enum:
    LIMIT_NONE = 0
    LIMIT_NODE = 1            # the node's MemFree plus Inactive(file)
    LIMIT_CGROUP = 2          # the headroom of the process's memory cgroup (limit - usage)

# How the pages were faulted in.
cdef enum:
    POPULATED_NONE = 0
    POPULATED_MADVISE = 1
    POPULATED_TOUCH = 2

# Linux has at most 1024 nodes (CONFIG_NODES_SHIFT <= 10): 16 words of 64 bits.
cdef enum:
    MASK_WORDS_MAX = 16
    HIST_SLOTS = 16

ctypedef struct PlaceResult:
    int step              # STEP_*: where it stopped
    int err               # errno of the failing call (0 for STEP_MISPLACED found by move_pages)
    int populated_by      # POPULATED_*
    size_t checked        # pages whose node was queried by the verification
    size_t misplaced      # pages found off the node (in the histogram, when one was taken)
    size_t pages          # pages counted in the histogram (0: none taken)
    int hist_len          # distinct values in hist_value (first come, first counted; no sort)
    int hist_value[HIST_SLOTS]     # a node id, or a negative errno move_pages gave for a page
    size_t hist_count[HIST_SLOTS]
    size_t hist_other     # pages whose value did not fit the slots
    int limit             # LIMIT_*: for STEP_CAPACITY, which limit was short
    long long available   # for STEP_CAPACITY, the bytes that limit leaves
    long long cg_limit    # for LIMIT_CGROUP: the cgroup's limit and usage, and its directory
    long long cg_usage
    const char *cg_dir
    int cg_version

# The three calls the routine makes, as pointers, so a fake (or a fault-injecting) table can
# stand in for the kernel in tests on a one-node machine.
ctypedef struct PlaceOps:
    void *ctx
    long (*mbind)(void *ctx, void *start, unsigned long length, int mode, const unsigned long *mask,
                  unsigned long maxnode, unsigned flags) noexcept nogil
    int (*madvise)(void *ctx, void *start, size_t length, int advice) noexcept nogil
    long (*move_pages)(void *ctx, unsigned long count, void **pages, int *status) noexcept nogil

# Injected failures, for a fake source (kernel=0) or over the kernel (kernel=1).
ctypedef struct Faults:
    int kernel            # 1: pass calls to the kernel unless a failure is injected
    int fail_step         # STEP_PREFER / STEP_POPULATE / STEP_VERIFY / STEP_BIND, or 0
    int fail_errno
    long misplace_every   # k > 0: every k-th page of each move_pages query is reported off the node
    int misplace_last     # 1: the last page of each move_pages query is reported off the node
    int node              # the node the fake reports for pages it does not misplace

cdef int mask_words() noexcept nogil
cdef int node_mask(int node, unsigned long *mask, unsigned long *maxnode) noexcept nogil
cdef const PlaceOps *kernel_ops() noexcept nogil
cdef void fault_ops(Faults *faults, PlaceOps *ops) noexcept nogil
cdef const PlaceOps *injected_ops() noexcept nogil
cdef char *map_aligned(size_t length, size_t align, int flags, size_t page_size, int *err) noexcept nogil
cdef int populate_range(const PlaceOps *ops, char *base, size_t length, size_t page_size,
                        PlaceResult *out) noexcept nogil
cdef int page_histogram(const PlaceOps *ops, char *base, size_t length, size_t page_size, int node,
                        PlaceResult *out) noexcept nogil
cdef int place_on_node(char *base, size_t length, int node, int mode, size_t page_size,
                       const PlaceOps *ops, PlaceResult *out) noexcept nogil
cdef object result_object(PlaceResult *result, int node)
