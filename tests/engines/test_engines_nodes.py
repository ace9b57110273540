"""The engine-independent parts of numamem.engines: nodes, splits, bound workers, arenas, numa_maps.

These need neither ONNX Runtime nor PyTorch.
"""
from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

import numamem
from numamem import _kernel
from numamem.engines import _nodes
from numamem.engines._nodes import (
    NodeShare, NodeWorker, PlacementWarning, WeightArena, anon_bytes_per_node, delta, place_weights,
    require, resolve_nodes, run_on_all, split_counts,
)


# ------------------------------------------------------------------------------ splits
@pytest.mark.parametrize("total, weights, expected", [
    (10, [2, 1, 1], [5, 3, 2]),
    (1, [1, 1], [1, 0]),
    (0, [3, 1], [0, 0]),
    (7, [1], [7]),
    (5, [0, 1], [0, 5]),
    (3, [1, 1, 1, 1], [1, 1, 1, 0]),
])
def test_split_counts_is_proportional_and_complete(total, weights, expected):
    assert split_counts(total, weights) == expected
    assert sum(split_counts(total, weights)) == total


@pytest.mark.parametrize("weights", [[], [0, 0], [-1, 2]])
def test_split_counts_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="weights"):
        split_counts(4, weights)


# ------------------------------------------------------------------------------ nodes
def test_resolve_nodes_defaults_to_nodes_with_cpus_and_memory(node0, topo):
    shares = resolve_nodes(None)
    assert node0 in [s.node for s in shares]
    s = next(s for s in shares if s.node == node0)
    assert set(s.cpus) == set(topo.usable_cpus(node0))
    assert s.threads == len(s.cpus)


def test_resolve_nodes_threads(node0):
    assert resolve_nodes([node0], 1)[0].threads == 1
    assert resolve_nodes([node0], {node0: 3})[0].threads == 3
    with pytest.raises(ValueError, match="threads_per_node"):
        resolve_nodes([node0], 0)
    with pytest.raises(ValueError, match="twice"):
        resolve_nodes([node0, node0])
    with pytest.raises(ValueError, match="nodes=99"):
        resolve_nodes([99])
    with pytest.raises(TypeError, match="nodes"):
        resolve_nodes(["0"])


# ------------------------------------------------------------------------------ workers
def test_worker_is_bound_to_its_node(node0, topo):
    w = NodeWorker(resolve_nodes([node0])[0])
    try:
        assert w.binding == "local"
        cpus = w.call(os.sched_getaffinity, 0)
        assert cpus == set(topo.usable_cpus(node0))
        assert w.call(_kernel.thread_policy)[0] == "local"
        assert w.call(threading.current_thread).name.startswith(f"numamem-node{node0}")
    finally:
        w.close()


def test_policies_are_checked_before_anything_runs(node0):
    share = resolve_nodes([node0])[0]
    with pytest.raises(ValueError, match="thread_policy"):
        NodeWorker(share, "interleave")
    with pytest.raises(ValueError, match="weight_policy"):
        WeightArena(node0, [((4,), np.float32)], "interleave")


def test_run_on_all_waits_for_every_call_then_raises(node0):
    share = resolve_nodes([node0])[0]
    workers = [NodeWorker(share), NodeWorker(share)]
    done = []

    def boom():
        raise RuntimeError("boom")

    try:
        assert run_on_all(workers, [lambda: 1, None]) == [1, None]
        with pytest.raises(RuntimeError, match="boom"):
            run_on_all(workers, [boom, lambda: done.append(1)])
        assert done == [1]
    finally:
        for w in workers:
            w.close()


def test_refused_memory_policy_warns_and_keeps_cpus(monkeypatch, node0, topo):
    def refuse(node, policy="bind"):
        raise PermissionError(1, "set_mempolicy: Operation not permitted")

    monkeypatch.setattr(_nodes, "bind_thread", refuse)
    with pytest.warns(PlacementWarning, match="refused the thread's memory policy"):
        w = NodeWorker(resolve_nodes([node0])[0])
    try:
        assert w.binding == "cpus-only"
        assert w.call(os.sched_getaffinity, 0) == set(topo.usable_cpus(node0))
    finally:
        w.close()


# ------------------------------------------------------------------------------ arenas
def test_weight_arena_carves_aligned_views_on_the_node(node0):
    arena = WeightArena(node0, [((3, 5), np.float32), ((0,), np.float64), ((7,), np.int64)])
    assert [a.shape for a in arena] == [(3, 5), (0,), (7,)]
    for a in arena:
        assert a.ctypes.data % _nodes.ARENA_ALIGN == 0
        assert numamem.owner(a) is numamem.owner(arena.buffer)
    assert arena.bytes_per_node() == {node0: arena.nbytes}


