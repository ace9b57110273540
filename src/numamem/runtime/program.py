"""Compiling a plan into a program: what every node's workers do at every step, as plain data.

:func:`compile_program` is pure: it reads the plan and the graph and allocates no memory. The
:class:`~numamem.runtime.executor.Executor` then materialises the program (arenas, staging and
scratch buffers on their nodes) and binds its arrays once, so a step only runs kernels.

The program says, per group (a plan node with its worker team) and per layer it computes:

- the kernel call of each worker (:class:`WorkerCall`: a :class:`~numamem.planner.boxes.Slice`
  of the layer's output, cut by :func:`~numamem.planner.partition.split_for_workers`);
- where each operand comes from (:class:`Direct`: straight out of one plan block, or
  :class:`Staged`: a region spanning blocks of several nodes, gathered first into a slot of the
  group's staging buffer);
- which other groups it waits for (:class:`Wait`): before reading a block another group produces,
  and before overwriting memory (reused by the plan) that another group still has to read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence, Union

import numpy as np

from numamem.planner.boxes import Box, Slice, cut, extent, contains, full, intersect, round_up, volume
from numamem.planner.graph import Graph, Layer
from numamem.planner.partition import split_for_workers
from numamem.planner.plan import Block, Plan
from numamem.planner.traffic import replica_source
from numamem.runtime.kernels import KERNELS, BoundKernel, bind

__all__ = ["ALIGN", "BlockSite", "CONTIGUOUS_OUT", "Direct", "Gather", "Group", "NodeTask", "NodeWork", "Operand",
           "Program", "Read", "Staged", "StagingSlot", "Wait", "WorkerCall", "block_sites", "compile_program",
           "layer_work"]

#: Alignment of the buffers carved out of staging and scratch memory.
ALIGN = 64
#: Ops whose kernels want a C-contiguous ``out`` (they compute into a temporary otherwise).
CONTIGUOUS_OUT = frozenset(name for name, kernel in KERNELS.items() if kernel.contiguous_out)


@dataclass(frozen=True)
class Group:
    """One plan node: where its memory is, whose CPUs compute its blocks, and how many workers."""

    plan_node: int
    mem_node: int
    cpu_node: int
    workers: int


# ================================================================================= layer work
@dataclass(frozen=True)
class WorkerCall:
    """One kernel call of one worker: a piece of its node's block of the layer output.

    ``cut`` indexes the piece in the node's block array. ``staged_out``: the kernel wants a
    C-contiguous output and the piece is not, so the planned executor has it write a contiguous
    scratch buffer and copies that into place.
    """

    piece: Slice
    kernel: BoundKernel
    cut: tuple[slice, ...]
    staged_out: bool


@dataclass(frozen=True)
class NodeWork:
    """One node's part of one layer: the output block it computes, what it reads, worker calls.

    Attributes
    ----------
    out_block : Block
        The plan block of the output the node writes.
    part : Slice
        The node's output range (for a whole-tensor block: all of axis 0).
    whole : bool
        Whether the node computes the whole output.
    index : tuple of slice
        The node's block in whole-tensor coordinates.
    regions : tuple of Box or None
        The box of each operand the block reads (None: not read).
    calls : tuple of tuple of WorkerCall
        Per worker, its calls (at most one; none for a worker with no piece).
    """

    out_block: Block
    part: Slice
    whole: bool
    index: tuple[slice, ...]
    regions: tuple[Box | None, ...]
    calls: tuple[tuple[WorkerCall, ...], ...]


def _bind(layer: Layer, shapes: Sequence[tuple[int, ...]], piece: Slice, dtype) -> BoundKernel:
    return bind(layer.op, shapes, layer.attrs, piece, dtype)


def _c_contiguous(shape: Sequence[int], index: tuple[slice, ...]) -> bool:
    """Whether ``index`` of a C-contiguous array of ``shape`` is C-contiguous (no memory used)."""
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= max(d, 1)
    probe = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=tuple(shape),
                                            strides=tuple(reversed(strides)))
    return probe[index].flags.c_contiguous


def _node_work(graph: Graph, layer: Layer, block: Block, workers: int) -> NodeWork:
    """The work of the node holding output ``block`` of ``layer``, cut among its ``workers``."""
    shapes = [tuple(graph.tensors[n].shape) for n in layer.inputs]
    out_shape = tuple(graph.tensors[layer.outputs[0]].shape)
    dtype = graph.tensor_dtype(layer.outputs[0])
    bs = block.slice
    whole = bs is None or (bs.start == 0 and bs.stop == out_shape[bs.axis])
    part = Slice(0, 0, out_shape[0]) if whole or bs is None else Slice(bs.axis, bs.start, bs.stop)
    origin = [part.start if (k == part.axis and not whole) else 0 for k in range(len(out_shape))]
    index = tuple(slice(None) if whole or k != part.axis else slice(part.start, part.stop)
                  for k in range(len(out_shape)))
    block_shape = extent(full(out_shape)) if whole else extent(part.box(out_shape))
    pieces = split_for_workers(layer.op, shapes, out_shape, layer.attrs, part, whole, workers,
                               layer.op in CONTIGUOUS_OUT)
    calls: list[tuple[WorkerCall, ...]] = [() for _ in range(workers)]
    for w, piece in enumerate(pieces):
        piece_cut = cut(piece.box(out_shape), origin)
        staged = layer.op in CONTIGUOUS_OUT and not _c_contiguous(block_shape, piece_cut)
        calls[w] = (WorkerCall(piece, _bind(layer, shapes, piece, dtype), piece_cut, staged),)
    regions = tuple(_bind(layer, shapes, part, dtype).regions)
    return NodeWork(block, part, whole, index, regions, tuple(calls))


def layer_work(plan: Plan, graph: Graph, groups: Sequence[Group]) -> list[dict[int, NodeWork]]:
    """For every layer, the work of each group (by index): blocks as planned, cut among workers.

    Raises
    ------
    ValueError
        If the plan puts two blocks of one layer output on one node.
    """
    index = {g.plan_node: i for i, g in enumerate(groups)}
    work: list[dict[int, NodeWork]] = []
    for layer in graph.layers:
        per: dict[int, NodeWork] = {}
        for block in plan.blocks_of(layer.outputs[0]):
            g = index[block.node]
            if g in per:
                raise ValueError(f"plan puts two blocks of {layer.outputs[0]!r} on node {block.node}")
            per[g] = _node_work(graph, layer, block, groups[g].workers)
        work.append(per)
    return work


# ================================================================================= the program
@dataclass(frozen=True, eq=False)
class BlockSite:
    """Where one plan block sits: its group (whose arena holds it) and its box of the tensor."""

    block: Block
    group: int
    origin: tuple[int, ...]
    box: Box


@dataclass(frozen=True)
class Direct:
    """An operand read straight from one block's memory (its region lies in ``site``)."""

    site: BlockSite


