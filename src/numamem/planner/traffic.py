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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence, TypeVar

from numamem.planner.boxes import Box, full, overlap, volume
from numamem.planner.ops import input_regions

if TYPE_CHECKING:  # annotations only: the graph module is not needed at run time
    from numamem.planner.graph import Graph

T = TypeVar("T")


def replica_source(holders: Sequence[T], reader: T) -> T:
    """The replica a reader on ``reader`` reads: the one on its own node, else the first.

    ``holders`` lists the nodes (or groups) holding a full replica, in plan order.

    >>> replica_source([0, 1], 1)
    1
    >>> replica_source([0, 1], 2)
    0
    """
    return reader if reader in holders else holders[0]


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


def reads_from(layout: Layout, box: Box, node: int) -> dict[int, int]:
    """Elements of ``box`` that ``node`` reads from each node under ``layout``.

    Keys are in the order of the layout's parts; a replicated layout is read by
    :func:`replica_source`.

    >>> reads_from(Layout(((0, ((0, 4),)), (1, ((4, 8),)))), ((2, 6),), 1)
    {0: 2, 1: 2}
    """
    if layout.replicated:
        return {replica_source(layout.nodes, node): volume(box)}
    out: dict[int, int] = {}
    for m, part in layout.parts:
        v = overlap(part, box)
        if v:
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
