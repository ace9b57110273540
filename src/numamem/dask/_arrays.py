"""Node-placed dask arrays, and routing the tasks that read them to workers of the same node.

Placement: :func:`placed_array` and :func:`from_array` create each chunk with numamem on the node
chosen for it, in a task annotated with the resource ``numa-<node>`` (``dask.annotate``), so a
worker of that node creates it. Chunks along ``axis`` are shared out over ``nodes`` the way
``numamem.empty(..., nodes=, axis=)`` shares out blocks: the axis is cut into ``len(nodes)`` even
parts, the i-th on ``nodes[i]``, and a chunk goes to the part holding most of it.

Routing: a task reading placed chunks should run on their node. :func:`localize` gives every task
of a collection the node that most of its inputs come from (following the graph from the placed
chunks, or from where persisted chunks are held) as a ``resources`` annotation. Dask's low-level
task fusion drops annotations (dask/dask#7036), and a per-key (callable) ``resources``
annotation breaks its blockwise fusion, so :func:`localize` runs Dask's graph optimization first,
without low-level fusion, and its result must be computed with ``optimize_graph=False``;
:func:`compute` and :func:`persist` do both.
"""
from __future__ import annotations

import collections
import itertools
import math
import warnings
from typing import Sequence

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from numamem import _workerbind
from numamem._topology import topology
from numamem.arrays import asarray, empty
from numamem.dask._worker import resource_name, resource_node

__all__ = ["placed_array", "from_array", "chunk_nodes", "localize", "compute", "persist", "task_nodes"]

FILLS = ("random",)


def chunk_nodes(chunks: Sequence[int], nodes: Sequence[int | None]) -> tuple:
    """Node of each chunk along the split axis: the even part of the axis holding most of it.

    >>> chunk_nodes((25, 25, 25, 25), [0, 1])
    (0, 0, 1, 1)
    >>> chunk_nodes((40, 30, 30), [0, 1])
    (0, 1, 1)
    """
    extent = sum(chunks)
    count = len(nodes)
    bounds = [round(extent * i / count) for i in range(count + 1)]
    result = []
    start = 0
    for size in chunks:
        stop = start + size
        overlap = [min(stop, bounds[i + 1]) - max(start, bounds[i]) for i in range(count)]
        if size == 0:  # an empty chunk: the part its position falls in
            part = next((i for i in range(count) if start < bounds[i + 1]), count - 1)
        else:
            part = max(range(count), key=lambda i: (overlap[i], -i))
        result.append(nodes[part])
        start = stop
    return tuple(result)


def _client():
    """The current distributed client, or None (local schedulers ignore resources)."""
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):
        return None


def _worker_nodes(client) -> dict[str, int]:
    """Address -> node of every worker of ``client`` that carries a ``numa-<node>`` resource."""
    found = {}
    for address, info in client.scheduler_info(n_workers=-1)["workers"].items():
        for name in info.get("resources", {}):
            node = resource_node(name)
            if node is not None:
                found[address] = node
    return found


def _resolve_nodes(nodes, client) -> list:
    """The nodes to place chunks on; ``[None]`` means plain NumPy chunks (nothing is bound)."""
    nodes = _workerbind.parse_nodes(nodes, "nodes")
    if client is not None:
        have = sorted(set(_worker_nodes(client).values()))
        if nodes is None:
            if not have:
                warnings.warn("numamem: no worker of this client is bound to a node (start them with "
                              "--preload numamem.dask); chunks are plain NumPy arrays",
                              _workerbind.NumaWorkerWarning, stacklevel=3)
                return [None]
            return have
        missing = [n for n in nodes if n not in have]
        if missing:
            raise ValueError(f"nodes={nodes}: no worker of this client is bound to node(s) {missing} "
                             f"(workers are bound to {have}); their chunk tasks would never run")
        return nodes
    topo = topology()
    if nodes is None:
        return topo.memory_nodes()
    for node in nodes:
        topo.check_memory_node(node, "nodes")
    return nodes


class _ChunkResources:
    """Per-key ``resources`` annotation of a chunk-creating layer (picklable, unlike a lambda)."""

    def __init__(self, axis: int, nodes: tuple):
        self.axis = axis
        self.nodes = nodes

    def __call__(self, key):
        if not isinstance(key, tuple) or len(key) <= self.axis + 1:
            return None
        node = self.nodes[key[self.axis + 1]]
        return None if node is None else {resource_name(node): 1}


