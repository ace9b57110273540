"""NUMA-bound Dask workers: the preload (``dask_setup``), the worker plugin, and the report.

A worker is bound from the thread that runs its event loop. Linux copies a thread's CPU affinity
and memory policy to the threads it creates, and Dask creates its task threads from that thread
on first use, so binding it before the first task binds every task thread. numamem has no
process-wide binding yet, so threads that already run when the worker is bound (Dask's profiler,
the nanny's monitor) keep theirs; they do not touch task data.

NumPy's allocator choice (``numamem.on_node``) is a context variable, and Dask runs each task in a
copy of the context of the event-loop task that scheduled it. The preload sets it in the worker's
start-up task, from which every later task is scheduled, so tasks allocate from node ``k``'s
pool. A plugin added to a running worker cannot reach contexts copied before it came; there task
memory is placed by the task threads' kernel memory policy instead (first touch under ``bind``).
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field, replace

import click
import numpy as np
from distributed import Worker, get_worker
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.threadpoolexecutor import ThreadPoolExecutor

from numamem import _workerbind
from numamem.arrays import asarray
from numamem.inspect import migrate, placement
from numamem.pools import handler_name, on_node
from numamem._workerbind import NumaWorkerWarning, WorkerBinding

__all__ = ["dask_setup", "dask_teardown", "NumaWorkerPlugin", "WorkerReport", "report",
           "worker_node", "worker_binding", "resource_name", "NumaWorkerWarning", "WorkerBinding"]

logger = logging.getLogger("numamem.dask")

RESOURCE_PREFIX = "numa-"


def resource_name(node: int) -> str:
    """The worker resource that marks workers bound to ``node`` (``"numa-<node>"``)."""
    return f"{RESOURCE_PREFIX}{node}"


def resource_node(name: str) -> int | None:
    """Inverse of :func:`resource_name`: the node of a ``numa-<node>`` resource, else None."""
    if name.startswith(RESOURCE_PREFIX) and name[len(RESOURCE_PREFIX):].isdigit():
        return int(name[len(RESOURCE_PREFIX):])
    return None


@dataclass
class _Attached:
    """What numamem keeps per worker of this process (to answer, and to undo on close)."""

    binding: WorkerBinding
    group: str
    thread: object = None  # numamem.ThreadBinding of the event-loop thread
    allocator: object = None  # the on_node context manager left entered in the start-up task


_ATTACHED: dict[str, _Attached] = {}  # Worker.id -> what numamem did to it


def _group(worker: Worker) -> str:
    """Every Dask worker on this host shares one count of node claims, whatever its scheduler:
    two clusters on one machine spread over its nodes together."""
    return "dask"


def _attach(worker: Worker, nodes, policy: str, what: str) -> _Attached:
    """Bind the calling (event-loop) thread of ``worker`` and record it; warn for a plain worker."""
    if worker.id in _ATTACHED:
        return _ATTACHED[worker.id]
    others = {a.binding.node for a in _ATTACHED.values() if a.binding.bound}
    if others:
        # Workers of one process share its event loop thread: one binding for all, or none.
        binding = _workerbind.plain_worker(
            f"another worker of this process is already bound (node {sorted(others)}); "
            f"use processes=True so each worker has a process to bind")
        attached = _Attached(binding, _group(worker))
    else:
        nodes = _workerbind.parse_nodes(nodes, what)
        binding, thread = _workerbind.bind_worker_thread(nodes, _group(worker), policy, what)
        attached = _Attached(binding, _group(worker), thread)
    _ATTACHED[worker.id] = attached
    return attached


def _detach(worker: Worker) -> None:
    attached = _ATTACHED.pop(worker.id, None)
    if attached is None or not attached.binding.bound:
        return
    _workerbind.release_node(attached.group)
    if attached.thread is not None:
        try:
            attached.thread.restore()
        except RuntimeError:
            pass  # closed from another thread: the process is ending with the worker


def _resources_of(worker: Worker, binding: WorkerBinding) -> dict[str, float]:
    # As many units as task threads: every thread may run a task of its node at once.
    return {resource_name(binding.node): worker.state.nthreads} if binding.bound else {}


@click.command(name="numamem")
@click.option("--numamem-nodes", default="", show_default=False,
              help="Nodes to give workers, e.g. '0,1' or '0-3' (default: every node with CPUs and "
                   "memory, and no binding on a one-node machine).")
@click.option("--numamem-policy", type=click.Choice(_workerbind.POLICIES), default="bind",
              show_default=True, help="Memory policy: strictly the node, or preferably.")
@click.option("--numamem-allocator", type=click.Choice(_workerbind.ALLOCATORS), default="pool",
              show_default=True,
              help="NumPy memory in tasks: numamem's verified pool of the node (numamem.on_node), "
                   "or NumPy's allocator under the node's kernel memory policy.")
def dask_setup(worker, numamem_nodes: str, numamem_policy: str, numamem_allocator: str) -> None:
    """Preload entry point: ``dask worker SCHEDULER --preload numamem.dask [--numamem-nodes 0,1]``.

    Runs inside the worker's start, before it registers with the scheduler or runs a task: binds
    the worker to a node (CPUs and memory policy), makes NumPy allocations in its tasks come from
    that node's pool (``numamem.on_node``; with ``--numamem-allocator policy`` NumPy's own
    allocator under the node's kernel policy), and gives it the resource ``numa-<node>``.
    Synchronous on purpose: the allocator choice must be made in the start-up task's own context.
    """
    if not isinstance(worker, Worker):
        logger.warning("numamem.dask is a worker preload; ignored for %s", type(worker).__name__)
        return
    attached = _attach(worker, numamem_nodes, numamem_policy, "--numamem-nodes")
    if not attached.binding.bound:
        return
    if numamem_allocator == "pool":
        attached.allocator = on_node(attached.binding.node, numamem_policy)
        attached.allocator.__enter__()
    # Before registration: the scheduler learns the resource with the worker itself.
    for name, amount in _resources_of(worker, attached.binding).items():
        worker.state.total_resources[name] = amount
        worker.state.available_resources[name] = amount
    logger.info("worker %s bound to NUMA node %d (CPUs %s, policy %s)", worker.address,
                attached.binding.node, list(attached.binding.cpus), numamem_policy)


def dask_teardown(worker) -> None:
    """Preload exit point: release the worker's node claim and restore its thread."""
    if isinstance(worker, Worker):
        _detach(worker)


