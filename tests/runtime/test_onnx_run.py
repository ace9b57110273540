"""Imported ONNX models computed as their plans split them, against ONNX Runtime on the same
weights and inputs (within 1e-4 relative, the run reports' tolerance)."""
from __future__ import annotations

import numpy as np
import pytest

# The test command installs these extras: a missing package fails here, never skips.
import onnx  # noqa: E402,F401
import onnxruntime  # noqa: E402,F401

import onnx  # noqa: E402

import onnx_models as M  # noqa: E402
from numamem.planner import GraphBuilder, from_onnx, onnx_weights, ops, plan  # noqa: E402
from numamem.planner.onnx import placeholder_values, with_values  # noqa: E402
from numamem.runtime.reference import reference_forward  # noqa: E402

RTOL = 1e-4


def _ids(shape, vocab=50):
    return np.random.default_rng(5).integers(0, vocab, shape).astype(np.int64)


def _x(shape):
    return np.random.default_rng(6).standard_normal(shape).astype(np.float32)


MODELS = {
    "bert_opset17": (lambda: M.bert_layer(17), {"batch": 2}, lambda: {"ids": _ids((2, 8))}),
    "bert_opset14": (lambda: M.bert_layer(14), {"batch": 2}, lambda: {"ids": _ids((2, 8))}),
    "bert_opset20_gelu": (lambda: M.bert_layer(20, gelu_op=True), {"batch": 3}, lambda: {"ids": _ids((3, 8))}),
    "mobilenet_block": (M.mobilenet_block, {"batch": 2}, lambda: {"x": _x((2, 16, 10, 10))}),
    "cnn_windows": (M.cnn_windows, {}, lambda: {"x": _x((2, 3, 17, 15))}),
    "cnn_shapes": (M.cnn_shapes, {}, lambda: {"x": _x((2, 4, 4, 5))}),
    "misc_opset18": (M.misc_opset18, {}, lambda: {"x": _x((2, 5, 6))}),
    "mobilenet_v3_block": (M.mobilenet_v3_block, {}, lambda: {"x": _x((2, 8, 9, 9))}),
    "conv1d_net": (M.conv1d_net, {}, lambda: {"x": _x((2, 4, 23))}),
}


@pytest.mark.parametrize("name", MODELS)
def test_model_matches_onnx_runtime_on_one_two_three_nodes(name):
    make, kw, feeds = MODELS[name]
    m = make()
    xs = feeds()
    g = from_onnx(m, **kw)
    ws = onnx_weights(m, **kw)
    ref = M.ort_outputs(m, xs)
    assert set(ref) == set(g.outputs)
    for n in (1, 2, 3):
        p = plan(g, nodes=list(range(n)))
        p.verify()
        env = M.run_blocks(g, p, ws, xs)
        for o in g.outputs:
            assert M.rel_err(env[o], ref[o]) < RTOL, (name, n, o)
    # The independent float64 reference agrees with ONNX Runtime too: the ops' semantics are ONNX's.
    env64 = reference_forward(g, ws, xs)
    for o in g.outputs:
        assert M.rel_err(ref[o], env64[o]) < RTOL


def test_split_axes_are_used():
    g = from_onnx(M.cnn_windows())
    p = plan(g, nodes=[0, 1, 2])
    assert {lp.axis for lp in p.layers} - {None}, "the windows model should be split, not placed whole"


def test_layer_with_no_splittable_axis_is_computed_whole_on_one_node():
    # A softmax over the only axis of a 1-D tensor splits nowhere: it must be placed whole.
    b = GraphBuilder("unsplittable")
    x = b.input("x", (12,))
    h = b.layer("exp", [x])
    s = b.output(b.softmax(h, axis=0))
    g = b.build()
    shapes, out = [g.tensor(h).shape], g.tensor(s).shape
    assert not any(ops.splittable("softmax", shapes, out, {"axis": 0}, a) for a in range(len(out)))
    p = plan(g, nodes=[0, 1, 2])
    p.verify()
    sm = next(lp for lp in p.layers if lp.op == "softmax")
    assert sm.axis is None and len(sm.nodes) == 1
    assert len(p.blocks_of(s.name)) == 1
    xs = {"x": _x((12,))}
    env = M.run_blocks(g, p, {}, xs)
    e = np.exp(xs["x"].astype(np.float64))
    ref = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
    assert M.rel_err(env[s.name], ref) < 1e-6


