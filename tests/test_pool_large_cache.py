"""Freed direct mappings (blocks above 1 MiB) cached by the pool for the next fitting request.

The rules (numamem._largecache): reuse within 1/16 of the request, best fit;
at most ``large_cache()["max_bytes"]`` cached; given back after the decay (time, or the pool
handing out a cache's worth of other memory), at ``release()`` and before the pool maps anything
new, so that peak mapped memory still follows the peak of live bytes (issue 12 item 5).
"""
from __future__ import annotations

import ctypes
import gc
import math
import os
import time

import numpy as np
import pytest

from numamem import _pool
from numamem.errors import NodeMemoryError

from conftest import run_in_child, run_threads

MiB = 2**20
CHUNK = _pool.CHUNK_BYTES
GRANULE = _pool.SMALL_MAX
IDLE_CACHE = 4 * CHUNK
PEAK_FACTOR = 1.1  # the stated factor of tests/test_pools.py (issue 12 item 5)


def fake_pool(**kw):
    return _pool.Pool(0, "bind", "fake", **kw)


def fill(address, nbytes, value):
    ctypes.memset(address, value, nbytes)


def is_filled(address, nbytes, value):
    return np.all(np.frombuffer(ctypes.string_at(address, nbytes), np.uint8) == value)


@pytest.fixture
def kernel_pool(node0):
    """A kernel pool of this test's own (not the process-wide one other tests share)."""
    pool = _pool.Pool(node0, "bind")
    yield pool
    pool.release()


# ---- reuse --------------------------------------------------------------------------------------
def test_a_freed_large_block_serves_the_next_request_of_its_size(kernel_pool):
    a = kernel_pool.malloc(4 * MiB)
    fill(a, 4 * MiB, 0xA5)
    kernel_pool.free(a)
    b = kernel_pool.malloc(4 * MiB)
    # The same mapping, not a fresh one (a fresh mapping would read as zeros).
    assert b == a and is_filled(b, 4 * MiB, 0xA5)
    stats = kernel_pool.stats()
    assert stats["maps"] == 1 and stats["reused_mappings"] == 1 and stats["direct"] == 1
    kernel_pool.free(b)


def test_the_mapping_count_does_not_grow_over_1000_cycles():
    pool = fake_pool()
    for _ in range(1000):
        pool.free(pool.malloc(3 * MiB))
    previous = _pool.set_handler(pool.handler)
    try:
        for _ in range(1000):
            np.empty(3 * MiB, np.uint8)  # NumPy's temporaries, through the NEP 49 handler
    finally:
        _pool.set_handler(previous)
    stats = pool.stats()
    assert stats["maps"] == 1 and stats["reused_mappings"] == 1999
    assert stats["peak_mapped"] == 3 * MiB and stats["in_use"] == 0


def test_reuse_is_best_fit_within_a_sixteenth_of_the_request():
    pool = fake_pool()
    big, four = pool.malloc(8 * MiB), pool.malloc(4 * MiB)
    pool.free(big)
    pool.free(four)
    # 3 MiB: both cached mappings exceed it by more than 1/16, so a new mapping is made (and the
    # cache given back first: memory grows only with nothing cached).
    three = pool.malloc(3 * MiB)
    assert pool.stats()["maps"] == 3 and pool.stats()["cached_mappings"] == 0
    pool.free(three)
    pool.release()
    eight, four = pool.malloc(8 * MiB), pool.malloc(4 * MiB)
    pool.free(eight)
    pool.free(four)
    # 3.8 MiB fits the 4 MiB mapping (5% larger), not the 8 MiB one; best fit takes the smaller.
    assert pool.malloc(4 * MiB - 200 * 1024) == four
    assert pool.malloc(8 * MiB) == eight
    assert pool.stats()["maps"] == 5 and pool.stats()["direct"] == 2


def test_usable_size_of_a_reused_block_is_its_mapping():
    pool = fake_pool()
    a = pool.malloc(4 * MiB)
    pool.free(a)
    b = pool.malloc(4 * MiB - 100_000)
    assert b == a and pool.usable_size(b) == 4 * MiB


# ---- zeros from reused memory ----------------------------------------------------------------------
def test_calloc_and_zeros_of_a_reused_block_are_zero(kernel_pool):
    a = kernel_pool.malloc(4 * MiB)
    fill(a, 4 * MiB, 0xFF)
    kernel_pool.free(a)
    c = kernel_pool.calloc(4 * MiB, 1)
    assert c == a and is_filled(c, 4 * MiB, 0)
    fill(c, 4 * MiB, 0xFF)
    kernel_pool.free(c)
    owner = kernel_pool.allocation(4 * MiB, zero=True)
    assert owner.address == a and is_filled(owner.address, 4 * MiB, 0)
    fill(owner.address, 4 * MiB, 0xFF)
    owner.close()
    previous = _pool.set_handler(kernel_pool.handler)
    try:
        zeros = np.zeros(4 * MiB, np.uint8)  # NumPy's calloc through the handler
    finally:
        _pool.set_handler(previous)
    assert zeros.ctypes.data == a and not zeros.any()
    del zeros
    assert kernel_pool.stats()["maps"] == 1


