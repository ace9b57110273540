"""Creators, placement, alignment, dtypes and the checks made before anything is mapped."""
from __future__ import annotations

import errno
import pickle

import numpy as np
import pytest

import numamem
from numamem import _kernel, _place, arrays
from numamem.errors import HugePageError, NodeMemoryError, PageSizeError


ALL_DTYPES = [t for t in np.typecodes["All"] if t not in "O"] + [
    "i4,f8", [("x", "<f4", (3,)), ("y", "u1")], "M8[ns]", "m8[s]", "U7", "S5", "V12", ">f8",
]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_every_dtype_zeros_and_placement(dtype, node0):
    array = numamem.zeros((3, 4), dtype, node=node0)
    assert array.dtype == np.empty(0, dtype).dtype  # unsized strings become one character, as in NumPy
    assert array.shape == (3, 4)
    assert array.tobytes() == bytes(array.nbytes)
    # V0 has no bytes at all: then no page to report.
    assert set(numamem.page_nodes(array).tolist()) == ({node0} if array.nbytes else set())


@pytest.mark.parametrize("shape", [(), (0,), (0, 5), (5, 0, 2), 7, (2, 3, 4, 5)])
def test_size_zero_and_zero_d(shape, node0):
    array = numamem.empty(shape, np.float64, node=node0)
    assert array.shape == (shape if isinstance(shape, tuple) else (shape,))
    assert numamem.owner(array) is not None
    if array.size:
        array[...] = 2.5
        assert np.all(array == 2.5)
    else:
        assert numamem.page_nodes(array).size == 0


@pytest.mark.parametrize("order", ["C", "F"])
def test_order(order, node0):
    array = numamem.ones((4, 6), np.int32, order, node=node0)
    assert array.flags.c_contiguous == (order == "C")
    assert array.flags.f_contiguous == (order == "F")
    assert np.all(array == 1)


@pytest.mark.parametrize("exponent", range(0, 22))
def test_every_power_of_two_alignment(exponent, node0):
    align = 1 << exponent
    for nbytes in (1, 100, 4096 * 3 + 5):
        array = numamem.empty(nbytes, np.uint8, node=node0, align=align)
        assert array.ctypes.data % align == 0
        assert numamem.placement(array).alignment >= align
        array[:] = 7
        assert int(array.sum()) == 7 * nbytes


def test_named_alignments(topo, node0):
    page = numamem.empty(10, node=node0, align="page")
    assert page.ctypes.data % topo.base_page_size == 0
    huge = numamem.empty(10, node=node0, align="hugepage")
    assert huge.ctypes.data % (2 * 2**20) == 0


def test_full_and_likes(node0):
    a = numamem.full((2, 3), 4.5, node=node0)
    assert a.dtype == np.float64 and np.all(a == 4.5)
    s = numamem.full(3, (1, 2.5), "i4,f8", node=node0)
    assert s[2]["f0"] == 1 and s[2]["f1"] == 2.5
    proto = np.arange(12.0).reshape(3, 4).T  # F-contiguous
    e = numamem.empty_like(proto, node=node0)
    assert e.shape == (4, 3) and e.flags.f_contiguous
    z = numamem.zeros_like(proto, dtype=np.int16, node=node0)
    assert z.dtype == np.int16 and not z.any()
    o = numamem.ones_like(a)  # a numamem prototype lends its placement
    assert np.all(o == 1) and numamem.placement(o).requested["node"] == node0
    f = numamem.full_like(a, 9, shape=(5,))
    assert f.shape == (5,) and np.all(f == 9)
    with pytest.raises(ValueError, match="not numamem memory"):
        numamem.empty_like(proto)


def test_asarray_copies(node0):
    source = np.arange(10, dtype=np.int64)
    placed = numamem.asarray(source, node=node0)
    assert numamem.owner(placed) is not None
    np.testing.assert_array_equal(placed, source)
    source[0] = 99
    assert placed[0] == 0
    again = numamem.asarray(placed, dtype=np.float32, node=node0)
    assert again.dtype == np.float32 and again is not placed
    lists = numamem.asarray([[1, 2], [3, 4]], node=node0)
    assert lists.tolist() == [[1, 2], [3, 4]]