SMALL_LIGHT = ("squeezenet",)


@pytest.mark.parametrize("name", M.LIGHT)
def test_light_model_matches_onnx_runtime(name, stress):
    if name not in SMALL_LIGHT and not stress:
        pytest.skip("the larger light models take minutes here: run with --stress")
    m = onnx.load(M.light_path(name))
    vals = placeholder_values(m, seed=0)
    g = from_onnx(m)
    ws = onnx_weights(m, values=vals)
    xs = {n: _x(g.tensor(n).shape) for n in g.inputs}
    # Random weights can saturate the final softmax to one-hot: compare the logits too.
    checked = list(g.outputs) + [l.inputs[0] for l in g.layers if l.op == "softmax" and l.outputs[0] in g.outputs]
    mv = with_values(m, vals)
    for n in checked[len(g.outputs):]:
        mv.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    ref = M.ort_outputs(mv, xs)
    nodes = (1, 2, 3) if stress else (2,)
    for n in nodes:
        p = plan(g, nodes=list(range(n)))
        p.verify()
        env = M.run_blocks(g, p, ws, xs)
        for o in checked:
            assert M.rel_err(env[o], ref[o]) < RTOL, (name, n, o)


@pytest.mark.parametrize("opset", [9, 13])
def test_integer_exponent_and_clip_bounds_by_opset(opset):
    # Pow takes an integer exponent from opset 12; Clip takes its bounds as attributes before 11.
    from onnx import TensorProto, helper, numpy_helper

    if opset >= 11:
        two = numpy_helper.from_array(np.array(2, np.int64), "two")
        clip = helper.make_node("Clip", ["p", "lo", "hi"], ["y"])
        bounds = [numpy_helper.from_array(np.float32(0.5), "lo"), numpy_helper.from_array(np.float32(2.0), "hi")]
    else:
        two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
        clip = helper.make_node("Clip", ["p"], ["y"], min=0.5, max=2.0)
        bounds = []
    nodes = [helper.make_node("Pow", ["x", "two"], ["p"]), clip]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [two] + bounds)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    graph = from_onnx(m)
    assert [layer.op for layer in graph.layers] == ["pow", "clip"]
    assert graph.layers[1].attrs == {"min": 0.5, "max": 2.0}
    xs = {"x": _x((3, 4))}
    env = M.run_blocks(graph, plan(graph, nodes=[0, 1]), onnx_weights(m), xs)
    assert M.rel_err(env["y"], M.ort_outputs(m, xs)["y"]) < RTOL


#: The light models whose placeholders take long to draw and run (hundreds of MB of weights).
BIG_LIGHT = ("bvlc_alexnet", "vgg19", "zfnet512")


@pytest.mark.parametrize("name", M.LIGHT)
def test_light_model_placeholders_keep_logits_of_order_one(name, stress):
    # Near-identity batch norms let ResNet-50's residual sums double the second moment per block:
    # its logits were ~1e4 (shufflenet's ~3e5), a one-hot softmax that hides any error.
    if name in BIG_LIGHT and not stress:
        pytest.skip("the larger light models' weights take long to draw: run with --stress")
    m = onnx.load(M.light_path(name))
    vals = placeholder_values(m, seed=0)
    mv = with_values(m, vals)
    producer = {o: n for n in mv.graph.node for o in n.output}
    out = mv.graph.output[0].name
    node = producer[out]
    while node.op_type in ("Reshape", "Flatten"):
        node = producer[node.input[0]]
    final = node.input[0] if node.op_type == "Softmax" else out
    if final != out:
        mv.graph.output.append(onnx.helper.make_empty_tensor_value_info(final))
    inits = {t.name for t in mv.graph.initializer}
    feeds = {i.name: _x(tuple(d.dim_value for d in i.type.tensor_type.shape.dim))
             for i in mv.graph.input if i.name not in inits}
    got = M.ort_outputs(mv, feeds)
    rms = float(np.sqrt(np.mean(np.square(got[final].astype(np.float64)))))
    assert 0.3 < rms < 5.0, (name, final, rms)
    if final != out:
        assert float(got[out].max()) < 0.5, (name, "the softmax is near one-hot")