def _move_data(worker: Worker, node: int) -> int:
    """Put the NumPy arrays the worker holds in memory onto ``node``; return the bytes moved."""
    fast = getattr(worker.data, "fast", worker.data)  # a SpillBuffer's in-memory part; never unspill
    moved = 0
    for key, value in list(fast.items()):
        if not isinstance(value, np.ndarray) or value.dtype.hasobject or not value.size:
            continue
        if set(placement(value).bytes_per_node) <= {node}:
            continue
        try:
            migrate(value, node)  # numamem memory: moved in place
        except TypeError:
            worker.data[key] = asarray(value, node=node)  # other memory: copied
        moved += value.nbytes
    return moved


class NumaWorkerPlugin(WorkerPlugin):
    """Bind the workers of a running cluster: ``client.register_plugin(NumaWorkerPlugin())``.

    Does what the preload does (node, CPUs, memory policy, the ``numa-<node>`` resource), starts
    fresh task threads so they inherit the binding, and moves the arrays the worker already holds
    onto its node. Workers bound by the preload are left as they are.

    Parameters
    ----------
    nodes : str or sequence of int, optional
        As ``--numamem-nodes``.
    policy : {"bind", "preferred"}
    migrate : bool
        Move the arrays the worker holds onto its node (default True).
    """

    name = "numamem"

    def __init__(self, nodes=None, policy: str = "bind", migrate: bool = True):
        if policy not in _workerbind.POLICIES:
            raise ValueError(f"policy must be one of {_workerbind.POLICIES}, not {policy!r}")
        self.nodes = _workerbind.parse_nodes(nodes)
        self.policy = policy
        self.migrate = migrate

    async def setup(self, worker: Worker) -> None:
        previous = _ATTACHED.get(worker.id)
        if previous is not None and previous.binding.bound:
            return
        _ATTACHED.pop(worker.id, None)  # a plain worker (e.g. from the preload) may be bound now
        attached = _attach(worker, self.nodes, self.policy, "nodes")
        if not attached.binding.bound:
            return
        # Task threads created before now do not inherit the binding: replace them.
        old = worker.executors.get("default")
        if isinstance(old, ThreadPoolExecutor):
            worker.executors["default"] = ThreadPoolExecutor(
                worker.state.nthreads, thread_name_prefix="Dask-Default-Threads")
            old.shutdown(wait=False)
        if self.migrate:
            moved = _move_data(worker, attached.binding.node)
            attached.binding = replace(attached.binding, migrated_bytes=moved)
        await worker.set_resources(**_resources_of(worker, attached.binding))

    def teardown(self, worker: Worker) -> None:
        _detach(worker)


