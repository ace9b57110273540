"""Partitioning a graph over NUMA nodes: per-layer split choice and tensor layouts.

Every layer's output is either split along one of its axes into contiguous slices, one per node
(``axis`` = that output axis; axis 0 is the batch axis), or computed whole on one node
(``axis`` = None, used only when no split is possible or worth it). The node that computes a
slice holds that slice of the output: each block's memory is on the node that writes it.

How a layer is split is chosen greedily in execution order with a cost model
(:class:`CostModel`): the estimated time of the slowest node, counting its share of the flops and
the bytes it reads, local or remote, each at the bandwidth between the two nodes (from a measured
matrix when given, else the local bandwidth scaled by ``10 / distance``). A candidate that keeps
the axis of the layer producing the first input wins whenever it is within
``consistency_tolerance`` of the best, so a chain of layers keeps one access pattern. The bytes
a candidate reads are counted by :func:`numamem.planner.traffic.layer_reads`, the rule the
runner's traffic model uses too; boxes come from :mod:`numamem.planner.boxes`.

Weights and graph inputs are laid out by their first reader (the weight rule):

- a weight of at most ``replicate_bytes`` is replicated on every node (reads always local);
- a larger weight (and every graph input) is split the way its first reader's nodes read it when
  they read disjoint slices along one axis (a feature-split layer's weight columns), is placed
  whole on the reader's node when one node reads it, and is otherwise (several nodes each reading
  all of it, as under a batch split) split evenly along its axis 0 over the reading nodes, so its
  memory and its remote traffic are shared evenly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from numamem.planner.boxes import Box, full, on_axis, split_axis, split_even, volume
from numamem.planner.graph import Graph
from numamem.planner.ops import flops as op_flops, splittable
from numamem.planner.traffic import Layout, input_boxes, layer_reads, reads_from

DEFAULT_LOCAL_DISTANCE = 10
DEFAULT_REMOTE_DISTANCE = 20


@dataclass(frozen=True)
class CostModel:
    """Constants of the per-layer cost estimate.

    Attributes
    ----------
    flops_per_s : float
        Sustained floating-point rate of one node.
    local_bandwidth : float
        Bytes per second a node reads from its own memory; remote reads at distance ``d`` run at
        ``local_bandwidth * 10 / d`` unless a measured bandwidth matrix is given.
    consistency_tolerance : float
        Relative slack within which the producer's axis is preferred to the cheapest one.
    replicate_bytes : int
        Weights up to this size are replicated on every node; larger ones are split.
    lookahead : bool
        Charge a change of axis with the remote reads needed to change back at the next layer.
    """

    flops_per_s: float = 1e11
    local_bandwidth: float = 1e10
    consistency_tolerance: float = 0.05
    replicate_bytes: int = 16 << 20
    lookahead: bool = True


def natural_layout(shape: Sequence[int], reads: Sequence[tuple[int, Box]], replicate: bool,
                   all_nodes: Sequence[int]) -> Layout:
    """Layout of a weight or graph input for its first reader (the weight rule, module doc).

    ``reads`` pairs each reading node with the box of the tensor it reads.

    >>> natural_layout((8, 4), [(0, ((0, 8), (0, 2))), (1, ((0, 8), (2, 4)))], False, [0, 1]).parts
    ((0, ((0, 8), (0, 2))), (1, ((0, 8), (2, 4))))
    """
    if replicate:
        return Layout(tuple((n, full(shape)) for n in all_nodes), replicated=True)
    reader_nodes = list(dict.fromkeys(n for n, _ in reads))
    if len(reader_nodes) == 1 or not shape:
        return Layout(((reader_nodes[0] if reader_nodes else all_nodes[0], full(shape)),))
    axes = {split_axis(box, shape) for _, box in reads}
    if len(axes) == 1 and None not in axes:
        axis = axes.pop()
        ranges = sorted((box[axis], n) for n, box in reads)
        pos, ok = 0, True
        for (a, b), _ in ranges:
            ok = ok and a == pos and b > a
            pos = b
        if ok and pos == shape[axis]:
            return Layout(tuple((n, on_axis(shape, axis, a, b)) for (a, b), n in ranges))
    # split_even never yields an empty range; the filter keeps a zero-length axis 0 out.
    bounds = split_even(0, shape[0], len(reader_nodes))
    return Layout(tuple((n, on_axis(shape, 0, a, b)) for n, (a, b) in zip(reader_nodes, bounds) if b > a))


@dataclass
class Choice:
    """A layer's chosen split with its estimated traffic (bytes) and cost (seconds)."""

    axis: int | None
    parts: list[tuple[int, Box]]
    cost: float
    flops: int
    local_bytes: int
    remote_bytes: int
    remote_pairs: dict[tuple[int, int], int]
    new_layouts: dict[str, Layout]
    penalty: float = 0.0


