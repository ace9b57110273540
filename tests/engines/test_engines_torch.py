"""PyTorch on placed memory, on the host: place_module, replicas, NodeReplicas, graph modules."""
from __future__ import annotations

import gc
import json

import numpy as np
import pytest

# The test command installs the torch extra: a missing package fails here, never skips.
import torch  # noqa: E402
from torch import nn  # noqa: E402

import numamem  # noqa: E402
import numamem.models  # noqa: E402
from numamem.engines import compare, format_report  # noqa: E402
from numamem.engines.graph_torch import graph_module  # noqa: E402
from numamem.engines.torch import NodeReplicas, module_placement, place_module, replicas  # noqa: E402
from numamem.planner import GraphBuilder  # noqa: E402
from numamem.runtime.reference import reference_forward  # noqa: E402
from numamem.runtime.runner import random_tensors, write_json  # noqa: E402


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 8 * 8, 10)).eval()


def transformer():
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(64, 4, 128, batch_first=True).eval()


def _arena_of(module):
    return module._numamem_placed.arena


def _in_arena(t, arena) -> bool:
    lo = arena.buffer.ctypes.data
    return t.numel() == 0 or lo <= t.data_ptr() < lo + arena.buffer.nbytes


def test_place_module_rehomes_parameters_and_buffers_in_place(node0):
    m = small_cnn()
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        want = m(x)
    params = {n: p for n, p in m.named_parameters()}
    total = sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))
    assert place_module(m, node0) is m
    arena = _arena_of(m)
    for n, p in m.named_parameters():
        assert p is params[n]  # identity kept: optimizers and tied weights still see them
        assert _in_arena(p, arena), n
    for n, b in m.named_buffers():  # BatchNorm's running stats and counter
        assert _in_arena(b, arena), n
    assert module_placement(m) == {node0: total}
    with torch.inference_mode():
        np.testing.assert_array_equal(m(x).numpy(), want.numpy())


def test_place_module_keeps_tied_weights_tied(node0):
    emb = nn.Embedding(50, 8)
    head = nn.Linear(8, 50, bias=False)
    head.weight = emb.weight
    m = nn.ModuleDict({"emb": emb, "head": head})
    place_module(m, node0)
    assert m["emb"].weight is m["head"].weight
    assert _in_arena(m["head"].weight, _arena_of(m))


def test_replicas_copy_once_into_each_node_and_leave_the_module(node0):
    m = small_cnn()
    ptrs = {n: p.data_ptr() for n, p in m.named_parameters()}
    (rep,) = replicas(m, [node0])
    assert {n: p.data_ptr() for n, p in m.named_parameters()} == ptrs  # original untouched
    arena = _arena_of(rep)
    for (n, p), (_, q) in zip(m.named_parameters(), rep.named_parameters()):
        assert _in_arena(q, arena) and torch.equal(p, q) and q.requires_grad == p.requires_grad, n
    assert module_placement(rep) == {node0: sum(a.nbytes for a in arena)}


@pytest.mark.parametrize("build, shape", [(small_cnn, (7, 3, 16, 16)), (transformer, (5, 12, 64))])
def test_node_replicas_equal_the_module(build, shape, node0):
    m = build()
    x = torch.randn(*shape)
    with torch.inference_mode():
        want = m(x)
    with NodeReplicas(m, threads_per_node=2) as r:
        got = r(x)
        assert r.nodes == [s.node for s in r.shares]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_node_replicas_set_threads_per_worker_and_give_the_caller_its_own(node0):
    before = torch.get_num_threads()
    with NodeReplicas(small_cnn(), nodes=[node0], threads_per_node=1) as r:
        assert r._workers[0].call(torch.get_num_threads) == 1
        assert torch.get_num_threads() == before


