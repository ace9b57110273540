"""Refusals and capacity on a multi-node guest: bad nodes, full nodes, per-node hugetlb pools.

Whatever could kill the process (an OOM kill under MPOL_BIND, a SIGBUS on a missing huge page)
runs in a forked child (kernelcheck.run_in_child) whose exit status the test checks.
"""
from __future__ import annotations

import numpy as np
import pytest

import numamem

import kernelcheck as kc

MiB = 2**20
HUGE = 2 * MiB
REQUEST = 48 * MiB + 3 * kc.PAGE  # an odd size, so a leaked mapping of it is easy to spot


def _new_big_mappings(before, at_least):
    return [m for m in kc.mappings() if m not in before and m[1] - m[0] >= at_least]


def _bad_nodes(expected):
    ids = [n["id"] for n in expected["nodes"]]
    return [max(ids) + 1, 7, 63, 1024, -1]


CALLS = ["empty", "zeros", "asarray", "preferred", "interleave", "block-split"]


def _call(call, bad, good):
    """Allocate REQUEST bytes by way of ``call`` with ``bad`` as (one of) the node(s)."""
    if call == "empty":
        return numamem.empty(REQUEST, np.uint8, node=bad)
    if call == "zeros":
        return numamem.zeros(REQUEST, np.uint8, node=bad)
    if call == "asarray":
        return numamem.asarray(np.zeros(REQUEST, np.uint8), node=bad)
    if call == "preferred":
        return numamem.empty(REQUEST, np.uint8, node=bad, policy="preferred")
    if call == "interleave":
        return numamem.empty(REQUEST, np.uint8, policy="interleave", nodes=[good, bad])
    if call == "block-split":
        return numamem.empty(REQUEST, np.uint8, nodes=[good, bad], axis=0)
    raise AssertionError(call)


def _assert_refused_before_mapping(call, bad, good):
    if call == "asarray":
        # The source array is the caller's, made before the snapshot of the mappings.
        src = np.zeros(REQUEST, np.uint8)
        before = set(kc.mappings())
        with pytest.raises(ValueError, match=str(bad)):
            numamem.asarray(src, node=bad)
    else:
        before = set(kc.mappings())
        with pytest.raises(ValueError, match=str(bad)):
            _call(call, bad, good)
    leaked = _new_big_mappings(before, REQUEST)
    assert not leaked, f"{call} with node {bad} left mappings {leaked}"


@pytest.mark.parametrize("call", CALLS)
def test_missing_node_raises_before_mapping(expected, memory_nodes, call):
    for bad in _bad_nodes(expected):
        _assert_refused_before_mapping(call, bad, memory_nodes[0])


@pytest.mark.requires("memless")
@pytest.mark.parametrize("call", CALLS)
def test_memoryless_node_raises_before_mapping(memless_node, memory_nodes, call):
    """A node with CPUs but no memory exists, yet nothing can be placed on it."""
    _assert_refused_before_mapping(call, memless_node, memory_nodes[0])


def test_migrate_to_missing_node_raises_and_leaves_pages(expected, memory_nodes):
    node = memory_nodes[0]
    a = numamem.zeros(4 * MiB, np.uint8, node=node)
    for bad in _bad_nodes(expected):
        with pytest.raises(ValueError):
            numamem.migrate(a, bad)
        assert kc.histogram(kc.nodes_of(a)) == {node: len(kc.nodes_of(a))}


def test_strict_allocation_larger_than_the_node_raises_node_memory_error(node):
    """Asking more than the node has free is a NodeMemoryError; the process lives on."""

    def child():
        info = kc.sysfs_meminfo(node)
        # The check counts inactive file pages as available (reclaim takes them first).
        free = info["MemFree"] + info.get("Inactive(file)", 0)
        want = free + 64 * MiB
        try:
            numamem.empty(want, np.uint8, node=node)
        except numamem.NodeMemoryError as exc:
            if exc.node != node or exc.requested < want or exc.free is None:
                return f"bad error attributes: node={exc.node} requested={exc.requested} free={exc.free}"
            if not exc.free < exc.requested:
                return f"free {exc.free} >= requested {exc.requested}"
        else:
            return f"allocating {want} bytes on node {node} ({free} free) did not raise"
        # The process survives and can still place memory on that node.
        small = numamem.zeros(MiB, np.uint8, node=node)
        hist = kc.histogram(kc.nodes_of(small))
        return None if hist == {node: len(kc.nodes_of(small))} else f"after the error: {hist}"

    problem = kc.run_in_child(child)
    assert problem is None, problem


def test_strict_allocation_near_the_small_nodes_capacity_succeeds(expected):
    """60% of a small node's free memory, pre-faulted under bind: all there, no OOM kill."""
    node = expected["roles"]["small"]

    def child():
        free = kc.sysfs_meminfo(node)["MemFree"]
        want = int(free * 0.6) // kc.PAGE * kc.PAGE
        a = numamem.empty(want, np.uint8, node=node)
        status = kc.nodes_of(a)
        hist = kc.histogram(status)
        return None if hist == {node: len(status)} else f"{want} bytes on node {node}: {hist}"

    problem = kc.run_in_child(child)
    assert problem is None, problem