# ---- freed is freed: checks and the directory ---------------------------------------------------
def test_a_cached_block_is_not_live_to_checks_and_frees():
    pool = fake_pool()
    owner = pool.allocation(4 * MiB)
    address = owner.address
    pool.free(address)  # wrongly, through the public API, while its owner lives
    for call in (pool.free, pool.usable_size, lambda a: pool.realloc(a, 10)):
        with pytest.raises(ValueError, match="not a live block"):
            call(address)
    with pytest.raises(ValueError, match="inside a block"):
        pool.free(address + 4096)
    owner.close()  # the owner's own free finds the block cached: refused, nothing changes
    stats = pool.stats()
    assert stats["in_use"] == 0 and stats["allocations"] == 0 and stats["cached_mappings"] == 1
    a, b = pool.malloc(4 * MiB), pool.malloc(4 * MiB)
    assert a != b and pool.stats()["cached_mappings"] == 0


# ---- bounded, and given back -------------------------------------------------------------------
def test_the_cache_holds_at_most_its_cap():
    pool = fake_pool()
    assert pool.large_cache() == {"max_bytes": 64 * MiB, "decay": 1.0}
    pool.large_cache(max_bytes=8 * MiB)
    blocks = [pool.malloc(3 * MiB) for _ in range(5)]
    for address in blocks:
        pool.free(address)
    stats = pool.stats()
    assert stats["cached_mappings"] == 2 and stats["mapped"] == stats["cached_mapping_bytes"] == 6 * MiB
    # The newest are kept (the last two freed).
    assert pool.malloc(3 * MiB) in blocks[-2:]
    live = pool.malloc(3 * MiB)
    big = pool.malloc(16 * MiB)  # larger than the cap: unmapped on free, as without a cache
    pool.free(big)
    assert pool.stats()["cached_mapping_bytes"] == 0 and pool.stats()["mapped"] == 2 * 3 * MiB
    pool.free(live)
    assert pool.stats()["cached_mapping_bytes"] == 3 * MiB
    assert pool.large_cache(max_bytes=0)["max_bytes"] == 0
    assert pool.stats()["cached_mappings"] == 0 and pool.stats()["mapped"] == 3 * MiB


def test_cached_mappings_are_given_back_after_the_decay():
    pool = fake_pool()
    pool.large_cache(decay=0.05)
    keep = pool.malloc(2 * MiB)
    pool.free(pool.malloc(4 * MiB))
    assert pool.stats()["cached_mapping_bytes"] == 4 * MiB
    time.sleep(0.2)
    pool.free(keep)  # the pool's next large call: the 4 MiB mapping is past its decay
    stats = pool.stats()
    assert stats["cached_mapping_bytes"] == 2 * MiB and stats["mapped"] == 2 * MiB
    run = pool.malloc(3 * GRANULE)  # maps a chunk (giving the cache back): cache another one
    pool.free(pool.malloc(2 * MiB))
    assert pool.stats()["cached_mapping_bytes"] == 2 * MiB
    time.sleep(0.2)
    pool.free(run)  # a run's free finds it past its decay too
    stats = pool.stats()
    assert stats["cached_mapping_bytes"] == 0 and stats["mapped"] == CHUNK


def test_cached_mappings_unused_while_the_pool_serves_other_sizes_are_given_back():
    pool = fake_pool()
    pool.large_cache(max_bytes=8 * MiB)
    runs = [pool.malloc(16 * GRANULE) for _ in range(4)]  # two chunks, then idle (kept)
    for address in runs:
        pool.free(address)
    pool.free(pool.malloc(4 * MiB))
    maps = pool.stats()["maps"]
    for _ in range(8):  # 8 MiB of runs, no new mapping: within the cap's worth, kept
        pool.free(pool.malloc(16 * GRANULE))
    assert pool.stats()["cached_mappings"] == 1
    for _ in range(2):  # past it: the workload moved on, the mapping goes back
        pool.free(pool.malloc(16 * GRANULE))
    stats = pool.stats()
    assert stats["cached_mappings"] == 0 and stats["maps"] == maps and stats["mapped"] == 2 * CHUNK


def test_release_gives_cached_mappings_back():
    pool = fake_pool()
    pool.free(pool.malloc(5 * MiB))
    assert pool.release() == 5 * MiB and pool.stats()["mapped"] == 0


def test_a_failed_map_is_retried_after_the_cache_is_given_back():
    pool = _pool.Pool(0, "bind", _pool.fake_source(limit=3))
    pool.free(pool.malloc(4 * MiB))  # two chunks' worth, cached
    big = pool.malloc(6 * MiB)  # three chunks: possible only once the cached mapping is unmapped
    assert pool.stats()["cached_mappings"] == 0 and pool.stats()["direct"] == 1
    with pytest.raises(NodeMemoryError):
        pool.malloc(100)
    pool.free(big)


