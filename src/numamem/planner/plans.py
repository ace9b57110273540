"""Plans: per-node blocks in per-node arenas, their JSON form, and an independent checker.

:func:`plan` partitions a graph over NUMA nodes (:mod:`numamem.planner.partition`), turns every
tensor's layout into blocks, and packs each node's blocks into one arena with memory reuse
(:func:`numamem.planner.packing.pack`, once per node). A plan is data: it may name nodes this
machine does not have, and nothing here touches libnuma.

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
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from numamem.planner.graph import Graph
from numamem.planner.ops import input_regions
from numamem.planner.partition import CostModel, Partitioner, full_region, overlap, region_on, volume
from numamem._jsonfile import dump_json

FORMAT = "numamem-plan/1"


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


def _round_up(n: int, a: int) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class Slice:
    """The part ``[start, stop)`` of a tensor along ``axis``."""

    axis: int
    start: int
    stop: int


@dataclass
class Block:
    """The part of a tensor placed on one node.

    Attributes
    ----------
    tensor : str
    index : int
        Position among the tensor's blocks.
    node : int
    offset : int
        Byte offset in the node's arena.
    size : int
        Bytes of tensor data in the block.
    reserved : int
        Bytes the block occupies in the arena (``size`` rounded up to the page or alignment).
    slice : Slice or None
        Which part of the tensor; None for a replica, which holds the whole tensor.
    live : tuple of int
        First and last step (inclusive) at which the block holds its bytes.
    replica : bool
    page_aligned : bool
        True when the tensor has blocks on several nodes (page-rounded, page-aligned).
    """

    tensor: str
    index: int
    node: int
    offset: int
    size: int
    reserved: int
    slice: Slice | None
    live: tuple[int, int]
    replica: bool = False
    page_aligned: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["live"] = list(self.live)
        return d


@dataclass
class Arena:
    """One node's arena: every block placed on that node lives inside it.

    ``lower_bound`` is the largest total reserved size of blocks live at one step on the node;
    ``lower_bound_unpadded`` the same with unrounded block sizes. ``peak`` is the packed extent,
    ``size`` that rounded up to a page (``page_padding``), ``base`` the arena's byte offset when the
    arenas are laid out back to back.
    """

    node: int
    size: int
    lower_bound: int
    peak: int = 0
    base: int = 0
    page_padding: int = 0
    block_padding: int = 0
    lower_bound_unpadded: int = 0


@dataclass
class LayerPlan:
    """How one layer is computed and the bytes it reads.

    ``axis`` is the output axis split over ``nodes`` (None: computed whole on ``nodes[0]``).
    ``local_bytes`` / ``remote_bytes`` count input bytes read from the computing node's own memory
    and from other nodes; ``remote_pairs`` breaks the latter down as ``[src, dst, bytes]``.
    """

    name: str
    step: int
    axis: int | None
    local_bytes: int
    remote_bytes: int
    op: str = ""
    nodes: list[int] = field(default_factory=list)
    flops: int = 0
    cost_s: float = 0.0
    remote_pairs: list[list[int]] = field(default_factory=list)


@dataclass
class TensorInfo:
    """What the checker needs to know about a tensor without the graph."""

    shape: tuple[int, ...]
    itemsize: int
    role: str | None
    live: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize


@dataclass
class Plan:
    """A static memory plan: blocks of every tensor in per-node arenas, and per-layer traffic.

    Use :func:`plan` to make one and :meth:`verify` to check one. Everything is a plain
    attribute; :meth:`to_json` / :meth:`from_json` give the ``numamem-plan/1`` form.

    Examples
    --------
    >>> import numamem.models, numamem.planner
    >>> p = numamem.planner.plan(numamem.models.get("mlp", batch=8), nodes=[0, 1])
    >>> [a.node for a in p.arenas], p.blocks_of("x")[0].slice
    ([0, 1], Slice(axis=0, start=0, stop=4))
    >>> p.verify()
    """

    graph: str
    nodes: list[int]
    page_size: int
    arenas: list[Arena]
    blocks: list[Block]
    layers: list[LayerPlan]
    alignment: int = 64
    steps: int = 0
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    source: Graph | None = field(default=None, repr=False, compare=False)

    # ---------------------------------------------------------------- queries
    def arena(self, node: int) -> Arena:
        """The arena of ``node``."""
        for a in self.arenas:
            if a.node == node:
                return a
        raise KeyError(f"plan has no arena for node {node}")

    def blocks_of(self, tensor: str) -> list[Block]:
        """Blocks of ``tensor`` in index order."""
        return sorted((b for b in self.blocks if b.tensor == tensor), key=lambda b: b.index)

    def blocks_on(self, node: int) -> list[Block]:
        """Blocks in ``node``'s arena."""
        return [b for b in self.blocks if b.node == node]

    def block_index(self, block: Block) -> tuple[slice, ...]:
        """NumPy index of ``block``'s part of its tensor (``tensor[plan.block_index(b)]``).

        Examples
        --------
        >>> import numamem.models
        >>> p = plan(numamem.models.get("mlp", batch=8, features=(4, 2)), nodes=[0, 1])
        >>> p.block_index(p.blocks_of("x")[1])
        (slice(4, 8, None), slice(0, 4, None))
        """
        return tuple(slice(a, b) for a, b in _block_region(block, self.tensors[block.tensor]))

    @property
    def remote_bytes(self) -> int:
        """Total bytes read across nodes in one pass."""
        return sum(l.remote_bytes for l in self.layers)

    @property
    def local_bytes(self) -> int:
        """Total bytes read from the reading node's own memory in one pass."""
        return sum(l.local_bytes for l in self.layers)

    # ---------------------------------------------------------------- checker
    def verify(self, graph: Graph | None = None) -> None:
        """Check every invariant from the plan's own data; raise :class:`PlanError` listing violations.

        Checked: one arena per node, page-sized and laid out on page boundaries without overlap;
        every block inside its arena and aligned (page-aligned and page-sized when its tensor
        spans several nodes); blocks of one arena whose live ranges meet are disjoint in bytes;
        every tensor covered exactly (replicas whole, slices tiling one axis, sizes matching);
        block lifetimes covering the tensor's; lower bounds and peaks recomputed. With a graph
        (given, or the one the plan was made from), tensor shapes and lifetimes are checked against
        it and each layer's local and remote bytes are recomputed from the blocks.
        """
        graph = graph if graph is not None else self.source
        v: list[str] = []
        page, align = self.page_size, self.alignment
        if page < 1 or page & (page - 1):
            v.append(f"page size {page} is not a power of two")
            page = 4096
        if align < 1 or page % align:
            v.append(f"alignment {align} does not divide the page size {page}")
            align = 1
        if len(set(self.nodes)) != len(self.nodes):
            v.append(f"nodes {self.nodes} repeat a node")
        arenas: dict[int, Arena] = {}
        for a in self.arenas:
            if a.node in arenas:
                v.append(f"node {a.node} has two arenas")
            arenas[a.node] = a
            if a.node not in self.nodes:
                v.append(f"arena of node {a.node}, which is not one of the plan's nodes {self.nodes}")
            if a.size % page or a.base % page:
                v.append(f"arena of node {a.node}: base {a.base} or size {a.size} not a multiple of the page {page}")
        for n in self.nodes:
            if n not in arenas:
                v.append(f"node {n} has no arena")
        spans = sorted((a.base, a.base + a.size, a.node) for a in self.arenas if a.size)
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                v.append(f"arenas of nodes {n0} and {n1} share bytes [{b1}, {min(e0, e1)}) (a page would hold two nodes)")

        by_tensor: dict[str, list[Block]] = {}
        by_node: dict[int, list[Block]] = {}
        for b in self.blocks:
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
            if b.live[0] > b.live[1] or b.live[0] < 0 or (self.steps and b.live[1] >= self.steps):
                v.append(f"{where}: live range {list(b.live)} is not within steps 0..{self.steps - 1}")

        tensors = dict(self.tensors)
        if graph is not None:
            live = graph.lifetimes()
            for name, t in graph.tensors.items():
                want = TensorInfo(t.shape, graph.itemsize(name), t.role, live[name])
                have = tensors.get(name)
                if have is not None and (tuple(have.shape), have.itemsize, tuple(have.live)) != (
                    want.shape, want.itemsize, want.live
                ):
                    v.append(f"tensor {name!r}: plan says shape {list(have.shape)}, itemsize {have.itemsize}, live "
                             f"{list(have.live)} but the graph gives {list(want.shape)}, {want.itemsize}, {list(want.live)}")
                tensors[name] = want
            if self.steps != len(graph.layers):
                v.append(f"plan has {self.steps} steps but graph {graph.name!r} has {len(graph.layers)} layers")
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
            lb = _lower_bound(blocks, lambda b: b.reserved, self.steps)
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
            v.extend(_check_traffic(self, graph))
        if v:
            raise PlanError(v)

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """The plan as a ``numamem-plan/1`` JSON object (required fields plus extras)."""
        return {
            "format": FORMAT,
            "graph": self.graph,
            "nodes": list(self.nodes),
            "page_size": self.page_size,
            "alignment": self.alignment,
            "steps": self.steps,
            "arenas": [asdict(a) for a in self.arenas],
            "blocks": [b.to_dict() for b in self.blocks],
            "layers": [asdict(l) for l in self.layers],
            "tensors": {
                n: {"shape": list(t.shape), "itemsize": t.itemsize, "role": t.role, "live": list(t.live)}
                for n, t in self.tensors.items()
            },
            "info": self.info,
        }

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int | None = 1) -> str:
        """Serialise to ``numamem-plan/1``; also write it to ``path`` when given."""
        return dump_json(self.to_dict(), path, indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> "Plan":
        """Read a parsed ``numamem-plan/1`` object (fields beyond the required ones are optional)."""
        try:
            if d.get("format") != FORMAT:
                raise ValueError(f"plan: format must be {FORMAT!r}, got {d.get('format')!r}")
            blocks = [
                Block(
                    tensor=b["tensor"], index=int(b["index"]), node=int(b["node"]), offset=int(b["offset"]),
                    size=int(b["size"]), reserved=int(b.get("reserved", b["size"])),
                    slice=None if b.get("slice") is None else Slice(
                        int(b["slice"]["axis"]), int(b["slice"]["start"]), int(b["slice"]["stop"])),
                    live=(int(b["live"][0]), int(b["live"][1])),
                    replica=bool(b.get("replica", b.get("slice") is None)),
                    page_aligned=bool(b.get("page_aligned", False)),
                )
                for b in d["blocks"]
            ]
            # Plans written by other tools may carry only the required fields: infer what the
            # page rule implies (blocks of a tensor on several nodes reserve whole pages) and lay
            # the arenas out back to back.
            page, align = int(d["page_size"]), int(d.get("alignment", 1))
            spread = {}
            for b in blocks:
                spread.setdefault(b.tensor, set()).add(b.node if b.slice is not None else -1)
            for b, raw in zip(blocks, d["blocks"]):
                if "reserved" not in raw:
                    multi = len(spread[b.tensor] - {-1}) > 1
                    b.reserved = _round_up(max(b.size, 1), page if multi else align)
                    b.page_aligned = multi
            arenas = [
                Arena(node=int(a["node"]), size=int(a["size"]), lower_bound=int(a["lower_bound"]),
                      **{k: int(a[k]) for k in ("peak", "base", "page_padding", "block_padding",
                                                  "lower_bound_unpadded") if k in a})
                for a in d["arenas"]
            ]
            if not any("peak" in a for a in d["arenas"]):
                for a in arenas:
                    a.peak = max((b.offset + b.reserved for b in blocks if b.node == a.node), default=0)
                    a.page_padding = a.size - a.peak
            if not any("base" in a for a in d["arenas"]):
                base = 0
                for a in arenas:
                    a.base, base = base, base + a.size
            layers = [
                LayerPlan(name=l["name"], step=int(l["step"]), axis=None if l.get("axis") is None else int(l["axis"]),
                          local_bytes=int(l["local_bytes"]), remote_bytes=int(l["remote_bytes"]),
                          op=l.get("op", ""), nodes=list(l.get("nodes", [])), flops=int(l.get("flops", 0)),
                          cost_s=float(l.get("cost_s", 0.0)), remote_pairs=[list(p) for p in l.get("remote_pairs", [])])
                for l in d["layers"]
            ]
            tensors = {
                n: TensorInfo(tuple(t["shape"]), int(t["itemsize"]), t.get("role"), (int(t["live"][0]), int(t["live"][1])))
                for n, t in d.get("tensors", {}).items()
            }
            return cls(graph=d["graph"], nodes=[int(n) for n in d["nodes"]], page_size=int(d["page_size"]),
                       arenas=arenas, blocks=blocks, layers=layers, alignment=align,
                       steps=int(d.get("steps", len(layers))), tensors=tensors, info=dict(d.get("info", {})))
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"plan: malformed numamem-plan/1 document ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> "Plan":
        """Read ``numamem-plan/1`` from JSON text or from a file path."""
        text = os.fspath(source)
        if not text.lstrip().startswith("{"):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"plan: bad JSON: {exc}") from None
        return cls.from_dict(data)

    # ---------------------------------------------------------------- report
    def report(self, *, layers: bool = True) -> str:
        """Human-readable summary: arenas against their lower bounds, padding, remote bytes per layer."""
        mib = 1 << 20
        lines = [
            f"plan of {self.graph!r} on nodes {self.nodes}: {self.steps} steps, page {self.page_size} B, "
            f"{len(self.blocks)} blocks",
            f"{'node':>5} {'arena MiB':>12} {'lower bound':>12} {'peak/bound':>10} {'page pad B':>11} {'block pad B':>12}",
        ]
        for a in self.arenas:
            ratio = f"{a.peak / a.lower_bound:.4f}" if a.lower_bound else "-"
            lines.append(f"{a.node:>5} {a.size / mib:>12.4f} {a.lower_bound / mib:>12.4f} {ratio:>10} "
                         f"{a.page_padding:>11} {a.block_padding:>12}")
        total = sum(a.size for a in self.arenas)
        lines.append(f"total {total / mib:.4f} MiB; reads: {self.local_bytes / mib:.3f} MiB local, "
                     f"{self.remote_bytes / mib:.3f} MiB remote")
        if layers:
            lines.append(f"{'step':>5} {'layer':<32} {'op':<14} {'axis':>4} {'local B':>12} {'remote B':>12}")
            for l in self.layers:
                axis = "-" if l.axis is None else str(l.axis)
                lines.append(f"{l.step:>5} {l.name[:32]:<32} {l.op[:14]:<14} {axis:>4} {l.local_bytes:>12} {l.remote_bytes:>12}")
        return "\n".join(lines)


