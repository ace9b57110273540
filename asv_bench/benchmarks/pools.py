"""Pools and the ``on_node`` NEP 49 scope against NumPy's default allocator, in the same run.

The figures asked for by the pools issue:

* :class:`SmallAllocation` -- one small allocation (64 B to 64 KiB) by NumPy's default allocator,
  by NumPy inside ``on_node`` (the pool's NEP 49 handler), and by ``numamem.empty`` (pooled);
* :class:`TemporariesChain` -- an elementwise chain on 1 MiB arrays, whose every operator allocates
  a temporary, inside ``on_node`` against NumPy's default (target: within 1.05x).

* :class:`PhasedLiveMemory` -- memory follows live bytes (issue 12 item 5): 16 phases of 200 live
  arrays of decreasing size (1020 KiB down to 60 KiB), through ``on_node``'s pool and through NumPy's
  default allocator: peak memory over peak live bytes, and memory still held after the workload.

* :class:`LargeBlockReuse`, :class:`LargeBlockReuseRatio` -- allocate and free an array above
  1 MiB (1.5, 2, 8, 32 MiB) in a loop, inside ``on_node`` (the pool's direct mapping, cached on free
  and reused by the next request) against ``np.empty``, and the mappings the pool made meanwhile
  (0 once warm: no mmap, no placement check per array).

* :class:`SmallAllocationRatio`, :class:`TemporariesChainRatio` -- the same two comparisons as
  ratios measured in one process (and ``numamem.zeros`` over ``np.zeros``; issue 15 target for
  ``empty``/``zeros`` of 64 B to 64 KiB: at most 1.5), candidate and baseline alternating (``track_*``): asv times each
  parameter in its own process, and on a shared machine the load drifts between those processes
  by more than the differences measured here (see docs/performance.md).

A single small allocation takes well under a microsecond, below what one timed call can resolve,
so those benchmarks time a loop of ``INNER`` allocations (each array is freed as the next is made,
as temporaries are); the loop's own cost is in both sides of every ratio.
"""
import functools
import gc
import statistics
import time

import numpy as np

import numamem

from .common import KiB, MiB, node0, second_node, smoke_or

