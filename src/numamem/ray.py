"""NUMA-bound Ray worker processes (optional extra: ``numamem[ray]``).

Ray starts worker processes itself; ``worker_process_setup_hook`` runs in each before its first
task. :func:`runtime_env` returns a runtime environment whose hook binds the worker's main thread
(where Ray runs tasks, and which creates any threads the worker starts later) to a node, and
makes NumPy allocations in tasks come from that node::

    import ray, numamem.ray
    ray.init(runtime_env=numamem.ray.runtime_env())            # nodes round-robin
    ray.init(runtime_env=numamem.ray.runtime_env(nodes=[1]))   # every worker on node 1

Nodes are given out least-loaded first among the live Ray workers on this host. A one-node
machine, or a kernel that refuses the policy, gives a warning and a plain worker. Ray's custom
resources belong to a Ray node, not to a worker process, so tasks are not routed by NUMA node
here; read :func:`worker_node` in a task to see where it runs.
"""
from __future__ import annotations

import os

from numamem import _workerbind
from numamem.pools import on_node
from numamem._workerbind import NumaWorkerWarning, WorkerBinding

__all__ = ["runtime_env", "setup_worker", "worker_node", "worker_binding", "ENV_NODES", "ENV_POLICY",
           "ENV_ALLOCATOR", "NumaWorkerWarning", "WorkerBinding"]

ENV_NODES = "NUMAMEM_RAY_NODES"
ENV_POLICY = "NUMAMEM_RAY_POLICY"
ENV_ALLOCATOR = "NUMAMEM_RAY_ALLOCATOR"
HOOK = "numamem.ray.setup_worker"

_STATE: dict = {}  # "binding": WorkerBinding, plus what undoes it


def runtime_env(nodes=None, policy: str = "bind", base: dict | None = None,
                allocator: str = "pool") -> dict:
    """A Ray ``runtime_env`` whose workers bind themselves to NUMA nodes.

    Parameters
    ----------
    nodes : str or sequence of int, optional
        Nodes to give workers (default: every node with CPUs and memory; none on one node).
    policy : {"bind", "preferred"}
    base : dict, optional
        A runtime environment to extend (its ``env_vars`` are kept). It must not set another
        ``worker_process_setup_hook``.
    allocator : {"pool", "policy"}
        NumPy memory in tasks: the node's numamem pool (``numamem.on_node``), or NumPy's own
        allocator under the node's kernel memory policy.
    """
    parsed = _workerbind.parse_nodes(nodes, "nodes")
    if policy not in _workerbind.POLICIES:
        raise ValueError(f"policy must be one of {_workerbind.POLICIES}, not {policy!r}")
    if allocator not in _workerbind.ALLOCATORS:
        raise ValueError(f"allocator must be one of {_workerbind.ALLOCATORS}, not {allocator!r}")
    env = dict(base or {})
    if env.get("worker_process_setup_hook", HOOK) != HOOK:
        raise ValueError(f"base already has worker_process_setup_hook="
                         f"{env['worker_process_setup_hook']!r}; call numamem.ray.setup_worker() from it")
    env["worker_process_setup_hook"] = HOOK
    env["env_vars"] = {**env.get("env_vars", {}),
                       ENV_NODES: ",".join(map(str, parsed)) if parsed else "",
                       ENV_POLICY: policy, ENV_ALLOCATOR: allocator}
    return env


def _group() -> str:
    """Every Ray worker process on this host shares one count of node claims."""
    return "ray"


def setup_worker() -> WorkerBinding:
    """The hook: bind this worker process to a node (once), from ``NUMAMEM_RAY_*`` variables."""
    if "binding" in _STATE:
        return _STATE["binding"]
    nodes = _workerbind.parse_nodes(os.environ.get(ENV_NODES), ENV_NODES)
    policy = os.environ.get(ENV_POLICY) or "bind"
    binding, thread = _workerbind.bind_worker_thread(nodes, _group(), policy, ENV_NODES)
    _STATE["binding"] = binding
    _STATE["thread"] = thread
    if binding.bound and (os.environ.get(ENV_ALLOCATOR) or "pool") == "pool":
        # Left entered for the life of the process: Ray runs tasks in this thread and context.
        allocator = on_node(binding.node, policy)
        allocator.__enter__()
        _STATE["allocator"] = allocator
    return binding


def worker_binding() -> WorkerBinding:
    """What :func:`setup_worker` did in this process (a plain binding if it did not run)."""
    return _STATE.get("binding", WorkerBinding(None, reason="numamem.ray.setup_worker has not run"))


def worker_node() -> int | None:
    """The node this worker process is bound to; None for a plain worker."""
    return worker_binding().node