# -------------------------------------------------------------------- checker helpers
def _block_region(b: Block, info: TensorInfo) -> tuple[tuple[int, int], ...]:
    if b.slice is None:
        return full_region(info.shape)
    return region_on(info.shape, b.slice.axis, b.slice.start, b.slice.stop)


def _check_cover(name: str, info: TensorInfo, blocks: list[Block], page: int) -> list[str]:
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
        want = volume(_block_region(b, info)) * info.itemsize
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


def _check_disjoint(node: int, blocks: list[Block]) -> list[str]:
    """Pairs of co-live blocks that share bytes, by a sweep over offsets (O(n log n + conflicts))."""
    v: list[str] = []
    order = sorted(blocks, key=lambda b: (b.offset, b.offset + b.reserved))
    active: list[Block] = []
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


def _lower_bound(blocks: Sequence[Block], size, steps: int) -> int:
    n = max([steps] + [b.live[1] + 1 for b in blocks])
    delta = np.zeros(n + 1, dtype=np.int64)
    for b in blocks:
        delta[b.live[0]] += size(b)
        delta[b.live[1] + 1] -= size(b)
    return int(np.cumsum(delta).max(initial=0))


def _layer_traffic(graph: Graph, step: int, blocks_of: Mapping[str, list[Block]],
                   infos: Mapping[str, TensorInfo], axis: int | None) -> tuple[int, int, dict[tuple[int, int], int]]:
    """Bytes a layer reads locally and remotely, from the blocks alone."""
    layer = graph.layers[step]
    in_shapes = [graph.tensors[n].shape for n in layer.inputs]
    out = layer.outputs[0]
    out_shape = graph.tensors[out].shape
    local = remote = 0
    pairs: dict[tuple[int, int], int] = {}
    for ob in blocks_of[out]:
        n = ob.node
        if axis is None:
            regions = [full_region(s) for s in in_shapes]
        else:
            r = _block_region(ob, infos[out])
            regions = input_regions(layer.op, in_shapes, out_shape, layer.attrs, axis, *r[axis])
        for name, region in zip(layer.inputs, regions):
            if region is None:
                continue
            item = infos[name].itemsize
            blocks = blocks_of[name]
            if blocks[0].slice is None:  # replicas: read the one on this node if there is one
                src = n if any(b.node == n for b in blocks) else blocks[0].node
                got = {src: volume(region)}
            else:
                got = {}
                for b in blocks:
                    e = overlap(_block_region(b, infos[name]), region)
                    if e:
                        got[b.node] = got.get(b.node, 0) + e
            for m, e in got.items():
                if m == n:
                    local += e * item
                else:
                    remote += e * item
                    pairs[m, n] = pairs.get((m, n), 0) + e * item
    return local, remote, pairs