def test_zeros_are_zero_after_reuse(node0):
    # Fill and free many arrays, then ask for zeros of the same sizes: recycled or not, zero.
    for _ in range(3):
        for size in (8, 4096, 65536, 3 << 20):
            dirty = numamem.empty(size, np.uint8, node=node0)
            dirty[:] = 0xAB
            del dirty
            clean = numamem.zeros(size, np.uint8, node=node0)
            assert not clean.any()


# ---- validation before mapping ---------------------------------------------------------------
BAD_ARGUMENTS = [
    (dict(shape=-1), ValueError, "negative"),
    (dict(shape=(2, -3)), ValueError, "negative"),
    (dict(shape=2.5), TypeError, "shape"),
    (dict(shape=True), TypeError, "shape"),
    (dict(shape=(2**40, 2**40)), ValueError, "bytes"),
    (dict(dtype="nope"), TypeError, "dtype"),
    (dict(dtype=object), TypeError, "Python objects"),
    (dict(order="X"), ValueError, "order"),
    (dict(policy="nearest"), ValueError, "policy"),
    (dict(pages="64k"), ValueError, "pages"),
    (dict(align=0), ValueError, "power of two"),
    (dict(align=48), ValueError, "power of two"),
    (dict(align=-64), ValueError, "power of two"),
    (dict(align=True), TypeError, "align"),
    (dict(align="big"), TypeError, "align"),
    (dict(align=2**31), ValueError, "1 GiB"),
    (dict(node="0"), TypeError, "node"),
    (dict(node=1.0), TypeError, "node"),
    (dict(node=9999), ValueError, "no such node"),
    (dict(node=-1), ValueError, "no such node"),
    (dict(node=None), ValueError, "needs node"),
    (dict(policy="interleave"), ValueError, "needs nodes"),
    (dict(policy="local", node=0), ValueError, "local"),
    (dict(nodes=0), TypeError, "sequence"),
    (dict(nodes=[]), ValueError, "empty"),
    (dict(node=0, nodes=[0]), ValueError, "not both"),
    (dict(node=0, axis=0), ValueError, "axis"),
    (dict(policy="interleave", nodes=[0, 0]), ValueError, "twice"),
    (dict(nodes=[0, 0], axis=5), ValueError, "out of range"),
    (dict(shape=(3, 4), nodes=[0, 0], axis=1), ValueError, "not contiguous"),
    (dict(shape=(), nodes=[0], axis=0), ValueError, "0-d"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_ARGUMENTS, ids=lambda v: str(v)[:40])
def test_bad_arguments_raise_before_mapping(kwargs, error, match, mapping_counter):
    kwargs = dict(kwargs)
    shape = kwargs.pop("shape", (16,))
    dtype = kwargs.pop("dtype", np.float64)
    order = kwargs.pop("order", "C")
    kwargs.setdefault("node", 0) if "nodes" not in kwargs and kwargs.get("policy") not in ("interleave", "local") else None
    with pytest.raises(error, match=match):
        numamem.empty(shape, dtype, order, **kwargs)
    assert mapping_counter() == (0, 0)


def test_node_outside_cpuset_refused(fake_topology, node0, mapping_counter, topo):
    fake_topology(allowed_nodes=frozenset(set(topo.node_ids) - {node0}))
    with pytest.raises(ValueError, match="cpuset"):
        numamem.empty(10, node=node0)
    assert mapping_counter() == (0, 0)


def test_memoryless_node_refused(fake_topology, topo, node0, mapping_counter):
    nodes = tuple(numamem.Node(n.id, n.cpus, 0 if n.id == node0 else n.mem_total, 0, {}) for n in topo.nodes)
    fake_topology(nodes=nodes)
    with pytest.raises(ValueError, match="has no memory"):
        numamem.zeros(10, node=node0)
    assert mapping_counter() == (0, 0)


def test_capacity_checked_before_mapping(node0, topo, mapping_counter):
    too_big = topo.node(node0).mem_total + 2**30
    with pytest.raises(NodeMemoryError) as info:
        numamem.empty(too_big, np.uint8, node=node0)
    err = info.value
    assert isinstance(err, MemoryError)
    assert err.node == node0 and err.requested >= too_big and err.free is not None and err.free < too_big
    assert f"node {node0}" in str(err)
    assert mapping_counter() == (0, 0)
    restored = pickle.loads(pickle.dumps(err))
    assert (restored.node, restored.requested, restored.free) == (err.node, err.requested, err.free)


def test_pages_elsewhere_after_populate_is_an_error_and_unmaps(node0, mapping_counter):
    # Simulate the kernel spilling pages to another node under MPOL_PREFERRED (a full node).
    with _place.injected(misplace_every=2, node=node0):
        with pytest.raises(NodeMemoryError, match="landed elsewhere") as info:
            numamem.empty(1 << 20, np.uint8, node=node0, pages="4k")  # a mapping of its own
    assert set(info.value.pages) == {node0, node0 + 1}  # where the pages went
    assert mapping_counter() == (1, 1)


@pytest.mark.parametrize("nbytes", [(1 << 20) + 4096, 16 << 20])
def test_sampled_misplacement_in_large_ranges(node0, mapping_counter, nbytes):
    # Large ranges are checked on a sample plus the kernel's strict walk; a sampled page off the
    # node must still be an error naming how many pages are elsewhere.
    with _place.injected(misplace_last=True, node=node0):
        with pytest.raises(NodeMemoryError, match="landed elsewhere"):
            numamem.empty(nbytes, np.uint8, node=node0)
    assert mapping_counter() == (1, 1)


def test_kernel_strict_check_failure_is_an_error(node0, mapping_counter):
    # mbind(MPOL_BIND, MPOL_MF_STRICT) fails with EIO when a page is off the node.
    with _place.injected(step="bind", errno=errno.EIO):
        with pytest.raises(NodeMemoryError, match="landed elsewhere"):
            numamem.empty(16 << 20, np.uint8, node=node0)
    assert mapping_counter() == (1, 1)


def test_lazy_bind_leaves_pages_unfaulted(node0):
    array = numamem.empty(64 * 4096, np.uint8, node=node0, populate=False)
    status = numamem.page_nodes(array)
    # ENOENT for a page never touched; Debian's 6.1 kernel says EFAULT instead.
    assert set(status.tolist()) <= {-errno.ENOENT, -errno.EFAULT} and len(status) == 64
    array[::4096] = 1
    assert set(numamem.page_nodes(array).tolist()) == {node0}
    assert numamem.placement(array).policy == "bind"


def test_policies_reported_by_kernel(node0):
    pref = numamem.zeros(1 << 16, node=node0, policy="preferred", populate=True)
    assert numamem.placement(pref).policy == "preferred"
    inter = numamem.zeros(1 << 16, nodes=[node0], policy="interleave", populate=True)
    info = numamem.placement(inter)
    assert info.policy == "interleave" and info.policy_nodes == (node0,)
    local = numamem.zeros(1 << 16, policy="local", populate=True)
    assert numamem.placement(local).policy == "local"
    bound = numamem.zeros(1 << 16, node=node0)
    info = numamem.placement(bound)
    assert info.policy == "bind" and info.policy_nodes == (node0,)
    assert info.bytes_per_node == {node0: bound.nbytes} and info.unplaced_bytes == 0


# ---- page kinds --------------------------------------------------------------------------------
def test_4k_pages_have_no_thp(node0, topo):
    array = numamem.zeros(16 << 20, np.uint8, node=node0, pages="4k")
    info = numamem.placement(array)
    assert info.page_size == topo.base_page_size
    assert info.thp_bytes == 0 and info.pages == "4k"


def test_thp_reported_from_kernel(node0, topo):
    if topo.thp not in ("always", "madvise"):
        with pytest.raises(PageSizeError, match="transparent huge pages"):
            numamem.empty(16 << 20, np.uint8, node=node0, pages="thp")
        return
    array = numamem.zeros(64 << 20, np.uint8, node=node0, pages="thp")
    info = numamem.placement(array)
    # The mapping is aligned for huge pages; the array starts a few pages into it (staggered).
    assert numamem.owner(array).address % topo.thp_size == 0
    # The kernel may fail to find some huge pages (fragmentation), but with direct compaction
    # for madvised ranges it finds at least one on a machine with this much free memory.
    assert info.thp_bytes >= topo.thp_size and info.pages == "thp"


def test_thp_never_is_an_error_unless_a_fallback_is_listed(fake_topology, node0):
    fake_topology(thp="never")
    with pytest.raises(PageSizeError, match="never"):
        numamem.empty(8 << 20, np.uint8, node=node0, pages="thp")
    array = numamem.zeros(8 << 20, np.uint8, node=node0, pages=("thp", "4k"))
    info = numamem.placement(array)
    assert info.requested["pages_obtained"] == "4k"
    assert "never" in info.requested["fallback_from"][0]
    auto = numamem.zeros(8 << 20, np.uint8, node=node0)  # auto: no THP advice, no error
    # What the kernel gave (issue 12, item 12), not "auto": the real kernel may still use THP.
    obtained = numamem.placement(auto)
    assert obtained.requested["pages_obtained"] == obtained.pages and obtained.pages in ("4k", "thp")


@pytest.mark.parametrize("kind, size", [("2M", 2 << 20), ("1G", 1 << 30)])
def test_hugetlb_shortfall_is_an_error_before_mapping(kind, size, node0, topo, mapping_counter):
    pool = topo.node(node0).hugepages.get(size)
    if pool is not None and pool.free >= 2:
        pytest.skip(f"this machine has {kind} pages reserved on node {node0}; the guest tier covers it")
    with pytest.raises(HugePageError) as info:
        numamem.empty(2 * size, np.uint8, node=node0, pages=kind)
    assert info.value.node == node0 and info.value.page_size == size
    assert mapping_counter() == (0, 0)
    fallback = numamem.zeros(2 * size if size < 2**30 else 4096, np.uint8, node=node0, pages=(kind, "4k"))
    assert numamem.placement(fallback).requested["pages_obtained"] == "4k"


# ---- block split ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, dtype, count", [
    ((64, 1024), np.float64, 3), ((1000, 3), np.float32, 2), ((7, 5), np.int8, 4), ((1, 4096, 3), np.float64, 2),
])
def test_block_split_geometry(shape, dtype, count, node0, topo):
    array = numamem.empty(shape, dtype, nodes=[node0] * count, axis=0 if shape[0] > 1 else 1)
    parts = numamem.blocks(array)
    assert len(parts) == count
    axis = parts[0].axis
    assert parts[0].start == 0 and parts[-1].stop == shape[axis]
    for before, after in zip(parts, parts[1:]):
        assert before.stop == after.start
        assert (array.ctypes.data + after.offset) % topo.base_page_size == 0
    row = array.nbytes // shape[axis]
    granule = topo.base_page_size // np.gcd(topo.base_page_size, row)
    sizes = [p.stop - p.start for p in parts]
    ideal = shape[axis] / count
    assert max(abs(s - ideal) for s in sizes) <= granule
    for part in parts:
        part.array[...] = part.index
    assert np.all(parts[-1].array == count - 1)


