"""Binding threads to nodes (CPU affinity plus memory policy), node-bound worker teams, BLAS limits.

:func:`bind_thread` binds the calling thread. :class:`WorkerTeam` keeps, per group, worker threads
bound for their whole life to one node; the executors and ``numamem bench`` run their parallel
work on it. :func:`blas_single_thread` keeps BLAS from running its own unbound threads meanwhile.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Sequence

from numamem import _kernel, _topology
from numamem._request import node_id

__all__ = ["bind_thread", "bind_process", "blas_single_thread", "ProcessBinding", "ThreadBinding", "WorkerAborted",
           "WorkerTeam"]

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
class WorkerAborted(Exception):
    """Raised by a job that stopped because another job of the same run failed.

    :meth:`WorkerTeam.run` reports the failure that caused it, not this.
    """


class _Latch:
    """Counts finished jobs; re-raises the first error a job raised."""

    def __init__(self, count: int):
        self._count = count
        self._cv = threading.Condition()
        self.errors: list[BaseException] = []
        self.cpu = 0.0

    def done(self, exc: BaseException | None, cpu: float = 0.0) -> None:
        with self._cv:
            self.cpu += cpu
            if exc is not None:
                self.errors.append(exc)
            self._count -= 1
            if self._count == 0:
                self._cv.notify_all()

    def wait(self) -> None:
        with self._cv:
            while self._count:
                self._cv.wait()
        if self.errors:
            # Workers that stopped because another failed raise WorkerAborted; report the cause.
            real = [e for e in self.errors if not isinstance(e, WorkerAborted)]
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
    """Per group, worker threads bound for their whole life to one node's CPUs.

    Parameters
    ----------
    cpu_nodes : sequence of int
        For each group, the node whose CPUs its workers run on.
    workers : sequence of int
        Number of workers of each group.
    policy : {"bind", "local", "preferred"}
        Memory policy of the workers (see :func:`bind_thread`); ``"local"`` behaves like the
        default first-touch policy on the node's CPUs.

    Raises
    ------
    ValueError
        If a node cannot run threads (no such node, no CPUs, not allowed).

    Examples
    --------
    >>> team = WorkerTeam([0], [2], policy="local")
    >>> seen = set()
    >>> cpu_seconds = team.run(lambda group, worker: seen.add((group, worker)))
    >>> sorted(seen)
    [(0, 0), (0, 1)]
    >>> team.close()
    """

    def __init__(self, cpu_nodes: Sequence[int], workers: Sequence[int], policy: str = "bind"):
        self.sizes = [int(w) for w in workers]
        ready = _Latch(sum(self.sizes))
        self.workers = [[_Worker(group, i, node, policy, ready) for i in range(size)]
                        for group, (node, size) in enumerate(zip(cpu_nodes, self.sizes))]
        for members in self.workers:
            for thread in members:
                thread.start()
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
        latch = _Latch(sum(self.sizes[group] for group in chosen))
        for group in chosen:
            for thread in self.workers[group]:
                thread.jobs.put((fn, latch))
        latch.wait()
        return latch.cpu

    def close(self) -> None:
        """Stop and join every worker (idempotent)."""
        for members in self.workers:
            for thread in members:
                if thread.is_alive():
                    thread.jobs.put(None)
        for members in self.workers:
            for thread in members:
                if thread.is_alive():
                    thread.join()
