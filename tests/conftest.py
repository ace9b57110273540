"""Shared fixtures of the unit tier (single node, every machine)."""
from __future__ import annotations

import dataclasses
import gc
import os
import threading
from typing import Any, Callable, Iterable

import pytest

import numamem
from numamem import _region, _topology


def pytest_addoption(parser):
    parser.addoption("--stress", action="store_true", help="run the long variants of stress tests")
    parser.addoption("--frameworks", action="store_true",
                     help="multi-node tier: run the Dask, ONNX Runtime and PyTorch guest tests in "
                          "every topology, not only in 'two' (see tests/numa/conftest.py)")


@pytest.fixture
def stress(request):
    """True when the long stress variants were asked for with --stress."""
    return request.config.getoption("--stress")


@pytest.fixture
def topo():
    """The real topology of this machine, freshly read."""
    return numamem.topology()


@pytest.fixture
def node0(topo):
    """A node this process may allocate on (the first allowed node with memory)."""
    for node in topo.nodes:
        if node.has_memory and node.id in topo.allowed_nodes:
            return node.id
    pytest.fail("no allowed node with memory on this machine")


@pytest.fixture
def fake_topology(monkeypatch, topo):
    """Install a modified topology snapshot for validation: ``fake_topology(**changes)``.

    Allocation code validates against the cached snapshot (``topology(refresh=False)``), so a
    snapshot describing nodes this machine lacks tests the checks made before any mapping.
    """

    def install(**changes):
        fake = dataclasses.replace(topo, **changes)
        monkeypatch.setattr(_topology, "_cached", fake)
        return fake

    yield install
    monkeypatch.setattr(_topology, "_cached", None)


@pytest.fixture
def mapping_counter():
    """Callable returning (mapped, unmapped) deltas since the fixture started."""
    gc.collect()
    mapped0, unmapped0 = _region.mapping_counts()

    def delta():
        gc.collect()
        mapped, unmapped = _region.mapping_counts()
        return mapped - mapped0, unmapped - unmapped0

    return delta


def run_in_child(function) -> int:
    """Run ``function`` in a forked child; return the child's raw wait status.

    The child exits 0 if ``function`` returns, 1 if it raises; killing paths show as signals.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            function()
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


@dataclasses.dataclass
class ThreadsRun:
    """What :func:`run_threads` saw: each thread's return value, and every exception raised."""

    results: list[Any]
    errors: list[BaseException]


def run_threads(fn: Callable[[Any], Any], n: int | Iterable[Any], *, barrier: threading.Barrier | None = None,
                timeout: float = 300.0) -> ThreadsRun:
    """Call ``fn(arg)`` on one thread per ``arg`` (``0 .. n-1``, or the items of ``n``), all at once.

    Every exception a thread raises is collected in ``errors`` rather than lost on its thread,
    and aborts ``barrier`` (if the threads wait at one) so that the others do not wait forever
    for a thread that died. A thread still running after ``timeout`` seconds is an error too.
    """
    args = list(range(n)) if isinstance(n, int) else list(n)
    results: list[Any] = [None] * len(args)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            results[i] = fn(args[i])
        except BaseException as exc:
            errors.append(exc)
            if barrier is not None:
                barrier.abort()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        if t.is_alive():
            errors.append(TimeoutError(f"a thread of run_threads({fn.__name__}) ran past {timeout} s"))
    return ThreadsRun(results, errors)


@pytest.fixture(name="run_threads")
def run_threads_fixture():
    """:func:`run_threads`, for the unit tier and the multi-node tier (tests/numa sees this
    conftest's fixtures too): one thread per argument, exceptions collected, not lost."""
    return run_threads
