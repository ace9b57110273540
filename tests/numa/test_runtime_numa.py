"""The runtime on a multi-node guest: planned blocks on their nodes, locality, correctness.

Placement is witnessed with ``kernelcheck`` (``move_pages`` through ctypes), not numamem. Graphs
are small: the guest's CPU is emulated.
"""
from __future__ import annotations


import numpy as np
import pytest

import numamem
import numamem.models
from numamem.planner import plan
from numamem.runtime.executor import MODES, BaselineExecutor, Executor, make_executor
from numamem.runtime.randgraph import KINDS, random_graph
from numamem.runtime.reference import reference_forward
from numamem.runtime.runner import random_tensors

import kernelcheck as kc


def rel_err(y, ref):
    ref = np.asarray(ref, np.float64)
    return np.linalg.norm(np.asarray(y, np.float64) - ref) / max(np.linalg.norm(ref), 1e-30)



def _in_thread(fn):
    return kc.run_in_thread(fn, timeout=600)


def test_planned_blocks_are_on_their_nodes(memory_nodes):
    g = numamem.models.get("mlp", batch=4, features=(256, 512, 64))
    p = plan(g, nodes=memory_nodes)
    ws, xs = random_tensors(g, 0)
    with Executor(p) as ex:
        ex.load_weights(ws)
        y = ex.run(xs)
        kc.assert_executor_on_its_nodes(ex, p)
        # the executor's own report agrees with the witness
        assert ex.pages() == {str(n): {str(n): a.nbytes // kc.PAGE} for n, a in zip(p.nodes, ex.arenas)}
    ref = reference_forward(g, ws, xs)
    assert rel_err(y[g.outputs[0]], ref[g.outputs[0]]) <= 1e-4


@pytest.mark.requires("two_cpu_nodes")
def test_batch_split_reads_nothing_remote_while_first_touch_does(expected):
    nodes = [n["id"] for n in expected["nodes"] if n["cpus"] and n["mem_mib"] > 0][:2]
    # One 40 MiB weight: bigger than glibc's largest mmap threshold, so first touch gets fresh
    # pages and puts them on the loading thread's node. Replicated by the plan (the limit is
    # raised), so every planned read is local.
    g = numamem.models.get("mlp", batch=4, features=(1280, 8192, 8))
    p = plan(g, nodes=nodes, batch_axis_only=True, replicate_bytes=64 << 20)
    assert p.remote_bytes == 0
    ws, xs = random_tensors(g, 0)
    with Executor(p) as ex:
        ex.load_weights(ws)
        ex.run(xs)
        t = ex.traffic()
    assert t["remote_bytes"] == 0 and t["local_bytes"] > 0
    with BaselineExecutor(p, "first-touch") as ft:
        # the framework's loading thread runs on the first node
        _in_thread(lambda: (numamem.bind_thread(nodes[0], "local"), ft.load_weights(ws), ft.set_inputs(xs)))
        w = ft._weights["fc1.w"]
        assert kc.histogram(kc.nodes_of(w[1:-1])) == {nodes[0]: len(kc.nodes_of(w[1:-1]))}
        ft.step(account=True)
        tb = ft.traffic()
    # the second node's workers read their (full) copy of fc1.w from the first node
    assert tb["per_node"][str(nodes[1])]["remote_bytes"] >= ws["fc1.w"].nbytes
    assert tb["remote_bytes"] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_random_graph_on_every_memory_node_matches_reference(memory_nodes, kind):
    g = random_graph(7, kind, batch=3)
    ws, xs = random_tensors(g, 7)
    ref = reference_forward(g, ws, xs)
    p = plan(g, nodes=memory_nodes)
    for mode in MODES:
        with make_executor(mode, p, g) as ex:
            ex.load_weights(ws)
            y = ex.run(xs)
        for name in g.outputs:
            assert rel_err(y[name], ref[name]) <= 1e-4, (mode, name)
