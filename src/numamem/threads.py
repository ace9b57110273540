"""Binding threads to nodes: CPU affinity from the topology plus the thread's memory policy."""
from __future__ import annotations

import os
import threading

from numamem import _kernel, _topology
from numamem._request import node_id

__all__ = ["bind_thread", "ThreadBinding"]

THREAD_POLICIES = ("bind", "preferred", "local")


class ThreadBinding:
    """The binding made by :func:`bind_thread`; restores the thread's previous state.

    Use it as a context manager, or call :meth:`restore` from the same thread.
    """

    def __init__(self, node, policy: str = "bind"):
        node = node_id(node, "node")
        if policy not in THREAD_POLICIES:
            raise ValueError(f"policy must be one of {THREAD_POLICIES}, not {policy!r}")
        topo = _topology.topology(refresh=False)
        cpus = topo.check_cpu_node(node, "node")
        if policy != "local":
            topo.check_memory_node(node, "node")
        self.node = node
        self.policy = policy
        self.cpus = frozenset(cpus)
        self._thread = threading.get_ident()
        # pid 0 means the calling thread for both calls: affinity and policy are per thread.
        self._saved_cpus = os.sched_getaffinity(0)
        self._saved_policy = _kernel.thread_policy()
        self._active = True
        os.sched_setaffinity(0, cpus)
        try:
            _kernel.set_thread_policy(policy, () if policy == "local" else (node,))
        except BaseException:
            os.sched_setaffinity(0, self._saved_cpus)
            raise

    def restore(self) -> None:
        """Put back the CPU affinity and memory policy the thread had before (once)."""
        if not self._active:
            return
        if threading.get_ident() != self._thread:
            raise RuntimeError("a thread binding must be restored by the thread that made it")
        self._active = False
        mode, nodes = self._saved_policy
        try:
            _kernel.set_thread_policy(mode, nodes)
        finally:
            os.sched_setaffinity(0, self._saved_cpus)

    def __enter__(self) -> "ThreadBinding":
        return self

    def __exit__(self, *exc_info) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "active" if self._active else "restored"
        return f"<ThreadBinding node={self.node} policy={self.policy} cpus={sorted(self.cpus)} {state}>"


def bind_thread(node: int, policy: str = "bind") -> ThreadBinding:
    """Bind the calling thread to ``node``: its CPUs, and its memory policy.

    The binding takes effect at once; use the result as a context manager (or call its
    ``restore()``) to return the thread to its previous CPU affinity and memory policy.

    Parameters
    ----------
    node : int
        A node with CPUs (allowed by the process's cpuset).
    policy : {"bind", "preferred", "local"}
        Memory policy for the thread's new allocations: strictly on ``node`` (default), preferably
        there, or on the node of the CPU running (equivalent here, since the CPUs are ``node``'s).
        Under ``bind`` a thread that allocates more than the node holds is OOM-killed by the kernel.
        Threads created while the binding is active inherit it (Linux copies affinity and policy
        to new threads); threads already running are not affected.

    Examples
    --------
    >>> import numamem
    >>> with numamem.bind_thread(0):
    ...     pass  # runs on node 0's CPUs; first-touch memory lands on node 0
    """
    return ThreadBinding(node, policy)
