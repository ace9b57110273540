# The one capacity rule (see _capacity.pyx), run by arrays and by the pools' kernel chunk source.
# It fills the capacity fields of the placement's result (PlaceResult, STEP_CAPACITY, LIMIT_*),
# so it cimports _place's declarations; _place itself never needs this module.
from numamem._place cimport PlaceResult

cdef enum:
    # Strict requests from this size up are compared with the node's free memory before mapping:
    # below it reading meminfo costs more than placing, and safety does not depend on the check
    # (populate under `preferred` then verify turns a full node into an error, never an OOM kill).
    CAPACITY_CHECK_BYTES = 4194304
    # Requests from this size up (a pool's chunk, 2 MiB, included) are compared with the cgroup's
    # headroom: there nothing later turns a shortfall into an error (populating past the cgroup's
    # limit is its OOM killer's), and with no limit found the comparison costs nothing.
    CGROUP_CHECK_BYTES = 2097152

cdef long long node_available(int node) noexcept nogil
cdef long long cgroup_headroom(PlaceResult *out) noexcept nogil
cdef int check_capacity(size_t length, int node, PlaceResult *out) noexcept nogil
