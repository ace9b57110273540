"""Per-node pools (with a fake chunk source and the kernel's) and the NEP 49 ``on_node`` scope."""
from __future__ import annotations

import asyncio
import pickle
import weakref
import ctypes
import errno
import gc
import os
import queue
import random
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numamem
from numamem import _pool
from numamem.errors import NodeMemoryError, PolicyPermissionError
from numamem.pools import handler_name, on_node

from conftest import run_in_child

SMALL_MAX = _pool.SMALL_MAX
MIDDLE_MAX = _pool.MIDDLE_MAX


def fake_pool(**kw):
    return _pool.Pool(0, "bind", "fake", **kw)


def write(address, nbytes, value):
    ctypes.memset(address, value, nbytes)


def read(address, nbytes):
    return ctypes.string_at(address, nbytes)


# ---- pool logic on a fake chunk source ------------------------------------------------------------
def test_size_classes_are_64_byte_multiples_and_cover_small_sizes():
    sizes = _pool.class_sizes()
    assert sizes[0] == 64 and sizes[-1] == SMALL_MAX
    assert all(s % 64 == 0 for s in sizes) and sizes == sorted(set(sizes))
    pool = fake_pool()
    for request in (1, 63, 64, 65, 300, 4095, 4097, 40000, SMALL_MAX):
        address = pool.malloc(request)
        usable = pool.usable_size(address)
        assert address % 64 == 0 and usable >= request
        # Four classes per doubling: at most 25% (plus the 64-byte floor) wasted.
        assert usable <= max(64, request * 1.25 + 64)
        pool.free(address)
    assert pool.stats()["in_use"] == 0


def test_freed_blocks_are_reused_per_class():
    pool = fake_pool()
    a = pool.malloc(100)
    pool.free(a)
    assert pool.malloc(120) == a  # same class
    b = pool.malloc(3000)
    assert b != a


def test_runs_and_direct_mappings():
    pool = fake_pool()
    run = pool.malloc(SMALL_MAX + 1)
    assert pool.usable_size(run) == 2 * SMALL_MAX and run % 65536 == 0
    big = pool.malloc(MIDDLE_MAX + 1)
    stats = pool.stats()
    # A direct mapping is rounded to pages, not to 2 MiB (which doubled a 1 MiB + 1 byte request).
    assert stats["direct"] == 1 and pool.usable_size(big) == MIDDLE_MAX + 4096 and big % _pool.CHUNK_BYTES == 0
    pool.free(big)
    assert pool.stats()["direct"] == 0
    pool.free(run)
    assert pool.malloc(SMALL_MAX + 100) == run  # run of the same length reused


def test_calloc_zeroes_recycled_blocks():
    pool = fake_pool()
    for size in (64, 1000, 70000):
        a = pool.malloc(size)
        write(a, size, 0xAB)
        pool.free(a)
        b = pool.calloc(size, 1)
        assert b == a and read(b, size) == bytes(size)
        pool.free(b)
    with pytest.raises(MemoryError):
        pool.calloc(2**62, 16)  # nelem * elsize overflows


def test_realloc_keeps_content_and_pool():
    pool = fake_pool()
    a = pool.malloc(100)
    write(a, 100, 7)
    assert pool.realloc(a, 110) == a  # fits its class
    b = pool.realloc(a, 5000)
    assert read(b, 100) == bytes([7]) * 100 and pool.usable_size(b) >= 5000
    c = pool.realloc(b, 3 << 20)  # to a direct mapping
    assert read(c, 100) == bytes([7]) * 100
    d = pool.realloc(0, 10)  # NULL: a plain malloc
    pool.free(c)
    pool.free(d)
    assert pool.stats()["in_use"] == 0 and pool.stats()["allocations"] == 0


def test_exhausted_source_raises_node_memory_error():
    pool = fake_pool(fake_chunk_limit=1)
    pool.malloc(100)  # takes the only chunk (one granule of 32)
    pool.malloc(SMALL_MAX * 16)  # sixteen more granules still fit it
    with pytest.raises(numamem.NodeMemoryError) as info:
        pool.malloc(SMALL_MAX * 16)  # needs a second chunk, which the source refuses
    assert info.value.node == 0


def test_unknown_addresses_are_refused():
    pool = fake_pool()
    buffer = ctypes.create_string_buffer(128)
    with pytest.raises(ValueError, match="not allocated"):
        pool.free(ctypes.addressof(buffer))
    with pytest.raises(ValueError, match="not allocated"):
        pool.usable_size(ctypes.addressof(buffer))


