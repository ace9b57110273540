"""Choosing and binding a node for a worker process (shared by numamem.dask and numamem.ray)."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import threading

import pytest

import numamem
from numamem import _workerbind
from numamem._workerbind import NumaWorkerWarning


def _in_thread(fn):
    """Run ``fn`` in a fresh thread (bindings are per thread); return its result or raise."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture
def claims(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMAMEM_WORKER_CLAIMS", str(tmp_path))
    return tmp_path


@pytest.fixture
def sleeper():
    """A live process other than this one, to claim nodes for."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_claims_go_round_robin_and_skip_dead_processes(claims, sleeper):
    assert _workerbind.claim_node([3, 5], "g") == 3
    assert _workerbind.claim_node([3, 5], "g", pid=sleeper) == 5
    # A claim of a process that has exited does not count.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert _workerbind.claim_node([3, 5], "other", pid=dead.pid) == 3
    assert _workerbind.claim_node([3, 5], "other") == 3
    # Claiming again replaces this process's own claim; releasing frees the node.
    assert _workerbind.claim_node([3, 5], "g") == 3
    _workerbind.release_node("g")
    assert _workerbind.claim_node([5, 3], "g") == 3  # node 5 still held by the sleeper
    stored = [json.loads(p.read_text()) for p in claims.glob("*.json")]
    assert {str(sleeper): 5} in [{k: v["node"] for k, v in s.items() if k == str(sleeper)} for s in stored]


def test_claim_needs_candidates(claims):
    with pytest.raises(ValueError, match="candidates"):
        _workerbind.claim_node([], "g")


@pytest.mark.parametrize("text, expected", [
    (None, None), ("", None), ("all", None), ("0,2", [0, 2]), ("1-3", [1, 2, 3]), ([1, 0], [1, 0]),
])
def test_parse_nodes(text, expected):
    assert _workerbind.parse_nodes(text) == expected


@pytest.mark.parametrize("bad, error", [("x", ValueError), ([0, 0], ValueError), ([True], TypeError),
                                        ([0.5], TypeError), ([], ValueError)])
def test_parse_nodes_rejects(bad, error):
    with pytest.raises(error, match="--numamem-nodes"):
        _workerbind.parse_nodes(bad, "--numamem-nodes")


def test_one_node_gives_a_warning_and_a_plain_worker(monkeypatch, topo, claims):
    one = dataclasses.replace(topo, nodes=topo.nodes[:1])
    monkeypatch.setattr(_workerbind, "topology", lambda refresh=True: one)
    with pytest.warns(NumaWorkerWarning, match="1 NUMA node"):
        binding, thread = _in_thread(lambda: _workerbind.bind_worker_thread(None, "g"))
    assert (binding.node, binding.bound, thread) == (None, False, None)
    assert "binding workers adds nothing" in binding.reason


def test_kernel_refusal_gives_a_warning_and_a_plain_worker(monkeypatch, node0, claims):
    def refuse(node, policy="bind"):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(_workerbind, "bind_thread", refuse)
    with pytest.warns(NumaWorkerWarning, match="kernel refused"):
        binding, thread = _in_thread(lambda: _workerbind.bind_worker_thread([node0], "g"))
    assert binding.node is None and thread is None
    # The node claimed for the failed binding is given back.
    stored = json.loads(next(claims.glob("*.json")).read_text())
    assert str(os.getpid()) not in stored


def test_explicit_node_binds_the_calling_thread(node0, topo, claims):
    def work():
        before = os.sched_getaffinity(0)
        binding, thread = _workerbind.bind_worker_thread([node0], "g", "preferred")
        inside = os.sched_getaffinity(0)
        pages = _workerbind.probe_task_memory()
        thread.restore()
        return binding, before, inside, pages, os.sched_getaffinity(0)

    binding, before, inside, pages, after = _in_thread(work)
    assert binding.node == node0 and binding.policy == "preferred" and binding.reason == ""
    assert set(binding.cpus) == inside == set(topo.node(node0).cpus) & topo.allowed_cpus
    assert after == before
    assert set(pages) == {node0} and pages[node0] >= _workerbind.PROBE_BYTES // topo.base_page_size


@pytest.mark.parametrize("nodes, match", [([99], "no such node"), ([0], "policy")])
def test_bad_explicit_nodes_and_policy_raise(nodes, match, claims):
    with pytest.raises(ValueError, match=match):
        _workerbind.bind_worker_thread(nodes, "g", policy="bind" if match != "policy" else "interleave",
                                       what="--numamem-nodes")


def test_data_bytes_per_node_counts_arrays_only(node0):
    a = numamem.zeros(1 << 16, node=node0)
    assert _workerbind.data_bytes_per_node([a, "text", a[:0]]) == {node0: a.nbytes}
