"""Executing a plan on node-bound worker threads, and the first-touch and interleave baselines.

:class:`Executor` materialises a :class:`~numamem.planner.Plan`: one arena per node (numamem
memory bound to that node, page-aligned), a view per block, weights written into their blocks by
threads of the block's node, and per node a team of worker threads pinned to the node's CPUs. Each
layer's block on a node is computed by that node's workers (split further among them along one
output axis), straight into the block's memory, with BLAS limited to one thread per worker so no
work runs off-node. Nodes synchronise only where a dependency crosses nodes: a node waits for
another node only before reading a block that node produces, or before overwriting memory (reused
by the plan) that another node still has to read. While running, nothing is allocated beyond the
arenas, one scratch buffer per worker and one staging buffer per node (for inputs whose region
spans blocks of several nodes), all reserved up front on the node.

:class:`BaselineExecutor` runs the same blocks on the same worker teams with memory the way a
framework gets it, so the difference measured is where memory is (and the planned mode's static
reuse), not how the work is cut:

``first-touch``
    Weights are copied into plain NumPy arrays by the loading (calling) thread, so the kernel
    places them on that thread's node; every layer allocates its output with ``np.empty`` and drops
    tensors after their last reader; kernels allocate their own temporaries.
``interleave``
    The same, with weights, inputs and every layer output in memory interleaved over the nodes
    (``numamem.empty(..., policy="interleave", nodes=...)``), as ``numactl --interleave`` would.

Both executors count the bytes each node's workers read from each memory node: from where the
memory really is (``numamem.page_nodes``), per layer, over the region each node's block reads.

On a machine with fewer nodes than the plan, ``node_map`` maps plan nodes onto physical nodes
(``Executor(plan, node_map={0: 0, 1: 0, 2: 0})``): every plan node keeps its own arena and worker
team, so multi-block execution and cross-node dependencies run for real, only not on distinct
memory.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
import queue
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from numamem import _topology
from numamem.arrays import empty as _nm_empty
from numamem.inspect import owner as _owner, span_page_nodes as _page_nodes  # indexed by page offset
from numamem.planner.graph import Graph
from numamem.planner.plans import Plan
from numamem.runtime import kernels as K
from numamem.threads import bind_thread

__all__ = ["BaselineExecutor", "Executor", "MODES", "WorkerTeam", "blas_single_thread", "bytes_by_node",
           "make_executor"]

#: The execution modes of ``numamem run``, in report order.
MODES = ("planned", "first-touch", "interleave")

_ALIGN = 64
#: Ops whose kernels want a C-contiguous ``out`` (they compute into a temporary otherwise).
_CONTIGUOUS_OUT = frozenset(name for name, k in K.KERNELS.items() if k.contiguous_out)


def _round_up(n: int, a: int = _ALIGN) -> int:
    return -(-n // a) * a


# ================================================================================= BLAS threads
_CONTROLLER: Any = None
_WARNED = False


@contextlib.contextmanager
def blas_single_thread():
    """Limit BLAS to one thread while the block runs (threadpoolctl), so work stays on the caller.

    OpenBLAS and MKL keep one process-wide thread pool whose threads are not bound to any node: a
    worker that let BLAS use several threads would run part of its block off-node. Each worker
    therefore calls BLAS single-threaded on its own share. Without the optional ``threadpoolctl``
    (extra ``numamem[threads]``) this warns once and changes nothing.

    Yields
    ------
    bool
        Whether the limit is in force.
    """
    global _CONTROLLER, _WARNED
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _CONTROLLER = False
        else:
            _CONTROLLER = ThreadpoolController()  # scanning loaded libraries once: ~ms
    if _CONTROLLER is False:
        if not _WARNED:
            warnings.warn("threadpoolctl is not installed (pip install numamem[threads]): BLAS may run "
                          "its own unbound threads next to the node-bound workers", RuntimeWarning, stacklevel=3)
            _WARNED = True
        yield False
        return
    with _CONTROLLER.limit(limits=1, user_api="blas"):
        yield True


# ================================================================================= worker teams
class _Latch:
    """Counts finished jobs; re-raises the first error a job raised."""

    def __init__(self, n: int):
        self._n = n
        self._cv = threading.Condition()
        self.errors: list[BaseException] = []
        self.cpu = 0.0

    def done(self, exc: BaseException | None, cpu: float = 0.0) -> None:
        with self._cv:
            self.cpu += cpu
            if exc is not None:
                self.errors.append(exc)
            self._n -= 1
            if self._n == 0:
                self._cv.notify_all()

    def wait(self) -> None:
        with self._cv:
            while self._n:
                self._cv.wait()
        if self.errors:
            # Workers that stopped because another failed raise _Aborted; report the cause.
            real = [e for e in self.errors if not isinstance(e, _Aborted)]
            raise (real or self.errors)[0]


class _Worker(threading.Thread):
    def __init__(self, group: int, index: int, cpu_node: int, policy: str, ready: _Latch):
        super().__init__(name=f"numamem-g{group}-w{index}", daemon=True)
        self.group, self.index = group, index
        self.cpu_node, self.policy = cpu_node, policy
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._ready = ready

    def run(self) -> None:
        try:
            # The binding lives as long as the thread: its CPUs are the node's, and with policy
            # "bind" even stray allocations (Python objects, NumPy temporaries) land on the node.
            bind_thread(self.cpu_node, self.policy)
        except BaseException as exc:  # reported by WorkerTeam.__init__
            self._ready.done(exc)
            return
        self._ready.done(None)
        while True:
            job = self.jobs.get()
            if job is None:
                return
            fn, latch = job
            err = None
            # CPU time of the thread (not wall time): on a shared machine it leaves out the time
            # the scheduler gave to other processes.
            t0 = time.thread_time()
            try:
                fn(self.group, self.index)
            except BaseException as exc:  # handed to the thread waiting on the latch
                err = exc
            # Drop the job before waiting for the next: a bound method would keep its executor
            # (and its arenas) alive while the thread idles.
            del job, fn
            latch.done(err, time.thread_time() - t0)
            del latch, err


class WorkerTeam:
    """Per group (a plan node), worker threads pinned to one physical node's CPUs.

    Parameters
    ----------
    cpu_nodes : sequence of int
        For each group, the physical node whose CPUs its workers run on.
    workers : sequence of int
        Number of workers of each group.
    policy : {"bind", "local", "preferred"}
        Memory policy of the workers (see :func:`numamem.bind_thread`); ``"local"`` behaves like
        the default first-touch policy on the node's CPUs.

    Raises
    ------
    ValueError
        If a node cannot run threads (no such node, no CPUs, not allowed).
    """

    def __init__(self, cpu_nodes: Sequence[int], workers: Sequence[int], policy: str = "bind"):
        self.sizes = [int(w) for w in workers]
        ready = _Latch(sum(self.sizes))
        self.workers = [[_Worker(g, i, n, policy, ready) for i in range(w)]
                        for g, (n, w) in enumerate(zip(cpu_nodes, self.sizes))]
        for team in self.workers:
            for t in team:
                t.start()
        try:
            ready.wait()
        except BaseException:
            self.close()
            raise

    def run(self, fn: Callable[[int, int], Any], groups: Iterable[int] | None = None) -> float:
        """Call ``fn(group, worker)`` on every worker (of ``groups``) and wait for all of them.

        Returns
        -------
        float
            CPU seconds the workers spent in the calls (summed over threads).

        Raises
        ------
        BaseException
            The first exception a call raised (after every call has returned).
        """
        chosen = range(len(self.workers)) if groups is None else list(groups)
        n = sum(self.sizes[g] for g in chosen)
        latch = _Latch(n)
        for g in chosen:
            for t in self.workers[g]:
                t.jobs.put((fn, latch))
        latch.wait()
        return latch.cpu

    def close(self) -> None:
        """Stop and join every worker (idempotent)."""
        for team in self.workers:
            for t in team:
                if t.is_alive():
                    t.jobs.put(None)
        for team in self.workers:
            for t in team:
                if t.is_alive():
                    t.join()


# ================================================================================= accounting
def _page_size_of(a: np.ndarray) -> int:
    reg = _owner(a)
    size = getattr(reg, "page_size", None) if reg is not None else None
    return int(size) if size else _topology.topology(refresh=False).base_page_size


def bytes_by_node(view: np.ndarray) -> dict[int, int]:
    """Bytes of the elements of ``view`` on each NUMA node, from the kernel's page table.

    Only the bytes of the elements count (a strided view is decomposed into contiguous runs), so
    two views of one page count their own parts. Pages not faulted in count under node ``-1``.

    Parameters
    ----------
    view : ndarray
        Any array or view (numamem or NumPy memory).

    Returns
    -------
    dict of int to int

    Examples
    --------
    >>> import numamem, numpy as np
    >>> a = numamem.zeros((64, 1024), np.float32, node=0)
    >>> bytes_by_node(a[:, :16])
    {0: 4096}
    """
    a = np.asarray(view)
    if a.size == 0:
        return {}
    if any(s < 0 for s in a.strides):  # not produced by the executors; normalise by flipping
        a = a[tuple(slice(None, None, -1) if s < 0 else slice(None) for s in a.strides)]
    nodes = _page_nodes(a).astype(np.int64)
    nodes[nodes < 0] = -1
    page = _page_size_of(a)
    low = int(np.lib.array_utils.byte_bounds(a)[0])
    base = low - low % page
    # Runs: the longest C-contiguous suffix of axes is one run per index of the other axes.
    k, run = a.ndim, a.itemsize
    while k > 0 and (a.shape[k - 1] == 1 or a.strides[k - 1] == run):
        run *= a.shape[k - 1]
        k -= 1
    offs = np.zeros(1, dtype=np.int64)
    for ax in range(k):
        offs = (offs[:, None] + np.arange(a.shape[ax], dtype=np.int64) * a.strides[ax]).ravel()
    starts = a.ctypes.data - base + offs
    ends = starts + run
    padded = np.append(nodes, -9)  # an end exactly on the last page boundary indexes past the end
    out: dict[int, int] = {}
    # (not np.unique: inside the QEMU-emulated guests of the test tier, NumPy's unique was seen
    # returning wrong results while sorting stayed right)
    for n in sorted(set(nodes.tolist())):
        on = padded == n
        cum = np.concatenate(([0], np.cumsum(on[:-1], dtype=np.int64) * page))

        def upto(x, on=on, cum=cum):
            p = x // page
            return cum[p] + (x - p * page) * on[p]

        total = int((upto(ends) - upto(starts)).sum())
        if total:
            out[int(n)] = total
    return out


def _histogram(arrays: Iterable[np.ndarray]) -> dict[int, int]:
    hist: dict[int, int] = {}
    for a in arrays:
        if a is None or a.size == 0:
            continue
        status = _page_nodes(a).astype(np.int64)
        counts = np.bincount(np.maximum(status, -1) + 1)  # index 0: pages with no node (errno)
        for v in np.flatnonzero(counts).tolist():
            hist[v - 1] = hist.get(v - 1, 0) + int(counts[v])
    return dict(sorted(hist.items()))


class _Traffic:
    """Bytes read per layer, as ``{(src_memory_node, reader_node): bytes}``."""

    def __init__(self, steps: int):
        self.layers: list[dict[tuple[int, int], int]] = [dict() for _ in range(steps)]

    def add(self, step: int, reader: int, counts: Mapping[int, int]) -> None:
        d = self.layers[step]
        for src, nbytes in counts.items():
            d[src, reader] = d.get((src, reader), 0) + nbytes

    def summary(self) -> dict[str, Any]:
        local = sum(b for d in self.layers for (s, r), b in d.items() if s == r)
        remote = sum(b for d in self.layers for (s, r), b in d.items() if s != r)
        per_node: dict[str, dict[str, int]] = {}
        for d in self.layers:
            for (s, r), b in d.items():
                e = per_node.setdefault(str(r), {"local_bytes": 0, "remote_bytes": 0})
                e["local_bytes" if s == r else "remote_bytes"] += b
        return {"local_bytes": local, "remote_bytes": remote, "per_node": per_node,
                "layers": [{"local_bytes": sum(b for (s, r), b in d.items() if s == r),
                            "remote_bytes": sum(b for (s, r), b in d.items() if s != r),
                            "pairs": [[s, r, b] for (s, r), b in sorted(d.items())]} for d in self.layers]}


# ================================================================================= shared set-up
def _region_cut(region, origin) -> tuple[slice, ...]:
    return tuple(slice(a - o, b - o) for (a, b), o in zip(region, origin))


def _overlap(r1, r2):
    out = []
    for (a0, a1), (b0, b1) in zip(r1, r2):
        lo, hi = max(a0, b0), min(a1, b1)
        if hi <= lo:
            return None
        out.append((lo, hi))
    return tuple(out)


def _contains(outer, inner) -> bool:
    return all(a0 <= b0 and b1 <= a1 for (a0, a1), (b0, b1) in zip(outer, inner))


def _split_range(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    n = hi - lo
    parts = max(1, min(parts, n))
    return [(lo + n * i // parts, lo + n * (i + 1) // parts) for i in range(parts)]


def _sub_blocks(op, shapes, attrs, out_shape, block: K.Block, whole: bool, workers: int,
                itemsize: int = 4) -> list[K.Block]:
    """Cut one node's block among ``workers`` along one output axis.

    A block restricted along its axis is cut along that axis (the kernels take one axis per
    call). A whole-tensor block may be cut along any axis the op splits: the axis whose pieces
    read the fewest input bytes in total is taken (a small-batch dense layer cut by rows would
    have every worker stream the whole weight; cut by columns each reads its half), preferring,
    among near-equal choices, pieces that are C-contiguous (no staging copy for BLAS).
    """
    if workers <= 1 or block.length == 0:
        return [block]
    if not whole:
        if block.length >= 2 and K.splittable(op, shapes, attrs, block.axis):
            return [K.Block(block.axis, a, b) for a, b in _split_range(block.start, block.stop, workers)]
        return [block]
    cands = [k for k in range(len(out_shape)) if out_shape[k] >= 2 and K.splittable(op, shapes, attrs, k)]
    if not cands:
        return [block]
    best = None
    for k in cands:
        pieces = [K.Block(k, a, b) for a, b in _split_range(0, out_shape[k], workers)]
        read = 0
        for pc in pieces:
            for r in K.input_regions(op, shapes, attrs, pc):
                if r is not None:
                    read += math.prod(b - a for a, b in r)
        contiguous = all(out_shape[j] == 1 for j in range(k))
        # Reading bytes costs more than a strided write of the output; count the output copy
        # of non-contiguous pieces (matmul-based ops only) as one more pass over the output.
        cost = read + (0 if contiguous or op not in _CONTIGUOUS_OUT else 2 * math.prod(out_shape))
        key = (cost * (1.0 if len(pieces) >= workers else 1.5), not contiguous, k)
        if best is None or key < best[0]:
            best = (key, pieces)
    return best[1]


@dataclass
class _Group:
    """One plan node: where its memory is and whose CPUs compute its blocks."""

    plan_node: int
    mem_node: int
    cpu_node: int
    workers: int


def _resolve_groups(plan: Plan, node_map: Mapping[int, int] | None, workers: Any) -> list[_Group]:
    topo = _topology.topology(refresh=False)
    mapping = {n: n for n in plan.nodes} if node_map is None else {int(k): int(v) for k, v in node_map.items()}
    groups = []
    for p in plan.nodes:
        if p not in mapping:
            raise ValueError(f"node_map does not say where plan node {p} goes")
        m = mapping[p]
        if m not in topo.node_ids:
            raise ValueError(f"node {m} does not exist on this machine (nodes: {list(topo.node_ids)})")
        info = topo.node(m)
        if not info.has_memory:
            raise ValueError(f"node {m} has no memory")
        if m not in topo.allowed_nodes:
            raise ValueError(f"node {m} is not allowed by this process's cpuset")
        if info.has_cpus and set(info.cpus) & set(topo.allowed_cpus):
            c = m
        else:  # a memory-only node (CXL-like): its blocks are computed by the nearest CPU node
            cands = [n.id for n in topo.nodes if n.has_cpus and set(n.cpus) & set(topo.allowed_cpus)]
            if not cands:
                raise ValueError("no node with CPUs this process may use")
            c = min(cands, key=lambda n: (topo.distance(m, n), n))
        groups.append(_Group(p, m, c, 0))
    # Default: the CPUs of each physical node shared evenly by the groups computing on it.
    for g in groups:
        if workers is None:
            cpus = len(set(topo.node(g.cpu_node).cpus) & set(topo.allowed_cpus))
            sharing = sum(1 for h in groups if h.cpu_node == g.cpu_node)
            g.workers = max(1, cpus // sharing)
        elif isinstance(workers, Mapping):
            g.workers = int(workers.get(g.plan_node, 1))
        else:
            g.workers = int(workers)
        if g.workers < 1:
            raise ValueError(f"workers must be >= 1, got {g.workers} for node {g.plan_node}")
    return groups


@dataclass
class _NodeWork:
    """One node's part of one layer: its node-level block, the regions it reads, worker pieces."""

    block: K.Block
    whole: bool
    regions: list  # node-level region of each operand (None: not read)
    subs: list[list[tuple[K.BoundKernel, tuple[slice, ...]]]]  # per worker: (kernel, out index in block)
    out_block: Any  # plan Block of the output