def test_release_returns_empty_chunks_only():
    pool = fake_pool()
    keep = pool.malloc(100)
    filler = [pool.malloc(SMALL_MAX * 16) for _ in range(3)]  # spills into further chunks
    assert pool.stats()["chunks"] >= 2
    for address in filler:
        pool.free(address)
    released = pool.release()
    assert released >= _pool.CHUNK_BYTES and pool.stats()["chunks"] == 1
    assert pool.malloc(90) != keep  # the live chunk still serves
    pool.free(keep)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3 * MIDDLE_MAX)), min_size=1, max_size=120))
def test_live_blocks_never_overlap(operations):
    pool = fake_pool()
    live = {}
    for allocate, size in operations:
        if allocate or not live:
            address = pool.malloc(size)
            assert address % 64 == 0
            live[address] = max(size, 1)
        else:
            address = sorted(live)[size % len(live)]
            del live[address]
            pool.free(address)
        spans = sorted((a, a + pool.usable_size(a)) for a in live)
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
        assert pool.stats()["in_use"] == sum(pool.usable_size(a) for a in live)
    for address in list(live):
        pool.free(address)
    assert pool.stats()["in_use"] == 0
    pool.release()
    assert pool.stats()["mapped"] == 0


GRANULE = SMALL_MAX
CHUNK = _pool.CHUNK_BYTES


def chunk_of(address):
    return address // CHUNK


# ---- reuse: coalescing, leftover granules, idle chunks given back -------------------------------
def test_freed_neighbouring_runs_coalesce():
    pool = fake_pool()
    runs = [pool.malloc(8 * GRANULE) for _ in range(4)]  # one chunk, full
    assert pool.stats()["chunks"] == 1
    pool.free(runs[1])
    pool.free(runs[2])
    # Two freed 8-granule runs side by side serve one 16-granule run in the same chunk.
    assert pool.malloc(16 * GRANULE) == runs[1]
    assert pool.stats()["chunks"] == 1


def test_leftover_granules_of_any_chunk_are_reused():
    pool = fake_pool()
    a = pool.malloc(16 * GRANULE)
    b = pool.malloc(15 * GRANULE)  # chunk 1: one granule left
    c = pool.malloc(16 * GRANULE)
    d = pool.malloc(16 * GRANULE)  # chunk 2: full
    small = pool.malloc(100)
    assert pool.stats()["chunks"] == 2 and chunk_of(small) == chunk_of(a)
    for address in (a, b, c, d, small):
        pool.free(address)


def test_a_freed_size_class_granule_serves_other_sizes():
    pool = fake_pool()
    pool.malloc(16 * GRANULE)
    blocks = [pool.malloc(4000) for _ in range(16 * 5)]  # five granules of the 4 KiB class
    for address in blocks:
        pool.free(address)
    # The class's granules (all but the one it carves from next) went back to the chunk, where a
    # run of another size takes them.
    assert pool.malloc(4 * GRANULE) == blocks[0] and pool.stats()["chunks"] == 1


def test_idle_chunks_beyond_a_small_cache_are_unmapped_on_their_own():
    pool = fake_pool()
    runs = [pool.malloc(16 * GRANULE) for _ in range(20)]  # ten chunks
    assert pool.stats()["mapped"] == 10 * CHUNK
    for address in runs:
        pool.free(address)
    stats = pool.stats()
    assert stats["in_use"] == 0 and stats["idle_chunks"] == 4 and stats["mapped"] == 4 * CHUNK
    assert pool.release() == 4 * CHUNK and pool.stats()["mapped"] == 0


def test_an_idle_chunk_is_reused_before_a_new_one_is_mapped():
    pool = fake_pool()
    for _ in range(50):  # allocate and free in a loop: no map or unmap each time
        pool.free(pool.malloc(100))
        pool.free(pool.malloc(3 * GRANULE))
    assert pool.stats()["mapped"] == CHUNK and pool.stats()["peak_mapped"] == CHUNK


def test_failed_map_releases_idle_chunks_and_retries_once():
    pool = _pool.Pool(0, "bind", _pool.fake_source(limit=2))
    runs = [pool.malloc(16 * GRANULE) for _ in range(4)]  # two chunks: the source's limit
    for address in runs:
        pool.free(address)
    assert pool.stats()["idle_chunks"] == 2
    big = pool.malloc(3 * 2**20)  # needs both chunks' worth: the idle ones are given back first
    assert pool.stats()["idle_chunks"] == 0 and pool.stats()["direct"] == 1
    with pytest.raises(NodeMemoryError):
        pool.malloc(100)  # nothing idle left to give back
    pool.free(big)
    pool.free(pool.malloc(100))