def _check_traffic(p: Plan, graph: Graph) -> list[str]:
    v: list[str] = []
    live = graph.lifetimes()
    infos = {n: TensorInfo(t.shape, graph.itemsize(n), t.role, live[n]) for n, t in graph.tensors.items()}
    blocks_of: dict[str, list[Block]] = {}
    for b in p.blocks:
        blocks_of.setdefault(b.tensor, []).append(b)
    if [l.name for l in p.layers] != [l.name for l in graph.layers] or [l.step for l in p.layers] != list(range(len(graph.layers))):
        return ["plan layers do not follow the graph's execution order"]
    for lp in p.layers:
        local, remote, _ = _layer_traffic(graph, lp.step, blocks_of, infos, lp.axis)
        if (local, remote) != (lp.local_bytes, lp.remote_bytes):
            v.append(f"layer {lp.name!r}: plan says {lp.local_bytes} local / {lp.remote_bytes} remote bytes, "
                     f"its blocks give {local} / {remote}")
    return v


# -------------------------------------------------------------------- the planner
def _check_nodes(nodes: Sequence[int] | int) -> list[int]:
    if isinstance(nodes, bool):
        raise TypeError("nodes must be a list of node ids or a count")
    if isinstance(nodes, (int, np.integer)):
        if nodes < 1:
            raise ValueError(f"node count must be >= 1, got {nodes}")
        return list(range(int(nodes)))
    out = []
    for n in nodes:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"node ids must be non-negative ints, got {n!r}")
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
        from numamem.planner.packing import pack

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
        pos = _round_up(peak, page if static[0].page_aligned else alignment)
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
        Already checked with :meth:`Plan.verify`.

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
        for index, (node, region) in enumerate(layout.parts):
            size = volume(region) * item
            if layout.replicated:
                sl = None
            else:
                axes = [k for k, ((a, b), d) in enumerate(zip(region, t.shape)) if (a, b) != (0, d)]
                k = axes[0] if axes else 0
                sl = Slice(k, region[k][0], region[k][1]) if t.shape else Slice(0, 0, 1)
            reserved = _round_up(max(size, 1), page_size if spread else alignment)
            blocks.append(Block(name, index, node, 0, size, reserved, sl, live[name],
                                replica=layout.replicated, page_aligned=spread))

    arenas: list[Arena] = []
    notes = {}
    base = 0
    for n in node_ids:
        mine = [b for b in blocks if b.node == n]
        notes[str(n)], peak = _pack_node(mine, steps, page_size, alignment, time_limit)
        size = _round_up(peak, page_size)
        arenas.append(Arena(
            node=n, size=size, lower_bound=_lower_bound(mine, lambda b: b.reserved, steps), peak=peak, base=base,
            page_padding=size - peak, block_padding=sum(b.reserved - b.size for b in mine),
            lower_bound_unpadded=_lower_bound(mine, lambda b: b.size, steps),
        ))
        base += size

    layers = []
    for step, (layer, c) in enumerate(zip(graph.layers, choices)):
        layers.append(LayerPlan(
            name=layer.name, step=step, axis=c.axis, local_bytes=c.local_bytes, remote_bytes=c.remote_bytes,
            op=layer.op, nodes=[n for n, _ in c.parts], flops=c.flops, cost_s=c.cost,
            remote_pairs=[[s, d, b] for (s, d), b in sorted(c.remote_pairs.items())],
        ))
    tensors = {n: TensorInfo(t.shape, graph.itemsize(n), t.role, live[n]) for n, t in graph.tensors.items()}
    info = {
        "batch_axis_only": batch_axis_only,
        "distances": [[part.distance[a, b] for b in node_ids] for a in node_ids],
        "bandwidth": [[part.bandwidth[a, b] for b in node_ids] for a in node_ids],
        "bandwidth_measured": bandwidth is not None,
        "cost_model": asdict(cost),
        "packing": notes,
        "activation_peak_single_node": graph.activation_peak(),
    }
    result = Plan(graph=graph.name, nodes=node_ids, page_size=page_size, arenas=arenas, blocks=blocks,
                  layers=layers, alignment=alignment, steps=steps, tensors=tensors, info=info, source=graph)
    result.verify()
    return result
