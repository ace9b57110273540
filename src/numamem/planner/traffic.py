"""Who reads what from where: the placement rules the partitioner, the runner and the executor share.

A :class:`Layout` says where a tensor's bytes are (a box of the tensor per node, or whole
replicas). :func:`replica_source` is the replica-read rule, :func:`reads_from` the elements one
node reads of a box under a layout, and :func:`layer_reads` the bytes every node computing a part
of one layer reads from every node. The partitioner's cost model
(:meth:`numamem.planner.partition.Partitioner._evaluate`) and the runner's traffic model
(:func:`numamem.runtime.runner.plan_traffic`) both count reads with :func:`layer_reads`, so the
plan's ``local_bytes``/``remote_bytes`` and the runner's estimate follow one rule.

The plan checker (:mod:`numamem.planner.check`) recomputes traffic with its own code on purpose
and does not import this module: a mistake here must not fool the planner and the checker alike.

Examples
--------
Two nodes each compute half of a dense layer's batch; the weight is replicated, so every read is
local:

>>> from numamem.planner import GraphBuilder
>>> from numamem.planner.boxes import full, on_axis
>>> b = GraphBuilder("tiny")
>>> y = b.output(b.dense(b.input("x", (8, 4)), b.weight("w", (4, 2))))
>>> g = b.build()
>>> x, w = (g.tensors[n].shape for n in ("x", "w"))
>>> layouts = {"x": Layout(((0, on_axis(x, 0, 0, 4)), (1, on_axis(x, 0, 4, 8)))),
...            "w": Layout(((0, full(w)), (1, full(w))), replicated=True)}
>>> parts = [(0, on_axis((8, 2), 0, 0, 4)), (1, on_axis((8, 2), 0, 4, 8))]
>>> [[(r.tensor, r.source, r.nbytes) for r in part] for part in layer_reads(g, 0, 0, parts, layouts)]
[[('x', 0, 64), ('w', 0, 32)], [('x', 1, 64), ('w', 1, 32)]]
"""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Collection, Mapping, Sequence, TypeVar

from numamem.planner.boxes import Box, full, overlap, volume
from numamem.planner.ops import input_regions

if TYPE_CHECKING:  # annotations only: the graph module is not needed at run time
    from numamem.planner.graph import Graph

T = TypeVar("T")


def replica_source(holders: Collection[T], reader: T) -> T:
    """The replica a reader on ``reader`` reads: the one on its own node, else the first.

    ``holders`` lists the nodes (or groups) holding a full replica, in plan order: a sequence, or
    a dict keyed by them (``dict.fromkeys(nodes)``: ordered like the list, with a membership test
    that does not grow with the node count).

    >>> replica_source([0, 1], 1)
    1
    >>> replica_source(dict.fromkeys([0, 1]), 2)
    0
    """
    return reader if reader in holders else next(iter(holders))


@dataclass(frozen=True)
class _Tiling:
    """Parts of a layout that differ along one axis only, in disjoint ranges, sorted by start.

    Lets :func:`reads_from` visit only the parts a box meets (found by bisection) instead of every
    part: with one part per node, a node's reads would otherwise cost O(nodes) each and a layer's
    O(nodes²) even when every node reads only its neighbours.
    """

    axis: int
    starts: list[int]
    stops: list[int]
    order: list[int]  # part index of each sorted range
    sorted_by_index: bool

    @classmethod
    def of(cls, parts: Sequence[tuple[int, Box]]) -> "_Tiling | None":
        """The tiling of ``parts``, or None when they are not one (then every part is visited)."""
        if len(parts) < 2:
            return None
        first = parts[0][1]
        rank = len(first)
        axes = set()
        for _, box in parts:
            if len(box) != rank:
                return None
            axes.update(k for k in range(rank) if box[k] != first[k])
            if len(axes) > 1:
                return None
        if len(axes) != 1:
            return None
        axis = axes.pop()
        order = sorted(range(len(parts)), key=lambda i: parts[i][1][axis])
        starts = [parts[i][1][axis][0] for i in order]
        stops = [parts[i][1][axis][1] for i in order]
        if any(stops[i] > starts[i + 1] for i in range(len(order) - 1)):
            return None  # overlapping ranges: bisection would miss parts
        return cls(axis, starts, stops, order, order == sorted(order))

    def overlaps(self, parts: Sequence[tuple[int, Box]], box: Box) -> list[tuple[int, int]]:
        """``(part index, elements shared with box)`` of the parts that meet ``box``, in part order.

        The parts agree on every other axis, so their product over those axes is taken once and
        only the range along the tiling axis is intersected per part (what :func:`overlap` gives).
        """
        axis = self.axis
        lo, hi = box[axis]
        # Stops are sorted too (ranges are disjoint): parts [i0, i1) are those with stop > lo
        # and start < hi.
        i0, i1 = bisect_right(self.stops, lo), bisect_left(self.starts, hi)
        if i0 >= i1:
            return []
        common = parts[self.order[i0]][1]
        rest = math.prod(max(0, min(h1, h2) - max(l1, l2))
                         for k, ((l1, h1), (l2, h2)) in enumerate(zip(common, box)) if k != axis)
        hits = [(i, max(0, min(hi, self.stops[j]) - max(lo, self.starts[j])) * rest)
                for j, i in zip(range(i0, i1), self.order[i0:i1])]
        return hits if self.sorted_by_index else sorted(hits)


