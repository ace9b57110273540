"""Executing a plan on node-bound worker threads; the executor of each mode.

:class:`Executor` materialises a :class:`~numamem.planner.Plan` compiled by
:func:`~numamem.runtime.program.compile_program`: one arena per node (numamem memory bound to
that node, page-aligned), a view per block, weights written into their blocks by threads of the
block's node, and per node a team of worker threads pinned to the node's CPUs. Each layer's block
on a node is computed by that node's workers (split further among them along one output axis),
straight into the block's memory, with BLAS limited to one thread per worker so no work runs
off-node. Nodes synchronise only where a dependency crosses nodes: a node waits for another node
only before reading a block that node produces, or before overwriting memory (reused by the plan)
that another node still has to read. While running, nothing is allocated beyond the arenas, one
scratch buffer per worker and one staging buffer per node (for inputs whose region spans blocks
of several nodes), all reserved up front on the node.

:class:`~numamem.runtime.baseline.BaselineExecutor` runs the same blocks with first-touch or
interleaved memory; :func:`make_executor` gives the executor of any mode of :data:`MODES`.

Both executors count the bytes each node's workers read from each memory node: from where the
memory really is (``numamem.page_nodes``), per layer, over the region each node's block reads.

On a machine with fewer nodes than the plan, ``node_map`` maps plan nodes onto physical nodes
(``Executor(plan, node_map={0: 0, 1: 0, 2: 0})``): every plan node keeps its own arena and worker
team, so multi-block execution and cross-node dependencies run for real, only not on distinct
memory.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from numamem.arrays import empty as _nm_empty
from numamem.inspect import placement
from numamem.planner.boxes import Box, cut, extent, round_up
from numamem.planner.graph import Graph
from numamem.planner.plan import Block, Plan
from numamem.runtime.base import ExecutorBase, ModeReport, box_index, check_tensors
from numamem.runtime.baseline import BASELINE_MODES, BaselineExecutor
from numamem.runtime.kernels import BoundKernel
from numamem.runtime.locality import TrafficLedger, page_histogram
from numamem.runtime.program import (ALIGN, BlockSite, Direct, Group, NodeTask, StagingSlot, Wait, WorkerCall,
                                     compile_program)
from numamem.threads import WorkerAborted, blas_single_thread

__all__ = ["BaselineExecutor", "BlockView", "Executor", "MODES", "ModeReport", "make_executor"]

#: The execution modes of ``numamem run``, in report order.
MODES = ("planned",) + BASELINE_MODES


@dataclass(frozen=True)
class BlockView:
    """A plan block in memory: ``array`` is its part ``box`` of the tensor, element 0 at ``origin``."""

    block: Block
    array: np.ndarray
    origin: tuple[int, ...]
    box: Box


@dataclass(frozen=True)
class _Copy:
    """One copy of ``src`` into ``dst``: a gather into a staging slot, or a weight or input into its block."""

    dst: np.ndarray
    src: np.ndarray


class KernelCall:
    """One kernel call of one worker with every array bound (the hot path: slots, no lookups)."""

    __slots__ = ("kernel", "inputs", "out", "tmp", "scratch")

    def __init__(self, kernel: BoundKernel, inputs: list, out: np.ndarray, tmp: np.ndarray | None,
                 scratch: np.ndarray | None):
        self.kernel, self.inputs, self.out, self.tmp, self.scratch = kernel, inputs, out, tmp, scratch

    def __call__(self) -> None:
        if self.tmp is None:
            self.kernel(self.inputs, self.out, self.scratch)
        else:  # a strided piece of a matmul-based op: BLAS writes a contiguous buffer, then one copy
            self.kernel(self.inputs, self.tmp, self.scratch)
            np.copyto(self.out, self.tmp)


@dataclass(frozen=True)
class BoundTask:
    """A :class:`~numamem.runtime.program.NodeTask` with its arrays: per worker, copies and calls."""

    step: int
    deps: tuple[Wait, ...]
    gathers: tuple[tuple[_Copy, ...], ...]
    calls: tuple[tuple[KernelCall, ...], ...]

    @property
    def has_gathers(self) -> bool:
        return any(self.gathers)


def _aligned(buf: np.ndarray, offset: int, nbytes: int, dtype, shape) -> np.ndarray:
    """``nbytes`` of ``buf`` from ``offset`` past its first ``ALIGN``-aligned byte, as an array."""
    base = (-buf.ctypes.data) % ALIGN
    return buf[base + offset: base + offset + nbytes].view(dtype).reshape(shape)


class Executor(ExecutorBase):
    """Run a plan: per-node arenas, node-bound worker teams, blocks computed in place.

    Parameters
    ----------
    plan : Plan
    graph : Graph, optional
        The graph the plan was made from (default: ``plan.source``).
    node_map : mapping of int to int, optional
        Physical node of each plan node (default: the same id). Several plan nodes may share a
        physical node: each keeps its own arena and workers.
    workers : int or mapping, optional
        Workers per plan node (default: the node's allowed CPUs, shared among plan nodes mapped to
        it).

    Examples
    --------
    >>> import numamem.models, numamem.planner, numpy as np
    >>> g = numamem.models.get("mlp", batch=4, features=(8, 16, 4))
    >>> p = numamem.planner.plan(g, nodes=[0, 1])
    >>> rng = np.random.default_rng(0)
    >>> ws = {n: rng.standard_normal(g.tensors[n].shape, dtype=np.float32) for n in g.weights}
    >>> with Executor(p, node_map={0: 0, 1: 0}) as ex:
    ...     ex.load_weights(ws)
    ...     y = ex.run({"x": np.ones((4, 8), np.float32)})
    >>> y[g.outputs[0]].shape
    (4, 4)
    """

    mode = "planned"

    def __init__(self, plan: Plan, graph: Graph | None = None, *, node_map: Mapping[int, int] | None = None,
                 workers: Any = None):
        super().__init__(plan, graph, node_map, workers)
        try:
            self.program = compile_program(self.plan, self.graph, self.groups)
            self._materialise()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ set-up
    def _materialise(self) -> None:
        """Reserve every buffer on its node and bind the program's arrays."""
        program, groups = self.program, self.groups
        # Arenas: each on its node, page-aligned so every page belongs to one node's blocks.
        self.arenas: list[np.ndarray | None] = []
        for g in groups:
            size = self.plan.arena(g.plan_node).size
            self.arenas.append(_nm_empty(size, np.uint8, node=g.mem_node, align="page") if size else None)
        self.staging = [_nm_empty(n + ALIGN, np.uint8, node=g.mem_node) if n else None
                        for g, n in zip(groups, program.staging_bytes)]
        self.scratch = [[_nm_empty(n + ALIGN, np.uint8, node=g.mem_node) if n else None for _ in range(g.workers)]
                        for g, n in zip(groups, program.scratch_bytes)]
        self._views = {site: self._view(site) for sites in program.sites.values() for site in sites}
        self._tasks = [[self._bind_task(g, task) for task in tasks] for g, tasks in enumerate(program.tasks)]
        self._start_team("bind")
        self._barriers = [threading.Barrier(g.workers) for g in groups]
        self._cv = threading.Condition()
        self._progress = [-2] * len(groups)
        self._aborted = False
        self._times = [[(0.0, 0.0)] * len(t) for t in self._tasks]

    def _view(self, site: BlockSite) -> BlockView:
        b = site.block
        dt = np.dtype(self.graph.tensor_dtype(b.tensor))
        array = self.arenas[site.group][b.offset: b.offset + b.size].view(dt).reshape(extent(site.box))
        return BlockView(b, array, site.origin, site.box)

    def _slot_array(self, g: int, slot: StagingSlot) -> np.ndarray:
        return _aligned(self.staging[g], slot.offset, slot.nbytes, slot.dtype, extent(slot.box))

    def _bind_task(self, g: int, task: NodeTask) -> BoundTask:
        """The arrays of ``task`` of group ``g``: gathers and kernel calls per worker."""
        workers = self.groups[g].workers
        slots = {slot: self._slot_array(g, slot) for slot in task.slots}
        gathers: list[list[_Copy]] = [[] for _ in range(workers)]
        for slot in task.slots:
            for gather in slot.gathers:
                view = self._views[gather.site]
                gathers[gather.worker].append(_Copy(slots[slot][cut(gather.box, slot.origin)],
                                                    view.array[cut(gather.box, view.origin)]))
        out = self._views[task.out].array
        if task.work.whole and out.shape != tuple(self.graph.tensors[task.out.block.tensor].shape):
            raise AssertionError("whole block with a partial array")
        calls = []
        for w, worker_calls in enumerate(task.work.calls):
            calls.append(tuple(self._bind_call(call, task, out, slots, self.scratch[g][w]) for call in worker_calls))
        return BoundTask(task.step, task.deps, tuple(map(tuple, gathers)), tuple(calls))

    def _bind_call(self, call: WorkerCall, task: NodeTask, out: np.ndarray, slots: Mapping[StagingSlot, np.ndarray],
                   scratch: np.ndarray | None) -> KernelCall:
        kernel = call.kernel
        inputs = []
        for operand, region in zip(task.operands, kernel.regions):
            if operand is None or region is None:
                inputs.append(None)
            elif isinstance(operand, Direct):
                view = self._views[operand.site]
                inputs.append(view.array[cut(region, view.origin)])
            else:
                inputs.append(slots[operand.slot][cut(region, operand.slot.origin)])
        target = out[call.cut]
        tmp, own = None, (scratch if kernel.scratch_bytes else None)
        if call.staged_out:  # a contiguous buffer for BLAS first in the scratch, the kernel's after it
            nbytes = target.nbytes
            tmp = _aligned(scratch, 0, nbytes, target.dtype, kernel.out_shape)
            base = (-scratch.ctypes.data) % ALIGN
            own = scratch[base + round_up(nbytes, ALIGN):] if kernel.scratch_bytes else None
        return KernelCall(kernel, inputs, target, tmp, own)

    # ------------------------------------------------------------------ running
    def load_weights(self, weights: Mapping[str, Any]) -> None:
        """Write every weight into its blocks, each block by a worker of the block's node.

        Raises
        ------
        ValueError
            Naming a weight that is missing or mis-shaped.
        """
        ws = check_tensors(self.graph, weights, self.graph.weights, "weight")
        jobs: list[list[_Copy]] = [[] for _ in self.groups]
        for name in self.graph.weights:
            for site in self.program.sites[name]:
                jobs[site.group].append(_Copy(self._views[site].array, ws[name][box_index(site.box)]))

        def copy(g: int, w: int) -> None:
            for copy_job in jobs[g][w::self.groups[g].workers]:
                np.copyto(copy_job.dst, copy_job.src)

        self._team.run(copy)
        self._weights_done()

    def set_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Give the graph inputs of the next :meth:`step` calls (copied in at each step).

        Raises
        ------
        ValueError
            Naming an input that is missing or mis-shaped.
        """
        self._inputs = check_tensors(self.graph, inputs, self.graph.inputs, "input")
        self._input_copies = [[_Copy(self._views[site].array, self._inputs[site.block.tensor][box_index(site.box)])
                               for site in sites] for sites in self.program.inputs]

    def _wait(self, deps: Sequence[Wait]) -> None:
        progress = self._progress
        with self._cv:
            while True:
                if self._aborted:
                    raise WorkerAborted()
                if all(progress[d.group] >= d.step for d in deps):
                    return
                self._cv.wait()

    def _publish(self, g: int, step: int) -> None:
        with self._cv:
            self._progress[g] = step
            self._cv.notify_all()

    def _abort(self) -> None:
        with self._cv:
            self._aborted = True
            self._cv.notify_all()
        for b in self._barriers:
            b.abort()

    def _worker_step(self, g: int, w: int) -> None:
        """One step of worker ``w`` of group ``g``: its share of every task of the group."""
        workers = self.groups[g].workers
        barrier = self._barriers[g]
        times = self._times[g]
        try:
            # Step -1: this node's blocks of the graph inputs (the plan may reuse their bytes
            # later in the pass, so they are written at every step).
            for copy_job in self._input_copies[g][w::workers]:
                np.copyto(copy_job.dst, copy_job.src)
            if workers > 1:
                barrier.wait()
            if w == 0:
                self._publish(g, -1)
            for i, task in enumerate(self._tasks[g]):
                if task.deps:
                    self._wait(task.deps)
                t0 = time.perf_counter()
                if task.has_gathers:
                    for copy_job in task.gathers[w]:
                        np.copyto(copy_job.dst, copy_job.src)
                    if workers > 1:
                        barrier.wait()
                for call in task.calls[w]:
                    call()
                if workers > 1:
                    barrier.wait()
                if w == 0:
                    times[i] = (t0, time.perf_counter())
                    self._publish(g, task.step)
        except WorkerAborted:
            raise
        except threading.BrokenBarrierError:
            raise WorkerAborted() from None
        except BaseException:
            self._abort()
            raise

    def step(self, account: bool = False) -> float:
        """Run the graph once on the inputs of :meth:`set_inputs`; return the wall time in seconds.

        Per-layer times (from the first node starting the layer to the last finishing it) are
        left in :attr:`layer_seconds`, the CPU seconds of the workers and the calling thread in
        :attr:`cpu_seconds`. ``account`` changes nothing here: the planned mode's reads are fixed
        by the program, and :meth:`traffic` measures them at any time.

        Raises
        ------
        ValueError
            Before :meth:`set_inputs`, or before :meth:`load_weights` (the arena holds no weights).
        """
        self._check_runnable()
        self._progress = [-2] * len(self.groups)
        self._aborted = False
        for b in self._barriers:
            b.reset()
        with blas_single_thread():
            t0 = time.perf_counter()
            c0 = time.thread_time()
            try:
                cpu = self._team.run(self._worker_step)
            except WorkerAborted:
                raise RuntimeError("a worker failed and the step was aborted") from None
            elapsed = time.perf_counter() - t0
            self.cpu_seconds = cpu + time.thread_time() - c0
        first: dict[int, float] = {}  # per step, the earliest start and the latest end over groups
        last: dict[int, float] = {}
        for tasks, times in zip(self._tasks, self._times):
            for task, (t_start, t_end) in zip(tasks, times):
                first[task.step] = min(first.get(task.step, t_start), t_start)
                last[task.step] = max(last.get(task.step, t_end), t_end)
        self.layer_seconds = [last[i] - first[i] if i in first else 0.0 for i in range(len(self.graph.layers))]
        self._step_done()
        return elapsed

    def outputs(self) -> dict[str, np.ndarray]:
        """The graph outputs of the last step, assembled from their blocks into new arrays.

        Raises
        ------
        ValueError
            Before a step has run to its end (the arena holds no outputs), or once closed.
        """
        self._check_outputs()
        out = {}
        for name in self.graph.outputs:
            full = np.empty(self.graph.tensors[name].shape, self.graph.tensor_dtype(name))
            for site in self.program.sites[name]:
                full[box_index(site.box)] = self._views[site].array
                if site.block.slice is None:
                    break
            out[name] = full
        return out

    # ------------------------------------------------------------------ reporting
    def block_views(self) -> list[BlockView]:
        """Every plan block in its arena, in plan order of tensors and block index."""
        return [self._views[site] for sites in self.program.sites.values() for site in sites]

    def traffic(self) -> dict[str, Any]:
        """Bytes each node's workers read, by memory node, measured from where the pages are.

        Returns
        -------
        dict
            ``local_bytes``, ``remote_bytes``, ``per_node`` (by reader CPU node) and ``layers``
            (per step: local, remote and ``pairs`` ``[memory node, reader node, bytes]``). Reads
            are the regions the node-level blocks read (the same rule the planner counts with);
            a region spanning several nodes' blocks counts the bytes copied from each.
        """
        ledger = TrafficLedger(len(self.graph.layers))
        for g, tasks in enumerate(self.program.tasks):
            for task in tasks:
                for read in task.reads:
                    view = self._views[read.site]
                    ledger.add_view(task.step, self.groups[g].cpu_node, view.array[cut(read.box, view.origin)])
        return ledger.summary()

    def pages(self) -> dict[str, dict[str, int]]:
        """Where each arena's pages are: ``{memory node: {node: pages}}`` (from ``move_pages``).

        Plan nodes mapped onto one physical node add up under that node.
        """
        return _pages_by_node(self.groups, [[a] for a in self.arenas])

    def extra_pages(self) -> dict[str, dict[str, int]]:
        """Pages of the per-worker scratch and per-node staging buffers, like :meth:`pages`."""
        return _pages_by_node(self.groups, [[st] + list(sc) for st, sc in zip(self.staging, self.scratch)],
                              every_group=True)

    def memory(self) -> dict[str, int]:
        """Bytes reserved: arenas (and how much of them transparent huge pages back), per-worker
        scratch and per-node staging."""
        return {
            "arena_bytes": sum(a.size for a in self.arenas if a is not None),
            "arena_thp_bytes": sum(placement(a).thp_bytes for a in self.arenas if a is not None),
            "scratch_bytes": sum(s.size for sc in self.scratch for s in sc if s is not None),
            "staging_bytes": sum(s.size for s in self.staging if s is not None),
        }

    def report(self) -> ModeReport:
        """The planned mode's part of a run report: the plan's traffic, with the measured beside it."""
        traffic = self.traffic()
        memory = self.memory()
        return ModeReport(
            pages=self.pages(), local_bytes=self.plan.local_bytes, remote_bytes=self.plan.remote_bytes,
            traffic_basis="the plan's per-layer accounting",
            peak_tensor_bytes=memory["arena_bytes"] + memory["scratch_bytes"] + memory["staging_bytes"],
            traffic=traffic,
            details={"measured_local_bytes": traffic["local_bytes"], "measured_remote_bytes": traffic["remote_bytes"],
                     "memory": memory, "extra_pages": self.extra_pages()})


def _pages_by_node(groups: Sequence[Group], arrays: Sequence[Sequence[np.ndarray | None]],
                   every_group: bool = False) -> dict[str, dict[str, int]]:
    """Page histograms of each group's ``arrays``, added up by the group's memory node."""
    out: dict[str, dict[str, int]] = {}
    for g, group_arrays in zip(groups, arrays):
        if not every_group and all(a is None for a in group_arrays):
            continue
        hist = out.setdefault(str(g.mem_node), {})
        for n, count in page_histogram(group_arrays).items():
            hist[str(n)] = hist.get(str(n), 0) + count
    return out


def make_executor(mode: str, plan: Plan, graph: Graph | None = None, **kw) -> Executor | BaselineExecutor:
    """The executor of ``mode`` (one of :data:`MODES`)."""
    if mode == "planned":
        return Executor(plan, graph, **kw)
    if mode in BASELINE_MODES:
        return BaselineExecutor(plan, mode, graph, **kw)
    raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
