"""The planned executor and the baselines against the float64 reference, on one node.

Plans made for nodes [0, 1, 2] run here with every plan node mapped onto node 0
(``node_map``): each keeps its own arena and worker team, so multi-block execution, gathers of
regions spanning several nodes' blocks and cross-node waits all run for real.
"""
from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

import numamem
import numamem.models
from numamem.planner import GraphBuilder, plan
from numamem.runtime.executor import BaselineExecutor, Executor, MODES, make_executor
from numamem.runtime.locality import bytes_by_node
from numamem.runtime.randgraph import KINDS, OPS_COVERED, random_graph
from numamem.runtime.reference import reference_forward
from numamem.runtime.runner import plan_traffic, random_tensors

RTOL = 1e-4
ONE = {0: 0}
THREE = {0: 0, 1: 0, 2: 0}


def rel_err(y, ref):
    ref = np.asarray(ref, np.float64)
    return np.linalg.norm(np.asarray(y, np.float64) - ref) / max(np.linalg.norm(ref), 1e-30)


def _case(seed, kind):
    g = random_graph(seed, kind)
    ws, xs = random_tensors(g, seed)
    return g, ws, xs, reference_forward(g, ws, xs)


def test_random_graphs_use_every_op():
    ops = {l.op for k in KINDS for s in range(3) for l in random_graph(s, k).layers}
    assert ops == set(OPS_COVERED)
    from numamem.runtime.kernels import KERNELS

    assert ops == set(KERNELS)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("nodes", [[0], [0, 1, 2]], ids=["1node", "3nodes"])
def test_every_mode_matches_reference(seed, kind, nodes):
    g, ws, xs, ref = _case(seed, kind)
    for batch_axis_only in (False, True):
        p = plan(g, nodes=nodes, batch_axis_only=batch_axis_only)
        for mode in MODES:
            # workers=2 cuts every node's block among two threads as well
            for workers in (None, 2):
                with make_executor(mode, p, g, node_map={n: 0 for n in nodes}, workers=workers) as ex:
                    ex.load_weights(ws)
                    y = ex.run(xs)
                for name in g.outputs:
                    err = rel_err(y[name], ref[name])
                    assert err <= RTOL, (mode, workers, batch_axis_only, name, err)


def test_cross_node_dependencies_are_exercised():
    # A feature split (the default for a small-batch dense stack) makes every node read every
    # other node's block of the previous layer: gathers and waits on other nodes.
    g = numamem.models.get("mlp", batch=3, features=(40, 96, 96, 24))
    p = plan(g, nodes=[0, 1, 2])
    assert p.remote_bytes > 0
    ws, xs = random_tensors(g, 1)
    ref = reference_forward(g, ws, xs)
    with Executor(p, node_map=THREE, workers=2) as ex:
        assert any(t.deps for ts in ex._tasks for t in ts)
        assert any(t.has_gathers for ts in ex._tasks for t in ts)
        assert ex.memory()["staging_bytes"] > 0
        ex.load_weights(ws)
        ex.set_inputs(xs)
        for _ in range(5):  # repeated steps: reused memory and waits must hold every time
            ex.step()
            assert rel_err(ex.outputs()[g.outputs[0]], ref[g.outputs[0]]) <= RTOL


def test_batch_split_needs_no_cross_node_waits():
    g = random_graph(1, "cnn", batch=4)
    p = plan(g, nodes=[0, 1, 2], batch_axis_only=True)
    assert p.remote_bytes == 0
    with Executor(p, node_map=THREE) as ex:
        assert not any(t.deps or t.has_gathers for ts in ex._tasks for t in ts)


