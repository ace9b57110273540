"""Binding threads to nodes: CPU affinity from the topology plus the thread's memory policy."""
from __future__ import annotations

import os
import threading

from numamem import _kernel, _topology
from numamem._request import node_id

__all__ = ["bind_thread", "ThreadBinding", "bind_process", "ProcessBinding"]

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


class ProcessBinding(ThreadBinding):
    """The binding made by :func:`bind_process`; restores the process's previous state.

    The calling thread is bound as by :func:`bind_thread` (so threads it starts later inherit
    CPUs and memory policy); every other thread running now gets the node's CPUs as well.
    """

    def __init__(self, node, policy: str = "bind"):
        super().__init__(node, policy)
        self._others: dict[int, set] = {}
        try:
            me = threading.get_native_id()
            for tid in _thread_ids():
                if tid == me:
                    continue
                try:
                    saved = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, self.cpus)
                except ProcessLookupError:
                    continue  # the thread ended meanwhile
                self._others[tid] = saved
        except BaseException:
            self._restore_others()
            super().restore()
            raise

    def restore(self) -> None:
        """Put back the calling thread's state and the other threads' CPU affinity (once)."""
        if not self._active:
            return
        if threading.get_ident() != self._thread:
            raise RuntimeError("a process binding must be restored by the thread that made it")
        try:
            super().restore()
        finally:
            self._restore_others()

    def _restore_others(self) -> None:
        for tid, saved in self._others.items():
            try:
                os.sched_setaffinity(tid, saved)
            except ProcessLookupError:
                pass  # the thread has ended
        self._others = {}

    def __repr__(self) -> str:
        return super().__repr__().replace("<ThreadBinding", "<ProcessBinding", 1)


def _thread_ids() -> list[int]:
    """Kernel ids of this process's threads now (``/proc/self/task``)."""
    return [int(entry) for entry in os.listdir("/proc/self/task")]


def bind_process(node: int, policy: str = "bind") -> ProcessBinding:
    """Bind the process to ``node``, as ``numactl --cpunodebind=N --membind=N`` would at start-up.

    The calling thread (normally the main thread) gets node ``node``'s CPUs and the memory policy,
    so every thread it starts later inherits both; the threads already running get the node's
    CPUs too. Use the result as a context manager (or call ``restore()`` from the same thread)
    to put the previous CPU affinity and memory policy back.

    Parameters
    ----------
    node : int
        A node with CPUs (and memory, unless ``policy="local"``) allowed by the process's cpuset.
    policy : {"bind", "preferred", "local"}
        Memory policy, as for :func:`bind_thread`.

    Notes
    -----
    Linux sets a memory policy only from the thread it applies to (``set_mempolicy``), so the
    threads already running keep their memory policy; their first-touch memory follows the CPU
    they run on, which is now one of ``node``'s. Threads started while the binding is active
    keep it after ``restore()``: they inherited it, and only they can change their policy.

    Examples
    --------
    >>> import numamem
    >>> with numamem.bind_process(0):
    ...     pass  # this thread and every thread it starts: node 0's CPUs and memory
    """
    return ProcessBinding(node, policy)


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
