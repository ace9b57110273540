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

import heapq
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
        whole = full(shape)
        return Layout(tuple((n, whole) for n in all_nodes), replicated=True)
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
    """A layer's chosen split with its estimated traffic (bytes) and cost (seconds).

    ``remote_pairs[src][dst]`` is the bytes node ``dst`` reads from node ``src`` (nested rather
    than keyed by pairs: a layer whose 1024 nodes all read from each other has a million).
    """

    axis: int | None
    parts: list[tuple[int, Box]]
    cost: float
    flops: int
    local_bytes: int
    remote_bytes: int
    remote_pairs: dict[int, dict[int, int]]
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

    Notes
    -----
    The cost of planning grows with the node count N about as N times the layers, plus the size
    of the result: a layer every node of which reads from every other node has N² entries in its
    ``remote_pairs``, and the distance and bandwidth matrices have N² entries. Two things keep it
    there (at 1024 nodes a plan of the MLP took 106 s and 1.4 GB before them, 8 s and 360 MB
    after, most of it the two million remote pairs of its two all-to-all layers):

    - a layout finds the parts a box meets by bisection (:func:`~numamem.planner.traffic.reads_from`);
    - candidates are evaluated cheapest lower bound first, and one that cannot win is dropped as
      soon as that is certain (:meth:`_choose`), so the N whole-layer candidates of a layer that
      splits well are never read out, nor the all-to-all reads of an axis change that loses.
    """

    def __init__(self, graph: Graph, nodes: Sequence[int], *, distances=None, bandwidth=None,
                 batch_axis_only: bool = False, cost: CostModel | None = None):
        self.graph = graph
        self.nodes = list(nodes)
        self.cost = cost or CostModel()
        self.batch_axis_only = batch_axis_only
        self._pos = {n: i for i, n in enumerate(self.nodes)}
        if distances is None:
            self.distance = _uniform_matrix(self.nodes, DEFAULT_LOCAL_DISTANCE, DEFAULT_REMOTE_DISTANCE)
        else:
            self.distance = _matrix(distances, self.nodes, "distances")
        if bandwidth is not None:
            self.bandwidth = _matrix(bandwidth, self.nodes, "bandwidth")
        else:
            # One float per distinct distance: the same value the pairwise formula gives, shared.
            scale = {d: self.cost.local_bandwidth * DEFAULT_LOCAL_DISTANCE / d
                     for d in {d for row in self.distance.rows for d in row}}
            self.bandwidth = NodeMatrix(self.nodes, [[scale[d] for d in row] for row in self.distance.rows])
        self.layouts: dict[str, Layout] = {}
        self.choices: list[Choice] = []
        self._layer_flops: dict[int, tuple[int, int]] = {}  # step -> (flops, output elements)
        self._replicas: dict[str, Layout] = {}  # replicated weights' layouts, shared by all candidates

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
        whole = full(out_shape)
        for n in self.nodes:
            cands.append((None, [(n, whole)]))
        return cands

    def _flops_time(self, step: int, box: Box) -> float:
        """Seconds one node spends on the flops of ``box`` of layer ``step``'s output.

        A part's estimated time starts from this and only grows (:meth:`_evaluate`), so it is
        also a lower bound of the cost of any candidate with a part of this box.
        """
        total_flops, total_elems = self._layer_totals(step)
        return total_flops * volume(box) / total_elems / self.cost.flops_per_s

    def _layer_totals(self, step: int) -> tuple[int, int]:
        """Flops and output elements of layer ``step`` (cached: every candidate's part asks)."""
        totals = self._layer_flops.get(step)
        if totals is None:
            g = self.graph
            layer = g.layers[step]
            in_shapes = [g.tensors[n].shape for n in layer.inputs]
            out_shape = g.tensors[layer.outputs[0]].shape
            totals = self._layer_flops[step] = (op_flops(layer.op, in_shapes, out_shape, layer.attrs),
                                                max(1, math.prod(out_shape)))
        return totals

    def _evaluate(self, step: int, axis: int | None, parts: list[tuple[int, Box]],
                  cutoff: float = math.inf) -> Choice | None:
        """The cost and traffic of computing layer ``step`` as ``parts``.

        Returns None, part way, once one part's time exceeds ``cutoff``: the candidate's cost
        (the slowest part's time) is then above it too.
        """
        g = self.graph
        layer = g.layers[step]
        boxes = input_boxes(g, step, axis, [box for _, box in parts])
        new_layouts: dict[str, Layout] = {}
        for i, name in enumerate(layer.inputs):
            if name in self.layouts or name in new_layouts:
                continue
            t = g.tensors[name]
            if t.role == "weight" and g.nbytes(name) <= self.cost.replicate_bytes:
                # Replicas do not depend on the candidate: one layout for all (O(nodes) to build).
                layout = self._replicas.get(name)
                if layout is None:
                    layout = self._replicas[name] = natural_layout(t.shape, [], True, self.nodes)
                new_layouts[name] = layout
                continue
            node_reads = [(n, boxes[j][i]) for j, (n, _) in enumerate(parts) if boxes[j][i] is not None]
            new_layouts[name] = natural_layout(t.shape, node_reads, False, self.nodes)
        layouts = {name: new_layouts[name] if name in new_layouts else self.layouts[name] for name in layer.inputs}
        worst = 0.0
        local = remote = 0
        pairs: dict[int, dict[int, int]] = {}
        pos = self._pos
        for part, in_boxes in zip(parts, boxes):
            n, box = part
            bw = self.bandwidth.rows[pos[n]]
            # Summed read by read, in layer_reads' order: the float result (and with it every
            # tie between candidates) must not depend on how the reads are grouped.
            t_node = self._flops_time(step, box)
            for r in layer_reads(g, step, axis, [part], layouts, boxes=[in_boxes])[0]:
                m = r.source
                t_node += r.nbytes / bw[pos[m]]
                if m == n:
                    local += r.nbytes
                else:
                    remote += r.nbytes
                    to = pairs.get(m)
                    if to is None:
                        to = pairs[m] = {}
                    to[n] = to.get(n, 0) + r.nbytes
            if t_node > cutoff:
                return None
            worst = max(worst, t_node)
        return Choice(axis, parts, worst, self._layer_totals(step)[0], local, remote, pairs, new_layouts)

    def _switch_penalty(self, step: int, choice: Choice, preferred: int | None, cutoff: float = math.inf) -> float:
        """Estimated time to bring the output back to the ``preferred`` split, if it leaves it.

        A greedy choice sees the remote reads a switch of axis costs now but not the ones it
        causes when the next layer reads the output the old way; this one-step lookahead charges
        the latter, so the planner leaves the prevailing axis only when that pays both ways.
        Stops early once ``choice.cost`` plus the penalty so far exceeds ``cutoff`` (the total can
        then only be larger), returning the penalty so far.
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
        pos = self._pos
        worst = 0.0
        for n, (a, b) in zip(self.nodes, split_even(0, shape[preferred], len(self.nodes))):
            got = reads_from(layout, on_axis(shape, preferred, a, b), n)
            bw = self.bandwidth.rows[pos[n]]
            worst = max(worst, sum(e * item / bw[pos[m]] for m, e in got.items() if m != n))
            if choice.cost + worst > cutoff:
                break
        return worst

    # ---------------------------------------------------------------- driver
    def _choose(self, step: int, preferred: int | None) -> Choice:
        """The split of layer ``step``.

        The rule: the candidate with the least ``cost + penalty`` (the first of equals), unless
        the first candidate on the ``preferred`` axis (that of the layer producing the first
        input) is within ``consistency_tolerance`` of it, which then wins.

        The result is what evaluating every candidate gives, but candidates are evaluated
        cheapest lower bound first (branch and bound) and dropped once they cannot win:

        - a candidate's cost is at least the flops time of its largest part (a part's time starts
          there and only grows: adding a non-negative float never lowers a sum), and its total
          is at least its cost (the penalty is non-negative);
        - an evaluation stops once one part's time, or the penalty, passes the best total found.

        The preferred candidate is evaluated first and in full, since it may win within the
        tolerance even when another is cheaper.
        """
        cands = self._candidates(step)
        tol = self.cost.consistency_tolerance
        choices: dict[int, Choice] = {}
        best_i: int | None = None
        best_total = math.inf

        def offer(i: int, c: Choice, cutoff: float) -> None:
            nonlocal best_i, best_total
            c.penalty = self._switch_penalty(step, c, preferred, cutoff)
            total = c.cost + c.penalty
            if best_i is None or total < best_total or (total == best_total and i < best_i):
                best_i, best_total = i, total

        same = None
        if preferred is not None:
            same = next((i for i, (axis, _) in enumerate(cands) if axis == preferred), None)
        if same is not None:
            c = choices[same] = self._evaluate(step, *cands[same])
            offer(same, c, math.inf)
        # split_even makes the first part the largest: its flops time is the tightest bound.
        heap = [(self._flops_time(step, parts[0][1]), i, False) for i, (_, parts) in enumerate(cands) if i != same]
        heapq.heapify(heap)
        while heap:
            bound, i, evaluated = heap[0]
            if best_i is not None and (bound > best_total or (bound == best_total and i > best_i)):
                break  # every candidate left has a bound at least this one's: none can win
            heapq.heappop(heap)
            if not evaluated:
                c = self._evaluate(step, *cands[i], cutoff=best_total)
                if c is not None:
                    choices[i] = c
                    heapq.heappush(heap, (c.cost, i, True))
            else:
                offer(i, choices[i], best_total)
        best = choices[best_i]
        if same is not None and same != best_i:
            c = choices[same]
            if c.cost + c.penalty <= best_total * (1 + tol):
                best = c
        return best

    def run(self) -> list[Choice]:
        """Choose every layer's split and every tensor's layout; return the per-layer choices."""
        g = self.graph
        axis_of: dict[str, int | None] = {}
        for step, layer in enumerate(g.layers):
            preferred = next((axis_of[n] for n in layer.inputs if n in axis_of), None)
            best = self._choose(step, preferred)
            self.layouts.update(best.new_layouts)
            out = layer.outputs[0]
            self.layouts[out] = Layout(tuple(best.parts))
            axis_of[out] = best.axis
            self.choices.append(best)
        # Tensors no layer reads: weights by the weight rule, inputs split on their batch axis.
        for name, t in g.tensors.items():
            if name not in self.layouts:
                whole = full(t.shape)
                reads = [(n, whole) for n in self.nodes]
                replicate = t.role == "weight" and g.nbytes(name) <= self.cost.replicate_bytes
                self.layouts[name] = natural_layout(t.shape, reads, replicate, self.nodes)
        return self.choices


class NodeMatrix:
    """A node-pair matrix (distances or bandwidths) stored as rows in the order of the nodes.

    ``m[a, b]`` is the entry of node ids ``a`` and ``b``; ``m.rows[i][j]`` that of the i-th and
    j-th nodes. Rows of shared floats keep 1024 nodes at 8 MB, where a dict keyed by node pairs
    took about 100 MB.

    >>> m = NodeMatrix([3, 5], [[10.0, 21.0], [21.0, 10.0]])
    >>> m[5, 3], m.to_lists()
    (21.0, [[10.0, 21.0], [21.0, 10.0]])
    """

    __slots__ = ("pos", "rows")

    def __init__(self, nodes: Sequence[int], rows: list[list[float]]):
        self.pos = {n: i for i, n in enumerate(nodes)}
        self.rows = rows

    def __getitem__(self, pair: tuple[int, int]) -> float:
        a, b = pair
        return self.rows[self.pos[a]][self.pos[b]]

    def to_lists(self) -> list[list[float]]:
        """The matrix as a list of rows (new lists, shared entries)."""
        return [list(row) for row in self.rows]


def _uniform_matrix(nodes: Sequence[int], local: float, remote: float) -> NodeMatrix:
    """``local`` on the diagonal, ``remote`` elsewhere."""
    local, remote = float(local), float(remote)
    rows = []
    for i in range(len(nodes)):
        row = [remote] * len(nodes)
        row[i] = local
        rows.append(row)
    return NodeMatrix(nodes, rows)


def _matrix(value, nodes: Sequence[int], what: str) -> NodeMatrix:
    """Normalise a node-pair matrix given by position (square sequence) or by id (mapping)."""
    rows: list[list[float]] = []
    by_id = isinstance(value, Mapping)
    for i, a in enumerate(nodes):
        row_out: list[float] = []
        for j, b in enumerate(nodes):
            try:
                if by_id:
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
            row_out.append(v)
        rows.append(row_out)
    return NodeMatrix(nodes, rows)


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