def phases(sizes, count):
    """``count`` arrays of each size in turn, all live in a phase; return the peak live bytes."""
    peak = 0
    for size in sizes:
        arrays = [np.empty(size, np.uint8) for _ in range(count)]
        peak = max(peak, sum(a.nbytes for a in arrays))
        del arrays
    return peak


@pytest.mark.parametrize("sizes, count", [
    ([int(8 * MiB * 0.97 ** p) for p in range(12)], 12),        # sizes within 1/16 of each other
    # Each size twice (no two sizes within 1/16), then runs and a size never seen.
    ([int(4 * MiB * 0.9 ** (p // 2)) + 100 for p in range(10)] + [600_000, 300_000, 8 * MiB], 20),
    ([3 * MiB, 40 * MiB, 2 * MiB, 3 * MiB] * 3, 4),               # a phase of more than the cap
])
def test_peak_mapped_follows_live_bytes_with_the_cache(sizes, count):
    pool = fake_pool()
    previous = _pool.set_handler(pool.handler)
    try:
        peak_live = phases(sizes, count)
    finally:
        _pool.set_handler(previous)
    gc.collect()
    stats = pool.stats()
    assert stats["peak_mapped"] <= PEAK_FACTOR * peak_live + IDLE_CACHE, (stats, peak_live)
    assert stats["reused_mappings"] > 0 and stats["maps"] < len(sizes) * count
    assert stats["in_use"] == 0 and stats["cached_mapping_bytes"] <= 64 * MiB
    pool.large_cache(decay=0)  # the next large call finds everything past its decay
    pool.free(pool.malloc(2 * MiB))
    assert pool.stats()["mapped"] <= IDLE_CACHE + 2 * MiB


# ---- processes and threads -----------------------------------------------------------------------
def test_a_forked_child_reuses_its_copy_of_the_cache(kernel_pool):
    a = kernel_pool.malloc(4 * MiB)
    fill(a, 4 * MiB, 0x5A)
    kernel_pool.free(a)

    def child():
        b = kernel_pool.malloc(4 * MiB)
        assert b == a and is_filled(b, 4 * MiB, 0x5A)
        fill(b, 4 * MiB, 0x11)  # copy-on-write: the parent's pages keep their bytes
        kernel_pool.free(b)
        c = kernel_pool.calloc(4 * MiB, 1)
        assert c == a and is_filled(c, 4 * MiB, 0)
        kernel_pool.free(c)

    status = run_in_child(child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    b = kernel_pool.malloc(4 * MiB)
    assert b == a and is_filled(b, 4 * MiB, 0x5A)
    kernel_pool.free(b)


def test_threads_share_the_cache_consistently():
    pool = fake_pool()
    pool.large_cache(max_bytes=16 * MiB)

    def work(i):
        for k in range(300):
            size = (2 + (i + k) % 3) * MiB
            address = pool.malloc(size)
            ctypes.memset(address, i, 4096)
            assert ctypes.string_at(address, 1) == bytes([i])
            pool.free(address)

    run = run_threads(work, 4)
    assert not run.errors, run.errors
    stats = pool.stats()
    assert stats["in_use"] == 0 and stats["allocations"] == 0 and stats["direct"] == 0
    assert stats["cached_mapping_bytes"] <= 16 * MiB and stats["mapped"] == stats["cached_mapping_bytes"]


# ---- arguments -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, error, match", [
    ({"max_bytes": -1}, ValueError, "max_bytes"),
    ({"max_bytes": True}, TypeError, "max_bytes"),
    ({"max_bytes": 2.5}, TypeError, "max_bytes"),
    ({"max_bytes": "64M"}, TypeError, "max_bytes"),
    ({"decay": -0.1}, ValueError, "decay"),
    ({"decay": math.nan}, ValueError, "decay"),
    ({"decay": math.inf}, ValueError, "decay"),
    ({"decay": "1s"}, TypeError, "decay"),
    ({"decay": False}, TypeError, "decay"),
])
def test_large_cache_arguments_are_checked(kw, error, match):
    pool = fake_pool()
    with pytest.raises(error, match=match):
        pool.large_cache(**kw)
    assert pool.large_cache() == {"max_bytes": 64 * MiB, "decay": 1.0}


def test_large_cache_takes_numpy_numbers():
    pool = fake_pool()
    assert pool.large_cache(max_bytes=np.int64(8 * MiB), decay=np.float32(0.5)) == {"max_bytes": 8 * MiB, "decay": 0.5}


def test_no_cache_unmaps_on_free_as_before():
    pool = fake_pool()
    pool.large_cache(max_bytes=0)
    for _ in range(3):
        pool.free(pool.malloc(4 * MiB))
    assert pool.stats()["mapped"] == 0 and pool.stats()["maps"] == 3
