"""Small ONNX models built with ``onnx.helper`` for the importer's and the runtime's tests.

Each builder returns a ``ModelProto`` whose weights are initializers drawn from a seeded
generator at scales that keep activations of order one (so float32 stays within 1e-4 of float64
and of ONNX Runtime).
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Net:
    """Nodes, initializers and a name counter."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.k = 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    def const(self, value, base: str = "c") -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def w(self, shape, scale: float | None = None, base: str = "w") -> str:
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        s = scale if scale is not None else np.sqrt(1.0 / max(fan, 1))
        return self.const((self.rng.standard_normal(shape) * s).astype(np.float32), base)

    def op(self, op_type: str, inputs, n_out: int = 1, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type + "_"), **attrs))
        return outs[0] if n_out == 1 else outs

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        return self.op("BatchNormalization", [
            x, self.const((1 + 0.1 * r.standard_normal(c)).astype(np.float32)),
            self.const((0.1 * r.standard_normal(c)).astype(np.float32)),
            self.const((0.1 * r.standard_normal(c)).astype(np.float32)),
            self.const(r.uniform(0.5, 1.5, c).astype(np.float32))], epsilon=1e-5)

    def model(self, name: str, inputs, outputs, opset: int):
        g = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = min(m.ir_version, 8)  # readable by the installed ONNX Runtime
        for o in m.graph.output:
            if not o.type.tensor_type.HasField("shape"):  # take the shape ONNX infers for it
                probe = onnx.ModelProto()
                probe.CopyFrom(m)
                del probe.graph.output[:]
                probe.graph.node.append(helper.make_node("Identity", [o.name], ["__probe"]))
                probe.graph.output.append(_vi("__probe", None))
                inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(probe).graph.value_info}
                o.type.CopyFrom(inferred[o.name].type)
        onnx.checker.check_model(m)
        return m


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _layernorm(net: _Net, x: str, d: int, decomposed: bool, opset: int) -> str:
    gamma = net.const((1 + 0.1 * net.rng.standard_normal(d)).astype(np.float32), "gamma")
    beta = net.const((0.1 * net.rng.standard_normal(d)).astype(np.float32), "beta")
    if not decomposed:
        return net.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)
    mean = net.op("ReduceMean", [x], axes=[-1], keepdims=1)
    diff = net.op("Sub", [x, mean])
    var = net.op("ReduceMean", [net.op("Pow", [diff, net.const(np.float32(2.0))])], axes=[-1], keepdims=1)
    std = net.op("Sqrt", [net.op("Add", [var, net.const(np.float32(1e-5))])])
    return net.op("Add", [net.op("Mul", [net.op("Div", [diff, std]), gamma]), beta])