def _layer_work(plan: Plan, graph: Graph, groups: list[_Group]) -> list[dict[int, _NodeWork]]:
    """For every layer, the work of each group: blocks as planned, cut among the group's workers."""
    index = {g.plan_node: i for i, g in enumerate(groups)}
    work: list[dict[int, _NodeWork]] = []
    for layer in graph.layers:
        out_name = layer.outputs[0]
        shapes = [graph.tensors[n].shape for n in layer.inputs]
        out_shape = tuple(graph.tensors[out_name].shape)
        dtype = graph.tensor_dtype(out_name)
        per: dict[int, _NodeWork] = {}
        for b in plan.blocks_of(out_name):
            g = index[b.node]
            whole = b.slice is None or (b.slice.start == 0 and b.slice.stop == out_shape[b.slice.axis])
            blk = K.Block(0, 0, out_shape[0]) if b.slice is None else K.Block(b.slice.axis, b.slice.start, b.slice.stop)
            if whole:
                blk = K.Block(0, 0, out_shape[0]) if out_shape else blk
            node_k = K.bind(layer.op, shapes, layer.attrs, blk, dtype)
            origin = [0] * len(out_shape) if whole else [blk.start if k == blk.axis else 0 for k in range(len(out_shape))]
            subs: list[list] = [[] for _ in range(groups[g].workers)]
            pieces = _sub_blocks(layer.op, shapes, layer.attrs, out_shape, blk, whole, groups[g].workers)
            for w, sb in enumerate(pieces):
                k = K.bind(layer.op, shapes, layer.attrs, sb, dtype)
                cut = tuple(slice(sb.start - origin[ax], sb.stop - origin[ax]) if ax == sb.axis else slice(None)
                            for ax in range(len(out_shape)))
                subs[w].append((k, cut))
            if g in per:
                raise ValueError(f"plan puts two blocks of {out_name!r} on node {b.node}")
            per[g] = _NodeWork(blk, whole, list(node_k.regions), subs, b)
        work.append(per)
    return work


