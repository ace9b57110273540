"""Pools and ``on_node`` on real nodes: placement checked with the kernel (kernelcheck), not numamem."""
from __future__ import annotations

import threading

import numpy as np

import numamem

import kernelcheck as kc


def _all_on(array, node, what):
    hist = kc.histogram(kc.nodes_of(array))
    assert hist == {node: sum(hist.values())}, f"{what}: pages per node {hist}, expected all on {node}"


def test_on_node_places_ufunc_outputs_temporaries_and_sorts(node):
    rng = np.random.default_rng(node)
    source = rng.random(200_000)
    with numamem.on_node(node):
        scaled = source * 3.0                  # ufunc output
        chained = (scaled + 1.0) * scaled      # the inner temporary is freed, the result stays
        ordered = np.sort(chained)             # sort result (and its buffers)
        small = np.arange(100.0)               # a pooled small block
        big = np.ones(3 << 20)                 # a direct mapping of the pool
    for name, array in [("ufunc", scaled), ("chain", chained), ("sort", ordered), ("small", small), ("big", big)]:
        _all_on(array, node, name)
    np.testing.assert_allclose(ordered, np.sort((source * 3.0 + 1.0) * (source * 3.0)))


def test_two_threads_in_different_scopes_each_get_their_node(expected, run_threads):
    nodes = [n["id"] for n in expected["nodes"] if n["mem_mib"]][:2]
    results = {}
    barrier = threading.Barrier(len(nodes))

    def worker(node):
        with numamem.on_node(node):
            barrier.wait()                      # both scopes are active at the same time
            array = np.full(300_000, float(node))
            barrier.wait()
        results[node] = array

    assert not run_threads(worker, nodes, barrier=barrier).errors
    for node in nodes:
        _all_on(results[node], node, f"thread in on_node({node})")


def test_small_arrays_of_different_nodes_never_share_a_page(expected):
    nodes = [n["id"] for n in expected["nodes"] if n["mem_mib"]]
    pages = {}
    keep = []
    for round_ in range(50):
        for node in nodes:
            array = numamem.zeros(1 + 37 * round_, np.uint8, node=node)
            keep.append(array)
            for page in kc.page_addresses(*kc.span(array)).tolist():
                pages.setdefault(page, set()).add(node)
            _all_on(array, node, f"pooled array on node {node}")
    shared = {hex(page): owners for page, owners in pages.items() if len(owners) > 1}
    assert not shared, f"pages holding arrays of several nodes: {shared}"


def test_pool_memory_freed_elsewhere_returns_to_its_node(expected):
    nodes = [n["id"] for n in expected["nodes"] if n["mem_mib"]]
    before = {n: numamem.pools.get_pool(n).stats()["in_use"] for n in nodes}
    made = []
    for node in nodes:
        with numamem.on_node(node):
            made.append(np.arange(10_000.0))
    # Free everything from another thread, outside any scope.
    t = threading.Thread(target=made.clear)
    t.start()
    t.join()
    stats = numamem.pool_stats()
    for node in nodes:
        assert stats[(node, "bind")]["in_use"] == before[node]
