"""ONNX import: graphs, weights, folding, errors, and the light models planned on 1-3 nodes."""
from __future__ import annotations

import sys

import numpy as np
import pytest

# The test command installs these extras: a missing package fails here, never skips.
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import onnx_models as M  # noqa: E402
from numamem.planner import Graph, from_onnx, onnx_weights, plan  # noqa: E402
from numamem.planner.onnx import (  # noqa: E402
    SUPPORTED, MissingDimError, OnnxImportError, UnknownShapeError, UnsupportedOpError, placeholder_values,
    with_values,
)


def _ops(g: Graph) -> dict[str, int]:
    out: dict[str, int] = {}
    for layer in g.layers:
        out[layer.op] = out.get(layer.op, 0) + 1
    return out


def _tiny(nodes, inputs, outputs, inits=(), opset=13):
    g = helper.make_graph(nodes, "tiny", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


# ------------------------------------------------------------------------------ graphs
def test_bert_layer_folds_shape_chains_and_keeps_names():
    g = from_onnx(M.bert_layer(17), batch=2)
    assert g.inputs == ["ids"] and g.outputs == ["y"]
    assert g.tensor("ids").shape == (2, 8) and g.tensor_dtype("ids") == "int64"
    assert g.tensor("y").shape == (2, 8, 32)
    ops = _ops(g)
    # Shape/Gather/Unsqueeze/Concat are folded: the reshapes have static targets (3 head splits,
    # 1 merge); the final Identity is a copy that keeps the output's name.
    assert ops["reshape"] == 5 and ops["layernorm"] == 3 and ops["embedding"] == 1 and ops["dense"] == 6
    assert ops["erf"] == 1
    assert not {"Shape", "Gather", "Concat"} & set(ops)


def test_bert_opset14_decomposed_layernorm_and_opset20_gelu():
    ops14 = _ops(from_onnx(M.bert_layer(14), batch=1))
    assert "layernorm" not in ops14 and ops14["reduce_mean"] == 6 and ops14["pow"] == 3 and ops14["sqrt"] == 3
    ops20 = _ops(from_onnx(M.bert_layer(20, gelu_op=True), batch=1))
    assert ops20["gelu_erf"] == 1 and "erf" not in ops20


def test_mobilenet_block_folds_batchnorm_into_conv():
    g = from_onnx(M.mobilenet_block(), input_shapes={"x": (3, 16, 10, 10)})
    ops = _ops(g)
    # Batch norms folded into the convolutions, Clip(0, 6) fused into them as their activation.
    assert "batchnorm" not in ops and "relu6" not in ops
    # The symmetric-pad convs are conv2d, the asymmetric depthwise one is conv.
    assert ops["conv2d"] == 3 and ops["conv"] == 1
    assert [l.attrs.get("activation") for l in g.layers if l.op.startswith("conv")] == ["relu6", "relu6", None,
                                                                                       "relu6"]
    dw = next(l for l in g.layers if l.op == "conv")
    assert dw.attrs["pads"] == [0, 0, 1, 1] and dw.attrs["group"] == 16


def test_folded_batchnorm_weights_match_onnx_runtime_math():
    m = M.mobilenet_block()
    g = from_onnx(m, batch=1)
    ws = onnx_weights(m, batch=1)
    assert set(ws) == set(g.weights)
    for n in g.weights:
        assert ws[n].shape == g.tensor(n).shape and ws[n].dtype == np.float32


def test_activations_fuse_only_into_a_sole_reader():
    g = from_onnx(M.light_path("resnet50"))
    ops = _ops(g)
    # Every Relu follows a conv (BN folded) or a residual Sum: all fused, none left on its own.
    assert "relu" not in ops and ops["add"] == 16
    assert sum(l.attrs.get("activation") == "relu" for l in g.layers) == 49
    # A conv output that something besides the Relu reads keeps its Relu a layer of its own.
    m = _tiny([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
               helper.make_node("Relu", ["c"], ["r"], name="relu"),
               helper.make_node("Add", ["c", "r"], ["y"], name="add")],
              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
              [numpy_helper.from_array(np.ones((3, 2, 1, 1), np.float32), "w")])
    assert [(l.op, l.attrs.get("activation")) for l in from_onnx(m).layers] == [
        ("conv2d", None), ("relu", None), ("add", None)]


def test_window_model_maps_each_attribute():
    g = from_onnx(M.cnn_windows())
    ops = _ops(g)
    assert ops["conv"] == 3 and ops["conv2d"] == 2  # asym pads, dilation, SAME_LOWER; SAME_UPPER k3, VALID
    assert ops["maxpool"] == 2 and ops["avgpool"] == 2 and ops["lrn"] == 1 and ops["slice"] == 2
    assert ops["batchnorm"] == 1  # after a Split: nothing to fold into
    assert ops["softmax"] == 1 and ops["reshape"] == 2  # opset-11 Softmax(axis=1) of 4-D: flatten, softmax, back
    assert "dropout" not in ops


def test_gemm_and_matmul_forms():
    g = from_onnx(M.cnn_shapes())
    ops = _ops(g)
    # MatMul by a 2-D weight and Gemm with a constant B are dense; a broadcast MatMul by a 4-D weight and a
    # Gemm with a computed B are matmul (that Gemm's alpha a mul, its C an add).
    assert ops["dense"] == 4 and ops["matmul"] == 2 and ops["mul"] == 1 and ops["slice"] == 2


def test_input_shapes_and_batch():
    m = M.bert_layer(17)
    assert from_onnx(m, input_shapes={"ids": (3, 8)}).tensor("ids").shape == (3, 8)
    with pytest.raises(MissingDimError, match=r"input 'ids' dimension 0 \('batch'\) has no value"):
        from_onnx(m)
    with pytest.raises(OnnxImportError, match="'nope', which is not an input"):
        from_onnx(m, input_shapes={"nope": (1,)})
    with pytest.raises(OnnxImportError, match="fixes its dimension to 8"):
        from_onnx(m, input_shapes={"ids": (2, 9)})
    fixed = M.cnn_windows()
    with pytest.raises(OnnxImportError, match="fixes its batch dimension to 2; batch=4"):
        from_onnx(fixed, batch=4)


# ------------------------------------------------------------------------------ errors
def test_unsupported_op_names_node_type_domain_opset_and_list():
    m = _tiny([helper.make_node("Einsum", ["a", "a"], ["b"], name="mix", equation="ij,ij->ij")],
              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3])],
              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3])])
    with pytest.raises(UnsupportedOpError) as info:
        from_onnx(m)
    msg = str(info.value)
    assert "node 'mix'" in msg and "'Einsum'" in msg and "'ai.onnx'" in msg and "opset 13" in msg
    assert "supported: " + ", ".join(SUPPORTED) in msg
    assert isinstance(info.value, ValueError)