def _check_tensors(graph: Graph, given: Mapping[str, Any], names: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """Every tensor of ``names`` from ``given``, with its shape checked and cast to its dtype."""
    out = {}
    for n in names:
        if n not in given:
            raise ValueError(f"{what} {n!r} is missing")
        a = np.asarray(given[n])
        shape = tuple(graph.tensors[n].shape)
        if a.shape != shape:
            raise ValueError(f"{what} {n!r} has shape {list(a.shape)}, the graph needs {list(shape)}")
        dt = np.dtype(graph.tensor_dtype(n))
        if a.dtype != dt:
            if dt.kind in "iu" and a.dtype.kind not in "iu":
                raise ValueError(f"{what} {n!r} has dtype {a.dtype}, the graph needs {dt}")
            a = a.astype(dt)
        out[n] = a
    return out


# ================================================================================= planned mode
class _Sub:
    """One kernel call of one worker, every array bound at set-up."""

    __slots__ = ("kernel", "inputs", "out", "tmp", "scratch")

    def __init__(self, kernel, inputs, out, tmp, scratch):
        self.kernel, self.inputs, self.out, self.tmp, self.scratch = kernel, inputs, out, tmp, scratch

    def __call__(self) -> None:
        if self.tmp is None:
            self.kernel(self.inputs, self.out, self.scratch)
        else:  # a strided piece of a matmul-based op: BLAS writes a contiguous buffer, then one copy
            self.kernel(self.inputs, self.tmp, self.scratch)
            np.copyto(self.out, self.tmp)


@dataclass
class _Task:
    step: int
    deps: list[tuple[int, int]]
    gathers: list[list[tuple[np.ndarray, np.ndarray]]]
    subs: list[list[_Sub]]
    reads: list[tuple[int, list[np.ndarray]]] = field(default_factory=list)  # (step, source views)

    @property
    def has_gathers(self) -> bool:
        return any(self.gathers)


class _Aborted(Exception):
    pass


class _ExecutorBase:
    """What every mode's executor shares: one step per call of ``run``, a worker team to close,
    and use as a context manager. Subclasses provide ``set_inputs``, ``step`` and ``outputs``."""

    _team: "WorkerTeam | None" = None

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Set the inputs, run one step and return the graph outputs (fresh arrays)."""
        self.set_inputs(inputs)
        self.step()
        return self.outputs()

    def close(self) -> None:
        """Stop the workers and drop the executor's memory references (idempotent)."""
        self._closed = True
        if self._team is not None:
            self._team.close()
            self._team = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Executor(_ExecutorBase):
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
        graph = graph if graph is not None else plan.source
        if graph is None:
            raise ValueError("the executor needs the plan's graph (pass graph=)")
        self.plan, self.graph = plan, graph
        self.groups = _resolve_groups(plan, node_map, workers)
        self._gindex = {g.plan_node: i for i, g in enumerate(self.groups)}
        self._team: WorkerTeam | None = None
        self._closed = False
        self._inputs: dict[str, np.ndarray] | None = None
        self.layer_seconds: list[float] = [0.0] * len(graph.layers)
        self.cpu_seconds = 0.0
        try:
            self._materialise()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ set-up
    def _materialise(self) -> None:
        plan, graph, groups = self.plan, self.graph, self.groups
        # Arenas: each on its node, page-aligned so every page belongs to one node's blocks.
        self.arenas: list[np.ndarray | None] = []
        for g in groups:
            a = plan.arena(g.plan_node)
            self.arenas.append(_nm_empty(max(a.size, 1), np.uint8, node=g.mem_node, align="page")
                               if a.size else None)
        # A view per block.
        self._block_arrays: dict[str, list[tuple[Any, np.ndarray, tuple[int, ...], tuple]]] = {}
        for b in plan.blocks:
            idx = plan.block_index(b)
            shape = tuple(s.stop - s.start for s in idx)
            dt = np.dtype(graph.tensor_dtype(b.tensor))
            arena = self.arenas[self._gindex[b.node]]
            arr = arena[b.offset: b.offset + b.size].view(dt).reshape(shape)
            region = tuple((s.start, s.stop) for s in idx)
            self._block_arrays.setdefault(b.tensor, []).append((b, arr, tuple(r[0] for r in region), region))
        for v in self._block_arrays.values():
            v.sort(key=lambda e: e[0].index)
        self._work = _layer_work(plan, graph, groups)
        self._producer = {}
        for step, layer in enumerate(graph.layers):
            for o in layer.outputs:
                self._producer[o] = step
        self._build_tasks()
        self._team = WorkerTeam([g.cpu_node for g in groups], [g.workers for g in groups], policy="bind")
        weakref.finalize(self, self._team.close)  # an executor dropped without close() stops its threads
        self._barriers = [threading.Barrier(g.workers) for g in groups]
        self._cv = threading.Condition()
        self._progress = [-2] * len(groups)
        self._aborted = False
        self._times = [[(0.0, 0.0)] * len(t) for t in self._tasks]

    def _source(self, tensor: str, region, g: int):
        """(array, origin) holding ``region`` of ``tensor`` for group ``g``, or None if it spans blocks."""
        entries = self._block_arrays[tensor]
        if entries[0][0].slice is None:  # replicas: the one on this node if any
            mine = [e for e in entries if self._gindex[e[0].node] == g]
            e = (mine or entries)[0]
            return e, e[1], e[2]
        hits = [e for e in entries if _overlap(e[3], region) is not None]
        if len(hits) == 1 and _contains(hits[0][3], region):
            return hits[0], hits[0][1], hits[0][2]
        return None

    def _build_tasks(self) -> None:
        graph, groups = self.graph, self.groups
        G = len(groups)
        tasks: list[list[_Task]] = [[] for _ in range(G)]
        # reads_of[q][p]: steps at which group q reads memory of group p (p != q).
        reads_of: list[dict[int, list[int]]] = [dict() for _ in range(G)]
        staging_need = [0] * G
        scratch_need = [0] * G
        built = []  # (g, step, task, pending staging specs)
        for step, per in enumerate(self._work):
            layer = graph.layers[step]
            out_name = layer.outputs[0]
            for g, nw in per.items():
                deps: dict[int, int] = {}
                stage_specs = []  # (operand index, region, dtype)
                sources: list[Any] = []
                reads: list[np.ndarray] = []
                for i, (name, region) in enumerate(zip(layer.inputs, nw.regions)):
                    if region is None:
                        sources.append(None)
                        continue
                    src = self._source(name, region, g)
                    holders = set()
                    if src is not None:
                        entry, arr, origin = src
                        holders.add(self._gindex[entry[0].node])
                        sources.append((arr, origin))
                        reads.append(arr[_region_cut(region, origin)])
                    else:
                        pieces = []
                        for (b, arr, origin, breg) in self._block_arrays[name]:
                            ov = _overlap(breg, region)
                            if ov is not None:
                                pieces.append((ov, arr[_region_cut(ov, origin)]))
                                holders.add(self._gindex[b.node])
                                reads.append(arr[_region_cut(ov, origin)])
                        stage_specs.append((i, region, np.dtype(graph.tensor_dtype(name)), pieces))
                        sources.append("stage")
                    for h in holders:
                        if h != g:
                            reads_of[g].setdefault(h, []).append(step)
                            if name in self._producer:
                                deps[h] = max(deps.get(h, -1), self._producer[name])
                            elif graph.tensors[name].role == "input":
                                deps[h] = max(deps.get(h, -2), -1)
                built.append((g, step, nw, deps, stage_specs, sources, reads, out_name))
        # Staging buffers and scratch sizes, then the arrays, then the tasks.
        stage_layout = {}
        for (g, step, nw, deps, stage_specs, sources, reads, out_name) in built:
            off = 0
            lay = []
            for (i, region, dt, pieces) in stage_specs:
                nbytes = math.prod(b - a for a, b in region) * dt.itemsize
                lay.append((i, region, dt, pieces, off))
                off += _round_up(nbytes)
            stage_layout[g, step] = lay
            staging_need[g] = max(staging_need[g], off)
            for wsubs in nw.subs:
                for k, cut in wsubs:
                    need = k.scratch_bytes
                    if self.graph.layers[step].op in _CONTIGUOUS_OUT and not _cut_contiguous(nw, k, cut, self.graph, out_name):
                        need = _round_up(need) + _round_up(math.prod(k.out_shape) * np.dtype(
                            graph.tensor_dtype(out_name)).itemsize) + _ALIGN
                    scratch_need[g] = max(scratch_need[g], need)
        self.staging = [(_nm_empty(staging_need[g] + _ALIGN, np.uint8, node=groups[g].mem_node)
                         if staging_need[g] else None) for g in range(G)]
        self.scratch = [[(_nm_empty(scratch_need[g] + _ALIGN, np.uint8, node=groups[g].mem_node)
                          if scratch_need[g] else None) for _ in range(groups[g].workers)] for g in range(G)]
        for (g, step, nw, deps, stage_specs, sources, reads, out_name) in built:
            W = groups[g].workers
            stage_arrays = {}
            gathers: list[list] = [[] for _ in range(W)]
            buf = self.staging[g]
            n_piece = 0
            for (i, region, dt, pieces, off) in stage_layout[g, step]:
                base = (-buf.ctypes.data) % _ALIGN
                shape = tuple(b - a for a, b in region)
                nbytes = math.prod(shape) * dt.itemsize
                st = buf[base + off: base + off + nbytes].view(dt).reshape(shape)
                origin = tuple(a for a, _ in region)
                stage_arrays[i] = (st, origin)
                for ov, src in pieces:
                    gathers[n_piece % W].append((st[_region_cut(ov, origin)], src))
                    n_piece += 1
            out_entry = [e for e in self._block_arrays[out_name] if e[0] is nw.out_block][0]
            out_arr = out_entry[1]
            if nw.whole and out_arr.shape != tuple(self.graph.tensors[out_name].shape):
                raise AssertionError("whole block with a partial array")
            subs: list[list[_Sub]] = [[] for _ in range(W)]
            for w, wsubs in enumerate(nw.subs):
                scratch = self.scratch[g][w]
                for k, cut in wsubs:
                    ins = []
                    for i, (src, kr) in enumerate(zip(sources, k.regions)):
                        if kr is None or src is None:
                            ins.append(None)
                        elif src == "stage":
                            st, origin = stage_arrays[i]
                            ins.append(st[_region_cut(kr, origin)])
                        else:
                            arr, origin = src
                            ins.append(arr[_region_cut(kr, origin)])
                    out = out_arr[cut]
                    tmp = None
                    if k.op in _CONTIGUOUS_OUT and not out.flags.c_contiguous:
                        raw = scratch.view(np.uint8)
                        start = (-raw.ctypes.data) % _ALIGN
                        dt = out.dtype
                        nbytes = math.prod(k.out_shape) * dt.itemsize
                        tmp = raw[start: start + nbytes].view(dt).reshape(k.out_shape)
                        raw2 = raw[start + _round_up(nbytes):]
                        scratch_for_k = raw2 if k.scratch_bytes else None
                    else:
                        scratch_for_k = scratch if k.scratch_bytes else None
                    subs[w].append(_Sub(k, ins, out, tmp, scratch_for_k))
            # WAR: before overwriting memory of this group, wait for other groups that read it at
            # an earlier step (the plan reuses bytes whose live range ended at that step).
            for q in range(G):
                if q == g:
                    continue
                earlier = [s for s in reads_of[q].get(g, []) if s < step]
                if earlier:
                    deps[q] = max(deps.get(q, -2), max(earlier))
            task = _Task(step, sorted(deps.items()), gathers, subs, [(step, reads)])
            tasks[g].append(task)
        # Input task first: each group writes the input blocks it holds.
        self._input_blocks = [[e for name in self.graph.inputs for e in self._block_arrays[name]
                               if self._gindex[e[0].node] == g] for g in range(G)]
        self._tasks = tasks
        self._reads = [[(t.step, t.reads[0][1]) for t in ts] for ts in tasks]

    # ------------------------------------------------------------------ running
    def load_weights(self, weights: Mapping[str, Any]) -> None:
        """Write every weight into its blocks, each block by a worker of the block's node.

        Raises
        ------
        ValueError
            Naming a weight that is missing or mis-shaped.
        """
        ws = _check_tensors(self.graph, weights, self.graph.weights, "weight")
        jobs: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in self.groups]
        for name in self.graph.weights:
            for (b, arr, origin, region) in self._block_arrays[name]:
                jobs[self._gindex[b.node]].append((arr, ws[name][tuple(slice(a, c) for a, c in region)]))
        self._copy_by_workers(jobs)

    def _copy_by_workers(self, jobs):
        def fn(g, w):
            W = self.groups[g].workers
            for i, (dst, src) in enumerate(jobs[g]):
                if i % W == w:
                    np.copyto(dst, src)
        self._team.run(fn)

    def set_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Give the graph inputs of the next :meth:`step` calls (copied in at each step).

        Raises
        ------
        ValueError
            Naming an input that is missing or mis-shaped.
        """
        self._inputs = _check_tensors(self.graph, inputs, self.graph.inputs, "input")

    def _wait(self, deps) -> None:
        prog = self._progress
        with self._cv:
            while True:
                if self._aborted:
                    raise _Aborted()
                if all(prog[q] >= s for q, s in deps):
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

    def _program(self, g: int, w: int) -> None:
        W = self.groups[g].workers
        barrier = self._barriers[g]
        times = self._times[g]
        try:
            # Step -1: this node's blocks of the graph inputs (the plan may reuse their bytes
            # later in the pass, so they are written at every step).
            for i, (b, arr, origin, region) in enumerate(self._input_blocks[g]):
                if i % W == w:
                    np.copyto(arr, self._inputs[b.tensor][tuple(slice(a, c) for a, c in region)])
            if W > 1:
                barrier.wait()
            if w == 0:
                self._publish(g, -1)
            for ti, task in enumerate(self._tasks[g]):
                if task.deps:
                    self._wait(task.deps)
                t0 = time.perf_counter()
                if task.has_gathers:
                    for dst, src in task.gathers[w]:
                        np.copyto(dst, src)
                    if W > 1:
                        barrier.wait()
                for sub in task.subs[w]:
                    sub()
                if W > 1:
                    barrier.wait()
                if w == 0:
                    times[ti] = (t0, time.perf_counter())
                    self._publish(g, task.step)
        except _Aborted:
            raise
        except threading.BrokenBarrierError:
            raise _Aborted() from None
        except BaseException:
            self._abort()
            raise

    def step(self) -> float:
        """Run the graph once on the inputs of :meth:`set_inputs`; return the wall time in seconds.

        Per-layer times (from the first node starting the layer to the last finishing it) are
        left in :attr:`layer_seconds`, the CPU seconds of the workers and the calling thread in
        :attr:`cpu_seconds`.
        """
        if self._closed:
            raise ValueError("executor is closed")
        if self._inputs is None:
            raise ValueError("no inputs: call set_inputs() first")
        self._progress = [-2] * len(self.groups)
        self._aborted = False
        for b in self._barriers:
            b.reset()
        with blas_single_thread():
            t0 = time.perf_counter()
            c0 = time.thread_time()
            try:
                cpu = self._team.run(self._program)
            except _Aborted:
                raise RuntimeError("a worker failed and the step was aborted") from None
            elapsed = time.perf_counter() - t0
            self.cpu_seconds = cpu + time.thread_time() - c0
        spans: dict[int, list[float]] = {}
        for g, ts in enumerate(self._tasks):
            for task, (a, b) in zip(ts, self._times[g]):
                s = spans.setdefault(task.step, [a, b])
                s[0], s[1] = min(s[0], a), max(s[1], b)
        self.layer_seconds = [spans[i][1] - spans[i][0] if i in spans else 0.0 for i in range(len(self.graph.layers))]
        return elapsed

    def outputs(self) -> dict[str, np.ndarray]:
        """The graph outputs of the last step, assembled from their blocks into new arrays."""
        out = {}
        for name in self.graph.outputs:
            full = np.empty(self.graph.tensors[name].shape, self.graph.tensor_dtype(name))
            for (b, arr, origin, region) in self._block_arrays[name]:
                full[tuple(slice(a, c) for a, c in region)] = arr
                if b.slice is None:
                    break
            out[name] = full
        return out

    # ------------------------------------------------------------------ reporting
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
        t = _Traffic(len(self.graph.layers))
        for g, reads in enumerate(self._reads):
            reader = self.groups[g].cpu_node
            for step, views in reads:
                for v in views:
                    t.add(step, reader, bytes_by_node(v))
        return t.summary()

    def pages(self) -> dict[str, dict[str, int]]:
        """Where each arena's pages are: ``{memory node: {node: pages}}`` (from ``move_pages``).

        Plan nodes mapped onto one physical node add up under that node.
        """
        out: dict[str, dict[str, int]] = {}
        for g, a in zip(self.groups, self.arenas):
            if a is None:
                continue
            h = out.setdefault(str(g.mem_node), {})
            for n, c in _histogram([a]).items():
                h[str(n)] = h.get(str(n), 0) + c
        return out

    def extra_pages(self) -> dict[str, dict[str, int]]:
        """Pages of the per-worker scratch and per-node staging buffers, like :meth:`pages`."""
        out: dict[str, dict[str, int]] = {}
        for g, st, sc in zip(self.groups, self.staging, self.scratch):
            h = out.setdefault(str(g.mem_node), {})
            for n, c in _histogram([st] + list(sc)).items():
                h[str(n)] = h.get(str(n), 0) + c
        return out

    def memory(self) -> dict[str, int]:
        """Bytes reserved: arenas (and how much of them transparent huge pages back), per-worker
        scratch and per-node staging."""
        from numamem.inspect import placement

        return {
            "arena_bytes": sum(a.size for a in self.arenas if a is not None),
            "arena_thp_bytes": sum(placement(a).thp_bytes for a in self.arenas if a is not None),
            "scratch_bytes": sum(s.size for sc in self.scratch for s in sc if s is not None),
            "staging_bytes": sum(s.size for s in self.staging if s is not None),
        }

def _cut_contiguous(nw: _NodeWork, k: K.BoundKernel, cut, graph: Graph, out_name: str) -> bool:
    """Whether the piece ``cut`` of the node's block array is C-contiguous (no BLAS staging)."""
    shape = tuple(graph.tensors[out_name].shape)
    bshape = list(shape)
    if not nw.whole:
        bshape[nw.block.axis] = nw.block.length
    probe = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=tuple(bshape),
                                            strides=_c_strides(bshape))
    return probe[cut].flags.c_contiguous


