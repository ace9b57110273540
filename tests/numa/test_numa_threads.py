"""bind_thread on a multi-node guest: the thread's CPUs and its first-touch memory follow the node."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import numamem

import kernelcheck as kc



def _in_thread(fn):
    return kc.run_in_thread(fn, timeout=120)


@pytest.mark.parametrize("policy", ["bind", "local"])
def test_bind_thread_moves_cpus_and_first_touch(cpu_node, expected, policy):
    """With ``policy="local"`` only the CPU affinity can put first-touch memory on the node,
    so that variant proves the thread really runs there."""
    want_cpus = set(expected["nodes"][cpu_node]["cpus"])

    def work():
        before = os.sched_getaffinity(0)
        with numamem.bind_thread(cpu_node, policy=policy):
            inside = os.sched_getaffinity(0)
            touched = kc.first_touch_nodes()
            # NumPy memory the thread creates itself lands there too; 40 MiB is above glibc's
            # largest mmap threshold, so these are fresh pages, not a heap reused from elsewhere.
            fresh = np.ones(40 * 2**20 // 8)
            numpy_pages = kc.nodes_of(fresh[512:-512])
        after = os.sched_getaffinity(0)
        return before, inside, touched, numpy_pages, after

    before, inside, touched, numpy_pages, after = _in_thread(work)
    assert inside == want_cpus
    assert after == before, "affinity not restored after the binding"
    assert kc.histogram(touched) == {cpu_node: len(touched)}
    assert kc.histogram(numpy_pages) == {cpu_node: len(numpy_pages)}


@pytest.mark.requires("two_cpu_nodes")
def test_two_threads_bound_to_different_nodes_each_get_their_node(expected, run_threads):
    """Threads bound at the same time to different nodes do not share one binding."""
    cpu_nodes = [n["id"] for n in expected["nodes"] if n["cpus"] and n["mem_mib"]]
    assert len(cpu_nodes) >= 2
    barrier = threading.Barrier(len(cpu_nodes), timeout=120)
    results = {}

    def work(node):
        with numamem.bind_thread(node):
            barrier.wait()  # every thread is bound before any touches memory
            results[node] = (os.sched_getaffinity(0), kc.first_touch_nodes())
            barrier.wait()

    errors = run_threads(work, cpu_nodes, barrier=barrier, timeout=180).errors
    assert not errors, errors
    for node in cpu_nodes:
        cpus, touched = results[node]
        assert cpus == set(expected["nodes"][node]["cpus"])
        assert kc.histogram(touched) == {node: len(touched)}, (node, kc.histogram(touched))


def test_bind_thread_refuses_cpuless_and_missing_nodes(expected):
    ids = [n["id"] for n in expected["nodes"]]
    cpuless = [n["id"] for n in expected["nodes"] if not n["cpus"]]
    before = os.sched_getaffinity(0)
    for bad in cpuless + [max(ids) + 1, 63]:
        with pytest.raises(ValueError):
            numamem.bind_thread(bad)
        assert os.sched_getaffinity(0) == before


@pytest.mark.requires("memless")
def test_memoryless_node_binds_cpus_only_and_memory_comes_from_the_nearest_node(
        memless_node, expected):
    """bind_thread(memless) cannot bind memory there (ValueError); with policy="local" the
    thread runs on the node's CPUs and first-touch memory comes from the nearest memory node."""
    before = os.sched_getaffinity(0)
    with pytest.raises(ValueError):
        numamem.bind_thread(memless_node)
    assert os.sched_getaffinity(0) == before
    distances = expected["distances"][memless_node]
    nearest = min((n["id"] for n in expected["nodes"] if n["mem_mib"]), key=distances.__getitem__)

    def work():
        with numamem.bind_thread(memless_node, policy="local"):
            return os.sched_getaffinity(0), kc.first_touch_nodes()

    cpus, touched = _in_thread(work)
    assert cpus == set(expected["nodes"][memless_node]["cpus"])
    assert kc.histogram(touched) == {nearest: len(touched)}
