"""Ownership (invariant 1): the region outlives every view and is unmapped exactly once."""
from __future__ import annotations

import gc
import re
import threading
import weakref

import numpy as np
import pytest

import numamem
from numamem._ndarray import Export
from numamem.inspect import PoolAllocation, Region


# Small default arrays come from pools (tests/test_pools.py); pages="4k" or a size above the pool
# limit gives an array a Region of its own, which these tests are about.
OWN = dict(pages="4k")


@pytest.mark.parametrize("kw, owner_type", [(OWN, Region), ({}, PoolAllocation)])
def test_base_chain_ends_in_the_owner(node0, kw, owner_type):
    array = numamem.zeros((4, 4), node=node0, **kw)
    # One counted export of the owner (numamem._ndarray.Export; a memoryview before issue 15).
    assert isinstance(array.base, Export)
    region = array.base.obj
    assert isinstance(region, owner_type) and numamem.owner(array) is region
    assert numamem.owner(array[1:, ::2].T) is region
    assert numamem.owner(np.zeros(3)) is None


def test_slice_outlives_array_and_stays_readable(node0, mapping_counter):
    array = numamem.empty(1 << 20, np.int64, node=node0)
    array[:] = np.arange(array.size)
    tail = array[-10:]
    region = weakref.ref(numamem.owner(array))
    del array
    gc.collect()
    assert region() is not None
    np.testing.assert_array_equal(tail, np.arange((1 << 20) - 10, 1 << 20))
    del tail
    gc.collect()
    assert region() is None
    assert mapping_counter() == (1, 1)


def test_each_mapping_released_exactly_once(node0, mapping_counter):
    arrays = [numamem.zeros(1000 + i, node=node0, **OWN) for i in range(50)]
    views = [a[::2] for a in arrays[:10]]
    assert mapping_counter() == (50, 0)
    del arrays
    assert mapping_counter() == (50, 40)
    del views
    assert mapping_counter() == (50, 50)


def test_close_refuses_while_views_live(node0, mapping_counter):
    array = numamem.zeros(100, node=node0, **OWN)
    region = numamem.owner(array)
    view = array[10:20]
    del array
    with pytest.raises(BufferError, match="exported"):
        region.close()
    assert not region.closed and region.exports == 1
    view[:] = 3.0  # still mapped and writable
    assert view.sum() == 30.0
    del view
    gc.collect()
    region.close()
    assert region.closed and region.exports == 0
    region.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        region.ndarray((1,), np.float64)
    with pytest.raises(ValueError, match="closed"):
        memoryview(region)
    del region
    assert mapping_counter() == (1, 1)  # dealloc after close does not unmap again


def test_memoryview_export_pins_region(node0):
    region = Region(4096)
    view = memoryview(region)
    assert view.nbytes == 4096 and not view.readonly
    with pytest.raises(BufferError):
        region.close()
    view.release()
    region.close()


def test_region_ndarray_bounds():
    region = Region(64)
    with pytest.raises(ValueError, match="does not fit"):
        region.ndarray((9,), np.float64)
    with pytest.raises(ValueError, match="does not fit"):
        region.ndarray((1,), np.float64, offset=60)
    with pytest.raises(ValueError, match="negative"):
        region.ndarray((-1,), np.float64)
    with pytest.raises(ValueError, match="order"):
        region.ndarray((1,), np.float64, order="K")
    a = region.ndarray((2, 4), np.float64, "F")
    assert a.flags.f_contiguous and a.flags.writeable


@pytest.mark.parametrize("align", [4096, 1 << 16, 1 << 21])
def test_region_trims_alignment_slack(align):
    region = Region(5000, align)
    assert region.address % align == 0
    assert region.mapped_bytes == 8192 and region.page_size == 4096


def test_region_rejects_bad_hugetlb_and_overflow():
    with pytest.raises(ValueError, match="2 MiB or 1 GiB"):
        Region(10, 0, 4 << 20)
    with pytest.raises(ValueError, match="power of two"):
        Region(10, 3000)
    with pytest.raises(OverflowError):
        Region(2**64 - 10)


def test_mmap_failure_is_oserror():
    with pytest.raises(OSError) as info:
        Region(2**62)  # no address space for this
    assert info.value.errno is not None and "mmap" in str(info.value)


def test_regions_freed_from_other_threads(node0, mapping_counter):
    arrays = [numamem.zeros(5000, node=node0, **OWN) for _ in range(20)]
    done = threading.Event()

    def drop():
        arrays.clear()
        done.set()

    thread = threading.Thread(target=drop)
    thread.start()
    thread.join()
    assert done.is_set()
    assert mapping_counter() == (20, 20)


def test_concurrent_allocation_from_threads(node0, run_threads):
    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(50):
            n = int(rng.integers(1, 200_000))
            a = numamem.empty(n, np.uint8, node=node0)
            a[:] = seed
            assert int(a[-1]) == seed and numamem.owner(a).nbytes == n

    errors = run_threads(work, 4).errors
    assert not errors


@pytest.mark.parametrize("dtype", [object, np.dtype([("a", "i8"), ("b", "O")]), np.dtype(("O", (2,)))])
def test_arrays_over_raw_memory_refuse_reference_dtypes(node0, dtype):
    # Raw bytes read as object pointers segfault (issue 12, item 3): refused where every owner's
    # arrays are built, for regions and pool blocks alike.
    region = Region(800)
    with pytest.raises(TypeError, match=f"dtype {re.escape(str(np.dtype(dtype)))} holds Python object"):
        region.ndarray((2,), dtype)
    block = numamem.pools.get_pool(node0).allocation(800)
    with pytest.raises(TypeError, match="holds Python object"):
        block.ndarray((2,), dtype)
    assert region.exports == 0 and block.exports == 0
    region.close()
    block.close()


def test_arrays_over_raw_memory_check_the_size_without_wrapping():
    region = Region(800)
    with pytest.raises(ValueError, match="does not fit the 800 bytes"):
        region.ndarray((2**32, 2**32), np.uint8)  # the product wraps to 0 in 64 bits
    assert region.ndarray((100,), np.float64).nbytes == 800