def test_place_weights_copies_once_and_outlives_its_arena_object(node0, mapping_counter):
    src = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(100, np.float64)]
    arena = place_weights(node0, src)
    kept = arena[0]
    np.testing.assert_array_equal(kept, src[0])
    np.testing.assert_array_equal(arena[1], src[1])
    del arena
    assert mapping_counter() == (1, 0)  # the view holds the mapping
    np.testing.assert_array_equal(kept, src[0])
    del kept
    assert mapping_counter() == (1, 1)


def test_place_weights_falls_back_to_first_touch_when_refused(monkeypatch, node0):
    real_empty = _nodes.empty

    def empty(shape, dtype, *, node, policy, align):
        if policy == "bind":
            raise PermissionError(1, "mbind: Operation not permitted")
        return real_empty(shape, dtype, node=node, policy=policy, align=align)

    monkeypatch.setattr(_nodes, "empty", empty)
    with pytest.warns(PlacementWarning, match="refused to place weights"):
        arena = place_weights(node0, [np.ones(1000, np.float32)])
    np.testing.assert_array_equal(arena[0], 1)
    # what the kernel says, not what was asked: the pages exist, on this one-node machine node0
    assert arena.bytes_per_node() == {node0: arena.nbytes}


# ------------------------------------------------------------------------------ numa_maps
def test_anon_bytes_per_node_counts_anonymous_mappings_only(tmp_path):
    f = tmp_path / "numa_maps"
    f.write_text(
        "7f0000000000 default anon=3 dirty=3 N0=2 N1=1 kernelpagesize_kB=4\n"
        "7f1000000000 default file=/usr/lib/libc.so mapped=10 N0=10 kernelpagesize_kB=4\n"
        "7f2000000000 bind:1 huge anon=1 dirty=1 N1=1 kernelpagesize_kB=2048\n"
        "7f3000000000 default heap anon=5 dirty=5 N0=5 kernelpagesize_kB=4\n"
        "7f4000000000 default\n")
    assert anon_bytes_per_node(str(f)) == {0: 7 * 4096, 1: 4096 + 2 * 2**20}
    assert anon_bytes_per_node(str(tmp_path / "missing")) == {}


def test_anon_bytes_per_node_sees_a_placed_array(node0):
    before = anon_bytes_per_node()
    a = numamem.zeros(8 << 20, np.uint8, node=node0)
    grown = delta(anon_bytes_per_node(), before)
    assert grown.get(node0, 0) >= a.nbytes
    del a


def test_delta():
    assert delta({0: 5, 1: 3}, {0: 2, 2: 4}) == {0: 3, 1: 3, 2: -4}
    assert delta({0: 1}, {0: 1}) == {}