# ---- the fake source's failures, through the placement routine ------------------------------
def test_misplaced_chunk_is_a_node_memory_error_with_the_histogram():
    pool = _pool.Pool(0, "bind", _pool.fake_source(misplace_every=4))
    with pytest.raises(NodeMemoryError) as info:
        pool.malloc(100)
    error = info.value
    assert error.pages == {0: 384, 1: 128} and "landed elsewhere" in str(error) and "bind pool" in str(error)
    assert pool.stats()["mapped"] == 0  # the misplaced chunk was given back


def test_misplaced_direct_mapping_caught_by_the_last_page_sample():
    pool = _pool.Pool(0, "bind", _pool.fake_source(misplace_last=True))
    with pytest.raises(NodeMemoryError, match="landed elsewhere"):
        pool.malloc(9 * 2**20)
    assert pool.stats()["mapped"] == 0


def test_preferred_pool_does_not_verify():
    pool = _pool.Pool(0, "preferred", _pool.fake_source(misplace_every=1))
    pool.free(pool.malloc(100))


@pytest.mark.parametrize("step", ["prefer", "populate", "verify", "bind"])
def test_refused_policy_calls_are_permission_errors(step):
    pool = _pool.Pool(0, "bind", _pool.fake_source(step=step, errno=errno.EPERM))
    with pytest.raises(PolicyPermissionError, match="SYS_NICE") as info:
        pool.malloc(100)
    assert isinstance(info.value, PermissionError) and not isinstance(info.value, MemoryError)


def test_move_pages_failure_is_not_out_of_memory():
    pool = _pool.Pool(0, "bind", _pool.fake_source(step="verify", errno=errno.EFAULT))
    with pytest.raises(OSError, match="move_pages") as info:
        pool.malloc(100)
    assert not isinstance(info.value, MemoryError) and info.value.errno == errno.EFAULT


def test_populate_einval_falls_back_to_touching():
    pool = _pool.Pool(0, "bind", _pool.fake_source(step="populate", errno=errno.EINVAL))
    pool.free(pool.malloc(100))
    assert pool.stats()["touched"] == 1


def test_populate_shortage_and_exhaustion_are_node_memory_errors():
    short = _pool.Pool(0, "bind", _pool.fake_source(step="populate", errno=errno.ENOMEM))
    with pytest.raises(NodeMemoryError, match="pre-faulting failed"):
        short.allocation(100)
    empty = _pool.Pool(0, "bind", _pool.fake_source(limit=0))
    with pytest.raises(NodeMemoryError, match="mmap"):
        empty.calloc(10, 10)
    with pytest.raises(NodeMemoryError):
        empty.realloc(0, 10)


def test_fake_source_arguments_are_checked():
    with pytest.raises(ValueError, match="together"):
        _pool.fake_source(step="bind")
    with pytest.raises(ValueError, match="step"):
        _pool.fake_source(step="map", errno=1)
    with pytest.raises(ValueError, match="limit"):
        _pool.fake_source(limit=-5)
    with pytest.raises(ValueError, match="source"):
        _pool.Pool(0, "bind", "malloc")
    with pytest.raises(ValueError, match="fake_chunk_limit"):
        _pool.Pool(0, "bind", "kernel", fake_chunk_limit=3)


def test_kernel_pool_checks_a_large_mapping_against_the_nodes_free_memory(node0, topo):
    pool = _pool.get_pool(node0)
    mapped = pool.stats()["mapped"]
    too_big = topo.node(node0).mem_total + 2**30
    with pytest.raises(NodeMemoryError, match="checked before mapping") as info:
        pool.malloc(too_big)
    assert info.value.node == node0 and info.value.free is not None and info.value.pages is None
    # Nothing new is mapped (idle chunks were given back before the one retry).
    assert pool.stats()["mapped"] <= mapped and pool.stats()["idle_chunks"] == 0


# ---- the public free is checked -------------------------------------------------------------
def test_free_refuses_double_interior_and_foreign_addresses():
    pool, other = fake_pool(), fake_pool()
    small, run, big = pool.malloc(100), pool.malloc(3 * GRANULE), pool.malloc(3 * 2**20)
    stats = pool.stats()
    buffer = ctypes.create_string_buffer(128)
    refused = [
        (small + 64, "inside a block"), (small + 8, "inside a block"), (run + GRANULE, "inside a block"),
        (run + 64, "inside a block"), (big + 4096, "inside a block"),
        (ctypes.addressof(buffer), "not allocated"), (other.malloc(100), "another pool"),
    ]
    for address, message in refused:
        with pytest.raises(ValueError, match=message):
            pool.free(address)
    assert pool.stats() == stats
    for address in (small, run, big):
        pool.free(address)
        with pytest.raises(ValueError, match="not a live block|not allocated"):
            pool.free(address)  # a double free
    assert pool.stats()["in_use"] == 0 and pool.stats()["allocations"] == 0
    # The refused frees corrupted nothing: two new blocks never share memory.
    a, b = pool.malloc(100), pool.malloc(100)
    assert a != b