def test_block_split_f_order_last_axis(node0):
    array = numamem.zeros((4096, 8), np.float32, "F", nodes=[node0, node0], axis=1)
    parts = numamem.blocks(array)
    assert [(p.start, p.stop) for p in parts] == [(0, 4), (4, 8)]


def test_blocks_needs_the_created_array(node0):
    array = numamem.zeros((8, 1024), nodes=[node0, node0])
    with pytest.raises(ValueError, match="view"):
        numamem.blocks(array[1:])
    with pytest.raises(TypeError):
        numamem.blocks(np.zeros(3))
    single = numamem.blocks(numamem.zeros(5, node=node0))
    assert len(single) == 1 and single[0].node == node0


# ---- page_nodes / placement / migrate ----------------------------------------------------------
def test_page_nodes_of_plain_numpy_array(node0):
    plain = np.ones(1 << 20)
    status = numamem.page_nodes(plain)
    # Plain ints (issue 12, item 24): intp, as NumPy indexes, not move_pages' int32.
    assert status.dtype == np.intp and len(status) >= (plain.nbytes // 4096)
    assert np.all(status >= 0)
    info = numamem.placement(plain)
    assert info.requested is None and sum(info.bytes_per_node.values()) == plain.nbytes


def test_placement_counts_only_the_arrays_bytes(node0):
    array = numamem.zeros(10_000, np.uint8, node=node0)
    view = array[100:5000]
    assert numamem.placement(view).bytes_per_node == {node0: 4900}


def test_migrate_keeps_content(node0):
    array = numamem.empty((256, 1024), np.float32, nodes=[node0, node0])
    array[...] = np.arange(array.size, dtype=np.float32).reshape(array.shape)
    expected = array.copy()
    assert numamem.migrate(array, node0) is array
    np.testing.assert_array_equal(array, expected)
    info = numamem.placement(array)
    assert info.bytes_per_node == {node0: array.nbytes} and info.policy == "bind"
    assert info.requested["nodes"] == [] and info.requested["node"] == node0


def test_migrate_errors(node0):
    with pytest.raises(TypeError, match="asarray"):
        numamem.migrate(np.zeros(10), node0)
    array = numamem.zeros(10, node=node0, pages="4k")
    with pytest.raises(ValueError, match="no such node"):
        numamem.migrate(array, 4242)
    with pytest.raises(TypeError):
        numamem.migrate(array, "0")


def test_migrate_of_a_pooled_array(node0, topo, fake_topology):
    pooled = numamem.zeros(10, node=node0)
    assert numamem.migrate(pooled, node0) is pooled  # already there: nothing to do
    # To another node it cannot move alone (its pages hold other arrays): the error says how.
    other = max(topo.node_ids) + 1
    fake_topology(nodes=topo.nodes + (numamem.Node(other, (), topo.node(node0).mem_total, 2**30, {}),),
                  allowed_nodes=frozenset(topo.allowed_nodes | {other}))
    with pytest.raises(TypeError, match=rf"pool.*asarray\(a, node={other}\)"):
        numamem.migrate(pooled, other)


def test_large_ranges_not_aligned_to_2mib_verify(node0):
    # Mappings of base pages are only 4 KiB-aligned: the sampled check must stay inside them.
    arrays = [numamem.zeros((8 << 20) + 4096 * i, np.uint8, node=node0, pages="4k") for i in range(6)]
    for array in arrays:
        assert numamem.placement(array).bytes_per_node == {node0: array.nbytes}


def test_large_arrays_are_staggered(node0):
    # Equal large arrays must not all start at the same offset modulo 64 KiB (cache-set and
    # 4 KiB aliasing in streams over several of them).
    starts = {numamem.empty(4 << 20, np.float64, node=node0).ctypes.data % (64 << 10) for _ in range(4)}
    assert len(starts) > 1
    split = numamem.empty((512, 1024), np.float64, nodes=[node0, node0])
    assert split.ctypes.data == numamem.owner(split).address  # block splits start at their page


def test_page_histogram_uses_no_sort(monkeypatch, node0, mapping_counter):
    # NumPy's argsort (behind np.unique) returned wrong orders inside the QEMU-emulated guests, and
    # the misplacement error reports its page counts on exactly those guests: count with bincount
    # (inspect.histogram) or, in the placement routine, in first-seen order.
    def no_sort(*args, **kwargs):
        raise AssertionError("the page histogram must not sort")

    for name in ("unique", "sort", "argsort"):
        monkeypatch.setattr(np, name, no_sort)
    with _place.injected(misplace_every=2, node=node0):
        with pytest.raises(NodeMemoryError, match="landed elsewhere") as info:
            numamem.empty(64 * 4096, np.uint8, node=node0, pages="4k")
    monkeypatch.undo()
    assert f"{{{node0}: 32, {node0 + 1}: 32}}" in str(info.value)
    assert mapping_counter() == (1, 1)
    from numamem.inspect import histogram
    assert histogram(np.array([3, -2, 0, 3, -14, 0, 0], np.int32)) == {-14: 1, -2: 1, 0: 3, 3: 2}