class Partitioner:
    """Chooses a split for each layer of ``graph`` and a layout for each tensor.

    Parameters
    ----------
    graph : Graph
    nodes : sequence of int
    distances : mapping or square sequence, optional
        NUMA distances: ``distances[i][j]`` between ``nodes[i]`` and ``nodes[j]``, or a mapping
        ``{a: {b: d}}`` by node id. Default: 10 local, 20 remote.
    bandwidth : mapping or square sequence, optional
        Measured bytes/s that node ``a`` reads from node ``b`` (same indexing as ``distances``);
        replaces the distance-based estimate.
    batch_axis_only : bool
        Only consider splitting axis 0 (the batch axis) of every layer.
    cost : CostModel
    """

    def __init__(self, graph: Graph, nodes: Sequence[int], *, distances=None, bandwidth=None,
                 batch_axis_only: bool = False, cost: CostModel | None = None):
        self.graph = graph
        self.nodes = list(nodes)
        self.cost = cost or CostModel()
        self.batch_axis_only = batch_axis_only
        self.distance = _matrix(distances, self.nodes, "distances",
                                lambda a, b: DEFAULT_LOCAL_DISTANCE if a == b else DEFAULT_REMOTE_DISTANCE)
        if bandwidth is not None:
            self.bandwidth = _matrix(bandwidth, self.nodes, "bandwidth", None)
        else:
            self.bandwidth = {
                (a, b): self.cost.local_bandwidth * DEFAULT_LOCAL_DISTANCE / self.distance[a, b]
                for a in self.nodes for b in self.nodes
            }
        self.layouts: dict[str, Layout] = {}
        self.choices: list[Choice] = []

    # ---------------------------------------------------------------- candidates
    def _candidates(self, step: int) -> list[tuple[int | None, list[tuple[int, Box]]]]:
        layer = self.graph.layers[step]
        g = self.graph
        in_shapes = [g.tensors[n].shape for n in layer.inputs]
        out_shape = g.tensors[layer.outputs[0]].shape
        cands: list[tuple[int | None, list[tuple[int, Box]]]] = []
        axes = [0] if self.batch_axis_only else range(len(out_shape))
        if len(self.nodes) > 1:
            for k in axes:
                if k < len(out_shape) and out_shape[k] > 1 and splittable(layer.op, in_shapes, out_shape, layer.attrs, k):
                    parts = [(n, on_axis(out_shape, k, a, b))
                             for n, (a, b) in zip(self.nodes, split_even(0, out_shape[k], len(self.nodes)))]
                    cands.append((k, parts))
        if self.batch_axis_only and cands:
            return cands  # the consistent pattern: whole-layer placement only where it cannot split
        for n in self.nodes:
            cands.append((None, [(n, full(out_shape))]))
        return cands

    def _evaluate(self, step: int, axis: int | None, parts: list[tuple[int, Box]]) -> Choice:
        g = self.graph
        layer = g.layers[step]
        in_shapes = [g.tensors[n].shape for n in layer.inputs]
        out_shape = g.tensors[layer.outputs[0]].shape
        total_flops = op_flops(layer.op, in_shapes, out_shape, layer.attrs)
        total_elems = max(1, math.prod(out_shape))
        boxes = input_boxes(g, step, axis, [box for _, box in parts])
        new_layouts: dict[str, Layout] = {}
        for i, name in enumerate(layer.inputs):
            if name in self.layouts or name in new_layouts:
                continue
            t = g.tensors[name]
            node_reads = [(n, boxes[j][i]) for j, (n, _) in enumerate(parts) if boxes[j][i] is not None]
            replicate = t.role == "weight" and g.nbytes(name) <= self.cost.replicate_bytes
            new_layouts[name] = natural_layout(t.shape, node_reads, replicate, self.nodes)
        layouts = {name: new_layouts[name] if name in new_layouts else self.layouts[name] for name in layer.inputs}
        reads = layer_reads(g, step, axis, parts, layouts, boxes=boxes)
        worst = 0.0
        local = remote = 0
        pairs: dict[tuple[int, int], int] = {}
        for (n, box), part_reads in zip(parts, reads):
            # Summed read by read, in layer_reads' order: the float result (and with it every
            # tie between candidates) must not depend on how the reads are grouped.
            t_node = total_flops * volume(box) / total_elems / self.cost.flops_per_s
            for r in part_reads:
                m = r.source
                t_node += r.nbytes / self.bandwidth[n, m]
                if m == n:
                    local += r.nbytes
                else:
                    remote += r.nbytes
                    pairs[m, n] = pairs.get((m, n), 0) + r.nbytes
            worst = max(worst, t_node)
        return Choice(axis, parts, worst, total_flops, local, remote, pairs, new_layouts)

    def _switch_penalty(self, step: int, choice: Choice, preferred: int | None) -> float:
        """Estimated time to bring the output back to the ``preferred`` split, if it leaves it.

        A greedy choice sees the remote reads a switch of axis costs now but not the ones it
        causes when the next layer reads the output the old way; this one-step lookahead charges
        the latter, so the planner leaves the prevailing axis only when that pays both ways.
        """
        if preferred is None or choice.axis == preferred or not self.cost.lookahead:
            return 0.0
        g = self.graph
        out = g.layers[step].outputs[0]
        shape = g.tensors[out].shape
        if preferred >= len(shape) or shape[preferred] < 2:
            return 0.0
        layout = Layout(tuple(choice.parts))
        item = g.itemsize(out)
        worst = 0.0
        for n, (a, b) in zip(self.nodes, split_even(0, shape[preferred], len(self.nodes))):
            got = reads_from(layout, on_axis(shape, preferred, a, b), n)
            worst = max(worst, sum(e * item / self.bandwidth[n, m] for m, e in got.items() if m != n))
        return worst

    # ---------------------------------------------------------------- driver
    def run(self) -> list[Choice]:
        """Choose every layer's split and every tensor's layout; return the per-layer choices."""
        g = self.graph
        axis_of: dict[str, int | None] = {}
        for step, layer in enumerate(g.layers):
            preferred = next((axis_of[n] for n in layer.inputs if n in axis_of), None)
            options = [self._evaluate(step, axis, parts) for axis, parts in self._candidates(step)]
            for c in options:
                c.penalty = self._switch_penalty(step, c, preferred)
            # min keeps the first of equal costs, so ties go to the lower axis: deterministic.
            best = min(options, key=lambda c: c.cost + c.penalty)
            if preferred is not None:
                same = [c for c in options if c.axis == preferred]
                if same and same[0].cost + same[0].penalty <= (best.cost + best.penalty) * (
                    1 + self.cost.consistency_tolerance
                ):
                    best = same[0]
            self.layouts.update(best.new_layouts)
            out = layer.outputs[0]
            self.layouts[out] = Layout(tuple(best.parts))
            axis_of[out] = best.axis
            self.choices.append(best)
        # Tensors no layer reads: weights by the weight rule, inputs split on their batch axis.
        for name, t in g.tensors.items():
            if name not in self.layouts:
                reads = [(n, full(t.shape)) for n in self.nodes]
                replicate = t.role == "weight" and g.nbytes(name) <= self.cost.replicate_bytes
                self.layouts[name] = natural_layout(t.shape, reads, replicate, self.nodes)
        return self.choices