def test_a_block_freed_twice_by_any_path_is_freed_once():
    pool = fake_pool()
    block = pool.allocation(100)
    pool.free(block.address)  # wrongly, through the public API, while its owner lives
    block.close()  # the owner's own free finds the block free already: refused, nothing changes
    stats = pool.stats()
    assert stats["in_use"] == 0 and stats["allocations"] == 0  # no wrap to 2**64
    a, b = pool.malloc(100), pool.malloc(100)
    assert a != b


def test_realloc_and_usable_size_refuse_bad_addresses():
    pool = fake_pool()
    buffer = ctypes.create_string_buffer(128)
    with pytest.raises(ValueError, match="not allocated"):
        pool.realloc(ctypes.addressof(buffer), 10)
    address = pool.malloc(100)
    pool.free(address)
    with pytest.raises(ValueError, match="not a live block"):
        pool.realloc(address, 10)
    with pytest.raises(ValueError, match="inside a block"):
        pool.usable_size(pool.malloc(100) + 4)


# ---- lifetime of pools ------------------------------------------------------------------------
def test_dropped_pools_free_their_memory_and_slot(node0):
    gc.collect()
    before = _pool.pool_count()
    for _ in range(2000):  # more than the 1024 slots a process has
        pool = fake_pool()
        pool.malloc(100)
        pool.malloc(3 * 2**20)
        del pool
    assert _pool.pool_count() == before
    with on_node(node0):
        assert handler_name(np.ones(10)) == f"numamem_node{node0}_bind"


def test_a_pool_outlives_its_object_while_numpy_arrays_use_it():
    gc.collect()  # pools dropped by earlier tests go now, not during this one
    before = _pool.pool_count()
    pool = fake_pool()
    previous = _pool.set_handler(pool.handler)
    try:
        array = np.arange(10_000.0)
    finally:
        _pool.set_handler(previous)
    del pool
    gc.collect()
    assert _pool.pool_count() == before + 1  # the array holds the handler, hence the pool
    assert array.sum() == 49995000.0
    del array
    gc.collect()
    assert _pool.pool_count() == before


# ---- memory follows live bytes (issue 12 item 5) ----------------------------------------------
#: Stated bound: peak mapped <= PEAK_FACTOR * peak live bytes + the idle cache (4 chunks, 8 MiB).
PEAK_FACTOR = 1.1
IDLE_CACHE = 4 * CHUNK


def phases(sizes, count=200, survive=0):
    """Allocate ``count`` arrays of each size in turn (through NumPy); return peak live bytes.

    ``survive`` > 0 keeps every ``survive``-th array of a phase alive into the next one.
    """
    peak, kept = 0, []
    for size in sizes:
        arrays = [np.empty(size, np.uint8) for _ in range(count)]
        peak = max(peak, sum(a.nbytes for a in arrays) + sum(a.nbytes for a in kept))
        kept = arrays[::survive] if survive else []
        del arrays
    return peak


DECREASING = [(16 - p) * 64 * 1024 - 4096 for p in range(16)]  # 1020 KiB down to 60 KiB


@pytest.mark.parametrize("sizes, survive, factor", [
    (DECREASING, 0, PEAK_FACTOR),
    ([int(2**20 * 0.6 ** p) + 1 for p in range(16)], 0, PEAK_FACTOR),  # 1 MiB + 1 down to 48 B
    ([int(2**20 * 0.7 ** p) + 100 for p in range(16)], 2, 1.5),        # half of each phase survives
])
def test_mapped_memory_follows_live_bytes(sizes, survive, factor):
    pool = fake_pool()
    previous = _pool.set_handler(pool.handler)
    try:
        peak_live = phases(sizes, survive=survive)
    finally:
        _pool.set_handler(previous)
    gc.collect()
    stats = pool.stats()
    assert stats["peak_mapped"] <= factor * peak_live + IDLE_CACHE, (stats, peak_live)
    assert stats["in_use"] == 0 and stats["mapped"] <= IDLE_CACHE


def test_on_node_phases_give_memory_back(node0):
    pool = _pool.get_pool(node0)
    gc.collect()
    pool.release()
    pool.reset_peak()
    base = pool.stats()["mapped"]
    with on_node(node0):
        peak_live = phases(DECREASING)
    gc.collect()
    stats = pool.stats()
    assert stats["peak_mapped"] - base <= PEAK_FACTOR * peak_live + IDLE_CACHE
    assert stats["mapped"] - base <= IDLE_CACHE


