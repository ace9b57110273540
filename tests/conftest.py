"""Shared fixtures of the unit tier (single node, every machine)."""
from __future__ import annotations

import dataclasses
import gc
import os

import pytest

import numamem
from numamem import _region, _topology


def pytest_addoption(parser):
    parser.addoption("--stress", action="store_true", help="run the long variants of stress tests")


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
