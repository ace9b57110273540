"""What the engine adapters share: nodes and their CPUs, batch splits, node-bound worker threads,
weight arenas, and the process's anonymous memory per node from ``/proc/self/numa_maps``.

The worker threads are a minimal team of their own (one thread per node, bound by
:func:`numamem.bind_thread` before its first call): engines need nothing more than "run this call
on node k's thread", and the runtime's worker team is not a public API. A call is handed over
with a queue and a lock, the lightest wake-up Python has (``concurrent.futures`` costs a third
more per call); a call whose result the calling thread would only wait for runs on the calling
thread itself when that thread already puts its work on the node (:func:`caller_on_node`).
"""
from __future__ import annotations

import _thread
import importlib
import os
import queue
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from numamem import _kernel, _topology
from numamem.arrays import empty
from numamem.errors import PlacementWarning
from numamem.inspect import placement
from numamem.threads import THREAD_POLICIES, bind_thread

__all__ = ["NodeShare", "resolve_nodes", "split_counts", "NodeWorker", "Pending", "run_on_all",
           "caller_on_node", "process_on_node", "PlacementWarning", "WeightArena", "place_weights",
           "anon_bytes_per_node", "delta", "require"]

#: Alignment of each tensor carved from a weight arena (a cache line; what SIMD loads want).
ARENA_ALIGN = 64
#: How a weight arena may be placed: on the node (verified), preferably there, or by first touch.
WEIGHT_POLICIES = ("bind", "preferred", "local")


