"""An imported ONNX model on a multi-node guest: planned over the nodes, its blocks on their nodes,
its outputs ONNX Runtime's.

The model is a small CNN built with ``onnx.helper`` (the zoo models are far too slow on the
guest's emulated CPU). Placement is witnessed with ``kernelcheck`` (``move_pages`` through
ctypes), not numamem. ``onnx`` and ``onnxruntime`` come from the project's virtual environment
(tools/bootstrap installs the extras): a missing one is an error here, never a skip.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort  # an ImportError here fails the tier, as it must
from onnx import TensorProto, helper, numpy_helper

from numamem.planner import from_onnx, onnx_weights, plan
from numamem.runtime.executor import Executor

import kernelcheck as kc

BATCH = 4


def small_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv-BatchNormalization-Relu, a strided Conv-Relu, GlobalAveragePool, Flatten, Gemm, Softmax
    on ``data`` [N, 3, 16, 16] (N symbolic), output ``probs`` [N, 10]; weights at scales that keep
    activations of order one."""
    rng = np.random.default_rng(seed)

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w1", (8, 3, 3, 3), (2 / 27) ** 0.5), init("b1", (8,), 0.1),
             numpy_helper.from_array((1 + 0.1 * rng.standard_normal(8)).astype(np.float32), "gamma"),
             init("beta", (8,), 0.1), init("mean", (8,), 0.1),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "var"),
             init("w2", (16, 8, 3, 3), (2 / 72) ** 0.5), init("b2", (16,), 0.1),
             init("fc", (10, 16), 0.25), init("fc_b", (10,), 0.1)]
    mk = helper.make_node
    nodes = [mk("Conv", ["data", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             mk("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"], name="bn1"),
             mk("Relu", ["n1"], ["r1"], name="relu1"),
             mk("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             mk("Relu", ["c2"], ["r2"], name="relu2"),
             mk("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             mk("Flatten", ["p"], ["f"], name="flatten"),
             mk("Gemm", ["f", "fc", "fc_b"], ["logits"], name="fc", transB=1),
             mk("Softmax", ["logits"], ["probs"], name="softmax", axis=1)]
    graph = helper.make_graph(nodes, "small_cnn",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by the installed ONNX Runtime
    onnx.checker.check_model(model)
    return model


def rel_err(y, ref):
    ref = np.asarray(ref, np.float64)
    return np.linalg.norm(np.asarray(y, np.float64) - ref) / max(np.linalg.norm(ref), 1e-30)


def check_imported_cnn(nodes):
    """The body of the test, on ``nodes`` (a function so that it can be run on one node alone)."""
    model = small_cnn()
    g = from_onnx(model, batch=BATCH)
    assert g.inputs == ["data"] and g.outputs == ["probs"]
    ws = onnx_weights(model, batch=BATCH)
    x = np.random.default_rng(1).standard_normal((BATCH, 3, 16, 16)).astype(np.float32)
    p = plan(g, nodes=nodes)
    with Executor(p) as ex:
        ex.load_weights(ws)
        y = ex.run({"data": x})["probs"].copy()
        kc.assert_executor_on_its_nodes(ex, p)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    (want,) = sess.run(["probs"], {"data": x})
    assert y.shape == want.shape == (BATCH, 10)
    assert rel_err(y, want) <= 1e-4


def test_imported_cnn_planned_on_the_nodes_matches_onnxruntime(memory_nodes):
    check_imported_cnn(memory_nodes)
