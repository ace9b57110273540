"""The planner: partition a graph over NUMA nodes, turn the layouts into blocks, pack the arenas.

:func:`plan` partitions a graph over NUMA nodes (:mod:`numamem.planner.partition`), turns every
tensor's layout into blocks, and packs each node's blocks into one arena with memory reuse
(:func:`numamem.planner.packing.pack`, once per node). The result is a
:class:`~numamem.planner.plan.Plan`, checked by :mod:`numamem.planner.check` before it is
returned.

Placement rules
---------------
- A block is live from the step producing its tensor through the tensor's last reader (graph
  inputs from step 0; weights and graph outputs through the last step).
- Blocks of a tensor spread over several nodes are rounded up to whole pages and start on page
  boundaries, so no page ever holds bytes of two nodes' blocks even when the runtime maps one
  tensor as a block-split array. Every other block is rounded up to ``alignment`` bytes. The bytes
  this rounding adds are reported per arena (``block_padding``).
- Blocks live for the whole run (weights) go on top of the packed blocks: since they are live at
  every step they add the same amount to every step, so this costs nothing against the bound.
- An arena's ``size`` is its packed peak rounded up to a page (``page_padding`` is the difference),
  and arenas are laid out back to back (``base``) so each page of the whole belongs to one node.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict
from typing import Any, Sequence

import numpy as np

from numamem.planner.boxes import Slice, round_up, volume
from numamem.planner.graph import Graph
from numamem.planner.packing import pack
from numamem.planner.partition import CostModel, Partitioner
from numamem.planner.plan import Arena, Block, LayerPlan, Plan, TensorInfo

__all__ = ["MAX_NODES", "plan"]

#: Linux numbers at most 1024 NUMA nodes (MAX_NUMNODES with the largest CONFIG_NODES_SHIFT, 10).
#: A plan may describe nodes this machine lacks, but only nodes a Linux machine could have.
MAX_NODES = 1024


def _lower_bound(blocks: Sequence[Block], sizes: Sequence[int], steps: int) -> int:
    """Largest total of ``sizes`` over the blocks live at one step (the arena's lower bound).

    The checker recomputes this with its own code (:mod:`numamem.planner.check`).
    """
    n = max([steps] + [b.live[1] + 1 for b in blocks])
    delta = np.zeros(n + 1, dtype=np.int64)
    for b, size in zip(blocks, sizes):
        delta[b.live[0]] += size
        delta[b.live[1] + 1] -= size
    return int(np.cumsum(delta).max(initial=0))


def _check_nodes(nodes: Sequence[int] | int) -> list[int]:
    if isinstance(nodes, bool):
        raise TypeError("nodes must be a list of node ids or a count")
    if isinstance(nodes, (int, np.integer)):
        if nodes < 1:
            raise ValueError(f"node count must be >= 1, got {nodes}")
        if nodes > MAX_NODES:
            raise ValueError(f"node count must be at most {MAX_NODES} (the most NUMA nodes Linux has), got {nodes}")
        return list(range(int(nodes)))
    out = []
    for n in nodes:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"node ids must be non-negative ints, got {n!r}")
        if n >= MAX_NODES:
            raise ValueError(f"node id {n} is past the last one Linux numbers ({MAX_NODES - 1})")
        out.append(int(n))
    if not out:
        raise ValueError("nodes must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"nodes {out} repeat a node")
    return out


def _pack_node(blocks: list[Block], steps: int, page: int, alignment: int, time_limit: float | None) -> tuple[str, int]:
    """Give each block of one node an offset; return (packer note, unrounded peak)."""
    last = max(steps - 1, 0)
    static = [b for b in blocks if b.live[0] == 0 and b.live[1] >= last]
    dynamic = [b for b in blocks if not (b.live[0] == 0 and b.live[1] >= last)]
    note = "none"
    peak = 0
    if dynamic:
        lower = [b.live[0] for b in dynamic]
        upper = [b.live[1] + 1 for b in dynamic]
        sizes = [b.reserved for b in dynamic]
        # Page-sized blocks packed at the smaller alignment usually still land on page
        # boundaries (every size is a multiple of the alignment); only when they do not is the
        # whole node repacked at page alignment, which can cost a little above the bound.
        align = page if all(b.page_aligned for b in dynamic) else alignment
        res = pack(lower, upper, sizes, align=align, time_limit=time_limit)
        offsets = [int(o) for o in res.offsets]
        note = f"align={align}"
        if any(b.page_aligned and o % page for b, o in zip(dynamic, offsets)):
            res = pack(lower, upper, sizes, align=page, time_limit=time_limit)
            offsets = [int(o) for o in res.offsets]
            note = f"align={page} (repacked)"
        for b, o in zip(dynamic, offsets):
            b.offset = o
        peak = max(o + s for o, s in zip(offsets, sizes))
    # Whole-run blocks on top: page-aligned ones first so the rest need no further rounding.
    if static:
        static.sort(key=lambda b: (not b.page_aligned,))
        pos = round_up(peak, page if static[0].page_aligned else alignment)
        for b in static:
            b.offset = pos
            pos += b.reserved
        peak = pos
    return note, peak


def plan(
    graph: Graph,
    nodes: Sequence[int] | int = (0, 1),
    page_size: int = 4096,
    batch_axis_only: bool = False,
    distances: Any = None,
    bandwidth: Any = None,
    *,
    alignment: int = 64,
    replicate_bytes: int | None = None,
    cost_model: CostModel | None = None,
    time_limit: float | None = None,
) -> Plan:
    """Plan ``graph`` over NUMA ``nodes``: split every layer, place every block, pack the arenas.

    Parameters
    ----------
    graph : Graph
    nodes : sequence of int or int, default (0, 1)
        Node ids (any, present on this machine or not) or a count ``N`` meaning ``0..N-1``.
    page_size : int, default 4096
        Page size the arenas and spread blocks are rounded to (a power of two).
    batch_axis_only : bool, default False
        Split every layer on its batch axis (the paper's consistent pattern) instead of choosing
        per layer with the cost model.
    distances : square sequence or mapping, optional
        NUMA distances between the nodes (``distances[i][j]`` in the order of ``nodes``, or
        ``{a: {b: d}}`` by id). Default: 10 local, 20 remote.
    bandwidth : square sequence or mapping, optional
        Measured read bandwidth (bytes/s) of node ``a`` from node ``b``; used instead of distances.
    alignment : int, default 64
        Alignment of blocks that are not page-aligned (a power of two dividing the page).
    replicate_bytes : int, optional
        Weights up to this size are replicated on every node (default 16 MiB, see
        :mod:`numamem.planner.partition`).
    cost_model : CostModel, optional
    time_limit : float, optional
        Passed to the packer for each node.

    Returns
    -------
    Plan
        Already checked with :meth:`Plan.verify` (the independent checker of
        :mod:`numamem.planner.check`).

    Examples
    --------
    >>> import numamem.models
    >>> g = numamem.models.get("resnet50", batch=2)
    >>> p = plan(g, nodes=[0, 1], batch_axis_only=True)
    >>> {l.axis for l in p.layers}, p.remote_bytes
    ({0}, 0)
    >>> all(a.peak == a.lower_bound for a in p.arenas)
    True

    Without ``batch_axis_only`` the cost model splits the weight-bound last stage by output
    channel instead (each node then reads half of those weights, at the price of some remote
    reads of activations):

    >>> p = plan(g, nodes=[0, 1])
    >>> sorted({l.axis for l in p.layers}), p.remote_bytes > 0
    ([0, 1], True)
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a numamem.planner.Graph, not {type(graph).__name__}")
    node_ids = _check_nodes(nodes)
    for what, value in (("page_size", page_size), ("alignment", alignment)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
            raise ValueError(f"{what} must be a positive power of two, got {value!r}")
    if page_size % alignment:
        raise ValueError(f"alignment {alignment} must divide page_size {page_size}")
    cost = cost_model or CostModel()
    if replicate_bytes is not None:
        if replicate_bytes < 0:
            raise ValueError(f"replicate_bytes must be >= 0, got {replicate_bytes}")
        cost = dataclasses.replace(cost, replicate_bytes=int(replicate_bytes))
    try:
        return _build_plan(graph, node_ids, page_size, batch_axis_only, distances, bandwidth, alignment, cost,
                           time_limit)
    except MemoryError as exc:
        if exc.args:  # NumPy's (and any other with a message) already say what they could not allocate
            raise
        raise MemoryError(
            f"out of memory planning graph {graph.name!r} over {len(node_ids)} nodes: a plan grows with "
            f"nodes x layers, and with nodes² for each layer whose nodes all read from each other "
            f"(its remote_pairs); plan over fewer nodes"
        ) from exc


def _build_plan(graph: Graph, node_ids: list[int], page_size: int, batch_axis_only: bool, distances: Any,
                bandwidth: Any, alignment: int, cost: CostModel, time_limit: float | None) -> Plan:
    """:func:`plan` after its arguments are checked."""
    part = Partitioner(graph, node_ids, distances=distances, bandwidth=bandwidth,
                       batch_axis_only=batch_axis_only, cost=cost)
    choices = part.run()
    live = graph.lifetimes()
    steps = len(graph.layers)

    blocks: list[Block] = []
    for name, t in graph.tensors.items():
        layout = part.layouts[name]
        item = graph.itemsize(name)
        spread = layout.spread
        for index, (node, box) in enumerate(layout.parts):
            size = volume(box) * item
            if layout.replicated:
                sl = None
            else:
                axes = [k for k, ((a, b), d) in enumerate(zip(box, t.shape)) if (a, b) != (0, d)]
                k = axes[0] if axes else 0
                sl = Slice(k, box[k][0], box[k][1]) if t.shape else Slice(0, 0, 1)
            reserved = round_up(max(size, 1), page_size if spread else alignment)
            blocks.append(Block(name, index, node, 0, size, reserved, sl, live[name],
                                replica=layout.replicated, page_aligned=spread))

    arenas: list[Arena] = []
    notes = {}
    base = 0
    by_node: dict[int, list[Block]] = {n: [] for n in node_ids}
    for b in blocks:
        by_node[b.node].append(b)
    for n in node_ids:
        mine = by_node[n]
        notes[str(n)], peak = _pack_node(mine, steps, page_size, alignment, time_limit)
        size = round_up(peak, page_size)
        arenas.append(Arena(
            node=n, size=size, lower_bound=_lower_bound(mine, [b.reserved for b in mine], steps), peak=peak, base=base,
            page_padding=size - peak, block_padding=sum(b.reserved - b.size for b in mine),
            lower_bound_unpadded=_lower_bound(mine, [b.size for b in mine], steps),
        ))
        base += size

    layers = []
    for step, (layer, c) in enumerate(zip(graph.layers, choices)):
        layers.append(LayerPlan(
            name=layer.name, step=step, axis=c.axis, local_bytes=c.local_bytes, remote_bytes=c.remote_bytes,
            op=layer.op, nodes=[n for n, _ in c.parts], flops=c.flops, cost_s=c.cost,
            remote_pairs=[[s, d, b] for s in sorted(c.remote_pairs) for d, b in sorted(c.remote_pairs[s].items())],
        ))
    tensors = {n: TensorInfo(t.shape, graph.itemsize(n), t.role, live[n]) for n, t in graph.tensors.items()}
    info = {
        "batch_axis_only": batch_axis_only,
        "distances": part.distance.to_lists(),
        "bandwidth": part.bandwidth.to_lists(),
        "bandwidth_measured": bandwidth is not None,
        "cost_model": asdict(cost),
        "packing": notes,
        "activation_peak_single_node": graph.activation_peak(),
    }
    result = Plan(graph=graph.name, nodes=node_ids, page_size=page_size, arenas=arenas, blocks=blocks,
                  layers=layers, alignment=alignment, steps=steps, tensors=tensors, info=info, source=graph)
    result.verify()
    return result
