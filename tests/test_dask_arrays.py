"""numamem.dask graphs without a cluster: chunk nodes, task nodes, placed arrays computed here.

Kept apart from tests/test_dask.py, whose module-wide clusters would be found as the default
client by placed_array.
"""
from __future__ import annotations

import numpy as np
import pytest

# The test command installs the dask extra: a missing package fails here, never skips.
import distributed  # noqa: E402,F401

import dask.array as da  # noqa: E402

import numamem  # noqa: E402
import numamem.dask as nd  # noqa: E402
from numamem.dask import _arrays  # noqa: E402


def test_chunk_nodes_share_the_axis_like_numamem_blocks():
    assert nd.chunk_nodes((25, 25, 25, 25), [0, 1]) == (0, 0, 1, 1)
    assert nd.chunk_nodes((40, 30, 30), [0, 1]) == (0, 1, 1)
    assert nd.chunk_nodes((30, 30, 40), [0, 1]) == (0, 0, 1)
    assert nd.chunk_nodes((10,), [4, 6]) == (4,)
    assert nd.chunk_nodes((5, 0, 5), [0, 1]) == (0, 1, 1)
    assert nd.chunk_nodes((1,) * 6, [2, 0, 1]) == (2, 2, 0, 0, 1, 1)


def test_task_nodes_follow_each_chunks_node(monkeypatch):
    """Graph only (never computed): chunks on nodes 0 and 1, and what reads them."""
    monkeypatch.setattr(_arrays, "_resolve_nodes", lambda nodes, client: [0, 1])
    x = nd.placed_array((8, 4), chunks=(2, 4))
    y = x @ da.ones((4, 3), chunks=(4, 3))
    nodes = nd.task_nodes(y)
    assert [nodes[(x.name, i, 0)] for i in range(4)] == [0, 0, 1, 1]
    assert [nodes[(y.name, i, 0)] for i in range(4)] == [0, 0, 1, 1]
    assert not any(key[0].startswith("ones") for key in nodes if isinstance(key, tuple))
    localized, = nd.localize(y.sum(axis=1))
    resources = next(iter(localized.__dask_graph__().layers.values())).annotations["resources"]
    assert [resources((localized.name, i)) for i in range(4)] == [{"numa-0": 1}] * 2 + [{"numa-1": 1}] * 2


def test_placed_array_without_a_client_places_chunks_here(node0):
    x = nd.placed_array((16, 4), np.float32, chunks=(4, 4), nodes=[node0], fill=2.5)
    def chunk_node(block):
        return np.full((1, 1), numamem.placement(block).requested["node"])

    nodes = x.map_blocks(chunk_node, chunks=(1, 1), dtype=int).compute(scheduler="sync")
    assert nodes.ravel().tolist() == [node0] * 4
    assert float(x.sum().compute(scheduler="sync")) == 16 * 4 * 2.5


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": (), "chunks": ()}, "0-d"),
    ({"shape": (4, 4), "chunks": 2, "axis": 2}, "axis"),
    ({"shape": (4,), "chunks": 2, "dtype": np.int64, "fill": "random"}, "fill"),
    ({"shape": (4,), "chunks": 2, "fill": "gauss"}, "fill"),
    ({"shape": (4,), "chunks": 2, "nodes": [99]}, "nodes=99"),
])
def test_placed_array_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nd.placed_array(**kwargs)


def test_placed_array_refuses_object_dtype():
    with pytest.raises(TypeError, match="objects"):
        nd.placed_array((4,), object, chunks=2)