def test_node_replicas_placement_and_close(node0, mapping_counter):
    m = small_cnn()
    r = NodeReplicas(m, nodes=[node0])
    r.warm_up(torch.randn(2, 3, 16, 16))
    p = r.placement()
    (s,) = p["sessions"]
    assert s["node"] == node0 and s["binding"] == "local"
    assert s["weights_bytes_per_node"] == {node0: _arena_of(r.replicas[0]).nbytes}
    json.dumps(p)
    assert mapping_counter()[0] >= 1
    r.close()
    gc.collect()
    mapped, unmapped = mapping_counter()
    assert mapped == unmapped  # the replica's arena went with its tensors
    with pytest.raises(ValueError, match="closed"):
        r(torch.randn(1, 3, 16, 16))


def test_a_placed_tensor_keeps_its_memory_alive(node0, mapping_counter):
    m = place_module(nn.Linear(64, 64), node0)
    w = m.weight.detach()
    want = w.clone()
    del m
    gc.collect()
    assert mapping_counter() == (1, 0)  # the tensor still holds the arena
    torch.testing.assert_close(w, want)
    del w
    assert mapping_counter() == (1, 1)


def test_node_replicas_check_inputs(node0):
    with NodeReplicas(small_cnn(), nodes=[node0]) as r:
        with pytest.raises(ValueError, match="same batch"):
            r(torch.randn(2, 3, 16, 16), torch.randn(3, 1))
        with pytest.raises(ValueError, match="at least one input"):
            r()


def test_only_dense_cpu_tensors_are_placed(node0):
    m = nn.Linear(4, 4)
    m.weight = nn.Parameter(m.weight.detach().to_sparse())
    with pytest.raises(ValueError, match="dense CPU"):
        place_module(m, node0)


def test_graph_module_matches_the_reference():
    b = GraphBuilder("cnn_small")
    x = b.input("x", (2, 3, 8, 8))
    h = b.conv2d(x, b.weight("c1.w", (8, 3, 3, 3)), b.weight("c1.b", (8,)), padding=1, activation="relu")
    h = b.maxpool2d(h, 2)
    h = b.batchnorm(h, b.weight("bn.s", (8,)), b.weight("bn.t", (8,)))
    h = b.avgpool2d(h, 2, padding=1)
    h = b.global_avgpool(h)
    y = b.dense(h, b.weight("fc.w", (8, 5)), b.weight("fc.b", (5,)), activation="gelu")
    b.output(b.softmax(y))
    for g in (b.build(), numamem.models.get("mlp", batch=3, features=(16, 32, 4)),
              numamem.models.get("bert_base", batch=2, layers=1, seq_len=4, hidden=32, heads=4,
                                 intermediate=64, vocab=50)):
        ws, xs = random_tensors(g, 3)
        m = graph_module(g, ws)
        with torch.inference_mode():
            ys = m(*[torch.from_numpy(np.asarray(xs[n])) for n in g.inputs])
        ref = reference_forward(g, ws, xs)
        for name, yv in zip(g.outputs, ys):
            r = ref[name]
            assert np.linalg.norm(yv.numpy() - r) / np.linalg.norm(r) < 1e-5, (g.name, name)


def test_graph_module_runs_any_part_of_the_batch():
    g = numamem.models.get("bert_base", batch=4, layers=1, seq_len=4, hidden=32, heads=4,
                           intermediate=64, vocab=50)
    ws, xs = random_tensors(g, 0)
    m = graph_module(g, ws)
    ids = torch.from_numpy(xs[g.inputs[0]])
    with torch.inference_mode():
        whole = m(ids)[0]
        parts = torch.cat([m(ids[:1])[0], m(ids[1:])[0]])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="weights lacks"):
        graph_module(g, {})


def test_compare_a_builtin_graph(tmp_path, node0):
    g = numamem.models.get("mlp", batch=6, features=(32, 64, 8))
    report = compare(g, iters=2, nodes=[node0])
    assert report["engine"] == "torch" and report["graph"] == "mlp" and report["batch"] == 6
    assert report["ok"] and set(report["modes"]) == {"default", "per-node"}
    d, p = report["modes"]["default"], report["modes"]["per-node"]
    assert d["pages"] == {"weights": {str(node0): d["pages"]["weights"][str(node0)]}}
    assert p["weights_bytes_per_node"] == {str(node0): report["weight_bytes"]}
    assert p["speedup_vs_default"] > 0
    assert "under torch" in format_report(report)
    write_json(report, tmp_path / "r.json")