class _KeyResources:
    """Per-key ``resources`` annotation from a key -> node table (see :func:`localize`)."""

    def __init__(self, nodes: dict):
        self.nodes = nodes

    def __call__(self, key):
        node = self.nodes.get(key)
        return None if node is None else {resource_name(node): 1}


def _make_chunk(shape, dtype, node, fill, seed):
    """One chunk: numamem memory on ``node`` (NumPy's for None), then filled."""
    shape = tuple(shape)
    if node is None or math.prod(shape) == 0:
        out = np.empty(shape, dtype)
    else:
        out = empty(shape, dtype, node=node)
    if isinstance(fill, str):  # "random": uniform in [0, 1), one stream per chunk
        out[...] = np.random.default_rng(seed).random(shape, dtype=dtype)
    elif fill is not None:
        out[...] = fill
    return out


def _copy_to_node(block, node):
    return np.array(block) if node is None else asarray(block, node=node)


def _normalize(shape, dtype, chunks, axis):
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise TypeError(f"dtype {dtype} holds Python objects; numamem places plain data only")
    chunks = da.core.normalize_chunks(chunks, shape, dtype=dtype)
    ndim = len(chunks)
    if ndim == 0:
        raise ValueError("a 0-d array has no chunks to place")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis!r} is out of range for a {ndim}-d array")
    return dtype, chunks, int(axis) % ndim


def placed_array(shape, dtype=float, chunks="auto", *, nodes=None, axis=0, fill=0.0, seed=0):
    """A dask array whose chunks numamem creates on their nodes, on workers of those nodes.

    Parameters
    ----------
    shape : int or tuple of int
    dtype : data-type
    chunks : as for ``dask.array``
    nodes : str or sequence of int, optional
        Nodes to share the chunks out over along ``axis``. Default: the nodes of the current
        client's bound workers (the machine's memory nodes without a distributed client).
    axis : int
        The axis along which chunks are shared out (default 0).
    fill : scalar, "random" or None
        Value of every element (default 0), uniform random numbers in [0, 1) (a float dtype;
        each chunk from ``numpy.random.default_rng((seed, *chunk_index))``), or None to leave
        the memory uninitialised.
    seed : int

    Raises
    ------
    ValueError
        For nodes that no worker of the current client is bound to (their tasks would wait
        forever), or that cannot hold memory here without a client.
    """
    dtype, chunks, axis = _normalize(shape, dtype, chunks, axis)
    if isinstance(fill, str) and (fill not in FILLS or dtype.kind != "f"):
        raise ValueError(f"fill={fill!r}: a scalar, None, or 'random' (for a float dtype)")
    per_chunk = chunk_nodes(chunks[axis], _resolve_nodes(nodes, _client()))
    name = "placed-" + tokenize(chunks, dtype, per_chunk, axis, fill, seed)
    dsk = {}
    for index in itertools.product(*(range(len(c)) for c in chunks)):
        shape_i = [chunks[d][index[d]] for d in range(len(chunks))]
        dsk[(name, *index)] = (_make_chunk, shape_i, dtype, per_chunk[index[axis]], fill,
                               [seed, *index])
    with dask.annotate(resources=_ChunkResources(axis, per_chunk)):
        layer = MaterializedLayer(dsk)
    graph = HighLevelGraph({name: layer}, {name: set()})
    return da.Array(graph, name, chunks, meta=np.empty((0,) * len(chunks), dtype))


def from_array(x, chunks="auto", *, nodes=None, axis=0):
    """Copy the NumPy array ``x`` into a placed dask array (chunks as in :func:`placed_array`).

    ``x`` travels in the graph, as with ``dask.array.from_array``; each chunk is cut from it and
    copied onto its node by a worker of that node.
    """
    x = np.asarray(x)
    dtype, chunks, axis = _normalize(x.shape, x.dtype, chunks, axis)
    per_chunk = chunk_nodes(chunks[axis], _resolve_nodes(nodes, _client()))
    annotation = _ChunkResources(axis, per_chunk)
    with dask.annotate(resources=annotation):
        source = da.from_array(x, chunks=chunks, asarray=False)
    name = "placed-from-" + tokenize(source.name, per_chunk, axis)
    dsk = {(name, *index): (_copy_to_node, (source.name, *index), per_chunk[index[axis]])
           for index in itertools.product(*(range(len(c)) for c in chunks))}
    with dask.annotate(resources=annotation):
        layer = MaterializedLayer(dsk)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[source])
    return da.Array(graph, name, chunks, meta=np.empty((0,) * len(chunks), dtype))