# ---- kernel pools, numamem arrays ----------------------------------------------------------------
def test_small_arrays_come_from_the_nodes_pool(node0):
    before = _pool.get_pool(node0).stats()["in_use"]
    a = numamem.zeros(1000, np.float64, node=node0)
    owner = numamem.owner(a)
    assert isinstance(owner, numamem.pools.PoolAllocation) and owner.pool.node == node0
    assert set(numamem.page_nodes(a).tolist()) == {node0}
    info = numamem.placement(a)
    assert info.bytes_per_node == {node0: a.nbytes} and info.policy == "bind"
    assert info.requested["node"] == node0
    assert _pool.get_pool(node0).stats()["in_use"] > before
    del a, owner, info
    gc.collect()
    assert _pool.get_pool(node0).stats()["in_use"] == before


def test_pool_allocation_ownership(node0):
    pool = _pool.get_pool(node0)
    before = pool.stats()["in_use"]
    a = numamem.ones(100, node=node0)
    owner = numamem.owner(a)
    view = a[10:20]
    del a
    with pytest.raises(BufferError):
        owner.close()
    assert view.sum() == 10
    del view
    gc.collect()
    owner.close()
    owner.close()
    assert pool.stats()["in_use"] == before


def test_pooled_zeros_are_zero_after_reuse(node0):
    for _ in range(5):
        dirty = numamem.empty(777, np.uint8, node=node0)
        dirty[:] = 255
        del dirty
        assert not numamem.zeros(777, np.uint8, node=node0).any()


def test_preferred_pool_is_separate(node0):
    a = numamem.empty(64, node=node0, policy="preferred")
    b = numamem.empty(64, node=node0)
    assert numamem.owner(a).pool is not numamem.owner(b).pool
    assert numamem.placement(a).policy == "preferred" and numamem.placement(b).policy == "bind"
    # Different policies never share a page (invariant 2).
    page = 4096
    assert numamem.owner(a).address // page != numamem.owner(b).address // page


# ---- on_node -----------------------------------------------------------------------------------
def test_on_node_places_numpy_allocations(node0):
    pool = _pool.get_pool(node0)
    before = pool.stats()["in_use"]
    with on_node(node0) as scoped:
        assert scoped is pool
        x = np.arange(100_000, dtype=np.float64)
        y = np.sort(x * 2 + 1)
        z = np.dot(x, x)
    assert handler_name(x) == handler_name(y) == f"numamem_node{node0}_bind"
    assert handler_name() == "default_allocator"
    assert set(numamem.page_nodes(y).tolist()) == {node0}
    assert pool.stats()["in_use"] > before
    del x, y, z
    gc.collect()
    assert pool.stats()["in_use"] == before


def test_on_node_nesting_restores_exactly(node0):
    assert handler_name() == "default_allocator"
    with on_node(node0):
        with on_node(node0, policy="preferred"):
            assert handler_name() == f"numamem_node{node0}_preferred"
            with on_node(node0):
                assert handler_name() == f"numamem_node{node0}_bind"
            assert handler_name() == f"numamem_node{node0}_preferred"
        assert handler_name() == f"numamem_node{node0}_bind"
    assert handler_name() == "default_allocator"
    with pytest.raises(RuntimeError):
        with on_node(node0):
            raise RuntimeError("inside")
    assert handler_name() == "default_allocator"


def test_on_node_validates(node0):
    with pytest.raises(ValueError, match="no such node"):
        with on_node(4242):
            pass
    with pytest.raises(ValueError, match="policy"):
        with on_node(node0, policy="interleave"):
            pass
    with pytest.raises(TypeError):
        with on_node("0"):
            pass


def test_on_node_is_per_thread(node0, run_threads):
    # Two threads in different scopes at the same time each get their own pool; a thread started
    # inside a scope starts with NumPy's default.
    results = {}
    barrier = threading.Barrier(2)

    def worker(policy):
        with on_node(node0, policy=policy):
            barrier.wait()
            array = np.ones(10_000)
            barrier.wait()
            results[policy] = handler_name(array)

    assert not run_threads(worker, ("bind", "preferred"), barrier=barrier).errors
    assert results == {"bind": f"numamem_node{node0}_bind", "preferred": f"numamem_node{node0}_preferred"}
    seen = []
    with on_node(node0):
        t = threading.Thread(target=lambda: seen.append(handler_name(np.ones(3))))
        t.start()
        t.join()
    assert seen == ["default_allocator"]