def test_custom_domain_is_unsupported():
    m = _tiny([helper.make_node("Relu", ["a"], ["b"], name="r", domain="com.example")],
              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOpError, match="'Relu' of domain 'com.example'"):
        from_onnx(m)


def test_shape_from_a_runtime_input_stays_unknown():
    m = _tiny([helper.make_node("Reshape", ["a", "s"], ["b"], name="rs"),
               helper.make_node("Relu", ["b"], ["c"], name="r")],
              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
               helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
              [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)])
    with pytest.raises(UnknownShapeError, match=r"tensor 'b' \(made by node 'rs' \(Reshape\)\) has no static shape"):
        from_onnx(m)


def test_malformed_and_truncated_files(tmp_path):
    good = M.cnn_shapes().SerializeToString()
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(OnnxImportError, match="cut.onnx: not a readable ONNX model"):
        from_onnx(truncated)
    garbage = tmp_path / "junk.onnx"
    garbage.write_bytes(b"\xff\xfe not a protobuf \x00" * 10)
    with pytest.raises(OnnxImportError, match="junk.onnx: not a readable ONNX model"):
        from_onnx(garbage)
    with pytest.raises(TypeError, match="path or an onnx.ModelProto"):
        from_onnx(42)


def test_missing_onnx_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install numamem\[onnx\]"):
        from_onnx("model.onnx")


def test_external_data_is_not_read_for_planning(tmp_path):
    m = M.mobilenet_block()
    ref = onnx_weights(m, batch=2)
    graph = from_onnx(m, batch=2)
    path = tmp_path / "mb.onnx"
    # Tensors over 1 KiB (the conv filters) go to mb.data; the small ones (bounds, BN vectors) stay.
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="mb.data",
                    size_threshold=1024)
    ws = onnx_weights(path, batch=2)  # reads mb.data
    assert set(ws) == set(ref) and all(np.array_equal(ws[n], ref[n]) for n in ref)
    (tmp_path / "mb.data").unlink()
    g = from_onnx(path, batch=2)  # shapes alone: the data file is not needed
    assert g == graph


