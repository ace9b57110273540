"""A fork while another thread holds a numamem lock must not hang the child (issue 12, item 2)."""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import numamem
from numamem import _topology

CHILD_TIMEOUT = 10.0  # a child takes well under a second; a hung one is killed after this
MAX_HUNG = 3  # stop forking after this many hung children: the test has failed already


def _wait(pid: int, timeout: float) -> int | None:
    """The child's wait status, or None after killing it when it did not end within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _fork_while_busy(busy, child, forks: int) -> list:
    """Fork ``forks`` times while a thread runs ``busy`` in a loop; return the failed children."""
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            busy()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    failures = []
    try:
        for i in range(forks):
            time.sleep(0.0005 * (i % 4))  # land at different points of the busy loop
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                code = 1
                try:
                    child()
                    code = 0
                finally:
                    os._exit(code)
            status = _wait(pid, CHILD_TIMEOUT)
            if status is None:
                failures.append((i, "hung"))
                if sum(1 for _, why in failures if why == "hung") >= MAX_HUNG:
                    break
            elif not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                failures.append((i, status))
    finally:
        stop.set()
        thread.join()
    return failures


def _child_work(node: int):
    def work():
        numamem.topology()                      # takes the topology lock
        _topology.topology(refresh=False)
        a = numamem.zeros(1000, node=node)      # an allocation after the fork
        b = numamem.empty(1 << 20, np.uint8, node=node, pages="4k")
        b[:] = 1
        assert not a.any() and int(b[-1]) == 1
    return work


@pytest.mark.parametrize("forks", [24])
def test_fork_while_topology_is_read(node0, forks):
    failures = _fork_while_busy(numamem.topology, _child_work(node0), forks)
    assert not failures, f"children that hung or failed: {failures}"


def test_fork_during_the_first_topology_read(node0, monkeypatch):
    # The first read runs under the lock with no snapshot yet: a child forked then starts with
    # no snapshot and a held lock, and its first allocation must still work.
    def first_read():
        _topology._cached = None
        _topology.topology(refresh=False)

    monkeypatch.setattr(_topology, "_cached", _topology._cached)
    failures = _fork_while_busy(first_read, _child_work(node0), 24)
    assert not failures, f"children that hung or failed: {failures}"


@pytest.mark.slow
def test_fork_while_topology_is_read_200_times(node0, stress):
    if not stress:
        pytest.skip("the 200-fork variant runs with --stress")
    failures = _fork_while_busy(numamem.topology, _child_work(node0), 200)
    assert not failures, f"children that hung or failed: {failures}"
