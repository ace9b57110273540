"""Small ONNX models for the engine tests, built with ``onnx.helper`` (seeded random weights).

``light_model(name)`` takes a model of the ``onnx`` package's light set (``squeezenet``,
``resnet50``...), whose weights are ``ConstantOfShape`` nodes filled at run time, and replaces
each such node by a seeded random initializer, so that the real architecture runs with real
(placeable) weights.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _init(rng, name, shape, scale=0.1):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def small_cnn(seed: int = 0, channels: int = 16, classes: int = 10) -> onnx.ModelProto:
    """Conv, Relu, MaxPool, Flatten, Gemm on ``N x 3 x 16 x 16`` (symbolic batch)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p1"], ["f"]),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        [_init(rng, "w1", (channels, 3, 3, 3)), _init(rng, "b1", (channels,)),
         _init(rng, "w2", (classes, channels * 8 * 8)), _init(rng, "b2", (classes,))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def transformer_block(seed: int = 0, d: int = 64, ff: int = 128, seq: int = 12) -> onnx.ModelProto:
    """Single-head self-attention and a feed-forward, each with a residual and LayerNormalization."""
    rng = np.random.default_rng(seed)
    scale = np.array(1.0 / np.sqrt(d), np.float32)
    inits = [_init(rng, n, (d, d)) for n in ("wq", "wk", "wv", "wo")]
    inits += [_init(rng, "w1", (d, ff)), _init(rng, "b1", (ff,)), _init(rng, "w2", (ff, d)),
              _init(rng, "b2", (d,)), numpy_helper.from_array(scale, "scale"),
              numpy_helper.from_array(np.ones(d, np.float32), "g1"),
              numpy_helper.from_array(np.zeros(d, np.float32), "be1"),
              numpy_helper.from_array((1 + 0.1 * rng.standard_normal(d)).astype(np.float32), "g2"),
              numpy_helper.from_array(np.zeros(d, np.float32), "be2")]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["s"]),
        helper.make_node("Softmax", ["s"], ["a"], axis=-1),
        helper.make_node("MatMul", ["a", "v"], ["ctx"]),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"]),
        helper.make_node("Add", ["x", "o"], ["h0"]),
        helper.make_node("LayerNormalization", ["h0", "g1", "be1"], ["h"], axis=-1, epsilon=1e-5),
        helper.make_node("MatMul", ["h", "w1"], ["f0"]),
        helper.make_node("Add", ["f0", "b1"], ["f1"]),
        helper.make_node("Relu", ["f1"], ["f2"]),
        helper.make_node("MatMul", ["f2", "w2"], ["f3"]),
        helper.make_node("Add", ["f3", "b2"], ["f4"]),
        helper.make_node("Add", ["h", "f4"], ["y0"]),
        helper.make_node("LayerNormalization", ["y0", "g2", "be2"], ["y"], axis=-1, epsilon=1e-5),
    ]
    graph = helper.make_graph(
        nodes, "transformer_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", seq, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", seq, d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def light_path(name: str) -> str:
    """Path of ``light_<name>.onnx`` in the installed ``onnx`` package."""
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                        f"light_{name}.onnx")


def light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """A light-set model whose ``ConstantOfShape`` weights became seeded random initializers.

    Weights are scaled by ``1/sqrt(fan-in)`` and batch-norm variances made positive, so that
    activations neither vanish nor overflow through the network.
    """
    model = onnx.load(light_path(name))
    g = model.graph
    rng = np.random.default_rng(seed)
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    keep, new = [], []
    bn_var = {n.input[4] for n in g.node if n.op_type == "BatchNormalization"}
    bn_scale = {n.input[1] for n in g.node if n.op_type == "BatchNormalization"}
    for node in g.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = tuple(int(s) for s in inits[node.input[0]])
            out = node.output[0]
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            if out in bn_var or out in bn_scale:
                arr = (1.0 + 0.1 * np.abs(rng.standard_normal(shape))).astype(np.float32)
            else:
                arr = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
            new.append(numpy_helper.from_array(arr, out))
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new)
    used = {i for n in g.node for i in n.input}
    still = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(still)
    # Old-style models list weights (and the shapes fed to ConstantOfShape) as graph inputs too:
    # keep only the inputs a node reads that are not initializers, the real data inputs.
    names = {i.name for i in g.initializer}
    real_inputs = [i for i in g.input if i.name not in names and i.name in used]
    del g.input[:]
    g.input.extend(real_inputs)
    return model