def test_compare_a_graph_with_given_weights_and_inputs(node0):
    g = numamem.models.get("mlp", batch=4, features=(16, 32, 8))
    ws, xs = random_tensors(g, 11)
    report = compare(g, weights=ws, feeds=xs, iters=1, nodes=[node0], keep_outputs=True)
    ref = reference_forward(g, ws, xs)[g.outputs[0]]
    assert report["outputs"]["names"] == g.outputs
    for mode in ("default", "per-node"):
        got = report["_outputs"][mode][g.outputs[0]]
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-5, mode
    with pytest.raises(ValueError, match="weights"):
        compare(transformer(), weights=ws, feeds=torch.randn(1, 12, 64), nodes=[node0])


def test_compare_a_module_needs_feeds(node0):
    with pytest.raises(ValueError, match="feeds"):
        compare(transformer(), nodes=[node0])
    report = compare(transformer(), feeds=torch.randn(3, 12, 64), iters=1, nodes=[node0], keep_outputs=True)
    assert report["ok"]
    assert report["outputs"]["names"] == ["output0"]
    np.testing.assert_allclose(report["_outputs"]["per-node"]["output0"], report["_outputs"]["default"]["output0"],
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ small batches
def _threads_running(monkeypatch, outputs=None):
    """Record the thread (and the output) of each replica call."""
    import threading

    seen = []
    real = NodeReplicas._forward

    def spy(rep, args):
        seen.append(threading.current_thread())
        out = real(rep, args)
        if outputs is not None:
            outputs.append(out)
        return out

    monkeypatch.setattr(NodeReplicas, "_forward", staticmethod(spy))
    return seen


def test_single_part_runs_on_the_calling_thread_without_copies(monkeypatch, node0):
    import threading

    from numamem.engines import _nodes
    from numamem.engines import torch as et

    m = transformer()
    x = torch.randn(1, 12, 64)
    with torch.inference_mode():
        want = m(x)
    outputs, joined = [], []
    seen = _threads_running(monkeypatch, outputs)
    monkeypatch.setattr(et, "_join", lambda outs: joined.append(outs))
    with NodeReplicas(m, nodes=[node0], threads_per_node=torch.get_num_threads()) as r:
        got = r(x)
    assert joined == [] and got is outputs[-1]  # the replica's own output, not a copy
    # A one-node process cannot work or allocate anywhere else, so the caller runs the part.
    if _nodes.process_on_node(node0):
        assert seen == [threading.current_thread()]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_replica_with_other_threads_than_the_caller_runs_on_its_worker(monkeypatch, node0):
    import threading

    m = small_cnn()
    seen = _threads_running(monkeypatch)
    threads = 1 if torch.get_num_threads() != 1 else 2
    x = torch.randn(1, 3, 16, 16)
    with NodeReplicas(m, nodes=[node0], threads_per_node=threads) as r:
        got = r(x)
    assert len(seen) == 1 and seen[0] is not threading.current_thread()
    assert seen[0].name.startswith(f"numamem-node{node0}")
    with torch.inference_mode():
        torch.testing.assert_close(got, m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_batches_smaller_or_larger_than_the_node_count_equal_the_module(monkeypatch, node0, batch):
    from numamem.engines import _nodes
    from numamem.engines import torch as et

    share = _nodes.resolve_nodes([node0])[0]
    monkeypatch.setattr(et, "resolve_nodes", lambda nodes, threads=None: [share, share])
    m = transformer()
    x = torch.randn(batch, 12, 64)
    with torch.inference_mode():
        want = m(x)
    with NodeReplicas(m) as r:
        assert len(r.replicas) == 2
        assert [b - a for a, b in r.split(batch)] == {1: [1, 0], 2: [1, 1], 3: [2, 1]}[batch]
        got = r(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_join_of_one_replicas_outputs_is_those_outputs():
    from numamem.engines import torch as et

    t, u = torch.ones(2, 3), torch.zeros(2)
    assert et._join([t]) is t
    assert et._join([(t, u)])[0] is t
    assert et._join([t, t]).shape == (4, 3)
