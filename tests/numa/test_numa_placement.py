"""Where numamem's pages really are, as the guest kernel reports them (move_pages, numa_maps).

Every check goes through ``kernelcheck`` (ctypes on libnuma.so.1, /proc/self/numa_maps);
numamem's own ``page_nodes``/``blocks`` are only compared against that witness.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import numamem

import kernelcheck as kc

MiB = 2**20
SHAPE = (512, 1024)  # float64: 4 MiB, 1024 base pages: small enough for TCG, big enough to see


def _assert_all_on(status, node, what):
    hist = kc.histogram(status)
    assert hist == {node: len(status)}, f"{what}: pages per node {hist}, expected all on {node}"


def _src():
    return np.arange(np.prod(SHAPE), dtype=np.float64).reshape(SHAPE)


CREATORS = {
    "empty": lambda node, **kw: numamem.empty(SHAPE, np.float64, node=node, **kw),
    "zeros": lambda node, **kw: numamem.zeros(SHAPE, np.float64, node=node, **kw),
    "ones": lambda node, **kw: numamem.ones(SHAPE, np.float64, node=node, **kw),
    "full": lambda node, **kw: numamem.full(SHAPE, 2.5, np.float64, node=node, **kw),
    "empty_like": lambda node, **kw: numamem.empty_like(_src(), node=node, **kw),
    "asarray": lambda node, **kw: numamem.asarray(_src(), node=node, **kw),
}
CONTENT = {
    "zeros": lambda a: np.all(a == 0),
    "ones": lambda a: np.all(a == 1),
    "full": lambda a: np.all(a == 2.5),
    "asarray": lambda a: np.array_equal(a, _src()),
}


@pytest.mark.parametrize("creator", list(CREATORS))
def test_bind_puts_every_page_on_the_node(node, creator):
    """``node=k`` (default policy bind): every page on k, pre-faulted, before and after writes."""
    a = CREATORS[creator](node)
    assert isinstance(a, np.ndarray) and a.shape == SHAPE
    # Strict placements are pre-faulted by default: no page may still be missing.
    _assert_all_on(kc.nodes_of(a), node, f"{creator}(node={node}) before any write")
    if creator in CONTENT:
        assert CONTENT[creator](a), f"{creator} returned the wrong content"
    start, stop = kc.span(a)
    assert kc.node_of_address(start) == node
    assert kc.node_of_address(stop - 1) == node
    entry = kc.numa_maps_of(start)
    assert set(entry.pages) == {node}, f"numa_maps: {entry.raw}"
    a[...] = 3.0
    _assert_all_on(kc.nodes_of(a), node, f"{creator}(node={node}) after writing")
    # numamem's own report must agree with the kernel's.
    np.testing.assert_array_equal(numamem.page_nodes(a), kc.nodes_of(a))


def test_lazy_bind_wins_over_first_touch_from_another_node(node, expected):
    """populate=False: pages appear only when touched, and still on the bound node even when a
    thread running on another node's CPU touches them first."""
    others = [n for n in expected["nodes"] if n["id"] != node and n["cpus"]]
    assert others, "the topology needs a CPU outside every node"
    a = numamem.empty(SHAPE, np.float64, node=node, populate=False)
    before = kc.nodes_of(a)
    assert set(kc.histogram(before)) <= kc.NOT_FAULTED, f"lazy array already faulted: {kc.histogram(before)}"

    def touch():
        import os
        os.sched_setaffinity(0, set(others[0]["cpus"]))  # plain affinity, not numamem's
        a[...] = 1.0

    t = threading.Thread(target=touch)
    t.start()
    t.join()
    _assert_all_on(kc.nodes_of(a), node, f"lazy bind to {node} touched from node {others[0]['id']}")


