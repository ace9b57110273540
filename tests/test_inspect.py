"""Reading placement back: strided views, on_node arrays, raw regions (issue 12, items 7, 12, 19-21)."""
from __future__ import annotations

import numpy as np
import pytest

import numamem
from numamem import _kernel
from numamem._region import Region
from numamem.inspect import _touched_pages

PAGE = 4096


def _brute_pages(view: np.ndarray, page: int) -> dict[int, int]:
    """Page address -> bytes of the view's elements in it, element by element (the witness)."""
    index = np.indices(view.shape).reshape(view.ndim, -1).T
    starts = view.ctypes.data + index @ np.array(view.strides, dtype=np.int64)
    found: dict[int, int] = {}
    for start in starts.tolist():
        first, last = start // page, (start + view.itemsize - 1) // page
        for p in range(first, last + 1):
            low, high = max(start, p * page), min(start + view.itemsize, (p + 1) * page)
            found[p * page] = found.get(p * page, 0) + high - low
    return found


def _nested(shape, strides, itemsize) -> bool:
    """True when each axis steps over everything the faster axes span (no element overlaps)."""
    span = itemsize
    for stride, extent in sorted((abs(s), n) for s, n in zip(strides, shape) if n > 1):
        if stride < span:
            return False
        span += (extent - 1) * stride
    return True


def _count_queries(monkeypatch):
    asked = []
    real = _kernel.page_status

    def counting(addresses, target_node=None):
        asked.append(len(addresses))
        return real(addresses, target_node)

    monkeypatch.setattr(_kernel, "page_status", counting)
    return asked


def test_strided_view_costs_its_pages_not_its_span(node0, monkeypatch):
    # A 16-byte view with a huge stride once queried every page of its span (2^40 bytes: 30 s,
    # 3.2 GB). Here two elements half a megabyte apart: two pages asked about, 16 bytes counted.
    array = numamem.zeros(1 << 20, np.uint8, node=node0, pages="4k")
    view = np.lib.stride_tricks.as_strided(array.view(np.float64), shape=(2,), strides=(1 << 19,))
    asked = _count_queries(monkeypatch)
    assert numamem.page_nodes(view).tolist() == [node0, node0]
    info = numamem.placement(view)
    assert info.bytes_per_node == {node0: 16} and info.unplaced_bytes == 0
    assert asked == [2, 2]