@dataclass(frozen=True)
class Gather:
    """Copy ``box`` of the block at ``site`` into a staging slot; done by ``worker``."""

    site: BlockSite
    box: Box
    worker: int


@dataclass(frozen=True, eq=False)
class StagingSlot:
    """A region of an operand, gathered from several blocks into the group's staging buffer.

    ``offset`` counts from the first ``ALIGN``-aligned byte of the buffer.
    """

    offset: int
    box: Box
    dtype: np.dtype
    gathers: tuple[Gather, ...]

    @property
    def origin(self) -> tuple[int, ...]:
        return tuple(lo for lo, _ in self.box)

    @property
    def nbytes(self) -> int:
        return volume(self.box) * self.dtype.itemsize


@dataclass(frozen=True)
class Staged:
    """An operand read from a staging slot (its region spans blocks of several nodes)."""

    slot: StagingSlot


Operand = Union[Direct, Staged]


@dataclass(frozen=True)
class Read:
    """Bytes a task reads from a block (``box`` of ``site``), for locality accounting."""

    site: BlockSite
    box: Box


@dataclass(frozen=True)
class Wait:
    """Wait until group ``group`` has finished step ``step`` (-1: written its graph inputs)."""

    group: int
    step: int


@dataclass(frozen=True)
class NodeTask:
    """What one group does at one step: wait, gather, then every worker its calls."""

    step: int
    deps: tuple[Wait, ...]
    work: NodeWork
    out: BlockSite
    operands: tuple[Operand | None, ...]
    slots: tuple[StagingSlot, ...]
    reads: tuple[Read, ...]

    @property
    def staging_bytes(self) -> int:
        return max((round_up(s.offset + s.nbytes, ALIGN) for s in self.slots), default=0)