def test_on_node_is_per_asyncio_task(node0):
    async def task(policy, started, release):
        with on_node(node0, policy=policy):
            started.set()
            await release.wait()
            return handler_name(np.ones(100))

    async def main():
        events = [asyncio.Event() for _ in range(3)]
        a = asyncio.create_task(task("bind", events[0], events[2]))
        b = asyncio.create_task(task("preferred", events[1], events[2]))
        await events[0].wait()
        await events[1].wait()
        outside = handler_name(np.ones(100))
        events[2].set()
        return await a, await b, outside

    assert asyncio.run(main()) == (f"numamem_node{node0}_bind", f"numamem_node{node0}_preferred",
                                   "default_allocator")


def test_arrays_freed_outside_and_in_other_threads(node0):
    pool = _pool.get_pool(node0)
    before = pool.stats()["in_use"]
    with on_node(node0):
        arrays = [np.full(n, 1.5) for n in (1, 100, 10_000, 200_000, 400_000)]
    handoff = queue.Queue()
    handoff.put(arrays)
    del arrays
    t = threading.Thread(target=lambda: handoff.get().clear())
    t.start()
    t.join()
    gc.collect()
    assert pool.stats()["in_use"] == before


def test_resize_keeps_node_and_content(node0):
    with on_node(node0):
        a = np.arange(1000, dtype=np.int64)
    a.resize(300_000, refcheck=False)  # NumPy reallocates through the array's own handler
    assert handler_name(a) == f"numamem_node{node0}_bind"
    np.testing.assert_array_equal(a[:1000], np.arange(1000))
    assert not a[1000:].any()
    assert set(numamem.page_nodes(a).tolist()) == {node0}


def test_on_node_zeros_from_recycled_memory(node0):
    with on_node(node0):
        for _ in range(5):
            dirty = np.empty(5000)
            dirty.fill(3.0)
            del dirty
            assert not np.zeros(5000).any()