def _matrix(value, nodes: Sequence[int], what: str, default) -> dict[tuple[int, int], float]:
    """Normalise a node-pair matrix given by position (square sequence) or by id (mapping)."""
    out: dict[tuple[int, int], float] = {}
    if value is None:
        return {(a, b): float(default(a, b)) for a in nodes for b in nodes}
    for i, a in enumerate(nodes):
        for j, b in enumerate(nodes):
            try:
                if isinstance(value, Mapping):
                    # JSON objects have string keys: accept both spellings of a node id.
                    row = value[a] if a in value else value[str(a)]
                    v = row[b] if b in row else row[str(b)]
                else:
                    v = value[i][j]
            except (KeyError, IndexError, TypeError):
                raise ValueError(
                    f"{what}: no entry for nodes {a} and {b} (give a {len(nodes)}x{len(nodes)} matrix "
                    f"in the order of nodes {list(nodes)}, or a mapping by node id)"
                ) from None
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{what}: entry for nodes {a} and {b} is not a number: {v!r}") from None
            if not v > 0 or math.isinf(v):
                raise ValueError(f"{what}: entry for nodes {a} and {b} must be positive and finite, got {v}")
            out[a, b] = v
    return out


def split_for_workers(op: str, in_shapes: Sequence[tuple[int, ...]], out_shape: Sequence[int],
                      attrs: Mapping[str, object], block, whole: bool, workers: int,
                      contiguous_out: bool = False) -> list:
    """Cut one node's block of a layer's output among ``workers`` threads, along one output axis.

    A block restricted along its axis is cut along that axis (a kernel call takes one axis). A
    whole-tensor block may be cut along any axis the op splits: the axis whose pieces read the
    fewest input elements in total is taken (a small-batch dense layer cut by rows would have
    every worker stream the whole weight; cut by columns each reads its part), preferring, among
    near-equal choices, pieces that are C-contiguous in the block.

    Parameters
    ----------
    op : str
    in_shapes : sequence of tuple of int
        Full operand shapes.
    out_shape : sequence of int
        Full output shape.
    attrs : mapping
        The layer's attributes.
    block : Slice
        The node's block (for a whole-tensor block, the full range of axis 0).
    whole : bool
        Whether the node computes the whole output.
    workers : int
    contiguous_out : bool
        The op's kernel wants a C-contiguous output (BLAS-based): a strided piece then costs an
        extra pass over the output, counted as reading it twice.

    Returns
    -------
    list of Slice
        At most ``workers`` pieces covering the block, in order.

    Examples
    --------
    >>> from numamem.planner.boxes import Slice
    >>> split_for_workers("dense", [(2, 64), (64, 128)], (2, 128), {}, Slice(0, 0, 2), True, 2)
    [Slice(axis=1, start=0, stop=64), Slice(axis=1, start=64, stop=128)]
    """
    # Local import: this function was appended to the module without touching its import block.
    from numamem.planner.boxes import Slice
    from numamem.planner.ops import input_regions

    in_shapes = [tuple(s) for s in in_shapes]
    out_shape = tuple(out_shape)
    if workers <= 1 or block.length == 0:
        return [block]
    if not whole:
        if block.length >= 2 and splittable(op, in_shapes, out_shape, attrs, block.axis):
            return [Slice(block.axis, lo, hi) for lo, hi in split_even(block.start, block.stop, workers)]
        return [block]
    axes = [k for k in range(len(out_shape)) if out_shape[k] >= 2 and splittable(op, in_shapes, out_shape, attrs, k)]
    best_key, best = None, [block]
    for axis in axes:
        pieces = [Slice(axis, lo, hi) for lo, hi in split_even(0, out_shape[axis], workers)]
        read = sum(volume(box) for piece in pieces
                   for box in input_regions(op, in_shapes, out_shape, attrs, axis, piece.start, piece.stop)
                   if box is not None)
        contiguous = all(out_shape[j] == 1 for j in range(axis))
        # Reading bytes costs more than a strided write of the output; count the output copy of
        # non-contiguous pieces (BLAS-based ops only) as one more pass over the output.
        cost = read + (0 if contiguous or not contiguous_out else 2 * math.prod(out_shape))
        key = (cost * (1.0 if len(pieces) >= workers else 1.5), not contiguous, axis)
        if best_key is None or key < best_key:
            best_key, best = key, pieces
    return best