@pytest.mark.parametrize("kind", KINDS)
def test_plan_traffic_matches_the_plans_accounting(kind):
    for seed in range(3):
        g = random_graph(seed, kind)
        for nodes in ([0, 1], [0, 1, 2]):
            p = plan(g, nodes=nodes)
            t = plan_traffic(p, g)
            for lp, d in zip(p.layers, t):
                local = sum(b for (s, r), b in d.items() if s == r)
                remote = sum(b for (s, r), b in d.items() if s != r)
                assert (local, remote) == (lp.local_bytes, lp.remote_bytes), lp.name


def test_measured_traffic_counts_the_bytes_the_plan_reads():
    # Here every plan node is on physical node 0, so all reads are local; their total must still
    # be exactly the bytes the plan says the blocks read (local + remote), layer by layer.
    g = random_graph(0, "transformer")
    p = plan(g, nodes=[0, 1, 2])
    ws, xs = random_tensors(g, 0)
    with Executor(p, node_map=THREE) as ex:
        ex.load_weights(ws)
        ex.run(xs)
        t = ex.traffic()
    assert t["remote_bytes"] == 0
    assert t["local_bytes"] == p.local_bytes + p.remote_bytes
    for lp, lt in zip(p.layers, t["layers"]):
        assert lt["local_bytes"] == lp.local_bytes + lp.remote_bytes
    with BaselineExecutor(p, "first-touch", node_map=THREE) as ex:
        ex.load_weights(ws)
        ex.set_inputs(xs)
        ex.step(account=True)
        tb = ex.traffic()
    # The baseline reads one whole copy of each tensor where the plan reads its node's replica:
    # the same regions, so the same byte count.
    assert tb["local_bytes"] + tb["remote_bytes"] == p.local_bytes + p.remote_bytes


def test_arena_pages_are_on_their_node():
    g = numamem.models.get("mlp", batch=4, features=(64, 512, 128))
    p = plan(g, nodes=[0])
    with Executor(p, node_map=ONE) as ex:
        pages = ex.pages()
        assert set(pages) == {"0"}
        assert set(pages["0"]) == {"0"}
        assert pages["0"]["0"] * 4096 >= p.arenas[0].size
        for a in ex.arenas:
            assert numamem.placement(a).bytes_per_node == {0: a.nbytes}
        views = ex.block_views()
        assert sorted((v.block.tensor, v.block.index) for v in views) == sorted((b.tensor, b.index) for b in p.blocks)
        for v in views:
            assert v.array.shape == tuple(hi - lo for lo, hi in v.box)
            assert np.shares_memory(v.array, ex.arenas[0])


def test_planned_step_allocates_nothing_the_plan_does_not_account_for():
    # Activations of several MiB: a mode that allocated them while running would show it.
    g = numamem.models.get("mlp", batch=64, features=(256, 2048, 2048, 256))
    ws, xs = random_tensors(g, 0)
    act = max(g.nbytes(n) for n in g.activations)
    assert act >= 512 * 1024
    peaks = {}
    for mode in ("planned", "first-touch"):
        with make_executor(mode, plan(g, nodes=[0]), g, workers=2) as ex:
            ex.load_weights(ws)
            ex.set_inputs(xs)
            ex.step()
            tracemalloc.start()
            try:
                ex.step()
                peaks[mode] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    # planned: Python objects and NumPy's small ufunc buffers only; first-touch: every output.
    assert peaks["planned"] < 256 * 1024, peaks
    assert peaks["first-touch"] >= act, peaks


def test_sub_blocks_cover_layers_with_more_workers_than_rows():
    g = random_graph(3, "cnn", batch=1)
    ws, xs = random_tensors(g, 3)
    ref = reference_forward(g, ws, xs)
    with Executor(plan(g, nodes=[0]), workers=5) as ex:
        ex.load_weights(ws)
        y = ex.run(xs)
    assert rel_err(y[g.outputs[0]], ref[g.outputs[0]]) <= RTOL


