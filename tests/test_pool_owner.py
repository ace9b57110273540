"""Arrays NumPy allocates from any pool are numamem arrays (issue 12 item 21).

Before: ``owner()`` recognised an array made inside ``on_node`` by its NEP 49 handler's *name*
and looked the name up among the shared kernel pools, so an array of a fake-source pool (the
pools of the tests), of a pool made directly, or of a pool whose object had been dropped was
"not numamem memory" to ``owner``/``placement``/``migrate``/``blocks``/``*_like``, and an array
of a directly made kernel pool was attributed to the shared pool of its node. Now the pools'
address directory (``numamem._arena.arena_pool_of``) says which pool holds the array's data.
"""
import gc

import numpy as np
import pytest

import numamem
from numamem import _pool
from numamem.inspect import owner, request_of


def made_with(pool, make=lambda: np.arange(1000.0) * 2):
    previous = _pool.set_handler(pool.handler)
    try:
        return make()
    finally:
        _pool.set_handler(previous)


@pytest.mark.parametrize("policy", ["bind", "preferred"])
def test_fake_pool_arrays_are_numamem_arrays(node0, policy):
    pool = _pool.Pool(node0, policy, "fake")
    y = made_with(pool)
    assert owner(y) is pool and owner(y[::3].T) is pool
    info = numamem.placement(y)
    assert info.requested["node"] == node0 and info.requested["policy"] == policy
    assert info.requested["scope"] == "on_node"
    (block,) = numamem.blocks(y)
    assert block.node == node0 and block.array is y
    like = numamem.zeros_like(y)  # placed like y: the pool's node and policy
    assert numamem.placement(like).requested["node"] == node0 and not like.any()
    assert numamem.placement(like).requested["policy"] == policy


def test_migrate_of_a_fake_pool_array_names_the_reason(node0, topo, fake_topology):
    pool = _pool.Pool(node0, "bind", "fake")
    y = made_with(pool)
    other = max(topo.node_ids) + 1
    fake_topology(nodes=topo.nodes + (numamem.Node(other, (), topo.node(node0).mem_total, 2**30, {}),),
                  allowed_nodes=frozenset(topo.allowed_nodes | {other}))
    with pytest.raises(TypeError, match=rf"node {node0}'s pool.*shares with other arrays.*asarray\(a, node={other}\)"):
        numamem.migrate(y, other)


def test_an_array_of_a_directly_made_kernel_pool_is_that_pools(node0):
    shared = numamem.pools.get_pool(node0)  # exists: the name alone would point here
    own = _pool.Pool(node0, "bind")
    y = made_with(own)
    assert owner(y) is own and owner(y) is not shared


def test_an_array_outliving_its_pool_object_still_has_the_pool(node0):
    pool = _pool.Pool(node0, "preferred", "fake")
    y = made_with(pool)
    handler = pool.handler
    del pool
    gc.collect()
    found = owner(y)
    assert found.node == node0 and found.policy == "preferred" and found.source == "fake"
    assert found.handler is handler  # the same C pool, which the array keeps alive
    assert found.stats()["allocations"] >= 1 and owner(y) is found
    assert request_of(found).policy == "preferred"
    del handler, found


def test_arrays_numpy_grows_in_place_stay_the_pools(node0):
    pool = _pool.Pool(node0, "bind", "fake")
    y = made_with(pool, lambda: np.zeros(10))
    previous = _pool.set_handler(pool.handler)
    try:
        y.resize(3_000_000, refcheck=False)  # realloc through the array's own handler: a direct mapping
    finally:
        _pool.set_handler(previous)
    assert owner(y) is pool


def test_other_memory_has_no_owner(node0):
    pool = _pool.Pool(node0, "bind", "fake")
    pool.malloc(3 * 2**20)  # a direct mapping: its last 2 MiB slot is only partly the pool's
    assert owner(np.arange(1000.0)) is None
    assert owner(np.frombuffer(bytearray(64))) is None
