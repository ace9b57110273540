"""The plan model: per-node blocks in per-node arenas, and per-layer traffic.

A :class:`Plan` is data: it may name nodes this machine does not have, and nothing here touches
libnuma. :func:`numamem.planner.plan` makes one (:mod:`numamem.planner.planner`); the other jobs
live in their own modules, and the methods here are thin delegates to them:

- :mod:`numamem.planner.planfile`: the ``numamem-plan/1`` JSON form (:meth:`Plan.to_json`,
  :meth:`Plan.from_json`);
- :mod:`numamem.planner.check`: the independent checker (:meth:`Plan.verify`, :class:`PlanError`);
- :mod:`numamem.planner.report`: the text tables (:meth:`Plan.report`).

The checker and the report read a plan by its attributes and import nothing from here; the codec
builds these dataclasses, so it imports this module, and :meth:`Plan.to_json`/:meth:`Plan.from_json`
import the codec when called (the one deferred import of the planner: a plan does not need its
file format to exist).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from numamem.planner import check as _check, planfile as _planfile, report as _report
from numamem.planner.boxes import Slice, full

if TYPE_CHECKING:  # annotations only
    from numamem.planner.graph import Graph

PlanError = _check.PlanError

__all__ = ["PLAN_TYPES", "Arena", "Block", "LayerPlan", "Plan", "PlanError", "Slice", "TensorInfo"]


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

    Examples
    --------
    >>> Block("x", 0, 1, 0, 64, 4096, Slice(0, 4, 8), (0, 2), page_aligned=True).to_dict()["slice"]
    {'axis': 0, 'start': 4, 'stop': 8}
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
        """The block as a JSON object of ``numamem-plan/1``."""
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
    """What the checker needs to know about a tensor without the graph.

    >>> TensorInfo((2, 3), 4, None, (0, 1)).nbytes
    24
    """

    shape: tuple[int, ...]
    itemsize: int
    role: str | None
    live: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Bytes of the whole tensor."""
        return math.prod(self.shape) * self.itemsize


@dataclass
class Plan:
    """A static memory plan: blocks of every tensor in per-node arenas, and per-layer traffic.

    Use :func:`numamem.planner.plan` to make one and :meth:`verify` to check one. Everything is a
    plain attribute; :meth:`to_json` / :meth:`from_json` give the ``numamem-plan/1`` form.

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
        >>> import numamem.models, numamem.planner
        >>> p = numamem.planner.plan(numamem.models.get("mlp", batch=8, features=(4, 2)), nodes=[0, 1])
        >>> p.block_index(p.blocks_of("x")[1])
        (slice(4, 8, None), slice(0, 4, None))
        """
        shape = self.tensors[block.tensor].shape
        box = full(shape) if block.slice is None else block.slice.box(shape)
        return tuple(slice(a, b) for a, b in box)

    @property
    def remote_bytes(self) -> int:
        """Total bytes read across nodes in one pass."""
        return sum(l.remote_bytes for l in self.layers)

    @property
    def local_bytes(self) -> int:
        """Total bytes read from the reading node's own memory in one pass."""
        return sum(l.local_bytes for l in self.layers)

    # ---------------------------------------------------------------- other jobs, delegated
    def verify(self, graph: Graph | None = None) -> None:
        """Check every invariant; raise :class:`PlanError` listing the violations (:func:`numamem.planner.check.verify`)."""
        _check.verify(self, graph if graph is not None else self.source)

    def report(self, *, layers: bool = True) -> str:
        """Human-readable summary: arenas against their lower bounds, padding, remote bytes per layer."""
        return _report.plan_report(self, layers=layers)

    def to_dict(self) -> dict[str, Any]:
        """The plan as a ``numamem-plan/1`` JSON object (required fields plus extras)."""
        return _planfile.to_dict(self)

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int | None = 1) -> str:
        """Serialise to ``numamem-plan/1``; also write it to ``path`` when given."""
        return _planfile.to_json(self, path, indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> "Plan":
        """Read a parsed ``numamem-plan/1`` object (fields beyond the required ones are optional)."""
        return _planfile.from_dict(d, dataclasses.replace(PLAN_TYPES, plan=cls))

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> "Plan":
        """Read ``numamem-plan/1`` from JSON text or from a file path."""
        return _planfile.from_json(source, dataclasses.replace(PLAN_TYPES, plan=cls))


#: The classes :mod:`numamem.planner.planfile` builds a plan from.
PLAN_TYPES = _planfile.PlanTypes(plan=Plan, block=Block, arena=Arena, layer=LayerPlan, tensor=TensorInfo)