def test_layer_seconds_and_step_time():
    g = random_graph(2, "transformer")
    ws, xs = random_tensors(g, 2)
    with Executor(plan(g, nodes=[0, 1]), node_map={0: 0, 1: 0}) as ex:
        ex.load_weights(ws)
        ex.set_inputs(xs)
        total = ex.step()
        assert len(ex.layer_seconds) == len(g.layers)
        assert all(t >= 0 for t in ex.layer_seconds)
        assert 0 < total
        assert ex.cpu_seconds > 0


def test_missing_and_misshaped_weights_and_inputs_are_named():
    g = random_graph(0, "cnn")
    ws, xs = random_tensors(g, 0)
    p = plan(g, nodes=[0])
    for mode in MODES:
        with make_executor(mode, p, g) as ex:
            bad = dict(ws)
            del bad["c1.w"]
            with pytest.raises(ValueError, match="weight 'c1.w' is missing"):
                ex.load_weights(bad)
            bad = dict(ws, **{"fc2.w": np.zeros((3, 3), np.float32)})
            with pytest.raises(ValueError, match=r"weight 'fc2.w' has shape \[3, 3\]"):
                ex.load_weights(bad)
            with pytest.raises(ValueError, match="input 'x' is missing"):
                ex.set_inputs({})
            with pytest.raises(ValueError, match="no inputs"):
                ex.step()


def test_nodes_that_do_not_exist_are_refused():
    g = random_graph(0, "cnn")
    p = plan(g, nodes=[0, 1])
    with pytest.raises(ValueError, match=r"plan.nodes=1: no such node"):
        Executor(p)
    with pytest.raises(ValueError, match=r"node_map\[1\]=9: no such node"):
        BaselineExecutor(p, node_map={0: 0, 1: 9})
    with pytest.raises(ValueError, match="plan node 1"):
        Executor(p, node_map={0: 0})
    with pytest.raises(ValueError, match="unknown mode"):
        make_executor("fast", p, g)


def test_a_failing_worker_aborts_the_step_without_hanging():
    g = numamem.models.get("mlp", batch=3, features=(40, 96, 96, 24))
    p = plan(g, nodes=[0, 1, 2])
    ws, xs = random_tensors(g, 0)
    with Executor(p, node_map=THREE) as ex:
        ex.load_weights(ws)
        ex.set_inputs(xs)
        sub = ex._tasks[1][0].calls[0][0]

        def boom(*args):
            raise FloatingPointError("injected")

        good, sub.kernel = sub.kernel, boom
        result = {}

        def target():
            try:
                ex.step()
            except BaseException as exc:  # the outcome is checked below
                result["exc"] = exc

        t = threading.Thread(target=target)
        t.start()
        t.join(60)
        assert not t.is_alive(), "step hung after a worker failed"
        assert isinstance(result.get("exc"), FloatingPointError)
        sub.kernel = good  # and the executor still works afterwards
        ref = reference_forward(g, ws, xs)
        y = ex.run(xs)
        assert rel_err(y[g.outputs[0]], ref[g.outputs[0]]) <= RTOL