@dataclass(frozen=True)
class Program:
    """A compiled plan: per group, its tasks in step order and the buffers they need.

    Attributes
    ----------
    groups : tuple of Group
    sites : mapping of str to tuple of BlockSite
        Every tensor's blocks, in block index order.
    tasks : tuple of tuple of NodeTask
        Per group.
    inputs : tuple of tuple of BlockSite
        Per group, the blocks of the graph inputs it writes at the start of every step.
    staging_bytes : tuple of int
        Per group, the staging buffer its slots need (0: none).
    scratch_bytes : tuple of int
        Per group, the scratch buffer each of its workers needs (0: none).
    """

    groups: tuple[Group, ...]
    sites: Mapping[str, tuple[BlockSite, ...]]
    tasks: tuple[tuple[NodeTask, ...], ...]
    inputs: tuple[tuple[BlockSite, ...], ...]
    staging_bytes: tuple[int, ...]
    scratch_bytes: tuple[int, ...]


def block_sites(plan: Plan, graph: Graph, groups: Sequence[Group]) -> dict[str, tuple[BlockSite, ...]]:
    """Every tensor's blocks with their group and box, in block index order."""
    index = {g.plan_node: i for i, g in enumerate(groups)}
    sites: dict[str, list[BlockSite]] = {name: [] for name in graph.tensors}
    for b in plan.blocks:
        box = tuple((s.start, s.stop) for s in plan.block_index(b))
        sites[b.tensor].append(BlockSite(b, index[b.node], tuple(lo for lo, _ in box), box))
    return {name: tuple(sorted(s, key=lambda site: site.block.index)) for name, s in sites.items()}


def _source(sites: Sequence[BlockSite], region: Box, group: int) -> BlockSite | None:
    """The one block ``group`` reads ``region`` from, or None when the region spans blocks."""
    if sites[0].block.slice is None:  # replicas
        chosen = replica_source([s.group for s in sites], group)
        return next(s for s in sites if s.group == chosen)
    hits = [s for s in sites if intersect(s.box, region) is not None]
    if len(hits) == 1 and contains(hits[0].box, region):
        return hits[0]
    return None


def _operand(graph: Graph, sites: Sequence[BlockSite], name: str, region: Box, group: int,
             offset: int, workers: int, gathered: int) -> tuple[Operand, list[Read]]:
    """How ``group`` reads ``region`` of tensor ``name``, and the reads that makes.

    A staged operand's slot starts at byte ``offset`` of the staging buffer; its gathers go
    round-robin to the workers, continuing after the ``gathered`` copies already handed out.
    """
    site = _source(sites, region, group)
    if site is not None:
        return Direct(site), [Read(site, region)]
    pieces = [(s, intersect(s.box, region)) for s in sites]
    pieces = [(s, box) for s, box in pieces if box is not None]
    gathers = tuple(Gather(s, box, (gathered + i) % workers) for i, (s, box) in enumerate(pieces))
    slot = StagingSlot(offset, region, np.dtype(graph.tensor_dtype(name)), gathers)
    return Staged(slot), [Read(s, box) for s, box in pieces]


