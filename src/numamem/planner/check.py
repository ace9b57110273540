"""The independent plan checker: every invariant of a plan, recomputed from the plan's own data.

:func:`verify` (behind :meth:`numamem.planner.plan.Plan.verify`) checks one arena per node,
page-sized and laid out on page boundaries without overlap; every block inside its arena and
aligned (page-aligned and page-sized when its tensor spans several nodes); blocks of one arena
whose live ranges meet disjoint in bytes; every tensor covered exactly (replicas whole, slices
tiling one axis, sizes matching); block lifetimes covering the tensor's; lower bounds and peaks.
With the graph, tensor shapes and lifetimes are checked against it and each layer's local and
remote bytes are recomputed from the blocks.

Independence is the point of this module, so it keeps its own code on purpose: its own box
helpers (``_full``, ``_on_axis``, ``_volume``, ``_overlap``), its own replica-read rule, its own
lower bound, and it imports nothing from :mod:`~numamem.planner.partition`,
:mod:`~numamem.planner.boxes`, :mod:`~numamem.planner.traffic` or the planner itself. A mistake
there then cannot fool the planner and the checker alike. It reads a plan by attribute (the
dataclasses of :mod:`numamem.planner.plan`) and shares only the ops table's read rule
(:func:`numamem.planner.ops.input_regions`), which defines what a layer reads.

Examples
--------
>>> import copy, numamem.models, numamem.planner
>>> g = numamem.models.get("mlp", batch=8)
>>> p = numamem.planner.plan(g, nodes=[0, 1])
>>> verify(p, g)
>>> q = copy.deepcopy(p)
>>> q.layers[0].remote_bytes += 1
>>> try:
...     verify(q, g)
... except PlanError as exc:
...     print(exc.violations[0].split(":")[0])
layer 'fc1'
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from numamem.planner.ops import input_regions

if TYPE_CHECKING:  # annotations only
    from numamem.planner.graph import Graph

__all__ = ["PlanError", "verify"]


class PlanError(ValueError):
    """A plan that breaks an invariant; ``violations`` lists every problem found."""

    def __init__(self, violations: Sequence[str]):
        self.violations = list(violations)
        shown = self.violations[:20]
        more = len(self.violations) - len(shown)
        super().__init__(
            f"plan violates {len(self.violations)} invariant(s):\n  " + "\n  ".join(shown)
            + (f"\n  ... and {more} more" if more else "")
        )


@dataclass(slots=True)
class _Tensor:
    """What the checker knows of a tensor from the graph (the plan's ``tensors`` read alike)."""

    shape: tuple[int, ...]
    itemsize: int
    live: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize


# ---------------------------------------------------------------- private box helpers (see module doc)
def _full(shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    return tuple((0, int(d)) for d in shape)


def _on_axis(shape: Sequence[int], axis: int, lo: int, hi: int) -> tuple[tuple[int, int], ...]:
    return tuple((lo, hi) if k == axis else (0, int(d)) for k, d in enumerate(shape))


def _volume(box) -> int:
    return math.prod(max(0, b - a) for a, b in box)


def _overlap(b1, b2) -> int:
    return math.prod(max(0, min(hi1, hi2) - max(lo1, lo2)) for (lo1, hi1), (lo2, hi2) in zip(b1, b2))


def _block_box(b: Any, info: _Tensor) -> tuple[tuple[int, int], ...]:
    if b.slice is None:
        return _full(info.shape)
    return _on_axis(info.shape, b.slice.axis, b.slice.start, b.slice.stop)


# ---------------------------------------------------------------- the checker
def verify(plan: Any, graph: Graph | None = None) -> None:
    """Check every invariant of ``plan`` (module doc); raise :class:`PlanError` listing violations.

    Parameters
    ----------
    plan : Plan
    graph : Graph, optional
        The graph the plan is for; without it, tensors come from ``plan.tensors`` and layer
        traffic is not recomputed.
    """
    v: list[str] = []
    page, align = plan.page_size, plan.alignment
    if page < 1 or page & (page - 1):
        v.append(f"page size {page} is not a power of two")
        page = 4096
    if align < 1 or page % align:
        v.append(f"alignment {align} does not divide the page size {page}")
        align = 1
    if len(set(plan.nodes)) != len(plan.nodes):
        v.append(f"nodes {plan.nodes} repeat a node")
    arenas: dict[int, Any] = {}
    for a in plan.arenas:
        if a.node in arenas:
            v.append(f"node {a.node} has two arenas")
        arenas[a.node] = a
        if a.node not in plan.nodes:
            v.append(f"arena of node {a.node}, which is not one of the plan's nodes {plan.nodes}")
        if a.size % page or a.base % page:
            v.append(f"arena of node {a.node}: base {a.base} or size {a.size} not a multiple of the page {page}")
    for n in plan.nodes:
        if n not in arenas:
            v.append(f"node {n} has no arena")
    spans = sorted((a.base, a.base + a.size, a.node) for a in plan.arenas if a.size)
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            v.append(f"arenas of nodes {n0} and {n1} share bytes [{b1}, {min(e0, e1)}) (a page would hold two nodes)")

    by_tensor: dict[str, list[Any]] = {}
    by_node: dict[int, list[Any]] = {}
    for b in plan.blocks:
        by_tensor.setdefault(b.tensor, []).append(b)
        by_node.setdefault(b.node, []).append(b)
        where = f"block {b.index} of {b.tensor!r} on node {b.node}"
        a = arenas.get(b.node)
        if a is None:
            v.append(f"{where}: node has no arena")
        elif b.offset < 0 or b.offset + b.reserved > a.size:
            v.append(f"{where}: bytes [{b.offset}, {b.offset + b.reserved}) outside the arena of {a.size} bytes")
        if b.reserved < b.size:
            v.append(f"{where}: reserves {b.reserved} bytes for {b.size} bytes of data")
        if b.offset % align or b.reserved % align:
            v.append(f"{where}: offset {b.offset} or reserved size {b.reserved} not aligned to {align}")
        if b.live[0] > b.live[1] or b.live[0] < 0 or (plan.steps and b.live[1] >= plan.steps):
            v.append(f"{where}: live range {list(b.live)} is not within steps 0..{plan.steps - 1}")

    tensors = dict(plan.tensors)
    if graph is not None:
        live = graph.lifetimes()
        for name, t in graph.tensors.items():
            want = _Tensor(t.shape, graph.itemsize(name), live[name])
            have = tensors.get(name)
            if have is not None and (tuple(have.shape), have.itemsize, tuple(have.live)) != (
                want.shape, want.itemsize, want.live
            ):
                v.append(f"tensor {name!r}: plan says shape {list(have.shape)}, itemsize {have.itemsize}, live "
                         f"{list(have.live)} but the graph gives {list(want.shape)}, {want.itemsize}, {list(want.live)}")
            tensors[name] = want
        if plan.steps != len(graph.layers):
            v.append(f"plan has {plan.steps} steps but graph {graph.name!r} has {len(graph.layers)} layers")
    for name in by_tensor:
        if name not in tensors:
            v.append(f"blocks of {name!r}, which is not a tensor of the graph")

    for name, info in tensors.items():
        blocks = sorted(by_tensor.get(name, []), key=lambda b: b.index)
        v.extend(_check_cover(name, info, blocks, page))

    for node, blocks in by_node.items():
        v.extend(_check_disjoint(node, blocks))
        a = arenas.get(node)
        if a is None:
            continue
        lb = _lower_bound(blocks, lambda b: b.reserved)
        if lb != a.lower_bound:
            v.append(f"arena of node {node}: lower_bound {a.lower_bound} but its blocks give {lb}")
        peak = max((b.offset + b.reserved for b in blocks), default=0)
        if a.peak != peak:
            v.append(f"arena of node {node}: peak {a.peak} but its blocks end at {peak}")
        if a.size < lb:
            v.append(f"arena of node {node}: size {a.size} below its lower bound {lb}")
    for node, a in arenas.items():
        if node not in by_node and (a.lower_bound or a.peak):
            v.append(f"arena of node {node} has no blocks but claims lower_bound {a.lower_bound}, peak {a.peak}")

    if graph is not None and not v:
        v.extend(_check_traffic(plan, graph))
    if v:
        raise PlanError(v)


def _check_cover(name: str, info: _Tensor, blocks: list[Any], page: int) -> list[str]:
    v: list[str] = []
    if not blocks:
        return [f"tensor {name!r} has no blocks"]
    if [b.index for b in blocks] != list(range(len(blocks))):
        v.append(f"tensor {name!r}: block indices {[b.index for b in blocks]} are not 0..{len(blocks) - 1}")
    for b in blocks:
        if b.live[0] > info.live[0] or b.live[1] < info.live[1]:
            v.append(f"block {b.index} of {name!r}: live {list(b.live)} does not cover the tensor's {list(info.live)}")
    replicas = [b for b in blocks if b.slice is None]
    if replicas and len(replicas) != len(blocks):
        return v + [f"tensor {name!r}: mixes replicas and slices"]
    if replicas:
        nodes = [b.node for b in replicas]
        if len(set(nodes)) != len(nodes):
            v.append(f"tensor {name!r}: two replicas on one node")
        for b in replicas:
            if b.size != info.nbytes:
                v.append(f"replica {b.index} of {name!r}: {b.size} bytes, the tensor has {info.nbytes}")
        return v
    axes = {b.slice.axis for b in blocks}
    if len(axes) != 1:
        return v + [f"tensor {name!r}: blocks slice different axes {sorted(axes)}"]
    axis = axes.pop()
    if not 0 <= axis < len(info.shape):
        return v + [f"tensor {name!r}: slice axis {axis} out of range for shape {list(info.shape)}"]
    pos = 0
    for b in sorted(blocks, key=lambda b: b.slice.start):
        if b.slice.start != pos or b.slice.stop <= b.slice.start:
            v.append(f"tensor {name!r}: slices do not tile axis {axis} (block {b.index} is "
                     f"[{b.slice.start}, {b.slice.stop}), expected to start at {pos})")
        pos = max(pos, b.slice.stop)
        want = _volume(_block_box(b, info)) * info.itemsize
        if b.size != want:
            v.append(f"block {b.index} of {name!r}: size {b.size} but its slice holds {want} bytes")
    if pos != info.shape[axis]:
        v.append(f"tensor {name!r}: slices cover [0, {pos}) of axis {axis}, the tensor has {info.shape[axis]}")
    if len({b.node for b in blocks}) > 1:
        for b in blocks:
            if b.offset % page or b.reserved % page:
                v.append(f"block {b.index} of {name!r} on node {b.node}: the tensor spans several nodes but the "
                         f"block is not page-aligned and page-sized (offset {b.offset}, reserved {b.reserved})")
    return v


def _check_disjoint(node: int, blocks: list[Any]) -> list[str]:
    """Pairs of co-live blocks that share bytes, by a sweep over offsets (O(n log n + conflicts))."""
    v: list[str] = []
    order = sorted(blocks, key=lambda b: (b.offset, b.offset + b.reserved))
    active: list[Any] = []
    for b in order:
        if not b.reserved:
            continue
        active = [a for a in active if a.offset + a.reserved > b.offset]
        for a in active:
            if a.live[0] <= b.live[1] and b.live[0] <= a.live[1]:
                v.append(f"node {node}: blocks {a.tensor!r}[{a.index}] and {b.tensor!r}[{b.index}] are both live at "
                         f"step {max(a.live[0], b.live[0])} and share bytes [{b.offset}, "
                         f"{min(a.offset + a.reserved, b.offset + b.reserved)})")
        active.append(b)
    return v


def _lower_bound(blocks: Sequence[Any], size) -> int:
    """Largest total ``size`` of the blocks live at one step, by a sweep over the live ranges.

    Blocks whose live range is not a range of steps (reported on their own) are left out; a
    sweep rather than an array per step, so that a plan claiming step 10**12 costs nothing.
    """
    events = []
    for b in blocks:
        first, last = b.live
        if 0 <= first <= last:
            events.append((first, size(b)))
            events.append((last + 1, -size(b)))
    events.sort(key=lambda e: e[0])
    best = total = 0
    for i, (step, delta) in enumerate(events):
        total += delta
        if i + 1 == len(events) or events[i + 1][0] != step:
            best = max(best, total)
    return best


class _Holdings:
    """Where one tensor's blocks are, indexed for reading (the checker's own, see module doc).

    Slices tile one axis (checked before traffic is), so the blocks a box meets are found by
    bisection over their starts: each read then costs O(log blocks + blocks met), not O(blocks),
    and a plan over 1024 nodes is checked in O(nodes) reads per layer unless its nodes really
    read from every other node.
    """

    def __init__(self, blocks: list[Any], info: _Tensor):
        self.item = info.itemsize
        self.replicas = blocks[0].slice is None
        if self.replicas:
            self.first = blocks[0].node
            self.nodes = {b.node for b in blocks}
            return
        ordered = sorted(blocks, key=lambda b: b.slice.start)
        self.axis = ordered[0].slice.axis
        self.starts = [b.slice.start for b in ordered]
        self.held = [(b.node, _block_box(b, info)) for b in ordered]

    def read(self, box, node: int) -> tuple[int, int]:
        """Elements of ``box`` a reader on ``node`` reads (local, remote)."""
        if self.replicas:  # the replica on this node if there is one, else the first
            src = node if node in self.nodes else self.first
            e = _volume(box)
            return (e, 0) if src == node else (0, e)
        axis = self.axis
        lo, hi = box[axis]
        i0, i1 = max(0, bisect.bisect_right(self.starts, lo) - 1), bisect.bisect_left(self.starts, hi)
        if i0 >= i1:
            return 0, 0
        # The blocks span the whole tensor on every other axis: that factor is the same for all.
        rest = _overlap([r for k, r in enumerate(self.held[i0][1]) if k != axis],
                        [r for k, r in enumerate(box) if k != axis])
        local = remote = 0
        for m, held in self.held[i0:i1]:
            e = max(0, min(hi, held[axis][1]) - max(lo, held[axis][0])) * rest
            if m == node:
                local += e
            else:
                remote += e
        return local, remote


def _layer_traffic(graph: Graph, step: int, blocks_of: Mapping[str, list[Any]],
                   holdings: Mapping[str, _Holdings], infos: Mapping[str, _Tensor], axis: int | None) -> tuple[int, int]:
    """Bytes a layer reads locally and remotely, from the blocks alone."""
    layer = graph.layers[step]
    in_shapes = [graph.tensors[n].shape for n in layer.inputs]
    out = layer.outputs[0]
    out_shape = graph.tensors[out].shape
    local = remote = 0
    for ob in blocks_of[out]:
        n = ob.node
        if axis is None:
            boxes = [_full(s) for s in in_shapes]
        else:
            box = _block_box(ob, infos[out])
            boxes = input_regions(layer.op, in_shapes, out_shape, layer.attrs, axis, *box[axis])
        for name, box in zip(layer.inputs, boxes):
            if box is None:
                continue
            held = holdings[name]
            e_local, e_remote = held.read(box, n)
            local += e_local * held.item
            remote += e_remote * held.item
    return local, remote


def _check_traffic(p: Any, graph: Graph) -> list[str]:
    v: list[str] = []
    live = graph.lifetimes()
    infos = {n: _Tensor(t.shape, graph.itemsize(n), live[n]) for n, t in graph.tensors.items()}
    blocks_of: dict[str, list[Any]] = {}
    for b in p.blocks:
        blocks_of.setdefault(b.tensor, []).append(b)
    if [l.name for l in p.layers] != [l.name for l in graph.layers] or [l.step for l in p.layers] != list(range(len(graph.layers))):
        return ["plan layers do not follow the graph's execution order"]
    holdings = {name: _Holdings(blocks, infos[name]) for name, blocks in blocks_of.items()}
    for lp in p.layers:
        layer = graph.layers[lp.step]
        out = layer.outputs[0]
        rank = len(infos[out].shape)
        if lp.axis is not None and not 0 <= lp.axis < rank:
            v.append(f"layer {lp.name!r}: split axis {lp.axis} is not an axis of its {rank}-d output")
            continue
        if lp.axis is not None and any(b.slice is not None and b.slice.axis != lp.axis for b in blocks_of[out]):
            v.append(f"layer {lp.name!r}: split on axis {lp.axis} but the blocks of its output {out!r} slice another")
            continue
        try:
            local, remote = _layer_traffic(graph, lp.step, blocks_of, holdings, infos, lp.axis)
        except ValueError as exc:  # the ops table refuses the split (a ShapeError)
            v.append(f"layer {lp.name!r}: {exc}")
            continue
        if (local, remote) != (lp.local_bytes, lp.remote_bytes):
            v.append(f"layer {lp.name!r}: plan says {lp.local_bytes} local / {lp.remote_bytes} remote bytes, "
                     f"its blocks give {local} / {remote}")
    return v
