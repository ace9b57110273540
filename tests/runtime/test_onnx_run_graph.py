"""Imported ONNX models through ``numamem.run_graph`` (every mode), against ONNX Runtime.

These need the executor (``numamem.runtime.executor``) to run on the kernels package; they are
the end-to-end check that an imported graph, its weights (``onnx_weights``) and inputs keyed by
the model's own names run like a built-in model.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
import pytest

# The test command installs these extras: a missing package fails here, never skips.
import onnx  # noqa: E402,F401
import onnxruntime  # noqa: E402,F401

import onnx  # noqa: E402

import numamem  # noqa: E402
import onnx_models as M  # noqa: E402
from numamem.planner import from_onnx, onnx_weights  # noqa: E402
from numamem.engines.ort_baseline import OnnxRuntimeBaseline  # noqa: E402
from numamem.engines.ort_baseline import softmax_logits as ort_softmax_logits  # noqa: E402
from numamem.planner import plan  # noqa: E402
from numamem.planner.onnx import placeholder_values, with_values  # noqa: E402
from numamem.runtime import runner  # noqa: E402
from numamem.runtime.executor import MODES, make_executor  # noqa: E402

CASES = {
    "bert_opset17": (lambda: M.bert_layer(17), {"batch": 2},
                     lambda: {"ids": np.random.default_rng(1).integers(0, 50, (2, 8)).astype(np.int64)}),
    "bert_opset14": (lambda: M.bert_layer(14), {"batch": 2},
                     lambda: {"ids": np.random.default_rng(1).integers(0, 50, (2, 8)).astype(np.int64)}),
    "mobilenet_block": (M.mobilenet_block, {"batch": 2},
                        lambda: {"x": np.random.default_rng(2).standard_normal((2, 16, 10, 10)).astype(np.float32)}),
    "cnn_windows": (M.cnn_windows, {},
                    lambda: {"x": np.random.default_rng(3).standard_normal((2, 3, 17, 15)).astype(np.float32)}),
}


@pytest.mark.parametrize("name", CASES)
def test_run_graph_every_mode_matches_onnx_runtime(name):
    make, kw, feeds = CASES[name]
    m = make()
    xs = feeds()
    g = from_onnx(m, **kw)
    report = numamem.run_graph(g, iters=1, weights=onnx_weights(m, **kw), inputs=xs, keep_outputs=True)
    assert report["ok"]
    ref = M.ort_outputs(m, xs)
    for mode, outs in report["_outputs"].items():
        for o in g.outputs:
            assert M.rel_err(outs[o], ref[o]) < 1e-4, (name, mode, o)


# ------------------------------------------------------------------ the light models, every mode
#: Light models run in every mode on 1, 2 and 3 plan nodes by default (cheap here); the others
#: with --stress (resnet50 to vgg19: minutes each on two cores).
DEFAULT_LIGHT = ("squeezenet", "shufflenet")
NODE_COUNTS = (1, 2, 3)


@dataclass
class LightCase:
    """A light model as numamem runs it: the graph with its final softmax's logits as outputs
    too, the placeholder weights, inputs, and ONNX Runtime's outputs and logits by the graph's
    names."""

    graph: object
    weights: dict
    inputs: dict
    ort: dict
    logits: dict


@functools.lru_cache(maxsize=1)  # one model at a time: vgg19's weights are 550 MB
def light_case(name: str) -> LightCase:
    m = onnx.load(M.light_path(name))
    vals = placeholder_values(m, seed=0)
    g = from_onnx(m)
    logits = runner.softmax_logits(g)
    xs = {n: np.random.default_rng(4).standard_normal(g.tensor(n).shape).astype(np.float32) for n in g.inputs}
    mv = with_values(m, vals)
    onnx_logits = ort_softmax_logits(mv)
    assert set(onnx_logits) == set(logits), "numamem and ONNX find the same final softmaxes"
    for n in onnx_logits.values():
        mv.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    got = M.ort_outputs(mv, xs)
    ref = {o: got[o] for o in g.outputs}
    for o, n in logits.items():
        ref[n] = got[onnx_logits[o]].reshape(g.tensor(n).shape)
    return LightCase(runner.with_outputs(g, list(logits.values())), onnx_weights(m, values=vals), xs, ref, logits)


@pytest.mark.parametrize("name,nodes,mode", [(n, k, mode) for n in M.LIGHT for k in NODE_COUNTS for mode in MODES])
def test_light_model_every_mode_matches_onnx_runtime(name, nodes, mode, stress):
    """The real runtime (planned executor, first-touch and interleave baselines) on plans of 1, 2
    and 3 nodes, each plan node mapped onto node 0 here, against ONNX Runtime: outputs and logits."""
    if name not in DEFAULT_LIGHT and not stress:
        pytest.skip("the larger light models take minutes here: run with --stress")
    case = light_case(name)
    g = case.graph
    assert name not in ("resnet50", "squeezenet", "vgg19") or case.logits, "these end in a softmax"
    p = plan(g, nodes=list(range(nodes)))
    p.verify()
    t0 = time.perf_counter()
    with make_executor(mode, p, g, node_map={n: 0 for n in range(nodes)}) as ex:
        ex.load_weights(case.weights)
        y = ex.run(case.inputs)
    seconds = time.perf_counter() - t0
    errs = {n: M.rel_err(y[n], case.ort[n]) for n in g.outputs}
    logit_names = set(case.logits.values())
    out_err = max(e for n, e in errs.items() if n not in logit_names)
    logit_err = max((errs[n] for n in logit_names), default=float("nan"))
    # One line per case for the closing note's table (pytest -s).
    print(f"\nLIGHT-RUN {name} nodes={nodes} mode={mode} outputs_rel_err={out_err:.2e} "
          f"logits_rel_err={logit_err:.2e} seconds={seconds:.1f}")
    for n, e in errs.items():
        assert e < 1e-4, (name, nodes, mode, n, e)


def test_run_graph_light_squeezenet_compares_outputs_and_logits_with_onnx_runtime():
    m = onnx.load(M.light_path("squeezenet"))
    vals = placeholder_values(m, seed=0)
    g = from_onnx(m)
    xs = {n: np.random.default_rng(4).standard_normal(g.tensor(n).shape).astype(np.float32) for n in g.inputs}
    report = numamem.run_graph(g, iters=1, weights=onnx_weights(m, values=vals), inputs=xs, keep_outputs=True,
                               baseline=OnnxRuntimeBaseline(M.light_path("squeezenet"), vals))
    assert report["ok"]
    (out,) = g.outputs
    logits = report["reference"]["logits"][out]
    ref = M.ort_outputs(with_values(m, vals), xs)
    for mode, entry in report["modes"].items():
        assert set(entry["rel_err"]) == {out, logits}
        assert set(report["_outputs"][mode]) == {out}  # --outputs holds the model's outputs only
        assert M.rel_err(report["_outputs"][mode][out], ref[out]) < 1e-4
    assert set(report["onnxruntime"]["rel_err"]) == {out, logits}
    assert report["onnxruntime"]["max_rel_err"] < 1e-4
    assert f"{logits!r} for {out!r}" in runner.format_report(report)


def test_run_graph_fails_on_logits_that_the_softmax_hides(monkeypatch):
    # Logits shifted by a constant give the very same softmax: only the logits check can see it.
    g = from_onnx(M.mobilenet_block(), batch=2)
    ws = onnx_weights(M.mobilenet_block(), batch=2)
    true_ref = runner.float64_reference

    def shifted(graph, weights, inputs, independent=None):
        ref, basis = true_ref(graph, weights, inputs, independent)
        logits = [t for t in graph.outputs if t not in g.outputs]  # run_graph made them outputs
        assert logits, "the run checks the logits of mobilenet_block's final softmax"
        return {n: a + 1.0 if n in logits else a for n, a in ref.items()}, basis

    monkeypatch.setattr(runner, "float64_reference", shifted)
    report = numamem.run_graph(g, modes=["planned"], iters=1, weights=ws)
    (out,) = g.outputs
    logits = report["reference"]["logits"][out]
    entry = report["modes"]["planned"]
    assert entry["rel_err"][out] < 1e-6  # the probabilities agree ...
    assert entry["rel_err"][logits] > 1e-2  # ... the logits do not
    assert not report["ok"]


def test_run_graph_layer_with_no_splittable_axis():
    from numamem.planner import GraphBuilder

    b = GraphBuilder("unsplittable")
    x = b.input("x", (12,))
    s = b.output(b.softmax(b.layer("exp", [x]), axis=0))
    xs = {"x": np.random.default_rng(7).standard_normal(12).astype(np.float32)}
    report = numamem.run_graph(b.build(), iters=1, inputs=xs, keep_outputs=True)
    assert report["ok"]
    e = np.exp(xs["x"].astype(np.float64))
    ref = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
    for outs in report["_outputs"].values():
        assert M.rel_err(outs[s.name], ref) < 1e-6


def test_onnxruntime_baseline_gives_the_logits_of_a_final_softmax(tmp_path):
    path = str(tmp_path / "m.onnx")
    onnx.save(M.mobilenet_block(), path)
    x = np.random.default_rng(2).standard_normal((2, 16, 10, 10)).astype(np.float32)
    session = OnnxRuntimeBaseline(path).start({"x": x}, 1)
    session.step()
    assert set(session.outputs()) == {"probs"}  # the extra output stays apart
    (logits,) = session.logits().values()
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert M.rel_err(session.outputs()["probs"], e / e.sum(axis=1, keepdims=True)) < 1e-6
    session.close()
