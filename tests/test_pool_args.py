"""The process-wide pools' arguments (issue 12 item 19): clear errors before anything is mapped."""
import numpy as np
import pytest

from numamem import _pool


@pytest.mark.parametrize("node", [99, 1023, -1, 1024, 10**6])
def test_get_pool_of_a_node_this_process_cannot_use_is_refused_at_once(node, mapping_counter):
    before = set(_pool.pools())
    with pytest.raises(ValueError, match=f"node={node}: no such node"):
        _pool.get_pool(node)
    assert set(_pool.pools()) == before and mapping_counter() == (0, 0)


@pytest.mark.parametrize("node", [True, False, 0.0, 1.0, "0", None])
def test_get_pool_node_must_be_an_int(node):
    with pytest.raises(TypeError, match="node must be an int node id"):
        _pool.get_pool(node)


def test_get_pool_takes_numpy_integers(node0):
    assert _pool.get_pool(np.int64(node0)) is _pool.get_pool(node0)


def test_realloc_of_an_address_no_pool_gave_is_a_value_error(node0):
    pool = _pool.get_pool(node0)
    with pytest.raises(ValueError, match=r"realloc\(0x3039\): the address was not allocated by a numamem pool"):
        pool.realloc(0x3039, 64)
    address = pool.malloc(64)
    try:
        with pytest.raises(ValueError, match="points inside a block"):
            pool.realloc(address + 8, 64)
    finally:
        pool.free(address)
