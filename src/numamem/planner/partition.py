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
``consistency_tolerance`` of the best, so a chain of layers keeps one access pattern.

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

from numamem.planner.graph import Graph
from numamem.planner.boxes import Box
from numamem.planner.ops import flops as op_flops, input_regions, splittable

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


@dataclass(frozen=True)
class Layout:
    """Where a tensor's bytes are: ``parts`` pairs a node with the region it holds.

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


def split_bounds(extent: int, parts: int) -> list[tuple[int, int]]:
    """Even contiguous split of ``range(extent)`` into ``parts`` ranges (the first get one more).

    >>> split_bounds(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    q, r = divmod(extent, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + q + (1 if i < r else 0)
        out.append((start, stop))
        start = stop
    return out


def full_region(shape: Sequence[int]) -> Box:
    """The region covering all of a tensor of ``shape``."""
    return tuple((0, int(d)) for d in shape)


def region_on(shape: Sequence[int], axis: int, lo: int, hi: int) -> Box:
    """The region ``[lo, hi)`` along ``axis`` and everything along the other axes."""
    return tuple((lo, hi) if k == axis else (0, int(d)) for k, d in enumerate(shape))


def volume(region: Box) -> int:
    """Number of elements in ``region``."""
    return math.prod(max(0, b - a) for a, b in region)


def overlap(r1: Box, r2: Box) -> int:
    """Number of elements two regions share."""
    return math.prod(max(0, min(b1, b2) - max(a1, a2)) for (a1, b1), (a2, b2) in zip(r1, r2))


def split_axis(region: Box, shape: Sequence[int]) -> int | None:
    """The single axis on which ``region`` is not the full extent, 0 if it is full, else None."""
    axes = [k for k, ((a, b), d) in enumerate(zip(region, shape)) if (a, b) != (0, d)]
    if not axes:
        return 0 if shape else None
    return axes[0] if len(axes) == 1 else None


def natural_layout(shape: Sequence[int], reads: Sequence[tuple[int, Box]], replicate: bool,
                   all_nodes: Sequence[int]) -> Layout:
    """Layout of a weight or graph input for its first reader (the weight rule, module doc)."""
    if replicate:
        return Layout(tuple((n, full_region(shape)) for n in all_nodes), replicated=True)
    reader_nodes = list(dict.fromkeys(n for n, _ in reads))
    if len(reader_nodes) == 1 or not shape:
        return Layout(((reader_nodes[0] if reader_nodes else all_nodes[0], full_region(shape)),))
    axes = {split_axis(r, shape) for _, r in reads}
    if len(axes) == 1 and None not in axes:
        axis = axes.pop()
        ranges = sorted((r[axis], n) for n, r in reads)
        pos, ok = 0, True
        for (a, b), _ in ranges:
            ok = ok and a == pos and b > a
            pos = b
        if ok and pos == shape[axis]:
            return Layout(tuple((n, region_on(shape, axis, a, b)) for (a, b), n in ranges))
    bounds = split_bounds(shape[0], len(reader_nodes))
    return Layout(tuple((n, region_on(shape, 0, a, b)) for n, (a, b) in zip(reader_nodes, bounds) if b > a))


def reads_from(layout: Layout, region: Box, node: int) -> dict[int, int]:
    """Elements of ``region`` that ``node`` reads from each node under ``layout``."""
    if layout.replicated:
        src = node if node in layout.nodes else layout.nodes[0]
        return {src: volume(region)}
    out: dict[int, int] = {}
    for m, r in layout.parts:
        v = overlap(r, region)
        if v:
            out[m] = out.get(m, 0) + v
    return out


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
                    parts = [(n, region_on(out_shape, k, a, b))
                             for n, (a, b) in zip(self.nodes, split_bounds(out_shape[k], len(self.nodes))) if b > a]
                    cands.append((k, parts))
        if self.batch_axis_only and cands:
            return cands  # the consistent pattern: whole-layer placement only where it cannot split
        for n in self.nodes:
            cands.append((None, [(n, full_region(out_shape))]))
        return cands

    def _evaluate(self, step: int, axis: int | None, parts: list[tuple[int, Box]]) -> Choice:
        g = self.graph
        layer = g.layers[step]
        in_shapes = [g.tensors[n].shape for n in layer.inputs]
        out_shape = g.tensors[layer.outputs[0]].shape
        total_flops = op_flops(layer.op, in_shapes, out_shape, layer.attrs)
        total_elems = max(1, math.prod(out_shape))
        reads: list[list[Box | None]] = []
        for n, r in parts:
            if axis is None:
                reads.append([full_region(s) for s in in_shapes])
            else:
                a, b = r[axis]
                reads.append(input_regions(layer.op, in_shapes, out_shape, layer.attrs, axis, a, b))
        new_layouts: dict[str, Layout] = {}
        for i, name in enumerate(layer.inputs):
            if name in self.layouts or name in new_layouts:
                continue
            t = g.tensors[name]
            node_reads = [(n, reads[j][i]) for j, (n, _) in enumerate(parts) if reads[j][i] is not None]
            replicate = t.role == "weight" and g.nbytes(name) <= self.cost.replicate_bytes
            new_layouts[name] = natural_layout(t.shape, node_reads, replicate, self.nodes)
        worst = 0.0
        local = remote = 0
        pairs: dict[tuple[int, int], int] = {}
        used = 0
        for j, (n, r) in enumerate(parts):
            share = volume(r)
            used += share
            t_node = total_flops * share / total_elems / self.cost.flops_per_s
            for i, name in enumerate(layer.inputs):
                region = reads[j][i]
                if region is None:
                    continue
                layout = self.layouts.get(name) or new_layouts[name]
                item = g.itemsize(name)
                for m, elems in reads_from(layout, region, n).items():
                    nbytes = elems * item
                    t_node += nbytes / self.bandwidth[n, m]
                    if m == n:
                        local += nbytes
                    else:
                        remote += nbytes
                        pairs[m, n] = pairs.get((m, n), 0) + nbytes
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
        for n, (a, b) in zip(self.nodes, split_bounds(shape[preferred], len(self.nodes))):
            if b <= a:
                continue
            got = reads_from(layout, region_on(shape, preferred, a, b), n)
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
                reads = [(n, full_region(t.shape)) for n in self.nodes]
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
    from numamem.planner.boxes import Slice, split_even, volume

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