def _draft(graph: Graph, sites: Mapping[str, tuple[BlockSite, ...]], step: int, group: int, work: NodeWork,
           workers: int) -> NodeTask:
    """The task of ``group`` at ``step`` without the waits (found once every read is known)."""
    layer = graph.layers[step]
    operands: list[Operand | None] = []
    reads: list[Read] = []
    slots: list[StagingSlot] = []
    for name, region in zip(layer.inputs, work.regions):
        if region is None:
            operands.append(None)
            continue
        offset = sum(round_up(s.nbytes, ALIGN) for s in slots)
        gathered = sum(len(s.gathers) for s in slots)
        operand, operand_reads = _operand(graph, sites[name], name, region, group, offset, workers, gathered)
        operands.append(operand)
        reads += operand_reads
        if isinstance(operand, Staged):
            slots.append(operand.slot)
    out = next(s for s in sites[layer.outputs[0]] if s.block is work.out_block)
    return NodeTask(step, (), work, out, tuple(operands), tuple(slots), tuple(reads))


def _waits(graph: Graph, drafts: Sequence[Sequence[NodeTask]]) -> list[list[tuple[Wait, ...]]]:
    """Per group and task, the other groups to wait for.

    Read after write: before reading a block of another group, wait for the step producing it
    (-1 for a graph input, written at the start of the step; weights never change). Write after
    read: before overwriting its own memory, a group waits for every other group that read that
    memory at an earlier step (the plan reuses bytes whose live range ended there).
    """
    producer = {o: step for step, layer in enumerate(graph.layers) for o in layer.outputs}
    reads_of = [dict() for _ in drafts]  # reads_of[q][p]: steps at which group q reads group p's memory
    raw: list[list[dict[int, int]]] = []
    for g, tasks in enumerate(drafts):
        raw.append([])
        for task in tasks:
            deps: dict[int, int] = {}
            for name, operand in zip(graph.layers[task.step].inputs, task.operands):
                holders = ({operand.site.group} if isinstance(operand, Direct)
                           else {gather.site.group for gather in operand.slot.gathers} if operand else set())
                for h in holders - {g}:
                    reads_of[g].setdefault(h, []).append(task.step)
                    if name in producer:
                        deps[h] = max(deps.get(h, -1), producer[name])
                    elif graph.tensors[name].role == "input":
                        deps[h] = max(deps.get(h, -2), -1)
            raw[g].append(deps)
    for g, tasks in enumerate(drafts):
        for task, deps in zip(tasks, raw[g]):
            for q in range(len(drafts)):
                earlier = [s for s in reads_of[q].get(g, []) if s < task.step] if q != g else []
                if earlier:
                    deps[q] = max(deps.get(q, -2), max(earlier))
    return [[tuple(Wait(q, s) for q, s in sorted(deps.items())) for deps in per] for per in raw]


def _scratch_bytes(task: NodeTask, itemsize: int) -> int:
    """Bytes of scratch each worker needs for ``task``: the kernel's, plus a staged output."""
    need = 0
    for calls in task.work.calls:
        for call in calls:
            own = call.kernel.scratch_bytes
            if call.staged_out:
                own = round_up(own, ALIGN) + round_up(math.prod(call.kernel.out_shape) * itemsize, ALIGN) + ALIGN
            need = max(need, own)
    return need


def compile_program(plan: Plan, graph: Graph, groups: Sequence[Group]) -> Program:
    """Compile ``plan`` of ``graph`` for ``groups`` (one per plan node, in ``plan.nodes`` order).

    Raises
    ------
    ValueError
        If the plan puts two blocks of one layer output on one node.
    """
    groups = tuple(groups)
    sites = block_sites(plan, graph, groups)
    drafts: list[list[NodeTask]] = [[] for _ in groups]
    for step, per in enumerate(layer_work(plan, graph, groups)):
        for g, work in per.items():
            drafts[g].append(_draft(graph, sites, step, g, work, groups[g].workers))
    waits = _waits(graph, drafts)
    tasks = tuple(tuple(replace(task, deps=deps) for task, deps in zip(drafts[g], waits[g]))
                  for g in range(len(groups)))
    inputs = tuple(tuple(s for name in graph.inputs for s in sites[name] if s.group == g)
                   for g in range(len(groups)))
    staging = tuple(max((t.staging_bytes for t in ts), default=0) for ts in tasks)
    scratch = tuple(max((_scratch_bytes(t, graph.itemsize(graph.layers[t.step].outputs[0])) for t in ts),
                        default=0) for ts in tasks)
    return Program(groups, sites, tasks, inputs, staging, scratch)