def bert_layer(opset: int = 17, *, d: int = 32, heads: int = 4, ff: int = 64, vocab: int = 50, seq: int = 8,
               gelu_op: bool = False):
    """A BERT-style encoder layer: embedding (Gather on a table), layer norm, attention, GELU FFN.

    The input ``ids`` is int64 ``[batch, seq]`` with a symbolic batch; reshapes take their target
    from ``Shape -> Gather -> Unsqueeze -> Concat`` chains (constant folding). At ``opset`` < 17 the
    layer norms are decomposed into ReduceMean/Sub/Pow/Sqrt/Div; GELU is ``x/2*(1+Erf(x/sqrt 2))``
    unless ``gelu_op`` (opset 20's Gelu).
    """
    net = _Net(1)
    dh = d // heads
    x = net.op("Gather", [net.w((vocab, d), 1.0, "emb"), "ids"], axis=0)
    x = net.op("Add", [x, net.w((seq, d), 0.1, "pos")])
    x = _layernorm(net, x, d, opset < 17, opset)

    def unsq(v):
        return net.op("Unsqueeze", [v, net.const(np.array([0], np.int64))]) if opset >= 13 else \
            net.op("Unsqueeze", [v], axes=[0])

    shape = net.op("Shape", [x])
    n = unsq(net.op("Gather", [shape, net.const(np.array(0, np.int64))], axis=0))
    l_ = unsq(net.op("Gather", [shape, net.const(np.array(1, np.int64))], axis=0))
    split_shape = net.op("Concat", [n, l_, net.const(np.array([heads, dh], np.int64))], axis=0)
    merge_shape = net.op("Concat", [n, l_, net.const(np.array([-1], np.int64))], axis=0)

    def dense(v, k, m, scale=1.0):
        y = net.op("MatMul", [v, net.w((k, m), scale * np.sqrt(1.0 / k))])
        return net.op("Add", [y, net.w((m,), 0.1, "b")])

    def heads_of(v, perm):
        return net.op("Transpose", [net.op("Reshape", [v, split_shape])], perm=perm)

    q = heads_of(dense(x, d, d, dh ** -0.25), [0, 2, 1, 3])
    kt = heads_of(dense(x, d, d, dh ** -0.25), [0, 2, 3, 1])
    v = heads_of(dense(x, d, d), [0, 2, 1, 3])
    scores = net.op("Div", [net.op("MatMul", [q, kt]), net.const(np.float32(np.sqrt(dh)))])
    probs = net.op("Softmax", [scores], axis=-1)
    ctx = net.op("Transpose", [net.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    ctx = net.op("Reshape", [ctx, merge_shape])
    x = _layernorm(net, net.op("Add", [dense(ctx, d, d), x]), d, opset < 17, opset)
    h = dense(x, d, ff)
    if gelu_op:
        h = net.op("Gelu", [h])
    else:
        e = net.op("Erf", [net.op("Div", [h, net.const(np.float32(np.sqrt(2.0)))])])
        h = net.op("Mul", [net.op("Mul", [h, net.op("Add", [e, net.const(np.float32(1.0))])]),
                           net.const(np.float32(0.5))])
    y = _layernorm(net, net.op("Add", [dense(h, ff, d), x]), d, opset < 17, opset)
    net.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    return net.model(f"bert_opset{opset}", [_vi("ids", ["batch", seq], TensorProto.INT64)],
                     [_vi("y", ["batch", seq, d])], opset)


def mobilenet_block(c: int = 16, expand: int = 6, hw: int = 10):
    """A MobileNetV2 inverted residual block (opset 13): 1x1 expand, BN, ReLU6 as Clip, depthwise
    3x3, BN, Clip, 1x1 project, BN, residual Add; then a strided depthwise stage with asymmetric
    padding, global pooling and a classifier."""
    net = _Net(2)
    e = c * expand
    six, zero = net.const(np.float32(6.0)), net.const(np.float32(0.0))

    def conv(x, o, i, k, **kw):
        return net.op("Conv", [x, net.w((o, i, k, k), np.sqrt(2.0 / (i * k * k)))], kernel_shape=[k, k], **kw)

    h = net.op("Clip", [net.bn(conv("x", e, c, 1), e), zero, six])
    h = net.op("Clip", [net.bn(conv(h, e, 1, 3, pads=[1, 1, 1, 1], group=e), e), zero, six])
    h = net.bn(conv(h, c, e, 1), c)
    y = net.op("Add", [h, "x"])
    h = net.op("Clip", [net.bn(conv(y, c, 1, 3, strides=[2, 2], pads=[0, 0, 1, 1], group=c), c), zero, six])
    g = net.op("GlobalAveragePool", [h])
    f = net.op("Flatten", [g], axis=1)
    logits = net.op("Gemm", [f, net.w((10, c)), net.w((10,), 0.1)], transB=1)
    net.nodes.append(helper.make_node("Softmax", [logits], ["probs"], axis=1))
    return net.model("mobilenet_block", [_vi("x", ["n", c, hw, hw])], [_vi("probs", ["n", 10])], 13)


def cnn_windows():
    """Opset 11: Conv (asymmetric pads, dilation, auto_pad SAME_UPPER/SAME_LOWER/VALID, groups),
    MaxPool/AveragePool (pads, ceil_mode, count_include_pad), LRN, Split, Concat, standalone
    BatchNormalization, Softmax over axis 1 of a 4-D tensor (opset-11 flattening), Dropout."""
    net = _Net(3)

    def conv(x, o, i, k, group=1, **kw):
        return net.op("Conv", [x, net.w((o, i // group, k, k), np.sqrt(2.0 / (i // group * k * k))),
                               net.w((o,), 0.1)], kernel_shape=[k, k], group=group, **kw)

    h = net.op("Relu", [conv("x", 8, 3, 3, pads=[0, 1, 2, 1], strides=[2, 1])])
    a = conv(h, 8, 8, 3, dilations=[2, 2], pads=[2, 2, 2, 2])
    b = conv(h, 8, 8, 3, auto_pad="SAME_UPPER", strides=[2, 2], group=2)
    c = conv(h, 8, 8, 2, auto_pad="SAME_LOWER", strides=[2, 2], group=8)
    d = conv(h, 8, 8, 3, auto_pad="VALID")
    a = net.op("MaxPool", [a], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1)
    d = net.op("AveragePool", [d], kernel_shape=[3, 3], strides=[1, 2], pads=[0, 2, 0, 1], ceil_mode=1,
               count_include_pad=1)
    b = net.op("AveragePool", [b], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1])
    c = net.op("MaxPool", [c], kernel_shape=[2, 2], strides=[1, 1], pads=[1, 1, 0, 0])
    cat = net.op("Concat", [a, b, c, d], axis=1)
    cat = net.op("LRN", [cat], size=5, alpha=1e-3, beta=0.75, bias=2.0)
    s1, s2 = net.op("Split", [cat], n_out=2, axis=1, split=[12, 20])
    s2 = net.op("Dropout", [net.bn(s2, 20)])
    out = net.op("Concat", [net.op("Sigmoid", [s1]), net.op("Tanh", [s2])], axis=1)
    net.nodes.append(helper.make_node("Softmax", [out], ["y"], axis=1))
    return net.model("cnn_windows", [_vi("x", [2, 3, 17, 15])], [_vi("y", None)], 11)


def cnn_shapes():
    """Opset 13: MatMul with batch broadcasting, Gemm (transA, transB, alpha, beta, with a
    broadcast C and with B computed), Reshape with 0 and -1, Transpose, Squeeze/Unsqueeze, Sum,
    Pow, Exp, Sqrt, Clip (not ReLU6), Slice, Flatten(axis 2), GlobalAveragePool, Identity."""
    net = _Net(4)
    x = net.op("Relu", [net.op("Conv", ["x", net.w((6, 4, 1, 1)), net.w((6,), 0.1)], kernel_shape=[1, 1])])
    g = net.op("GlobalAveragePool", [x])                                         # [2, 6, 1, 1]
    sq = net.op("Squeeze", [g, net.const(np.array([2, 3], np.int64))])            # [2, 6]
    u = net.op("Unsqueeze", [sq, net.const(np.array([1], np.int64))])             # [2, 1, 6]
    r = net.op("Reshape", [x, net.const(np.array([0, 6, -1], np.int64))])         # [2, 6, 20]
    mm = net.op("MatMul", [net.op("Transpose", [r], perm=[0, 2, 1]), net.w((6, 5))])  # [2, 20, 5]
    bm = net.op("MatMul", [net.w((3, 1, 4, 20), 0.2), mm])                         # [3, 2, 4, 5] broadcast
    e = net.op("Exp", [net.op("Clip", [bm, net.const(np.float32(-3.0)), net.const(np.float32(3.0))])])
    s = net.op("Sqrt", [net.op("Sum", [e, net.op("Pow", [bm, net.const(np.float32(2.0))]),
                                       net.const(np.float32(1.0))])])
    sl = net.op("Slice", [s, net.const(np.array([1, 1], np.int64)), net.const(np.array([3, 100], np.int64)),
                          net.const(np.array([0, 3], np.int64))])                  # [2, 2, 4, 4]
    f = net.op("Flatten", [sl], axis=2)                                           # [4, 16]
    ga = net.op("Gemm", [f, net.w((16, 8)), net.w((1, 8), 0.1)], alpha=0.5, beta=2.0)
    gt = net.op("Gemm", [net.op("Transpose", [f], perm=[1, 0]), net.w((8, 16)), net.w((8,), 0.1)],
                transA=1, transB=1)
    gc = net.op("Gemm", [ga, gt, net.w((4, 4), 0.1)], transB=1, alpha=0.7)       # B computed
    h = net.op("Add", [net.op("MatMul", [u, net.w((6, 4))]), net.op("Unsqueeze", [gc, net.const(
        np.array([0], np.int64))])])                                               # [2,1,4]+[1,4,4] -> [2,4,4]
    net.nodes.append(helper.make_node("Identity", [h], ["y"]))
    return net.model("cnn_shapes", [_vi("x", [2, 4, 4, 5])], [_vi("y", None)], 13)


# ------------------------------------------------------------------------ running and checking
LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
#: The light models of ONNX's test set, by short name.
LIGHT = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
         "vgg19", "zfnet512")


def light_path(name: str) -> str:
    return os.path.join(LIGHT_DIR, f"light_{name}.onnx")


def run_blocks(graph, plan, weights, inputs):
    """Every layer computed block by block as ``plan`` splits it, each block given exactly the
    input regions it reads (so a wrong region rule gives a wrong result). Returns every tensor."""
    from numamem.planner.boxes import cut
    from numamem.runtime import kernels as K

    env = {**weights, **inputs}
    for layer in graph.layers:
        t = graph.tensors[layer.outputs[0]]
        shapes = [graph.tensors[n].shape for n in layer.inputs]
        y = np.empty(t.shape, graph.dtype)
        for blk in plan.blocks_of(t.name):
            k = K.bind(layer.op, shapes, layer.attrs, (blk.slice.axis, blk.slice.start, blk.slice.stop), graph.dtype)
            ins = [None if r is None else env[n][cut(r, (0,) * len(r))] for n, r in zip(layer.inputs, k.regions)]
            k(ins, y[plan.block_index(blk)])
        env[t.name] = y
    return env


def ort_outputs(model, feeds):
    """Outputs of ``model`` (a ModelProto) run by ONNX Runtime on the CPU, by name."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def rel_err(y, ref) -> float:
    """``||y - ref|| / ||ref||``, the measure of numamem's run reports."""
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(np.asarray(y, np.float64) - ref) / max(np.linalg.norm(ref), 1e-300))


def misc_opset18():
    """Opset 18: ReduceMean with axes as an input, Split by num_outputs, Slice with negative
    starts, ends and axes, Gather of a constant index on an activation (BERT's CLS token),
    LayerNormalization without B, Softmax over a middle axis, Flatten(axis=0)."""
    net = _Net(5)
    x = net.op("LayerNormalization", ["x", net.const((1 + 0.1 * net.rng.standard_normal(6)).astype(np.float32))],
               axis=-1, epsilon=1e-5)                                                       # [2, 5, 6]
    m = net.op("ReduceMean", [x, net.const(np.array([1], np.int64))], keepdims=1)            # [2, 1, 6]
    a, b = net.op("Split", [x], n_out=2, axis=-1, num_outputs=2)                              # [2, 5, 3] x2
    s = net.op("Slice", [x, net.const(np.array([-4], np.int64)), net.const(np.array([-1], np.int64)),
                         net.const(np.array([-2], np.int64))])                                # [2, 3, 6]
    cls = net.op("Gather", [x, net.const(np.array(0, np.int64))], axis=1)                     # [2, 6]
    sm = net.op("Softmax", [net.op("Sub", [s, m])], axis=1)                                   # [2, 3, 6]
    f = net.op("Flatten", [net.op("Mul", [a, b])], axis=0)                                    # [1, 30]
    y = net.op("Add", [net.op("MatMul", [f, net.w((30, 6))]), cls])                            # [2, 6]
    y = net.op("Add", [y, net.op("ReduceMean", [sm, net.const(np.array([1], np.int64))], keepdims=0)])
    net.nodes.append(helper.make_node("Identity", [y], ["y"]))
    return net.model("misc_opset18", [_vi("x", [2, 5, 6])], [_vi("y", None)], 18)


def mobilenet_v3_block(c: int = 8, hw: int = 9):
    """Opset 14: a MobileNetV3-style block (HardSwish, a squeeze-excite with HardSigmoid and Mul),
    LeakyRelu, variadic Max and Min, Neg, Reciprocal, Abs, Log."""
    net = _Net(6)
    h = net.op("Conv", ["x", net.w((4 * c, c, 1, 1), np.sqrt(2.0 / c))], kernel_shape=[1, 1])
    h = net.op("HardSwish", [h])
    h = net.op("Conv", [h, net.w((4 * c, 1, 3, 3), np.sqrt(2.0 / 9))], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
               group=4 * c)
    se = net.op("GlobalAveragePool", [h])
    se = net.op("Relu", [net.op("Conv", [se, net.w((c, 4 * c, 1, 1))], kernel_shape=[1, 1])])
    se = net.op("HardSigmoid", [net.op("Conv", [se, net.w((4 * c, c, 1, 1))], kernel_shape=[1, 1])],
                alpha=1 / 6, beta=0.5)
    h = net.op("Mul", [h, se])
    h = net.op("Conv", [h, net.w((c, 4 * c, 1, 1))], kernel_shape=[1, 1])
    h = net.op("LeakyRelu", [net.op("Add", [h, "x"])], alpha=0.1)
    mx = net.op("Max", [h, net.op("Neg", [h]), net.const(np.float32(0.05))])     # |h| floored at 0.05
    mn = net.op("Min", [mx, net.const(np.float32(4.0))])
    y = net.op("Add", [net.op("Log", [mn]), net.op("Reciprocal", [net.op("Add", [net.op("Abs", [h]),
                                                                                  net.const(np.float32(1.0))])])])
    net.nodes.append(helper.make_node("Identity", [y], ["y"]))
    return net.model("mobilenet_v3_block", [_vi("x", [2, c, hw, hw])], [_vi("y", None)], 14)


def conv1d_net():
    """Opset 13: 1-D Conv (asymmetric pads, dilation, groups) with a BatchNormalization to fold,
    1-D MaxPool in ceil mode and 1-D AveragePool, as in audio and text CNNs."""
    net = _Net(7)
    h = net.op("Conv", ["x", net.w((8, 4, 3), np.sqrt(2.0 / 12)), net.w((8,), 0.1)], kernel_shape=[3],
               pads=[2, 1], dilations=[2])
    h = net.op("Relu", [net.bn(h, 8)])
    h = net.op("MaxPool", [h], kernel_shape=[3], strides=[2], ceil_mode=1)
    h = net.op("Conv", [h, net.w((8, 2, 5), np.sqrt(2.0 / 10))], kernel_shape=[5], group=4, auto_pad="SAME_UPPER")
    h = net.op("AveragePool", [h], kernel_shape=[2], strides=[2], pads=[0, 1])
    net.nodes.append(helper.make_node("Identity", [h], ["y"]))
    return net.model("conv1d_net", [_vi("x", [2, 4, 23])], [_vi("y", None)], 13)