@dataclass(frozen=True)
class Layout:
    """Where a tensor's bytes are: ``parts`` pairs a node with the box of the tensor it holds.

    ``replicated`` layouts hold the whole tensor on every listed node.
    """

    parts: tuple[tuple[int, Box], ...]
    replicated: bool = False

    @property
    def nodes(self) -> list[int]:
        """Node of each part, in order."""
        return [n for n, _ in self.parts]

    @property
    def spread(self) -> bool:
        """True when distinct blocks of the tensor sit on more than one node."""
        return not self.replicated and len({n for n, _ in self.parts}) > 1

    # Cached on the instance (a frozen dataclass still has a __dict__): the partitioner queries
    # one layout once per reading node.
    @cached_property
    def holders(self) -> dict[int, None]:
        """Nodes of the parts as an ordered dict (for :func:`replica_source`)."""
        return dict.fromkeys(n for n, _ in self.parts)

    @cached_property
    def _tiling(self) -> _Tiling | None:
        return None if self.replicated or len(self.parts) < 2 else _Tiling.of(self.parts)


def reads_from(layout: Layout, box: Box, node: int) -> dict[int, int]:
    """Elements of ``box`` that ``node`` reads from each node under ``layout``.

    Keys are in the order of the layout's parts; a replicated layout is read by
    :func:`replica_source`.

    >>> reads_from(Layout(((0, ((0, 4),)), (1, ((4, 8),)))), ((2, 6),), 1)
    {0: 2, 1: 2}
    """
    if layout.replicated:
        return {replica_source(layout.holders, node): volume(box)}
    out: dict[int, int] = {}
    parts = layout.parts
    tiling = layout._tiling
    if tiling is not None and len(box) == len(parts[0][1]):
        hits = tiling.overlaps(parts, box)
    else:
        hits = [(i, overlap(part, box)) for i, (_, part) in enumerate(parts)]
    for i, v in hits:
        if v:
            m = parts[i][0]
            out[m] = out.get(m, 0) + v
    return out


@dataclass(slots=True)
class Read:
    """Bytes of ``tensor`` that the node computing a part of a layer reads from node ``source``.

    Not frozen: the partitioner makes thousands per plan, and a frozen dataclass is four times
    slower to build.
    """

    tensor: str
    source: int
    nbytes: int


def input_boxes(graph: "Graph", step: int, axis: int | None, out_boxes: Sequence[Box]) -> list[list[Box | None]]:
    """For each output box of layer ``step``, the box of each input read to compute it.

    ``axis`` is the layer's split axis; None (computed whole) reads every input whole. None in the
    result marks an input the box does not read (a concat operand outside it).
    """
    layer = graph.layers[step]
    in_shapes = [graph.tensors[n].shape for n in layer.inputs]
    if axis is None:
        whole = [full(s) for s in in_shapes]
        return [whole for _ in out_boxes]
    out_shape = graph.tensors[layer.outputs[0]].shape
    return [input_regions(layer.op, in_shapes, out_shape, layer.attrs, axis, *box[axis]) for box in out_boxes]


def layer_reads(
    graph: "Graph",
    step: int,
    axis: int | None,
    parts: Sequence[tuple[int, Box]],
    layouts: Mapping[str, Layout],
    holder: Callable[[str], int | None] | None = None,
    *,
    boxes: Sequence[Sequence[Box | None]] | None = None,
) -> list[list[Read]]:
    """What each node computing a part of layer ``step`` reads, and from where.

    Parameters
    ----------
    graph : Graph
    step : int
        The layer's position in execution order.
    axis : int or None
        Output axis the layer is split on (None: each part computes the whole output).
    parts : sequence of (node, box)
        The node computing each part of the output and the output box it computes.
    layouts : mapping of str to Layout
        Where each input's bytes are.
    holder : callable, optional
        ``holder(tensor)`` -> a node holding the whole tensor instead of its layout, or None to
        keep the layout (the runner models first-touch placement this way).
    boxes : sequence of sequence of Box or None, optional
        Per part, the input boxes it reads, when the caller already has them (what
        :func:`input_boxes` gives for the parts' boxes).

    Returns
    -------
    list of list of Read
        One list per part: for each input in order, one :class:`Read` per source node (in the
        order of :func:`reads_from`). Inputs the part does not read contribute nothing.
    """
    layer = graph.layers[step]
    items = [graph.itemsize(name) for name in layer.inputs]
    if boxes is None:
        boxes = input_boxes(graph, step, axis, [box for _, box in parts])
    out: list[list[Read]] = []
    for (node, _), in_boxes in zip(parts, boxes):
        reads: list[Read] = []
        for name, item, in_box in zip(layer.inputs, items, in_boxes):
            if in_box is None:
                continue
            h = holder(name) if holder is not None else None
            got = {h: volume(in_box)} if h is not None else reads_from(layouts[name], in_box, node)
            for m, e in got.items():
                reads.append(Read(name, m, e * item))
        out.append(reads)
    return out


def block_layouts(blocks: Sequence, shapes: Mapping[str, Sequence[int]]) -> dict[str, Layout]:
    """The :class:`Layout` of every tensor from a plan's blocks, parts in the blocks' order.

    ``blocks`` are :class:`numamem.planner.plan.Block` objects (read by attribute: ``tensor``,
    ``node``, ``slice``); a block without a slice is a replica.
    """
    parts: dict[str, list[tuple[int, Box]]] = {}
    replicated: dict[str, bool] = {}
    for b in blocks:
        shape = shapes[b.tensor]
        parts.setdefault(b.tensor, []).append((b.node, full(shape) if b.slice is None else b.slice.box(shape)))
        replicated.setdefault(b.tensor, b.slice is None)  # the first block decides, as the checker reads it
    return {name: Layout(tuple(p), replicated=replicated[name]) for name, p in parts.items()}