def _c_strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(strides))


# ================================================================================= baselines
class BaselineExecutor(_ExecutorBase):
    """The same blocks on the same worker teams, with memory the way a framework gets it.

    Parameters
    ----------
    plan : Plan
        Only its split of the work (which node computes which block) is used.
    mode : {"first-touch", "interleave"}
    graph : Graph, optional
    node_map, workers
        As for :class:`Executor`.

    Notes
    -----
    Layers run one after another with a join of every worker in between (op-by-op, as a
    framework's intra-op thread pool does). Tensors are dropped after their last reader. Kernels
    get no scratch, so they allocate their own temporaries.
    """

    def __init__(self, plan: Plan, mode: str = "first-touch", graph: Graph | None = None, *,
                 node_map: Mapping[int, int] | None = None, workers: Any = None):
        if mode not in ("first-touch", "interleave"):
            raise ValueError(f"baseline mode must be 'first-touch' or 'interleave', not {mode!r}")
        graph = graph if graph is not None else plan.source
        if graph is None:
            raise ValueError("the executor needs the plan's graph (pass graph=)")
        self.mode, self.plan, self.graph = mode, plan, graph
        self.groups = _resolve_groups(plan, node_map, workers)
        self._team = None
        self._closed = False
        self._mem_nodes = sorted({g.mem_node for g in self.groups})
        self._work = _layer_work(plan, graph, self.groups)
        live = graph.lifetimes()
        self._last = {}
        keep = set(graph.weights) | set(graph.outputs)
        for name, (a, b) in live.items():
            if name not in keep:
                self._last.setdefault(b, []).append(name)
        self._weights: dict[str, np.ndarray] = {}
        self._inputs: dict[str, np.ndarray] | None = None
        self._env: dict[str, np.ndarray] = {}
        self.layer_seconds: list[float] = [0.0] * len(graph.layers)
        self.cpu_seconds = 0.0
        self.peak_tensor_bytes = 0
        self._traffic: _Traffic | None = None
        self._pages: dict[str, dict[int, int]] = {}
        # Workers: the nodes' CPUs, with the default (local, first-touch) memory policy.
        self._team = WorkerTeam([g.cpu_node for g in self.groups], [g.workers for g in self.groups],
                                policy="local")
        weakref.finalize(self, self._team.close)

    def _alloc(self, shape, dtype) -> np.ndarray:
        if self.mode == "first-touch":
            return np.empty(shape, dtype)
        return _nm_empty(shape, dtype, policy="interleave", nodes=self._mem_nodes)

    def load_weights(self, weights: Mapping[str, Any]) -> None:
        """Copy the weights in from the calling (loading) thread: first-touch or interleaved memory."""
        ws = _check_tensors(self.graph, weights, self.graph.weights, "weight")
        self._weights = {}
        for n, a in ws.items():
            dst = self._alloc(a.shape, a.dtype)
            np.copyto(dst, a)  # the loading thread touches every page first
            self._weights[n] = dst

    def set_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Give the graph inputs (copied once into the mode's memory by the calling thread)."""
        ins = _check_tensors(self.graph, inputs, self.graph.inputs, "input")
        self._inputs = {}
        for n, a in ins.items():
            dst = self._alloc(a.shape, a.dtype)
            np.copyto(dst, a)
            self._inputs[n] = dst

    def step(self, account: bool = False) -> float:
        """Run the graph once; with ``account`` also measure traffic and pages (slower, untimed use).

        Returns
        -------
        float
            Wall time in seconds (the CPU seconds of the workers and the calling thread are left
            in :attr:`cpu_seconds`, the per-layer wall times in :attr:`layer_seconds`).
        """
        if self._closed:
            raise ValueError("executor is closed")
        if self._inputs is None:
            raise ValueError("no inputs: call set_inputs() first")
        graph = self.graph
        env = dict(self._weights)
        env.update(self._inputs)
        if account:
            self._traffic = _Traffic(len(graph.layers))
            self._pages = {}
            self.peak_tensor_bytes = 0
        layer_t = []
        cpu = 0.0
        with blas_single_thread():
            t_start = time.perf_counter()
            c0 = time.thread_time()
            for step, layer in enumerate(graph.layers):
                t0 = time.perf_counter()
                out_name = layer.outputs[0]
                out = self._alloc(graph.tensors[out_name].shape, graph.tensor_dtype(out_name))
                ins = [env[n] for n in layer.inputs]
                per = self._work[step]
                if account:
                    for g, nw in per.items():
                        for a, r in zip(ins, nw.regions):
                            if r is not None:
                                self._traffic.add(step, self.groups[g].cpu_node,
                                                  bytes_by_node(a[tuple(slice(lo, hi) for lo, hi in r)]))

                def fn(g, w, per=per, ins=ins, out=out):
                    nw = per.get(g)
                    if nw is None:
                        return
                    for k, cut in nw.subs[w]:
                        if nw.whole:
                            view = out[cut]
                        else:
                            view = out[tuple(slice(nw.block.start, nw.block.stop) if ax == nw.block.axis
                                             else slice(None) for ax in range(out.ndim))][cut]
                        k(ins, view, None)

                cpu += self._team.run(fn, groups=per.keys())
                env[out_name] = out
                if account:
                    # the most tensor memory held at once (weights, inputs, live activations and
                    # this output; not the kernels' temporaries)
                    self.peak_tensor_bytes = max(self.peak_tensor_bytes, sum(a.nbytes for a in env.values()))
                    for g, nw in per.items():
                        region = tuple(slice(nw.block.start, nw.block.stop) if (ax == nw.block.axis and not nw.whole)
                                       else slice(None) for ax in range(out.ndim))
                        h = self._pages.setdefault(str(self.groups[g].cpu_node), {})
                        for n, c in _histogram([out[region]]).items():
                            h[n] = h.get(n, 0) + c
                for name in self._last.get(step, ()):
                    env.pop(name, None)
                layer_t.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - t_start
            self.cpu_seconds = cpu + time.thread_time() - c0
        self.layer_seconds = layer_t
        self._outputs = {n: env[n] for n in graph.outputs}
        return elapsed

    def outputs(self) -> dict[str, np.ndarray]:
        """The graph outputs of the last step (copies)."""
        return {n: np.array(a) for n, a in self._outputs.items()}

    def traffic(self) -> dict[str, Any]:
        """Bytes read per layer by each node's workers, by memory node (from a ``step(account=True)``)."""
        if self._traffic is None:
            raise ValueError("no accounting yet: run step(account=True) first")
        return self._traffic.summary()

    def pages(self) -> dict[str, dict[str, int]]:
        """Pages of the output blocks each node's workers wrote, by the node they are on.

        Counted over every layer of the accounting step (``{writer node: {node: pages}}``), with
        the weights and inputs under ``"weights"`` and ``"inputs"``.
        """
        out = {k: {str(n): c for n, c in v.items()} for k, v in self._pages.items()}
        out["weights"] = {str(n): c for n, c in _histogram(self._weights.values()).items()}
        out["inputs"] = {str(n): c for n, c in _histogram((self._inputs or {}).values()).items()}
        return out

    def close(self) -> None:
        """Stop the workers and drop the arrays (idempotent)."""
        super().close()
        self._weights, self._inputs, self._env = {}, None, {}


def make_executor(mode: str, plan: Plan, graph: Graph | None = None, **kw) -> Executor | BaselineExecutor:
    """The executor of ``mode`` (one of :data:`MODES`)."""
    if mode == "planned":
        return Executor(plan, graph, **kw)
    if mode in ("first-touch", "interleave"):
        return BaselineExecutor(plan, mode, graph, **kw)
    raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