# ---------------------------------------------------------------------------------- routing
def _seed_nodes(graph: HighLevelGraph, dsk: dict, client) -> dict:
    """Key -> node for the tasks whose node is known: annotated chunk creation, held chunks."""
    seeds = {}
    for layer in graph.layers.values():
        resources = (layer.annotations or {}).get("resources")
        if not callable(resources) and not isinstance(resources, dict):
            continue
        for key in layer:
            value = resources(key) if callable(resources) else resources
            found = [resource_node(name) for name in (value or {})]
            found = [n for n in found if n is not None]
            if len(found) == 1:
                seeds[key] = found[0]
    if client is not None:
        from distributed import Future, wait

        futures = {key: value for key, value in dsk.items() if isinstance(value, Future)}
        if futures:
            wait(list(futures.values()))
            where = _worker_nodes(client)
            for key, holders in client.who_has(list(futures.values())).items():
                held = [where[a] for a in holders if a in where]
                if held:
                    seeds[key] = held[0]
    return seeds


def task_nodes(collection, client=None) -> dict:
    """Key -> node for every task of ``collection`` (its graph as given) that reads placed data.

    A task takes the node most of its inputs come from (ties: the lower node id); tasks that read
    nothing placed have no node. This is what :func:`localize` annotates.
    """
    graph = collection.__dask_graph__()
    if not isinstance(graph, HighLevelGraph):
        graph = HighLevelGraph.from_collections(str(id(graph)), graph, dependencies=())
    dsk = dict(graph)
    nodes = _seed_nodes(graph, dsk, client)
    # A persisted chunk's graph entry is its Future, which Dask lists as depending on its own key;
    # left in, that self-loop keeps every task reading the chunk out of Kahn's order below.
    dependencies = {key: set(deps) - {key} for key, deps in graph.get_all_dependencies().items()}
    # Kahn's order: every task after its inputs.
    waiting = {key: len(deps) for key, deps in dependencies.items()}
    dependents = collections.defaultdict(list)
    for key, deps in dependencies.items():
        for dep in deps:
            dependents[dep].append(key)
    ready = [key for key, count in waiting.items() if count == 0]
    while ready:
        key = ready.pop()
        if key not in nodes:
            votes = collections.Counter(nodes[d] for d in dependencies[key] if d in nodes)
            if votes:
                top = max(votes.values())
                nodes[key] = min(n for n, c in votes.items() if c == top)
        for dependent in dependents[key]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    return {key: node for key, node in nodes.items() if key in dsk}


def localize(*collections, client=None):
    """Return ``collections`` with each task annotated to run on workers of its data's node.

    The graph is optimized here (Dask's own optimization without low-level fusion, which would
    drop the annotations); compute the result with ``optimize_graph=False``, or use
    :func:`compute` / :func:`persist`, which do. Tasks that read nothing placed may run anywhere.
    """
    client = client if client is not None else _client()
    result = []
    for collection in collections:
        graph = collection.__dask_graph__()
        keys = collection.__dask_keys__()
        # The collection's own optimizer keeps the graph's layers and their annotations (the
        # chunk nodes) when low-level fusion is off; dask.optimize() would merge them away.
        with dask.config.set({"optimization.fuse.active": False}):
            graph = collection.__dask_optimize__(graph, keys)
        rebuild, args = collection.__dask_postpersist__()
        optimized = rebuild(graph, *args)
        nodes = task_nodes(optimized, client)
        name = optimized.__dask_layers__()[0]
        layer = MaterializedLayer(dict(graph), annotations={"resources": _KeyResources(nodes)})
        result.append(rebuild(HighLevelGraph({name: layer}, {name: set()}), *args))
    return tuple(result)


def compute(*collections, **kwargs):
    """``dask.compute`` with every task routed to workers of its data's node (:func:`localize`)."""
    return dask.compute(*localize(*collections), optimize_graph=False, **kwargs)


def persist(*collections, **kwargs):
    """``dask.persist`` with every task routed to workers of its data's node (:func:`localize`).

    Returns one collection for one argument, as ``x.persist()`` does, else a tuple.
    """
    result = dask.persist(*localize(*collections), optimize_graph=False, **kwargs)
    return result[0] if len(collections) == 1 else result