def test_preferred_beyond_the_small_node_spills_without_error(expected):
    """preferred: fills the node, then the kernel falls back elsewhere; no exception, no kill."""
    node = expected["roles"]["small"]

    def child():
        free = kc.sysfs_meminfo(node)["MemFree"]
        want = free + 96 * MiB
        a = numamem.empty(want, np.uint8, node=node, policy="preferred", pages="4k")
        a[::kc.PAGE] = 1
        hist = kc.histogram(kc.nodes_of(a))
        if any(k < 0 for k in hist):
            return f"pages missing after touching: {hist}"
        on_node = hist.get(node, 0) * kc.PAGE
        elsewhere = sum(v for k, v in hist.items() if k != node)
        if on_node < 0.5 * free or elsewhere == 0:
            return f"preferred {node} ({free} free): pages per node {hist}"
        return None

    problem = kc.run_in_child(child)
    assert problem is None, problem


def test_pool_block_beyond_the_small_node_is_refused_before_mapping(expected):
    """The pool's kernel source checks a large strict mapping against the node's free memory, as
    numamem.empty does: a NodeMemoryError naming the node, nothing kept mapped, and the process and
    the pool go on serving the node."""
    node = expected["roles"]["small"]

    def child():
        info = kc.sysfs_meminfo(node)
        # The check counts inactive file pages as available (reclaim takes them first).
        free = info["MemFree"] + info.get("Inactive(file)", 0)
        want = free + 64 * MiB
        pool = numamem.pools.get_pool(node)
        mapped = pool.stats()["mapped"]
        try:
            pool.malloc(want)
        except numamem.NodeMemoryError as exc:
            if exc.node != node or exc.free is None or "checked before mapping" not in str(exc):
                return f"bad error: node={exc.node} free={exc.free}: {exc}"
        else:
            return f"a {want}-byte pool block on node {node} ({free} free) did not raise"
        if pool.stats()["mapped"] > mapped:  # (idle chunks may have been given back before the retry)
            return f"the refused block left memory mapped: {pool.stats()}"
        with numamem.on_node(node):
            small = np.ones(100_000)
        hist = kc.histogram(kc.nodes_of(small))
        return None if hist == {node: len(kc.nodes_of(small))} else f"after the error: {hist}"

    problem = kc.run_in_child(child)
    assert problem is None, problem


# --------------------------------------------------------------------------- hugetlbfs pools

POOL_PAGES = 4


@pytest.fixture
def hugepage_pool(expected, memory_nodes):
    """Reserve POOL_PAGES 2 MiB pages on the 'hugepage' node only; restore every node after."""
    ids = list(memory_nodes)
    on = expected["roles"]["hugepage"]
    paths = {n: kc.hugepages_path(n) / "nr_hugepages" for n in ids}
    saved = {n: p.read_text().strip() for n, p in paths.items()}
    try:
        for n, p in paths.items():
            p.write_text(f"{POOL_PAGES if n == on else 0}\n")
        got = {n: int(p.read_text()) for n, p in paths.items()}
        if got != {n: POOL_PAGES if n == on else 0 for n in ids}:
            pytest.fail(f"could not reserve huge pages per node: {got}")
        yield on
    finally:
        for n, p in paths.items():
            p.write_text(saved[n] + "\n")


def test_hugetlb_2m_on_the_node_with_the_pool(hugepage_pool):
    node = hugepage_pool
    free_file = kc.hugepages_path(node) / "free_hugepages"
    a = numamem.empty(2 * HUGE, np.uint8, node=node, pages="2M")
    a[...] = 5
    start, _ = kc.span(a)
    entry = kc.numa_maps_of(start)
    assert entry.kernel_page_kb == 2048 and entry.huge, entry.raw
    assert entry.pages == {node: 2}, entry.raw
    status = kc.nodes_of(a, page_size=HUGE)
    assert kc.histogram(status) == {node: len(status)}
    assert int(free_file.read_text()) == POOL_PAGES - 2
    assert numamem.placement(a).pages == "2M"
    assert np.all(a == 5)


def test_hugetlb_2m_on_a_node_without_pool_raises(expected, hugepage_pool):
    empty_node = expected["roles"]["no_hugepage"]
    node = hugepage_pool

    def child():
        try:
            numamem.empty(HUGE, np.uint8, node=empty_node, pages="2M")
        except numamem.HugePageError as exc:
            if exc.node != empty_node or exc.page_size != HUGE:
                return f"HugePageError attributes: node={exc.node} page_size={exc.page_size}"
        else:
            return f"pages='2M' on node {empty_node} (no pool) did not raise"
        # Still alive, and the pool on the other node still serves.
        b = numamem.empty(HUGE, np.uint8, node=node, pages="2M")
        b[...] = 1
        entry = kc.numa_maps_of(kc.span(b)[0])
        return None if entry.pages == {node: 1} and entry.huge else f"after: {entry.raw}"

    problem = kc.run_in_child(child)
    assert problem is None, problem


def test_hugetlb_more_pages_than_the_pool_raises(hugepage_pool):
    node = hugepage_pool

    def child():
        try:
            numamem.empty((POOL_PAGES + 2) * HUGE, np.uint8, node=node, pages="2M")
        except numamem.HugePageError as exc:
            return None if exc.node == node else f"HugePageError names node {exc.node}"
        return f"{POOL_PAGES + 2} huge pages from a pool of {POOL_PAGES} did not raise"

    problem = kc.run_in_child(child)
    assert problem is None, problem


def test_hugetlb_fallback_is_taken_and_reported(expected, hugepage_pool):
    empty_node = expected["roles"]["no_hugepage"]
    a = numamem.empty(HUGE, np.uint8, node=empty_node, pages=["2M", "4k"])
    entry = kc.numa_maps_of(kc.span(a)[0])
    assert entry.kernel_page_kb == kc.PAGE // 1024 and not entry.huge, entry.raw
    status = kc.nodes_of(a)
    assert kc.histogram(status) == {empty_node: len(status)}
    assert numamem.placement(a).pages == "4k"