def test_interleave_round_robin_over_exactly_the_nodes(interleave_nodes):
    nodes = interleave_nodes
    npages = 64 * len(nodes)
    a = numamem.empty(npages * kc.PAGE, np.uint8, policy="interleave", nodes=nodes, pages="4k",
                      align="page")
    a[::kc.PAGE] = 1  # fault every page in (interleave is not pre-faulted by default)
    status = kc.nodes_of(a)
    assert len(status) == npages
    hist = kc.histogram(status)
    assert set(hist) == set(nodes), f"interleave over {nodes}: pages per node {hist}"
    # Round-robin: any len(nodes) consecutive pages hold each node once, with period len(nodes).
    n = len(nodes)
    assert sorted(status[:n].tolist()) == sorted(nodes), status[:2 * n]
    assert np.array_equal(status[n:], status[:-n]), f"not periodic: {status[:4 * n]}"
    assert all(c == npages // n for c in hist.values()), hist
    policy, pol_nodes = kc.policy_of_address(kc.span(a)[0])
    assert policy == "interleave" and pol_nodes == tuple(sorted(nodes)), (policy, pol_nodes)


def test_preferred_lands_on_the_node_while_it_has_room(node):
    a = numamem.empty(SHAPE, np.float64, node=node, policy="preferred")
    a[...] = 1.0
    _assert_all_on(kc.nodes_of(a), node, f"preferred node {node}")
    policy, pol_nodes = kc.policy_of_address(kc.span(a)[0])
    assert policy == "preferred" and pol_nodes == (node,), (policy, pol_nodes)


def _row_runs(a):
    """Rows of a 2-d C array grouped by the node of their pages: [(node, start, stop)].

    Asserts that no row has pages on two nodes (a row never straddles a block boundary).
    """
    start, _ = kc.span(a)
    status = kc.nodes_of(a)
    first_page = start - start % kc.PAGE
    row_bytes = a.strides[0]
    runs = []
    for r in range(a.shape[0]):
        lo = (start + r * row_bytes - first_page) // kc.PAGE
        hi = (start + (r + 1) * row_bytes - 1 - first_page) // kc.PAGE
        on = set(status[lo:hi + 1].tolist())
        assert len(on) == 1, f"row {r} has pages on nodes {on}"
        (node,) = on
        if runs and runs[-1][0] == node:
            runs[-1][2] = r + 1
        else:
            runs.append([node, r, r + 1])
    return [tuple(x) for x in runs]


@pytest.mark.parametrize("shape", [(768, 1024), (1000, 300), (4099, 24)],
                         ids=["rows-of-a-page", "rows-not-page-multiple", "odd-rows"])
@pytest.mark.parametrize("order", ["ascending", "reversed"])
def test_block_split_each_block_on_its_node_no_shared_page(memory_nodes, shape, order):
    nodes = list(memory_nodes)
    if order == "reversed":
        nodes = nodes[::-1]
    a = numamem.empty(shape, np.float32, nodes=nodes, axis=0)
    assert a.shape == shape and a.flags.c_contiguous
    a[...] = 1.0
    runs = _row_runs(a)
    # One run per block, in the order of the nodes list: block i on nodes[i].
    assert [r[0] for r in runs] == nodes, f"row runs {runs} for nodes {nodes}"
    assert runs[0][1] == 0 and runs[-1][2] == shape[0]
    start, _ = kc.span(a)
    row_bytes = a.strides[0]
    for _, r0, _ in runs[1:]:
        # Each split point starts a new page: no page holds bytes of two blocks.
        assert (start + r0 * row_bytes) % kc.PAGE == 0, f"block starting at row {r0} shares a page"
    # The rows are split as evenly as page boundaries allow.
    granule = kc.PAGE // np.gcd(kc.PAGE, row_bytes)
    for _, r0, r1 in runs:
        assert abs((r1 - r0) - shape[0] / len(nodes)) <= granule, runs
    # numamem's description of the blocks matches what the kernel shows.
    described = [(b.node, b.start, b.stop) for b in numamem.blocks(a)]
    assert described == runs


@pytest.mark.parametrize("pair", ["forward", "backward"])
def test_migrate_moves_every_page_and_keeps_content(memory_nodes, pair):
    ids = list(memory_nodes)
    pairs = list(zip(ids, ids[1:] + ids[:1]))  # 0->1, 1->2, 2->0 (every node is a target)
    if pair == "backward":
        pairs = [(b, a) for a, b in pairs]
    rng = np.random.default_rng(7)
    for src, dst in pairs:
        a = numamem.empty(SHAPE, np.float64, node=src)
        a[...] = rng.standard_normal(SHAPE)
        reference = a.copy()
        _assert_all_on(kc.nodes_of(a), src, f"before migrate {src}->{dst}")
        out = numamem.migrate(a, dst)
        assert np.shares_memory(out, a)
        _assert_all_on(kc.nodes_of(a), dst, f"after migrate {src}->{dst}")
        np.testing.assert_array_equal(a, reference)
        # New pages of the same range (after the move) keep going to dst.
        policy, pol_nodes = kc.policy_of_address(kc.span(a)[0])
        assert pol_nodes == (dst,), (policy, pol_nodes)