#: Allocations per timed call in the small-allocation benchmarks.
INNER = 1000
#: Alternations per ratio in the same-process ``track_*`` ratios.
ALTERNATIONS = smoke_or(41, 3)
SMALL_SIZES = [64, 1 * KiB, 16 * KiB, 64 * KiB]
#: Sizes above the pools' 1 MiB direct-mapping threshold (direct mappings, cached on free).
LARGE_SIZES = [3 * MiB // 2, 2 * MiB, 8 * MiB, 32 * MiB]
#: Allocations per timed call in the large-block benchmarks.
INNER_LARGE = 100


def _loop_np_empty(nbytes, node, inner=INNER):
    start = time.perf_counter()
    for _ in range(inner):
        np.empty(nbytes, np.uint8)
    return time.perf_counter() - start


def _loop_np_zeros(nbytes, node):
    start = time.perf_counter()
    for _ in range(INNER):
        np.zeros(nbytes, np.uint8)
    return time.perf_counter() - start


def _loop_on_node(nbytes, node, inner=INNER):
    with numamem.on_node(node):
        start = time.perf_counter()
        for _ in range(inner):
            np.empty(nbytes, np.uint8)
        return time.perf_counter() - start


def _loop_numamem_empty(nbytes, node):
    start = time.perf_counter()
    for _ in range(INNER):
        numamem.empty(nbytes, np.uint8, node=node)
    return time.perf_counter() - start


def _loop_numamem_zeros(nbytes, node):
    start = time.perf_counter()
    for _ in range(INNER):
        numamem.zeros(nbytes, np.uint8, node=node)
    return time.perf_counter() - start


def same_process_ratio(candidate, baseline, *args, alternations=None):
    """Median time of ``candidate(*args)`` over the median of ``baseline(*args)``, interleaved.

    Both run in this process, alternating (ABBA order, so neither always goes first), so that
    both see the same load: on a shared machine the load drifts between asv's separate
    processes by more than the differences measured here.

    Parameters
    ----------
    candidate, baseline : callable
        Each returns the seconds it measured itself.
    *args
        Passed to both.
    alternations : int, optional
        Pairs of calls (default :data:`ALTERNATIONS`); one warm-up pair comes first.

    Returns
    -------
    float
    """
    alternations = ALTERNATIONS if alternations is None else alternations
    candidate(*args), baseline(*args)  # warm: pool chunks, malloc free lists
    a, b = [], []
    for i in range(alternations):
        if i % 2:
            b.append(baseline(*args))
            a.append(candidate(*args))
        else:
            a.append(candidate(*args))
            b.append(baseline(*args))
    return statistics.median(a) / statistics.median(b)


class _InScope:
    """Setup for allocator parameters: ``np.empty-in-on_node`` runs inside ``on_node(node 0)``.

    The scope is entered in ``setup`` and left in ``teardown`` so the timed calls measure only the
    allocations; one warm call first, so that the steady state is measured, not the first mapping.
    """

    # Short calls on a shared machine: many samples, so that the median is stable.
    repeat = (10, 40, 20.0)

    def setup(self, allocator, nbytes):
        self.node = node0()
        self.scope = numamem.on_node(self.node) if allocator == "np.empty-in-on_node" else None
        if self.scope is not None:
            self.scope.__enter__()
        self.time_allocate(allocator, nbytes)

    def teardown(self, allocator, nbytes):
        if self.scope is not None:
            self.scope.__exit__(None, None, None)


class SmallAllocation(_InScope):
    """``INNER`` small allocations: NumPy's default, NumPy inside ``on_node``, ``numamem.empty``."""

    params = (["np.empty", "np.empty-in-on_node", "numamem.empty"], SMALL_SIZES)
    param_names = ["allocator", "nbytes"]

    def time_allocate(self, allocator, nbytes):
        if allocator == "numamem.empty":
            node = self.node
            for _ in range(INNER):
                numamem.empty(nbytes, np.uint8, node=node)
        else:
            for _ in range(INNER):
                np.empty(nbytes, np.uint8)


class SmallAllocationRatio:
    """The same comparison as :class:`SmallAllocation` as same-process ratios (time / np.empty), and zeros."""

    params = [SMALL_SIZES]
    param_names = ["nbytes"]
    timeout = 300

    def track_on_node_over_np_empty(self, nbytes):
        """``np.empty`` inside ``on_node`` over ``np.empty`` (< 1: the pool is faster)."""
        return same_process_ratio(_loop_on_node, _loop_np_empty, nbytes, node0())

    track_on_node_over_np_empty.unit = "ratio"

    def track_numamem_empty_over_np_empty(self, nbytes):
        """``numamem.empty(node=k)`` over ``np.empty``."""
        return same_process_ratio(_loop_numamem_empty, _loop_np_empty, nbytes, node0())

    track_numamem_empty_over_np_empty.unit = "ratio"

    def track_numamem_zeros_over_np_zeros(self, nbytes):
        """``numamem.zeros(node=k)`` over ``np.zeros`` (pool blocks are recycled, so cleared each time)."""
        return same_process_ratio(_loop_numamem_zeros, _loop_np_zeros, nbytes, node0())

    track_numamem_zeros_over_np_zeros.unit = "ratio"


_loop_large_np_empty = functools.partial(_loop_np_empty, inner=INNER_LARGE)
_loop_large_on_node = functools.partial(_loop_on_node, inner=INNER_LARGE)


class LargeBlockReuse(_InScope):
    """``INNER_LARGE`` allocate-and-free cycles of one large array: ``np.empty`` inside ``on_node`` or not.

    The warm call maps (and places) the block; the steady state reuses it.
    """

    params = (["np.empty", "np.empty-in-on_node"], LARGE_SIZES)
    param_names = ["allocator", "nbytes"]

    def time_allocate(self, allocator, nbytes):
        for _ in range(INNER_LARGE):
            np.empty(nbytes, np.uint8)

    def track_maps(self, allocator, nbytes):
        """Mappings the node's pool made during ``INNER_LARGE`` warm cycles (0: every array reused one)."""
        pool = numamem.pools.get_pool(self.node)
        before = pool.stats()["maps"]
        self.time_allocate(allocator, nbytes)
        return pool.stats()["maps"] - before

    track_maps.unit = "mappings"


class LargeBlockReuseRatio:
    """:class:`LargeBlockReuse` as a same-process ratio, ``on_node`` over ``np.empty``."""

    params = [LARGE_SIZES]
    param_names = ["nbytes"]
    timeout = 300

    def track_on_node_over_np_empty(self, nbytes):
        """A large ``np.empty`` inside ``on_node`` over one outside (glibc keeps freed blocks too)."""
        return same_process_ratio(_loop_large_on_node, _loop_large_np_empty, nbytes, node0())

    track_on_node_over_np_empty.unit = "ratio"


class ScopeOverhead:
    """Entering and leaving ``on_node`` (``INNER`` times), with nothing allocated inside."""

    params = [["local", "second-node"]]
    param_names = ["node"]
    repeat = (10, 40, 20.0)

    def setup(self, node):
        self.node = node0() if node == "local" else second_node()

    def time_enter_exit(self, node):
        target = self.node
        for _ in range(INNER):
            with numamem.on_node(target):
                pass


class TemporariesChain:
    """An elementwise chain on 1 MiB float64 arrays: every operator allocates a 1 MiB temporary."""

    params = [["numpy", "on_node"]]
    param_names = ["allocator"]
    repeat = (10, 40, 20.0)

    _inputs = {}

    def setup(self, allocator):
        # Inputs made once per process (asv re-runs setup before every timed call).
        if not self._inputs:
            rng = np.random.default_rng(0)
            self._inputs["a"] = rng.random(MiB // 8)
            self._inputs["b"] = rng.random(MiB // 8)
        self.node = node0()
        self.a, self.b = self._inputs["a"], self._inputs["b"]

    def _chain(self):
        a, b = self.a, self.b
        return ((a * b + a) / (b + 1.0) - np.sqrt(a)) * 0.5 + np.abs(a - b)

    def time_chain(self, allocator):
        # The scope is entered inside the timing, as a program would use it.
        if allocator == "on_node":
            with numamem.on_node(self.node):
                self._chain()
        else:
            self._chain()


SIZES_CHURN = np.random.default_rng(1).integers(1, 300_000, size=200).tolist()


class TemporariesChainRatio:
    """:class:`TemporariesChain` as a same-process ratio, ``on_node`` over default (target 1.05)."""

    timeout = 300

    def track_on_node_over_default(self):
        """The chain inside ``on_node`` (scope entered in the timing) over the default."""
        chain = TemporariesChain()
        chain.setup("numpy")

        def default():
            start = time.perf_counter()
            chain._chain()
            return time.perf_counter() - start

        def scoped():
            start = time.perf_counter()
            with numamem.on_node(chain.node):
                chain._chain()
            return time.perf_counter() - start

        return same_process_ratio(scoped, default, alternations=ALTERNATIONS * 5)

    track_on_node_over_default.unit = "ratio"


class PoolChurn:
    """Allocate and free a mix of 200 sizes (1 B to 300 kB) through the pool, NumPy alongside."""

    params = [["numpy", "on_node"]]
    param_names = ["allocator"]

    def setup(self, allocator):
        self.node = node0()
        self.sizes = SIZES_CHURN

    def time_churn(self, allocator):
        if allocator == "on_node":
            with numamem.on_node(self.node):
                for n in self.sizes:
                    np.empty(n, np.uint8)
        else:
            for n in self.sizes:
                np.empty(n, np.uint8)

    def track_pool_in_use_after(self, allocator):
        """Bytes still in use in the node's pool after a churn (0: nothing leaks)."""
        self.time_churn(allocator)
        return numamem.pool_stats().get((self.node, "bind"), {}).get("in_use", 0)

    track_pool_in_use_after.unit = "bytes"


#: The phases of :class:`PhasedLiveMemory`: array sizes in bytes, and arrays live per phase.
PHASE_SIZES = [(16 - p) * 64 * KiB - 4 * KiB for p in range(16)]
PHASE_ARRAYS = smoke_or(200, 20)


def _rss():
    """Resident bytes of this process (VmRSS)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    raise RuntimeError("no VmRSS in /proc/self/status")


def run_phases(allocator, node):
    """Run the phases; return ``(peak_held, peak_live, held_after)`` in bytes.

    ``held`` is what the allocator holds: the pool's mapped bytes (``on_node``), or the growth of
    the process's resident set (NumPy's default; arrays are written, so every page is resident).
    Each phase makes ``PHASE_ARRAYS`` arrays, all live at once, then drops them.
    """
    pool = numamem.pools.get_pool(node)
    gc.collect()
    if allocator == "on_node":
        pool.release()
        held = lambda: pool.stats()["mapped"]  # noqa: E731
    else:
        held = _rss
    before = held()
    peak_held = peak_live = 0
    scope = numamem.on_node(node) if allocator == "on_node" else None
    if scope is not None:
        scope.__enter__()
    try:
        for size in PHASE_SIZES:
            arrays = [np.ones(size, np.uint8) for _ in range(PHASE_ARRAYS)]
            peak_live = max(peak_live, sum(a.nbytes for a in arrays))
            peak_held = max(peak_held, held() - before)
            del arrays
    finally:
        if scope is not None:
            scope.__exit__(None, None, None)
    gc.collect()
    return peak_held, peak_live, held() - before


class PhasedLiveMemory:
    """Issue 12 item 5: does memory follow the live bytes, and is idle memory given back?"""

    params = [["numpy", "on_node"]]
    param_names = ["allocator"]
    timeout = 300

    def setup(self, allocator):
        self.node = node0()

    def track_peak_held_over_peak_live(self, allocator):
        """Peak memory held (pool: mapped; NumPy: resident growth) over peak live bytes."""
        peak_held, peak_live, _ = run_phases(allocator, self.node)
        return peak_held / peak_live

    track_peak_held_over_peak_live.unit = "ratio"

    def track_held_after_mib(self, allocator):
        """MiB still held once every array is gone (the pool keeps at most 4 idle 2 MiB chunks)."""
        return run_phases(allocator, self.node)[2] / MiB

    track_held_after_mib.unit = "MiB"

    def time_phases(self, allocator):
        run_phases(allocator, self.node)

    def peakmem_phases(self, allocator):
        run_phases(allocator, self.node)
