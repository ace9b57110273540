"""Argument checks of the creators (issue 12, items 8, 13, 16, 24): the same in every process state."""
from __future__ import annotations

import numpy as np
import pytest

import numamem
from numamem import _request

from conftest import run_in_child


BAD_SPELLINGS = [
    ({"node": False}, TypeError, "node"),
    ({"node": 0.0}, TypeError, "node"),
    ({"node": np.bool_(False)}, TypeError, "node"),
    ({"align": 64.0}, TypeError, "align"),
    ({"align": True}, TypeError, "align"),
    ({"populate": 1}, TypeError, "populate"),
    ({"populate": "no"}, TypeError, "populate"),
    ({"pages": None}, TypeError, "pages"),
]


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "after-a-valid-call"])
@pytest.mark.parametrize("changes, error, name", BAD_SPELLINGS)
def test_refusals_do_not_depend_on_earlier_calls(node0, warm, changes, error, name):
    # The memo once keyed on values only: after empty(10, node=0), node=False (== 0, same hash)
    # was a cache hit and passed; the same for align=64.0 / True after align=64.
    _request._REQUEST_CACHE.clear()
    _request._SIMPLE_CACHE.clear()
    kw = {"node": node0, "align": 64, "populate": True, "pages": "auto"}
    if warm:
        numamem.empty(10, **kw)
    kw.update(changes)
    with pytest.raises(error, match=name):
        numamem.empty(10, **kw)


def test_refusals_in_a_fresh_process_match(node0):
    # The same spelling is refused in a child whose memo starts warm from the parent.
    numamem.empty(10, node=node0)

    def child():
        for changes, error, name in BAD_SPELLINGS:
            kw = {"node": node0, **changes}
            with pytest.raises(error, match=name):
                numamem.empty(10, **kw)

    import os
    status = run_in_child(child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_generator_nodes_and_pages_are_read_once(node0):
    a = numamem.empty((8, 1024), np.float64, nodes=(n for n in [node0, node0]), axis=0)
    assert [b.node for b in numamem.blocks(a)] == [node0, node0]
    b = numamem.empty(10, node=node0, pages=(k for k in ["4k"]))
    assert numamem.placement(b).requested["pages"] == ["4k"]
    # And again, now that the memo holds the tuple form of the same request.
    c = numamem.empty((8, 1024), np.float64, nodes=(n for n in [node0, node0]), axis=0)
    assert len(numamem.blocks(c)) == 2


@pytest.mark.parametrize("axis, error", [(True, TypeError), ("0", TypeError), (1.0, TypeError),
                                         (np.bool_(True), TypeError), (5, ValueError)])
def test_axis_must_be_an_int(node0, axis, error):
    with pytest.raises(error, match="axis"):
        numamem.empty((4, 1024), nodes=[node0], axis=axis)


def test_axis_accepts_numpy_integers(node0):
    a = numamem.empty((1, 1024), nodes=[node0], axis=np.int64(1))
    assert numamem.placement(a).requested["axis"] == 1


@pytest.mark.parametrize("nodes", [1.0, object(), "01", 0])
def test_nodes_must_be_a_sequence(node0, nodes):
    with pytest.raises(TypeError, match="nodes"):
        numamem.empty(10, nodes=nodes, axis=0)


def test_populate_accepts_bools(node0):
    a = numamem.empty(1 << 20, node=node0, pages="4k", populate=np.bool_(False))
    assert numamem.placement(a).requested["populate"] is False


def test_node_ids_accept_numpy_integers_everywhere(node0):
    node = np.int64(node0)
    with numamem.bind_thread(node) as binding:
        assert binding.node == node0 and type(binding.node) is int
    with numamem.on_node(node):
        pass
    a = numamem.empty(1 << 20, node=node, pages="4k")
    numamem.migrate(a, node)
    for bad in (False, 0.0, "0"):
        with pytest.raises(TypeError, match="node"):
            numamem.bind_thread(bad)
        with pytest.raises(TypeError, match="node"):
            numamem.on_node(bad).__enter__()
        with pytest.raises(TypeError, match="node"):
            numamem.migrate(a, bad)