def test_bytes_by_node_counts_only_the_elements_of_a_view():
    a = numamem.zeros((64, 1024), np.float32, node=0)
    assert bytes_by_node(a) == {0: a.nbytes}
    assert bytes_by_node(a[:, :16]) == {0: 64 * 16 * 4}
    assert bytes_by_node(a[3:5, 100:300]) == {0: 2 * 200 * 4}
    assert bytes_by_node(a[::2]) == {0: a.nbytes // 2}
    lazy = numamem.empty((4096,), np.float64, node=0, populate=False)
    assert bytes_by_node(lazy) == {-1: lazy.nbytes}
    lazy[:512] = 1  # 4 KiB faulted in
    assert bytes_by_node(lazy) == {0: 4096, -1: lazy.nbytes - 4096}
    assert bytes_by_node(np.zeros(0)) == {}


def test_executor_needs_a_graph():
    g = GraphBuilder("t")
    x = g.input("x", (2, 3))
    g.output(g.relu(x))
    p = plan(g.build(), nodes=[0])
    p.source = None
    with pytest.raises(ValueError, match="graph"):
        Executor(p)


@pytest.mark.parametrize("name", ["numamem.runtime.executor", "numamem.runtime.randgraph",
                                  "numamem.runtime.locality", "numamem.threads"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_groups_of_a_memory_only_node_compute_on_the_nearest_cpu_node(fake_topology, topo, node0):
    from numamem.runtime.base import resolve_groups

    cxl = max(topo.node_ids) + 1
    nodes = tuple(topo.nodes) + (numamem.Node(cxl, (), 1 << 30, 1 << 30, {}),)
    distances = dict(topo.distances)
    for n in topo.node_ids:
        distances[cxl, n] = distances[n, cxl] = 20 if n == node0 else 30
    distances[cxl, cxl] = 10
    fake_topology(nodes=nodes, distances=distances, allowed_nodes=topo.allowed_nodes | {cxl})
    g = random_graph(0, "cnn")
    p = plan(g, nodes=[0, 1])
    groups = resolve_groups(p, {0: node0, 1: cxl}, None)
    cpus = len(topo.usable_cpus(node0))
    assert [(gr.mem_node, gr.cpu_node) for gr in groups] == [(node0, node0), (cxl, node0)]
    # the node's CPUs are shared by the two groups computing on it
    assert [gr.workers for gr in groups] == [max(1, cpus // 2)] * 2
    with pytest.raises(ValueError, match="workers must be >= 1"):
        resolve_groups(p, {0: node0, 1: cxl}, {0: 0})


def test_running_before_load_weights_is_refused():
    # Issue 12 item 9: the planned arena is uninitialised until load_weights, and a run silently
    # returned zeros; the baselines failed with a KeyError naming a weight.
    g = random_graph(0, "cnn")
    ws, xs = random_tensors(g, 0)
    p = plan(g, nodes=[0, 1])
    for mode in MODES:
        with make_executor(mode, p, g, node_map={0: 0, 1: 0}) as ex:
            with pytest.raises(ValueError, match=r"weights are not loaded: call load_weights\(\)"):
                ex.run(xs)
            ex.set_inputs(xs)
            with pytest.raises(ValueError, match="load_weights"):
                ex.step()
            bad = dict(ws)
            del bad[g.weights[0]]
            with pytest.raises(ValueError, match="is missing"):
                ex.load_weights(bad)
            with pytest.raises(ValueError, match="load_weights"):  # a refused load loads nothing
                ex.step()
            ex.load_weights(ws)
            ref = reference_forward(g, ws, xs)
            out = ex.run(xs)
            assert all(rel_err(out[n], ref[n]) < RTOL for n in g.outputs)


def test_a_graph_without_weights_runs_without_load_weights():
    b = GraphBuilder("noweights")
    b.output(b.layer("relu", [b.input("x", (4, 8))]))
    g = b.build()
    x = np.arange(-16, 16, dtype=np.float32).reshape(4, 8)
    for mode in MODES:
        with make_executor(mode, plan(g, nodes=[0]), g) as ex:
            (y,) = ex.run({"x": x}).values()
            np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_outputs_before_a_step_are_refused():
    # The class of item 9: outputs() before any step returned the arena's zeros (planned) or
    # nothing at all (baselines), without an error.
    g = random_graph(1, "cnn")
    ws, xs = random_tensors(g, 1)
    p = plan(g, nodes=[0])
    for mode in MODES:
        ex = make_executor(mode, p, g)
        with ex:
            ex.load_weights(ws)
            ex.set_inputs(xs)
            with pytest.raises(ValueError, match=r"no outputs: call step\(\) or run\(\) first"):
                ex.outputs()
            ex.step()
            assert set(ex.outputs()) == set(g.outputs)
        with pytest.raises(ValueError, match="executor is closed"):
            ex.outputs()