# ------------------------------------------------------------------------------ missing engines
@pytest.mark.parametrize("module, extra", [("onnxruntime", "onnxruntime"), ("torch", "torch")])
def test_missing_engine_names_the_extra(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(ImportError, match=rf"pip install numamem\[{extra}\]"):
        require(module, extra)


def test_missing_onnxruntime_from_the_public_class(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    from numamem.engines.onnxruntime import NodeSessions

    with pytest.raises(ImportError, match=r"numamem\[onnxruntime\]"):
        NodeSessions(b"")


def test_missing_torch_from_the_public_functions(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    from numamem.engines.torch import NodeReplicas

    with pytest.raises(ImportError, match=r"numamem\[torch\]"):
        NodeReplicas(object())


def test_importing_engines_imports_no_engine():
    code = ("import sys, numamem.engines, numamem.engines.onnxruntime, numamem.engines.torch; "
            "assert 'onnxruntime' not in sys.modules and 'torch' not in sys.modules, sys.modules.keys()")
    import subprocess

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr


def test_node_share_is_a_named_record():
    s = NodeShare(0, (0, 1), 2)
    assert (s.node, s.cpus, s.threads) == (0, (0, 1), 2)


# ------------------------------------------------------------------------------ hand-off and inline runs
def test_split_counts_matches_the_proportional_rule_on_many_cases():
    rng = np.random.default_rng(0)
    for _ in range(200):
        weights = list(rng.integers(0, 5, size=rng.integers(1, 5)))
        if not sum(weights):
            continue
        total = int(rng.integers(0, 40))
        counts = split_counts(total, weights)
        assert sum(counts) == total
        exact = [total * w / sum(weights) for w in weights]
        # every node within one item of its exact share, and none below its floor
        assert all(int(e // 1) <= c <= int(e // 1) + 1 for c, e in zip(counts, exact)), (total, weights)
    assert split_counts(3, [np.int64(2), np.int64(2)]) == [2, 1]  # the tie goes to the earlier node


def test_worker_call_raises_the_calls_error_and_refuses_after_close(node0):
    w = NodeWorker(resolve_nodes([node0])[0])
    pending = w.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        pending.result()
    with pytest.raises(ZeroDivisionError):  # a second wait says the same
        pending.result()
    assert pending.done()
    assert w.call(lambda a, b=0: a + b, 2, b=3) == 5
    w.close()
    w.close()  # once only
    with pytest.raises(RuntimeError, match="closed"):
        w.submit(lambda: None)


def test_dropped_worker_ends_its_thread(node0):
    w = NodeWorker(resolve_nodes([node0])[0])
    thread = w._thread
    del w
    import gc

    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_run_on_all_runs_the_last_call_on_the_caller_only_when_told(node0):
    share = resolve_nodes([node0])[0]
    workers = [NodeWorker(share), NodeWorker(share)]
    me = threading.current_thread()
    where = lambda: threading.current_thread()  # noqa: E731
    try:
        first, last = run_on_all(workers, [where, where], here=lambda w: w is workers[1])
        assert first is not me and first.name.startswith(f"numamem-node{node0}")
        assert last is me
        # one call only (a batch smaller than the node count): on the caller, or handed over
        assert run_on_all(workers, [None, where], here=lambda w: True) == [None, me]
        handed = run_on_all(workers, [where, None], here=lambda w: False)[0]
        assert handed is not me and handed.name.startswith(f"numamem-node{node0}")
        assert run_on_all(workers, [where, None])[0] is not me  # no ``here``: always handed over
    finally:
        for w in workers:
            w.close()


def test_run_on_all_waits_for_the_handed_calls_when_the_callers_call_fails(node0):
    share = resolve_nodes([node0])[0]
    workers = [NodeWorker(share), NodeWorker(share)]
    done = threading.Event()

    def slow():
        import time

        time.sleep(0.05)
        done.set()

    def boom():
        raise RuntimeError("boom")

    try:
        with pytest.raises(RuntimeError, match="boom"):
            run_on_all(workers, [slow, boom], here=lambda w: True)
        assert done.is_set()
    finally:
        for w in workers:
            w.close()


def _fake_topology(monkeypatch, memory_nodes, allowed_cpus, node_cpus):
    from types import SimpleNamespace

    topo = SimpleNamespace(memory_nodes=lambda: list(memory_nodes), allowed_cpus=frozenset(allowed_cpus),
                           node=lambda n: SimpleNamespace(cpus=tuple(node_cpus[n])))
    monkeypatch.setattr(_nodes._topology, "topology", lambda refresh=True: topo)


def test_process_on_node_needs_one_memory_node_and_all_cpus_on_it(monkeypatch):
    _fake_topology(monkeypatch, [0], {0, 1}, {0: (0, 1)})
    assert _nodes.process_on_node(0)
    assert not _nodes.process_on_node(1)
    _fake_topology(monkeypatch, [0, 1], {0, 1}, {0: (0,), 1: (1,)})
    assert not _nodes.process_on_node(0)
    _fake_topology(monkeypatch, [0], {0, 1}, {0: (0,), 1: (1,)})  # CPUs of a memory-less node
    assert not _nodes.process_on_node(0)


@pytest.mark.parametrize("mode, nodes, worker_policy, expected", [
    ("default", (), "local", True),
    ("local", (), "preferred", True),
    ("default", (), "bind", False),           # first touch may spill; a bind worker may not
    ("bind", ("N",), "bind", True),
    ("preferred", ("N",), "bind", False),
    ("preferred", ("N",), "local", True),
    ("bind", ("other",), "local", False),     # the caller's memory goes to another node
    ("interleave", ("N", "other"), "local", False),
])
def test_caller_on_node_follows_the_callers_memory_policy(monkeypatch, node0, mode, nodes, worker_policy,
                                                           expected):
    monkeypatch.setattr(_nodes, "process_on_node", lambda node: False)  # as on a multi-node machine
    ids = tuple(node0 if n == "N" else node0 + 1 for n in nodes)
    monkeypatch.setattr(_nodes._kernel, "thread_policy", lambda: (mode, ids))
    share = NodeShare(node0, tuple(sorted(os.sched_getaffinity(0))), 1)
    assert _nodes.caller_on_node(share, worker_policy) is expected


def test_caller_on_node_needs_the_callers_cpus_on_the_node(monkeypatch, node0):
    monkeypatch.setattr(_nodes, "process_on_node", lambda node: False)
    monkeypatch.setattr(_nodes._kernel, "thread_policy", lambda: ("default", ()))
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    assert _nodes.caller_on_node(NodeShare(node0, cpus, 1))
    if len(cpus) > 1:
        assert not _nodes.caller_on_node(NodeShare(node0, cpus[:1], 1))
    monkeypatch.setattr(_nodes, "process_on_node", lambda node: True)  # a one-node process: any thread
    assert _nodes.caller_on_node(NodeShare(node0, cpus[:1], 1), "bind")