def test_placement_of_a_sparse_view_counts_its_elements(node0):
    a = numamem.zeros((1024, 1024), np.float64, node=node0)
    corners = a[::1023, ::1023]  # 4 elements, 32 bytes, spanning the whole 8 MiB
    assert numamem.placement(corners).bytes_per_node == {node0: 32}
    assert len(numamem.page_nodes(corners)) == 4
    column = a[:, 3]
    assert numamem.placement(column).bytes_per_node == {node0: 1024 * 8}
    backwards = a[::-1, ::-2]
    assert numamem.placement(backwards).bytes_per_node == {node0: a.nbytes // 2}
    assert numamem.placement(np.broadcast_to(a[0, :1], (1000, 1000))).bytes_per_node == {node0: 8}


def test_huge_stride_is_cheap():
    one = np.zeros(2, np.float64)
    view = np.lib.stride_tricks.as_strided(one, shape=(2,), strides=(1 << 40,))
    pages, nbytes = _touched_pages(view, PAGE)  # no query: the second element is not mapped
    assert len(pages) == 2 and nbytes.tolist() == [8, 8]


def test_bytes_per_node_split_exactly_over_pages(node0, monkeypatch):
    # Alternate pages "on" two nodes: a column of a 4 KiB-row array has one element per page.
    a = numamem.zeros((512, 512), np.float64, node=node0, pages="4k")
    real = _kernel.page_status
    monkeypatch.setattr(_kernel, "page_status",
                        lambda addresses, target_node=None: ((addresses // PAGE) % 2).astype(np.int32))
    assert numamem.placement(a[:, 5]).bytes_per_node == {0: 256 * 8, 1: 256 * 8}
    assert numamem.placement(a[::2, :]).bytes_per_node == {int(a.ctypes.data // PAGE % 2): 256 * 4096}
    monkeypatch.setattr(_kernel, "page_status", real)


@pytest.mark.parametrize("seed", range(4))
def test_touched_pages_match_element_by_element(seed):
    rng = np.random.default_rng(seed)
    memory = np.zeros(1 << 22, np.uint8)
    for _ in range(60):
        ndim = int(rng.integers(1, 4))
        shape = tuple(int(n) for n in rng.integers(1, 9, ndim))
        itemsize = int(rng.choice([1, 8, 24]))
        strides = tuple(int(rng.choice([itemsize, 16, 100, 3000, 4096, 5000, 20000])) * int(rng.choice([1, -1]))
                        for _ in range(ndim))
        low = -sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
        high = sum(max(0, (n - 1) * s) for n, s in zip(shape, strides))
        offset = int(rng.integers(low, memory.size - high - itemsize))
        view = np.ndarray(shape, f"V{itemsize}", buffer=memory, offset=offset, strides=strides)
        want = _brute_pages(view, PAGE)
        pages, nbytes = _touched_pages(view, PAGE)
        got = dict(zip(pages.tolist(), nbytes.tolist()))
        assert sorted(got) == sorted(want), (shape, strides, itemsize)
        if _nested(shape, strides, itemsize):  # elements that never overlap: bytes exact in sum
            assert sum(got.values()) == sum(want.values()) == view.nbytes, (shape, strides, itemsize)


def test_pages_obtained_is_what_the_kernel_gave(node0, topo):
    small = numamem.zeros(1000, node=node0)  # pooled, 4 KiB pages or THP-backed chunks
    info = numamem.placement(small)
    assert info.requested["pages"] == ["auto"] and info.requested["pages_obtained"] == info.pages
    assert info.pages in ("4k", "thp")
    base = numamem.zeros(1 << 20, node=node0, pages="4k")
    assert numamem.placement(base).requested["pages_obtained"] == "4k"
    if topo.thp == "madvise":  # (under "always" a merged neighbour mapping may hold THP)
        # Asked for THP, but too small for a huge page: the kernel gave base pages, and says so.
        tiny = numamem.zeros(4 * 4096, np.uint8, node=node0, pages="thp")
        info = numamem.placement(tiny)
        assert info.requested["pages"] == ["thp"] and info.requested["pages_obtained"] == "4k"


# ---- arrays made inside on_node (item 21) --------------------------------------------------------
def test_on_node_arrays_are_numamem_arrays(node0, topo, fake_topology):
    with numamem.on_node(node0):
        y = np.arange(1000.0) * 2
    pool = numamem.pools.get_pool(node0)
    assert numamem.owner(y) is pool and numamem.owner(y[::3].T) is pool
    info = numamem.placement(y)
    assert info.bytes_per_node == {node0: y.nbytes}
    assert info.requested["node"] == node0 and info.requested["policy"] == "bind"
    assert info.requested["scope"] == "on_node"
    (block,) = numamem.blocks(y)
    assert block.node == node0 and block.array is y
    with pytest.raises(ValueError, match="not a view"):
        numamem.blocks(y[1:])
    like = numamem.zeros_like(y)  # outside the scope, placed like y
    assert numamem.placement(like).requested["node"] == node0 and not like.any()
    assert numamem.migrate(y, node0) is y  # already on the node: nothing to do
    assert numamem.owner(np.arange(10.0)) is None  # outside the scope: NumPy's memory
    other = max(topo.node_ids) + 1  # a pooled array cannot move alone to another node
    fake_topology(nodes=topo.nodes + (numamem.Node(other, (), topo.node(node0).mem_total, 2**30, {}),),
                  allowed_nodes=frozenset(topo.allowed_nodes | {other}))
    with pytest.raises(TypeError, match=rf"inside numamem.on_node from node {node0}'s pool.*asarray\(a, node={other}\)"):
        numamem.migrate(y, other)


# ---- raw regions (item 19) -----------------------------------------------------------------------
def test_arrays_over_a_raw_region_are_refused_clearly(node0):
    raw = Region(8192).ndarray((1024,), np.float64)
    with pytest.raises(TypeError, match="Region built directly"):
        numamem.migrate(raw, node0)
    with pytest.raises(TypeError, match="no creator placed"):
        numamem.blocks(raw)
    with pytest.raises(ValueError, match="no numamem creator placed"):
        numamem.empty_like(raw)
    assert numamem.placement(raw).requested is None
    assert numamem.empty_like(raw, node=node0).shape == raw.shape


# ---- *_like of a block-split array (item 20) -----------------------------------------------------
def test_like_of_a_transposed_split_array(node0):
    a = numamem.zeros((64, 1024), np.float32, nodes=[node0, node0], axis=0)
    t = numamem.empty_like(a.T)  # F order, shape (1024, 64): split along its outermost axis
    assert t.shape == (1024, 64) and t.flags.f_contiguous
    assert numamem.placement(t).requested["axis"] == 1
    same = numamem.empty_like(a)
    assert numamem.placement(same).requested["axis"] == 0
    flat = numamem.empty_like(a, shape=(a.size,))
    assert [b.node for b in numamem.blocks(flat)] == [node0, node0]
    column = numamem.zeros((1, 4096), np.float64, nodes=[node0, node0], axis=1)
    assert numamem.placement(numamem.empty_like(column)).requested["axis"] == 1
    assert numamem.placement(numamem.empty_like(column, axis=0)).requested["axis"] == 0
    assert numamem.placement(numamem.ones_like(a, pages="4k")).requested["pages"] == ["4k"]


def test_generator_suspended_inside_on_node_lends_its_scope(node0):
    # Documented (on_node's docstring, docs/memory.md): the scope is a context variable, and a
    # generator shares its caller's context while suspended.
    pool = numamem.pools.get_pool(node0)

    def steps():
        with numamem.on_node(node0):
            yield

    walker = steps()
    next(walker)
    assert numamem.owner(np.arange(1000.0)) is pool
    assert next(walker, "done") == "done"
    assert numamem.owner(np.arange(1000.0)) is None
