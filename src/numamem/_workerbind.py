"""Binding a worker process of a scale-out framework (Dask, Ray) to one NUMA node.

Shared by :mod:`numamem.dask` and :mod:`numamem.ray`, and free of both: it chooses a node for a
worker, binds the calling thread (a worker's event loop or main thread, whose CPU affinity and
memory policy Linux copies to every thread it creates later, task threads included) and says why
a worker stays plain when binding is pointless (one node) or refused by the kernel.

Node choice is "least loaded first" over the candidate nodes, counted among the live worker
processes of the same group (Dask's workers, Ray's workers) on this host. The count lives in a
small JSON file under a lock, so workers that start at the same moment still spread out, and a
restarted worker takes the place a dead one left. That is round-robin, robust to restarts.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from numamem._topology import parse_cpulist, topology
from numamem.inspect import histogram, page_nodes, placement
from numamem.threads import bind_thread

__all__ = ["NumaWorkerWarning", "WorkerBinding", "parse_nodes", "candidate_nodes", "claim_node",
           "release_node", "plain_worker", "bind_worker_thread", "probe_task_memory",
           "data_bytes_per_node", "POLICIES", "ALLOCATORS", "PROBE_BYTES"]

logger = logging.getLogger("numamem.workers")

POLICIES = ("bind", "preferred")
#: Where NumPy allocations in tasks come from: numamem's verified pool of the node
#: (``numamem.on_node``), or NumPy's own allocator under the thread's kernel memory policy.
ALLOCATORS = ("pool", "policy")
PROBE_BYTES = 4 * 2**20  # a task-memory probe: 1024 pages, large enough to see a stray page


class NumaWorkerWarning(UserWarning):
    """A worker stays plain (unbound): one node, or the kernel refused the binding."""


@dataclass(frozen=True)
class WorkerBinding:
    """What a worker process got.

    Attributes
    ----------
    node : int or None
        The node the worker is bound to; None for a plain (unbound) worker.
    cpus : tuple of int
        CPUs the binding allows (empty for a plain worker).
    policy : str
        Memory policy of the binding (``"bind"`` or ``"preferred"``), ``""`` for a plain worker.
    reason : str
        Why the worker is plain (empty when bound).
    migrated_bytes : int
        Bytes of data the worker held before binding that were moved onto ``node`` (plugin only).
    """

    node: int | None
    cpus: tuple[int, ...] = ()
    policy: str = ""
    reason: str = ""
    migrated_bytes: int = 0

    @property
    def bound(self) -> bool:
        return self.node is not None

    def to_dict(self) -> dict:
        return {"node": self.node, "cpus": list(self.cpus), "policy": self.policy,
                "reason": self.reason, "migrated_bytes": self.migrated_bytes}


def parse_nodes(text: str | Iterable[int] | None, what: str = "nodes") -> list[int] | None:
    """``"0,1"`` / ``"0-3"`` / ``[0, 1]`` -> ``[0, 1]``; None or ``""`` or ``"all"`` -> None (automatic)."""
    if text is None:
        return None
    if isinstance(text, str):
        text = text.strip()
        if text in ("", "all"):
            return None
        try:
            nodes = list(parse_cpulist(text))
        except ValueError:
            raise ValueError(f"{what}={text!r}: expected node ids such as '0,1' or '0-3'") from None
    else:
        nodes = []
        for value in text:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{what} must be node ids (ints), not {value!r}")
            nodes.append(int(value))
    if not nodes:
        raise ValueError(f"{what} is empty")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"{what}={nodes}: a node is listed twice")
    return nodes


def candidate_nodes(nodes: Sequence[int] | None, what: str = "nodes") -> tuple[list[int], str]:
    """Nodes a worker may be given, and why there are none worth binding to (or ``""``).

    Explicit ``nodes`` must each have memory and usable CPUs here (``ValueError`` naming ``what``
    otherwise); they are used even on a one-node machine, since the user asked. Automatic choice
    takes the allowed nodes with memory and CPUs, and binds only when there are two or more.
    """
    topo = topology()
    if nodes is not None:
        for node in nodes:
            topo.check_memory_node(node, what)
            topo.check_cpu_node(node, what)
        return list(nodes), ""
    found = [n for n in topo.memory_nodes() if topo.usable_cpus(n)]
    if len(found) < 2:
        return [], (f"this machine has {len(found)} NUMA node with CPUs and memory ({found}); "
                    f"binding workers adds nothing here")
    return found, ""


# ---------------------------------------------------------------------------------- node claims
def _claims_dir() -> Path:
    return Path(os.environ.get("NUMAMEM_WORKER_CLAIMS", Path(tempfile.gettempdir()) / "numamem-workers"))


def _start_time(pid: int) -> str | None:
    """The process's start time from /proc (tells a live process from a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces, so split after its ')'.
    return stat.rsplit(")", 1)[1].split()[19]