def require(module: str, extra: str):
    """Import ``module`` or raise ``ImportError`` naming the numamem extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is not installed; install it with "
                          f"`pip install numamem[{extra}]`") from exc


@dataclass(frozen=True)
class NodeShare:
    """One node an engine runs on: its id, the CPUs its thread may use, its thread count."""

    node: int
    cpus: tuple[int, ...]
    threads: int


def resolve_nodes(nodes: Sequence[int] | None, threads_per_node: Any = None) -> list[NodeShare]:
    """Check ``nodes`` (default: every allowed node with CPUs and memory) and size their teams.

    Parameters
    ----------
    nodes : sequence of int, optional
    threads_per_node : int or mapping, optional
        Threads per node (default: the node's usable CPUs); a mapping gives them per node id.

    Raises
    ------
    ValueError
        Naming ``nodes`` or ``threads_per_node`` for a node that cannot run a replica here or a
        thread count that is not a positive int.
    """
    topo = _topology.topology(refresh=False)
    if nodes is None:
        nodes = [n for n in topo.memory_nodes() if topo.usable_cpus(n)]
        if not nodes:
            raise ValueError("no node has both memory and CPUs this process may use")
    else:
        nodes = list(nodes)
        if not nodes:
            raise ValueError("nodes must name at least one node")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"nodes={nodes}: a node is listed twice")
    shares = []
    for n in nodes:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"nodes: {n!r} is not an int node id")
        n = int(n)
        topo.check_memory_node(n, "nodes")
        cpus = tuple(sorted(topo.check_cpu_node(n, "nodes")))
        if threads_per_node is None:
            threads = len(cpus)
        elif isinstance(threads_per_node, dict):
            threads = threads_per_node.get(n, threads_per_node.get(str(n), len(cpus)))
        else:
            threads = threads_per_node
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads_per_node must be a positive int (node {n}: {threads!r})")
        shares.append(NodeShare(n, cpus, int(threads)))
    return shares


def split_counts(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` items in proportion to ``weights`` (largest remainder; sums to ``total``).

    >>> split_counts(10, [2, 1, 1])
    [5, 3, 2]
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, not {total}")
    # Plain Python, not NumPy: a split is made per run call, and on the handful of nodes a machine
    # has NumPy's per-call overhead (~15 us) was a visible part of a small batch's latency.
    w = [float(x) for x in weights]
    wsum = sum(w)
    if not w or any(x < 0 for x in w) or not wsum > 0:
        raise ValueError(f"weights must be non-negative with a positive sum, not {list(weights)}")
    if len(w) == 1:
        return [int(total)]
    exact = [total * x / wsum for x in w]
    counts = [int(e // 1) for e in exact]
    # Remainders go to the largest fractional parts; ties to the earlier node (stable sort).
    order = sorted(range(len(w)), key=lambda i: -(exact[i] - counts[i]))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


class NodeWorker:
    """One thread bound to a node (CPUs and memory policy) that runs the calls given to it.

    The binding is made once, in the thread, before any call: whatever the calls allocate is
    first-touched on the node, and threads they create (an engine's intra-op pool) inherit the
    CPU mask and the memory policy. When the kernel refuses the memory policy (``EPERM``: a
    container without ``CAP_SYS_NICE``, a seccomp filter) the thread keeps only its CPU mask
    and a :class:`PlacementWarning` says so; :attr:`binding` records what was obtained.

    Parameters
    ----------
    share : NodeShare
    policy : {"local", "preferred", "bind"}
        Memory policy of the thread. ``local`` (default) is first touch on the node's own CPUs:
        the node while it has room, never an OOM kill. ``bind`` makes any allocation past the
        node's capacity an OOM kill by the kernel.
    """

    def __init__(self, share: NodeShare, policy: str = "local"):
        if policy not in THREAD_POLICIES:
            raise ValueError(f"thread_policy must be one of {THREAD_POLICIES}, not {policy!r}")
        self.share = share
        self.policy = policy
        self.binding = "unbound"
        #: Whether the whole process can only run and allocate on this node (:func:`process_on_node`),
        #: read once: run() asks on every call, and the process's cpuset does not change under it.
        self.confined = process_on_node(share.node)
        self._holder: list = []
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        # The thread holds the queue, not the worker: a worker dropped without close() is
        # collected, and its finalizer ends the thread (as concurrent.futures does for its pools).
        self._thread = threading.Thread(target=_serve, args=(self._jobs,), name=f"numamem-node{share.node}",
                                        daemon=True)
        self._thread.start()
        self._stop = weakref.finalize(self, self._jobs.put, None)
        # Bind first, so that a binding error surfaces here and not at first use.
        try:
            self.call(self._bind)
        except BaseException:
            self.close()
            raise

    def _bind(self) -> None:
        try:
            self._holder.append(bind_thread(self.share.node, self.policy))
            self.binding = self.policy
        except PermissionError as exc:
            try:
                os.sched_setaffinity(0, self.share.cpus)
                self.binding = "cpus-only"
            except OSError:
                self.binding = "none"
            warnings.warn(f"node {self.share.node}: the kernel refused the thread's memory policy "
                          f"({exc}); running with {self.binding} binding, memory goes where first "
                          "touch puts it (see placement())", PlacementWarning, stacklevel=2)

    def submit(self, fn: Callable, *args, **kwargs) -> "Pending":
        """Run ``fn(*args, **kwargs)`` on the node's thread; ``.result()`` waits for it."""
        if self._closed:
            raise RuntimeError(f"the worker of node {self.share.node} is closed")
        job = Pending(fn, args, kwargs)
        self._jobs.put(job)
        return job

    def call(self, fn: Callable, *args, **kwargs):
        """Run ``fn`` on the node's thread and return its result (or raise its error)."""
        return self.submit(fn, *args, **kwargs).result()

    def caller_on_node(self) -> bool:
        """Whether the calling thread puts its work where this worker does (see :func:`caller_on_node`)."""
        return self.confined or caller_on_node(self.share, self.policy)

    def close(self) -> None:
        """Stop the thread (after the calls already given to it)."""
        if self._closed:
            return
        self._closed = True
        self._stop()
        if self._thread is not threading.current_thread():
            self._thread.join()


class Pending:
    """A call given to a :class:`NodeWorker`: ``result()`` waits for it and returns or raises.

    Completion is signalled by releasing a lock the submitter holds: one futex wake-up, where a
    ``concurrent.futures.Future`` takes a condition variable and its bookkeeping.
    """

    __slots__ = ("_fn", "_args", "_kwargs", "_lock", "_value", "_error")

    def __init__(self, fn: Callable, args: tuple, kwargs: dict):
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._value = self._error = None

    def _run(self) -> None:
        try:
            self._value = self._fn(*self._args, **self._kwargs)
        except BaseException as exc:  # handed to the waiter, raised there
            self._error = exc
        finally:
            self._fn = self._args = self._kwargs = None
            self._lock.release()

    def done(self) -> bool:
        """Whether the call has finished."""
        return not self._lock.locked()

    def result(self):
        """Wait for the call; return its value or raise its error."""
        if self._lock.locked():
            self._lock.acquire()
            self._lock.release()
        if self._error is not None:
            raise self._error
        return self._value


def _serve(jobs: queue.SimpleQueue) -> None:
    """A worker thread's loop: run each call given to it until ``None`` comes."""
    while True:
        job = jobs.get()
        if job is None:
            return
        job._run()


def caller_on_node(share: NodeShare, policy: str = "local") -> bool:
    """Whether work run by the calling thread lands where a :class:`NodeWorker` of ``share`` puts it.

    True when the calling thread may run only on the node's CPUs and its memory policy puts its
    new pages on the node: first touch (``default`` or ``local``) from those CPUs, or ``bind`` /
    ``preferred`` naming this node alone. A worker with the ``bind`` policy is matched only by
    ``bind`` to the node (the same refusal to spill elsewhere). Threads the caller created before
    it was bound (an OpenMP team) are not covered: see :func:`process_on_node`.
    """
    if process_on_node(share.node):
        return True  # no thread can work or allocate elsewhere (cheap: the cached topology)
    if not os.sched_getaffinity(0) <= set(share.cpus):
        return False
    mode, nodes = _kernel.thread_policy()
    if mode in ("bind", "preferred") and tuple(nodes) == (share.node,):
        return policy != "bind" or mode == "bind"
    return policy != "bind" and mode in ("default", "local")


def process_on_node(node: int) -> bool:
    """Whether every thread of the process, whatever its binding, runs and allocates on ``node``.

    True when the only node this process may place memory on is ``node`` and every CPU it may
    run on belongs to it (a one-node machine, or a cpuset of one node): then no thread, however
    it was made, can put work or memory anywhere else.
    """
    topo = _topology.topology(refresh=False)
    return topo.memory_nodes() == [node] and topo.allowed_cpus <= set(topo.node(node).cpus)


def run_on_all(workers: Sequence[NodeWorker], calls: Sequence[Callable | None],
               here: Callable[[NodeWorker], bool] | None = None) -> list:
    """Run ``calls[i]`` on ``workers[i]`` concurrently (``None``: nothing); results in order.

    When ``here(worker)`` is true for the worker of the last call, that call runs on the calling
    thread (after the others were handed over), which would otherwise only wait: no hand-off, no
    wake-up. ``here`` must only say yes when that keeps the placement (:func:`caller_on_node`).
    Every call is waited for before an error is raised, so no worker is still busy afterwards.
    """
    live = [i for i, c in enumerate(calls) if c is not None]
    if len(live) == 1:  # the whole batch on one node: nothing runs concurrently
        i = live[0]
        results = [None] * len(calls)
        results[i] = calls[i]() if here is not None and here(workers[i]) else workers[i].call(calls[i])
        return results
    last = live[-1] if live else -1
    inline = last >= 0 and here is not None and here(workers[last])
    pending: list = [None] * len(calls)
    for i, (w, c) in enumerate(zip(workers, calls)):
        if c is not None and not (inline and i == last):
            pending[i] = w.submit(c)
    results: list = [None] * len(calls)
    first_error: BaseException | None = None
    if inline:
        try:
            results[last] = calls[last]()
        except BaseException as exc:
            first_error = exc
    for i, p in enumerate(pending):
        if p is None:
            continue
        try:
            results[i] = p.result()
        except BaseException as exc:
            if first_error is None:
                first_error = exc
    if first_error is not None:
        raise first_error
    return results


class WeightArena:
    """Tensors carved from one numamem allocation on a node: one mapping, one verification.

    Each tensor starts on a multiple of :data:`ARENA_ALIGN` bytes; every carved array keeps the
    arena alive through its ``.base`` chain (numamem's ownership rule), so a weight lives as long
    as the last tensor or engine value that views it.

    Parameters
    ----------
    node : int
    specs : sequence of (shape, dtype)
        The tensors to make room for, in order.
    policy : str
        ``bind`` (default, verified or an exception) or ``preferred``; ``local`` is first touch
        by the thread that fills the arena.
    """

    def __init__(self, node: int, specs: Sequence[tuple[tuple[int, ...], Any]], policy: str = "bind"):
        if policy not in WEIGHT_POLICIES:
            raise ValueError(f"weight_policy must be one of {WEIGHT_POLICIES}, not {policy!r}")
        offsets, total = [], 0
        for shape, dtype in specs:
            total = -(-total // ARENA_ALIGN) * ARENA_ALIGN
            offsets.append(total)
            total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        self.node = node
        self.nbytes = total
        # "local" names no node: the pages land where the thread that first writes them runs.
        self.buffer = empty(max(total, 1), np.uint8, node=None if policy == "local" else node,
                            policy=policy, align="page")
        self._views = []
        for (shape, dtype), off in zip(specs, offsets):
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            self._views.append(self.buffer[off:off + nbytes].view(dtype).reshape(shape))

    def __getitem__(self, i: int) -> np.ndarray:
        return self._views[i]

    def __len__(self) -> int:
        return len(self._views)

    @property
    def data_bytes(self) -> int:
        """Bytes of the tensors themselves (``nbytes`` less the alignment padding)."""
        return sum(v.nbytes for v in self._views)

    def bytes_per_node(self) -> dict[int, int]:
        """Node -> bytes of the arena on that node, from the kernel (``move_pages``)."""
        if self.nbytes == 0:
            return {}
        return dict(placement(self.buffer[:self.nbytes]).bytes_per_node)


def place_weights(node: int, arrays: Sequence[np.ndarray], policy: str = "bind") -> WeightArena:
    """Copy ``arrays`` once each into a :class:`WeightArena` on ``node``.

    When the kernel refuses the memory policy (``PermissionError``), the arena is allocated
    with the ``local`` policy (first touch by the calling thread) and a :class:`PlacementWarning`
    says so.
    """
    specs = [(tuple(a.shape), a.dtype) for a in arrays]
    try:
        arena = WeightArena(node, specs, policy)
    except PermissionError as exc:
        warnings.warn(f"node {node}: the kernel refused to place weights ({exc}); they are placed "
                      "by first touch of the loading thread instead (see placement())",
                      PlacementWarning, stacklevel=2)
        arena = WeightArena(node, specs, "local")
    for dst, src in zip(arena, arrays):
        np.copyto(dst, src, casting="no")
    return arena


def anon_bytes_per_node(path: str = "/proc/self/numa_maps") -> dict[int, int]:
    """Node -> bytes of the process's anonymous memory there (mappings with no file behind them).

    Read from the kernel's ``numa_maps``: each ``N<node>=<pages>`` times the mapping's
    ``kernelpagesize_kB``. Heap, stacks, anonymous ``mmap`` (numamem's arrays included) count;
    file mappings (libraries, the model file) do not.
    """
    out: dict[int, int] = {}
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if any(f.startswith("file=") for f in fields[2:]):
            continue
        page_kb = 4
        counts = []
        for f in fields[2:]:
            if f.startswith("kernelpagesize_kB="):
                page_kb = int(f.split("=", 1)[1])
            elif f[:1] == "N" and "=" in f:
                node, pages = f[1:].split("=", 1)
                if node.isdigit():
                    counts.append((int(node), int(pages)))
        for node, pages in counts:
            out[node] = out.get(node, 0) + pages * page_kb * 1024
    return dict(sorted(out.items()))


def delta(after: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    """``after - before`` per node (negative where memory was given back), zeros left out."""
    keys = sorted(set(after) | set(before))
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)}
