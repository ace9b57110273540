"""Imported ONNX models through ``numamem.run_graph`` (every mode), against ONNX Runtime.

These need the executor (``numamem.runtime.executor``) to run on the kernels package; they are
the end-to-end check that an imported graph, its weights (``onnx_weights``) and inputs keyed by
the model's own names run like a built-in model.
"""
from __future__ import annotations

import numpy as np
import pytest

# The test command installs these extras: a missing package fails here, never skips.
import onnx  # noqa: E402,F401
import onnxruntime  # noqa: E402,F401

import onnx  # noqa: E402

import numamem  # noqa: E402
import onnx_models as M  # noqa: E402
from numamem.planner import from_onnx, onnx_weights  # noqa: E402
from numamem.planner.onnx import placeholder_values, with_values  # noqa: E402

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


def test_run_graph_light_squeezenet():
    m = onnx.load(M.light_path("squeezenet"))
    vals = placeholder_values(m, seed=0)
    g = from_onnx(m)
    xs = {n: np.random.default_rng(4).standard_normal(g.tensor(n).shape).astype(np.float32) for n in g.inputs}
    report = numamem.run_graph(g, iters=1, weights=onnx_weights(m, values=vals), inputs=xs, keep_outputs=True)
    ref = M.ort_outputs(with_values(m, vals), xs)
    for outs in report["_outputs"].values():
        for o in g.outputs:
            assert M.rel_err(outs[o], ref[o]) < 1e-4


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