@contextlib.contextmanager
def _locked_claims(group: str, directory: Path | None):
    directory = Path(directory) if directory is not None else _claims_dir()
    directory.mkdir(parents=True, exist_ok=True)
    stem = hashlib.sha256(group.encode()).hexdigest()[:16]
    path = directory / f"{stem}.json"
    with open(directory / f"{stem}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            claims = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            claims = {}  # a torn file from a killed writer: start the count again
        live = {pid: c for pid, c in claims.items()
                if c.get("start") is not None and _start_time(int(pid)) == c["start"]}
        yield live
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(live))
        tmp.replace(path)


def claim_node(candidates: Sequence[int], group: str, *, pid: int | None = None,
               directory: Path | None = None) -> int:
    """Give process ``pid`` (default: this one) the least-claimed node of ``candidates``.

    Claims are counted among live processes of ``group`` on this host; ties go to the earlier
    candidate, so successive workers walk the candidates round-robin.
    """
    if not candidates:
        raise ValueError("candidates is empty")
    pid = os.getpid() if pid is None else pid
    with _locked_claims(group, directory) as live:
        live.pop(str(pid), None)
        load = {node: 0 for node in candidates}
        for claim in live.values():
            if claim["node"] in load:
                load[claim["node"]] += 1
        node = min(candidates, key=lambda n: (load[n], list(candidates).index(n)))
        live[str(pid)] = {"node": node, "start": _start_time(pid)}
    return node


def release_node(group: str, *, pid: int | None = None, directory: Path | None = None) -> None:
    """Drop the claim of ``pid`` (default: this process) in ``group``."""
    pid = os.getpid() if pid is None else pid
    with _locked_claims(group, directory) as live:
        live.pop(str(pid), None)


# ---------------------------------------------------------------------------------- binding
def plain_worker(reason: str) -> WorkerBinding:
    """A plain binding for ``reason``, announced with a :class:`NumaWorkerWarning` and a log line."""
    warnings.warn(f"numamem: plain worker (not bound to a NUMA node): {reason}", NumaWorkerWarning,
                  stacklevel=3)
    logger.warning("plain worker (not bound to a NUMA node): %s", reason)
    return WorkerBinding(None, reason=reason)


def bind_worker_thread(nodes: Sequence[int] | None, group: str, policy: str = "bind",
                       what: str = "nodes") -> tuple[WorkerBinding, "numamem.ThreadBinding | None"]:
    """Choose a node for this worker process and bind the calling thread to it.

    Call it from the thread that creates the worker's task threads (its event loop or main
    thread): Linux copies CPU affinity and memory policy to threads created later. Threads that
    already run keep theirs. One node, or a kernel that refuses the policy (seccomp, a container
    without ``CAP_SYS_NICE`` for a foreign cpuset, ...), gives a :class:`NumaWorkerWarning` and a
    plain worker, never an exception: a worker that cannot be bound still works.

    Returns
    -------
    (WorkerBinding, ThreadBinding or None)
        The second item restores the thread (None for a plain worker).

    Raises
    ------
    ValueError
        For explicit ``nodes`` that cannot hold a bound worker here (named as ``what``).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    candidates, why_plain = candidate_nodes(nodes, what)
    if not candidates:
        return plain_worker(why_plain), None
    node = claim_node(candidates, group)
    try:
        thread = bind_thread(node, policy)
    except OSError as exc:
        release_node(group)
        return plain_worker(f"the kernel refused to bind to node {node}: {exc}"), None
    return WorkerBinding(node, tuple(sorted(thread.cpus)), policy), thread


def probe_task_memory(nbytes: int = PROBE_BYTES) -> dict[int, int]:
    """Allocate ``nbytes`` the way a task would (NumPy, current allocator), touch them, and
    return the kernel's page histogram ``{node: pages}`` (negative keys: pages with no node)."""
    probe = np.ones(nbytes // 8)
    return histogram(page_nodes(probe))


def data_bytes_per_node(values: Iterable) -> dict[int, int]:
    """Bytes per node (from the kernel) of the NumPy arrays among ``values``."""
    total: dict[int, int] = {}
    for value in values:
        if isinstance(value, np.ndarray) and value.size:
            for node, nbytes in placement(value).bytes_per_node.items():
                total[node] = total.get(node, 0) + nbytes
    return dict(sorted(total.items()))