def test_placeholders_random_and_written_back():
    path = M.light_path("squeezenet")
    m = onnx.load(path)
    vals = placeholder_values(m, seed=1)
    cos = [n for n in m.graph.node if n.op_type == "ConstantOfShape"]
    assert set(vals) == {n.output[0] for n in cos}
    conv_w = next(v for k, v in vals.items() if k.endswith("conv1_w_0"))
    assert 0.16 < conv_w.std() < 0.23  # 1/sqrt(K E[x^2]) for K = 3*3*3 terms of a standard normal input: 0.19
    ws = onnx_weights(path, values=vals)
    assert np.array_equal(ws["conv1_w_0"], vals["conv1_w_0"])
    m2 = with_values(m, vals)
    assert not [n for n in m2.graph.node if n.op_type == "ConstantOfShape"]
    assert {t.name for t in m2.graph.initializer} >= set(vals)
    with pytest.raises(ValueError, match="has shape"):
        onnx_weights(path, values={"conv1_w_0": np.zeros(3, np.float32)})


def test_graph_round_trips_through_json():
    g = from_onnx(M.cnn_windows())
    assert Graph.from_json(g.to_json()) == g


# ------------------------------------------------------------------------- light models
@pytest.mark.parametrize("name", M.LIGHT)
def test_light_model_plans_on_one_two_three_nodes(name):
    g = from_onnx(M.light_path(name))
    assert g.inputs and g.outputs and g.flops() > 1e8
    for n in (1, 2, 3):
        p = plan(g, nodes=list(range(n)))
        p.verify()
        assert {a.node for a in p.arenas} == set(range(n))


def test_integer_inputs_are_ids_or_floats():
    # An integer input that is not embedding ids (a mask cast to float) is held as floats.
    m = _tiny([helper.make_node("Cast", ["mask"], ["f"], name="to_float", to=TensorProto.FLOAT),
               helper.make_node("Relu", ["f"], ["y"], name="r")],
              [helper.make_tensor_value_info("mask", TensorProto.INT64, [2, 3])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    g = from_onnx(m)
    assert g.tensor("mask").dtype is None and [l.op for l in g.layers] == ["relu"]
    # Ids read by an embedding stay int64 and cannot be cast to data.
    m = _tiny([helper.make_node("Gather", ["table", "ids"], ["e"], name="emb"),
               helper.make_node("Cast", ["ids"], ["f"], name="ids_as_float", to=TensorProto.FLOAT),
               helper.make_node("Unsqueeze", ["f", "ax"], ["f2"], name="u"),
               helper.make_node("Add", ["e", "f2"], ["y"], name="add")],
              [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
              [numpy_helper.from_array(np.ones((5, 4), np.float32), "table"),
               numpy_helper.from_array(np.array([2], np.int64), "ax")])
    with pytest.raises(UnsupportedOpError, match="node 'ids_as_float' .*cast of data from int64 to float32"):
        from_onnx(m)


def test_float64_model_keeps_its_dtype():
    m = _tiny([helper.make_node("Mul", ["x", "k"], ["y"], name="scale")],
              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3])],
              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 3])],
              [numpy_helper.from_array(np.array([2.0]), "k")])
    g = from_onnx(m)
    assert g.dtype == "float64" and onnx_weights(m)["k"].dtype == np.float64


def test_values_reach_constants_computed_from_them():
    # A placeholder reshaped before use (inception_v1's classifier, densenet's Unsqueeze'd scales):
    # the folded weight must come from the given values, not the placeholder's fill.
    nodes = [helper.make_node("ConstantOfShape", ["wshape"], ["w"],
                              value=numpy_helper.from_array(np.array([0.02], np.float32))),
             helper.make_node("Reshape", ["w", "target"], ["w2"]),
             helper.make_node("Mul", ["x", "w2"], ["y"])]
    m = _tiny(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 1])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 1])],
              [numpy_helper.from_array(np.array([3], np.int64), "wshape"),
               numpy_helper.from_array(np.array([3, 1], np.int64), "target")])
    v = np.array([1.0, 2.0, 3.0], np.float32)
    ws = onnx_weights(m, values={"w": v})
    assert [list(a.ravel()) for a in ws.values()] == [[1.0, 2.0, 3.0]]
    assert np.allclose(list(onnx_weights(m).values())[0], 0.02)
    with pytest.raises(ValueError, match="'nope', which is neither an initializer nor a ConstantOfShape output"):
        onnx_weights(m, values={"nope": v})


@pytest.mark.parametrize("noop", [0, 1])
def test_reduce_mean_with_empty_axes_input(noop):
    # Opset 18: an empty axes input reduces every axis, or nothing with noop_with_empty_axes.
    m = _tiny([helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="rm", keepdims=1,
                                noop_with_empty_axes=noop)],
              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
              [numpy_helper.from_array(np.zeros(0, np.int64), "axes")], opset=18)
    layer = from_onnx(m).layers[0]
    assert (layer.op, from_onnx(m).tensor("y").shape) == (("reshape", (2, 3)) if noop else ("reduce_mean", (1, 1)))