def worker_binding(dask_worker: Worker | None = None) -> WorkerBinding:
    """The binding of the worker running this task (or of ``dask_worker``, as ``client.run`` passes)."""
    worker = dask_worker if dask_worker is not None else _current_worker()
    attached = _ATTACHED.get(worker.id)
    return attached.binding if attached is not None else WorkerBinding(None, reason="numamem not loaded")


def worker_node(dask_worker: Worker | None = None) -> int | None:
    """The node of the worker running this task; None for a plain worker.

    Raises
    ------
    RuntimeError
        Outside a Dask worker.
    """
    return worker_binding(dask_worker).node


def _current_worker() -> Worker:
    try:
        return get_worker()
    except ValueError:
        raise RuntimeError("worker_node()/worker_binding() are for code running in a Dask worker "
                           "(a task, or client.run)") from None


# ---------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class WorkerReport:
    """One worker, as the kernel sees it.

    Attributes
    ----------
    address, name : str
    node : int or None
        The worker's node (None: plain worker); ``reason`` says why it is plain.
    cpus : tuple of int
        CPU affinity of a task thread.
    allocator : str
        NumPy allocator (NEP 49 handler) in tasks, e.g. ``numamem_node1_bind``.
    task_pages : dict
        Node -> pages of a fresh array a task allocated and touched (``move_pages``).
    data_bytes : dict
        Node -> bytes of the NumPy arrays the worker holds in memory.
    """

    address: str
    name: str
    node: int | None
    reason: str
    cpus: tuple[int, ...]
    allocator: str
    task_pages: dict
    data_bytes: dict = field(default_factory=dict)

    @property
    def remote_data_bytes(self) -> int:
        """Bytes of held arrays on another node than the worker's (all of them for a plain worker
        on a multi-node machine, none on a one-node machine)."""
        if self.node is None:
            nodes = set(self.data_bytes)
            return 0 if len(nodes) <= 1 else sum(self.data_bytes.values())
        return sum(b for n, b in self.data_bytes.items() if n != self.node)

    def to_dict(self) -> dict:
        return {"address": self.address, "name": self.name, "node": self.node, "reason": self.reason,
                "cpus": list(self.cpus), "allocator": self.allocator,
                "task_pages": {str(k): v for k, v in self.task_pages.items()},
                "data_bytes": {str(k): v for k, v in self.data_bytes.items()},
                "remote_data_bytes": self.remote_data_bytes}


def _probe_task() -> dict:
    return {"cpus": tuple(sorted(os.sched_getaffinity(0))),
            "allocator": handler_name(),
            "task_pages": _workerbind.probe_task_memory()}


def _held_data(dask_worker: Worker) -> dict:
    fast = getattr(dask_worker.data, "fast", dask_worker.data)
    binding = worker_binding(dask_worker)
    return {"name": str(dask_worker.name), "node": binding.node, "reason": binding.reason,
            "data_bytes": _workerbind.data_bytes_per_node(fast.values())}


def report(client=None) -> list[WorkerReport]:
    """Per worker of ``client`` (default: the current client): node, CPUs, and where task memory
    and held data really are, from the kernel. Each worker runs one small probe task."""
    if client is None:
        from distributed import default_client
        client = default_client()
    held = client.run(_held_data)
    token = uuid.uuid4().hex
    probes = {addr: client.submit(_probe_task, workers=[addr], allow_other_workers=False, pure=False,
                                  key=f"numamem-probe-{token}-{i}")
              for i, addr in enumerate(sorted(held))}
    results = dict(zip(probes, client.gather(list(probes.values()))))
    return [WorkerReport(addr, held[addr]["name"], held[addr]["node"], held[addr]["reason"],
                         results[addr]["cpus"], results[addr]["allocator"], results[addr]["task_pages"],
                         held[addr]["data_bytes"])
            for addr in sorted(held)]