def test_forked_child_allocates_from_pools(node0):
    with on_node(node0):
        parent = np.ones(1000)

    def child():
        with on_node(node0):
            a = np.arange(50_000.0)
            assert handler_name(a) == f"numamem_node{node0}_bind"
        assert float(parent.sum()) == 1000.0
        b = numamem.zeros(100, node=node0)
        assert not b.any()

    status = run_in_child(child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_release_pools_and_stats(node0):
    with on_node(node0):
        runs = [np.empty(MIDDLE_MAX, np.uint8) for _ in range(6)]  # two 1 MiB runs fill a chunk
    stats = numamem.pool_stats()[(node0, "bind")]
    assert set(stats) >= {"in_use", "mapped", "cached"} and stats["in_use"] >= 6 * MIDDLE_MAX
    mapped = stats["mapped"]
    del runs
    gc.collect()
    released = _pool.get_pool(node0).release()
    assert released >= 2 * _pool.CHUNK_BYTES  # the chunks only those runs used are given back
    after = numamem.pool_stats()[(node0, "bind")]
    assert after["mapped"] == mapped - released >= after["in_use"]
    assert numamem.release_pools() >= 0  # every pool: nothing left to give back is fine


def test_stress_threads_random_sizes_cross_thread_frees(node0, stress, run_threads):
    rounds = 4000 if stress else 400
    pool = _pool.get_pool(node0)
    gc.collect()
    before = pool.stats()["in_use"]
    handoff = queue.Queue()

    def worker(seed):
        rng = random.Random(seed)
        mine = []
        with on_node(node0):
            for i in range(rounds):
                size = rng.choice([rng.randint(1, 512), rng.randint(1, 70_000), rng.randint(1, 300_000)])
                if rng.random() < 0.2:
                    z = np.zeros(size, np.uint8)
                    assert not z.any()
                    mine.append((z, 0))
                else:
                    a = np.empty(size, np.uint8)
                    value = (seed * 31 + i) % 251
                    a.fill(value)
                    mine.append((a, value))
                if len(mine) > 20:
                    array, value = mine.pop(rng.randrange(len(mine)))
                    assert np.all(array == value), "a block was overwritten while live"
                    if rng.random() < 0.5:
                        handoff.put((array, value))  # freed by another thread
                    del array
                try:
                    other, value = handoff.get_nowait()
                    assert np.all(other == value)
                    del other
                except queue.Empty:
                    pass
        for array, value in mine:
            assert np.all(array == value)

    errors = run_threads(worker, 4).errors
    while not handoff.empty():
        handoff.get_nowait()
    gc.collect()
    assert not errors, errors[0]
    assert pool.stats()["in_use"] == before


# ---- the creators' fast path (issue 15 item 2) ------------------------------------------------------
from numamem import _fast, _topology  # noqa: E402
from numamem._pool import PoolExport  # noqa: E402

FAST_SIZES = [64, 1000, 1 << 10, 16 << 10, 64 << 10, 1 << 20]


def _fast_array(maker, *args, **kw):
    """The second call of a spelling: the first fills the request memo, the second is the fast path's."""
    maker(*args, **kw)
    array = maker(*args, **kw)
    assert isinstance(array.base, PoolExport), "not served by the fast path"
    return array


@pytest.mark.parametrize("nbytes", FAST_SIZES)
@pytest.mark.parametrize("maker", [numamem.empty, numamem.zeros])
def test_fast_path_keeps_node_alignment_and_owner(node0, maker, nbytes):
    a = _fast_array(maker, nbytes, np.uint8, node=node0)
    assert a.shape == (nbytes,) and a.dtype == np.uint8 and a.flags.writeable and a.flags.c_contiguous
    assert a.ctypes.data % 64 == 0
    own = numamem.owner(a)
    assert isinstance(own, _pool.PoolAllocation) and numamem.owner(a[1:][::2]) is own
    assert own.pool is _pool.get_pool(node0) and own.address == a.ctypes.data and own.nbytes == nbytes
    assert own.exports == 1 and a.base.obj is own
    assert own.info["request"].node == node0 and own.info["shape"] == (nbytes,)
    info = numamem.placement(a)
    assert info.bytes_per_node == {node0: nbytes} and info.policy == "bind" and info.requested["node"] == node0
    assert set(numamem.page_nodes(a).tolist()) == {node0}


def test_fast_path_shapes_dtypes_and_orders(node0):
    for shape, dtype, order in [((3, 4), np.float32, "C"), ((3, 4), np.float64, "F"), ((), np.int16, "C"),
                                ((2, 0, 5), "u2", "C"), (7, np.dtype([("x", "f4"), ("y", "i8")]), "C")]:
        a = _fast_array(numamem.zeros, shape, dtype, order, node=node0)
        b = np.zeros(shape, dtype, order)
        assert a.shape == b.shape and a.dtype == b.dtype and (a.strides == b.strides or not a.size)
        assert a.flags.f_contiguous == b.flags.f_contiguous and not a.tobytes().strip(b"\0")


@pytest.mark.parametrize("nbytes", [64, 777, 16 << 10, 64 << 10, 300 << 10])
def test_fast_path_zeros_are_zero_after_reuse(node0, nbytes):
    numamem.zeros(nbytes, np.uint8, node=node0)
    for _ in range(5):
        dirty = numamem.empty(nbytes, np.uint8, node=node0)
        dirty[:] = 255
        address = dirty.ctypes.data
        del dirty
        clean = numamem.zeros(nbytes, np.uint8, node=node0)
        assert isinstance(clean.base, PoolExport) and not clean.any()
    assert clean.ctypes.data == address  # the recycled block, cleared


def test_fast_path_block_returned_once_without_an_owner(node0):
    pool = _pool.get_pool(node0)
    _fast_array(numamem.empty, 4000, np.uint8, node=node0)
    gc.collect()
    before = pool.stats()["in_use"]
    arrays = [numamem.empty(4000, np.uint8, node=node0) for _ in range(10)]
    views = [a[::3][1:] for a in arrays]  # views of views keep the array, hence the block
    del arrays
    assert pool.stats()["in_use"] == before + 10 * 4096
    for v in views:
        v[:] = 7
    del views, v
    assert pool.stats()["in_use"] == before


def test_fast_path_array_outlives_its_owner_and_close_refuses_under_views(node0):
    pool = _pool.get_pool(node0)
    _fast_array(numamem.empty, 100, np.float64, node=node0)
    gc.collect()
    before = pool.stats()["in_use"]
    a = numamem.ones(100, node=node0)  # ones -> empty: the fast path
    a[:] = np.arange(100)
    own = numamem.owner(a)
    view = a[10:20][::2]
    del a
    with pytest.raises(BufferError, match="still use it"):
        own.close()
    own_ref = weakref.ref(own)
    del own
    gc.collect()
    assert own_ref() is not None  # the view's export keeps the owner
    np.testing.assert_array_equal(view, [10, 12, 14, 16, 18])
    own = own_ref()
    del view
    gc.collect()
    assert own.exports == 0
    own.close()
    own.close()
    assert own.closed and pool.stats()["in_use"] == before
    del own
    gc.collect()
    assert pool.stats()["in_use"] == before  # not freed twice


@pytest.mark.parametrize("kw", [{}, dict(pages="4k")])
def test_arrays_can_be_made_writeable_again(node0, kw):
    # NumPy asks the base for a writable buffer (a memoryview base had one; an export lends its owner's).
    a = numamem.empty(8, np.uint8, node=node0, **kw)
    a = numamem.empty(8, np.uint8, node=node0, **kw)
    a.setflags(write=False)
    a.setflags(write=True)
    a[:] = 5
    own = numamem.owner(a)
    assert own.exports == 1
    view = memoryview(a.base)
    assert own.exports == 2 and view.obj is own and bytes(view) == b"\x05" * 8
    view.release()
    assert own.exports == 1
    del a
    gc.collect()
    assert own.exports == 0


def test_fast_path_pickles_values_not_memory(node0):
    a = _fast_array(numamem.zeros, (4, 5), np.int32, node=node0)
    a[:] = np.arange(20).reshape(4, 5)
    copied = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(copied, a)
    assert numamem.owner(copied) is None
    with pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(a.base)


@pytest.mark.parametrize("call", [
    lambda n: _fast.pooled_array([8], np.uint8, "C", n, None, None, "bind", 64, "auto", None, False),
    lambda n: _fast.pooled_array(8, np.uint8, "c", n, None, None, "bind", 64, "auto", None, False),
    lambda n: _fast.pooled_array(8, np.uint8, "C", n, None, None, "bind", 64, "auto", True, False),
    lambda n: _fast.pooled_array(-1, np.uint8, "C", n, None, None, "bind", 64, "auto", None, False),
    lambda n: _fast.pooled_array(2**70, np.uint8, "C", n, None, None, "bind", 64, "auto", None, False),
    lambda n: _fast.pooled_array((2**40, 2**40), np.uint8, "C", n, None, None, "bind", 64, "auto", None, False),
    lambda n: _fast.pooled_array(8, object, "C", n, None, None, "bind", 64, "auto", None, False),
    lambda n: _fast.pooled_array(8, "S", "C", n, None, None, "bind", 64, "auto", None, False),
    lambda n: _fast.pooled_array(8, ("f8", (2,)), "C", n, None, None, "bind", 64, "auto", None, False),
    lambda n: _fast.pooled_array(8, "no such dtype", "C", n, None, None, "bind", 64, "auto", None, False),
    lambda n: _fast.pooled_array((1 << 20) + 1, np.uint8, "C", n, None, None, "bind", 64, "auto", None, False),
    lambda n: _fast.pooled_array(8, np.uint8, "C", n, None, None, "bind", 64, "4k", None, False),
    lambda n: _fast.pooled_array(8, np.uint8, "C", True, None, None, "bind", 64, "auto", None, False),
])
def test_fast_path_leaves_every_other_call_to_the_general_path(node0, call):
    for kw in (dict(pages="4k"), {}):
        numamem.empty(8, np.uint8, node=node0, **kw)  # memoise both requests
    assert _fast.pooled_array(8, np.uint8, "C", node0, None, None, "bind", 64, "auto", None, False) is not None
    assert call(node0) is None


def test_fast_path_converts_a_changing_dtype_like_each_time(node0):
    class DtypeLike:  # NumPy converts any object with a .dtype attribute; this one changes
        dtype = np.dtype(np.float32)

    like = DtypeLike()
    numamem.empty(4, like, node=node0)
    assert numamem.empty(4, like, node=node0).dtype == np.float32
    like.dtype = np.dtype(np.int16)
    assert numamem.empty(4, like, node=node0).dtype == np.int16


def test_fast_path_refusals_are_the_general_paths(node0):
    numamem.empty(8, node=node0)
    with pytest.raises(ValueError, match="negative"):
        numamem.empty(-1, node=node0)
    with pytest.raises(TypeError, match="Python objects"):
        numamem.zeros(3, object, node=node0)
    with pytest.raises(TypeError, match="not a NumPy dtype"):
        numamem.empty(3, "no such dtype", node=node0)
    with pytest.raises(ValueError, match="order"):
        numamem.empty(3, order="X", node=node0)
    assert numamem.empty(3, "S", node=node0).dtype == np.dtype("S1")


def test_fast_path_follows_the_topology_snapshot(node0):
    numamem.empty(8, node=node0)
    args = (8, np.uint8, "C", node0, None, None, "bind", 64, "auto", None, False)
    assert _fast.pooled_array(*args) is not None
    _topology.topology(refresh=True)  # a new snapshot: requests are validated again
    assert _fast.pooled_array(*args) is None
    numamem.empty(8, node=node0)
    assert _fast.pooled_array(*args) is not None


def test_fast_path_decorator_checks_the_signature():
    def creator(shape, dtype=float, order="C", *, node=None, nodes=None, axis=None, policy="bind",
                align=32, pages="auto", populate=None):
        return None

    with pytest.raises(TypeError, match="defaults differ"):
        _fast.fast_path(False)(creator)
    assert numamem.empty.__wrapped__.__name__ == "empty" and "uninitialised" not in numamem.empty.__doc__[:0]
