"""ONNX nodes onto ``numamem-graph/1`` layers: one translator per ONNX op.

A node maps onto a built-in op where the semantics agree exactly (Conv with symmetric pads and no
dilation is ``conv2d``; MaxPool without ceil mode is ``maxpool2d``; MatMul by a 2-D weight is
``dense``) and onto the ONNX-semantics ops of :mod:`numamem.planner.ops_onnx` otherwise; a few
become several layers (Sum is a chain of ``add``; opset-11 Softmax over a non-last axis is
reshape, softmax, reshape). Every layer's output shape is the op table's rule, and the final
output of each node is checked against ONNX's inferred shape, so a disagreement of semantics is
an import error rather than a wrong result.

Weights are the constants layers read. Folded weights (BatchNormalization into Conv, Gemm's
``transB``/``alpha``/``beta``, the inference form of a lone BatchNormalization) are computed with
NumPy when the values are at hand (:func:`~numamem.planner.onnx.onnx_weights`) and only shaped
otherwise (planning).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from numamem.planner.graph import Graph, GraphError, Tensor
from numamem.planner.onnx_builder import Builder, Imported
from numamem.planner.onnx_prepare import OnnxImportError, Prepared, UnknownShapeError, UnsupportedOpError


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _str(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def _auto_pads(b: Builder, a: dict, x: tuple[int, ...], kernel: tuple[int, int], strides, dilations):
    """Explicit ``[top, left, bottom, right]`` pads from ``pads`` or ``auto_pad``."""
    mode = _str(a.get("auto_pad", "NOTSET"))
    if mode in ("NOTSET", "") or mode is None:
        pads = list(a.get("pads", [0, 0, 0, 0]))
        return (pads[0], pads[1], pads[2], pads[3])
    if mode == "VALID":
        return (0, 0, 0, 0)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        b.fail(f"auto_pad {mode!r} is not supported")
    begin, end = [], []
    for k in range(2):
        size, ext = x[2 + k], (kernel[k] - 1) * dilations[k] + 1
        total = max(0, (-(-size // strides[k]) - 1) * strides[k] + ext - size)
        small = total // 2
        begin.append(small if mode == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return (begin[0], begin[1], end[0], end[1])


# ---------------------------------------------------------------------------- translators
def _expand_1d(a: dict) -> dict:
    """Window attributes of a 1-D Conv or pool as those of the 2-D one over ``[N, C, 1, L]``."""
    a = dict(a)
    for key, lead in (("kernel_shape", 1), ("strides", 1), ("dilations", 1)):
        if key in a:
            a[key] = [lead] + list(a[key])
    if "pads" in a:
        a["pads"] = [0, a["pads"][0], 0, a["pads"][1]]
    return a


def _conv(b: Builder, node, a: dict) -> None:
    x = b.operand(node.input[0])
    xs = b.shape(x)
    wname = node.input[1]
    ws = b.shape(wname)
    one_d = len(xs) == 3 and len(ws) == 3
    if one_d:  # computed as a 2-D convolution of height 1
        x = b.reshape(x, xs[:2] + (1,) + xs[2:])
        xs, ws, a = b.tensors[x].shape, ws[:2] + (1,) + ws[2:], _expand_1d(a)
    if len(xs) != 4 or len(ws) != 4:
        b.fail(f"only 1-D and 2-D convolutions are supported (input {list(xs)}, weight {list(ws)})")
    if b.const(wname) is None:
        b.fail("the weight must be a constant")
    strides = tuple(a.get("strides", [1, 1]))
    dil = tuple(a.get("dilations", [1, 1]))
    group = int(a.get("group", 1))
    pads = _auto_pads(b, a, xs, ws[2:], strides, dil)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    out = node.output[0]
    # Fold a BatchNormalization that is the only reader of the conv's output (inference form).
    readers = b.readers.get(out, [])
    bn = readers[0] if len(readers) == 1 and readers[0].op_type == "BatchNormalization" else None
    if bn is not None and (out in b.outputs or not all(b.const(n) is not None for n in bn.input[1:5])
                           or [o for o in bn.output[1:] if o] or _attrs(bn).get("training_mode", 0)):
        bn = None
    name = out
    w_make = lambda: b.value(wname).reshape(ws)  # noqa: E731
    b_make = (lambda: b.value(bias)) if bias else (lambda: np.zeros(ws[0], np.float32))
    if bn is not None:
        eps = float(_attrs(bn).get("epsilon", 1e-5))
        scale_n, beta_n, mean_n, var_n = bn.input[1:5]

        def s():
            return b.value(scale_n).astype(np.float64) / np.sqrt(b.value(var_n).astype(np.float64) + eps)

        w0, b0 = w_make, b_make
        w_make = lambda: w0().astype(np.float64) * s()[:, None, None, None]  # noqa: E731
        b_make = lambda: (b0().astype(np.float64) - b.value(mean_n)) * s() + b.value(beta_n)  # noqa: E731
        b.skip.add(id(bn))
        name = bn.output[0]
    w = b.weight(wname if bn is None else b.fresh(f"{wname}/bn"), ws, w_make)
    ins = [x, w]
    if bias or bn is not None:
        ins.append(b.weight(bias if bias and bn is None else b.fresh(f"{name}/bias"), (ws[0],), b_make))
    target = None if one_d else name
    if dil == (1, 1) and pads[0] == pads[2] and pads[1] == pads[3]:
        y = b.emit("conv2d", ins, {"stride": list(strides), "padding": [pads[0], pads[1]], "groups": group}, target)
    else:
        y = b.emit("conv", ins, {"strides": list(strides), "pads": list(pads), "dilations": list(dil),
                                 "group": group}, target)
    if one_d:
        b.reshape(y, b.shape(name), name)


def _batchnorm(b: Builder, node, a: dict) -> None:
    if [o for o in node.output[1:] if o] or a.get("training_mode", 0):
        b.fail("only the inference form (one output) is supported")
    x = b.operand(node.input[0])
    c = b.shape(x)[1]
    eps = float(a.get("epsilon", 1e-5))
    sc, be, mu, var = node.input[1:5]

    def scale():
        return b.value(sc).astype(np.float64) / np.sqrt(b.value(var).astype(np.float64) + eps)

    s = b.weight(b.fresh(f"{node.output[0]}/scale"), (c,), scale)
    t = b.weight(b.fresh(f"{node.output[0]}/shift"), (c,), lambda: b.value(be) - b.value(mu) * scale())
    b.emit("batchnorm", [x, s, t], {}, node.output[0])


def _unary(op: str):
    def f(b: Builder, node, a: dict) -> None:
        b.emit(op, [b.operand(node.input[0])], {}, node.output[0])
    return f


def _clip(b: Builder, node, a: dict) -> None:
    if b.prep.opset < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        lo = float(b.small(node.input[1])) if len(node.input) > 1 and node.input[1] else None
        hi = float(b.small(node.input[2])) if len(node.input) > 2 and node.input[2] else None
    x = b.operand(node.input[0])
    if lo == 0 and hi == 6:
        b.emit("relu6", [x], {}, node.output[0])
    elif lo == 0 and hi is None:
        b.emit("relu", [x], {}, node.output[0])
    else:
        b.emit("clip", [x], {"min": lo, "max": hi}, node.output[0])


def _gelu(b: Builder, node, a: dict) -> None:
    approx = _str(a.get("approximate", "none"))
    b.emit("gelu" if approx == "tanh" else "gelu_erf", [b.operand(node.input[0])], {}, node.output[0])


def _binary(op: str):
    def f(b: Builder, node, a: dict) -> None:
        b.emit(op, [b.operand(node.input[0]), b.operand(node.input[1])], {}, node.output[0])
    return f


def _slope(op: str):
    def f(b: Builder, node, a: dict) -> None:
        keys = ("alpha",) if op == "leaky_relu" else ("alpha", "beta")
        b.emit(op, [b.operand(node.input[0])], {k: float(a[k]) for k in keys if k in a}, node.output[0])
    return f


def _variadic(op: str):
    """Sum, Max, Min of any number of inputs: a chain of the binary op (one input: a copy)."""
    def f(b: Builder, node, a: dict) -> None:
        ins = [b.operand(n) for n in node.input if n]
        if len(ins) == 1:
            b.reshape(ins[0], b.tensors[ins[0]].shape, node.output[0])
            return
        acc = ins[0]
        for k, t in enumerate(ins[1:], 1):
            acc = b.emit(op, [acc, t], {}, node.output[0] if k == len(ins) - 1 else None)
    return f


def _matmul(b: Builder, node, a: dict) -> None:
    an, bn = node.input[0], node.input[1]
    sa, sb = b.shape(an), b.shape(bn)
    if len(sa) < 2 or len(sb) < 2:
        b.fail(f"1-D operands are not supported (shapes {list(sa)} and {list(sb)})")
    if b.const(bn) is not None and len(sb) == 2 and b.const(an) is None:
        b.emit("dense", [b.operand(an), b.operand(bn)], {}, node.output[0])
    else:
        b.emit("matmul", [b.operand(an), b.operand(bn)], {}, node.output[0])


def _gemm(b: Builder, node, a: dict) -> None:
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    ta, tb = int(a.get("transA", 0)), int(a.get("transB", 0))
    an, bn = node.input[0], node.input[1]
    cn = node.input[2] if len(node.input) > 2 and node.input[2] else None
    out = node.output[0]
    if b.const(an) is not None:
        b.fail("a constant A operand is not supported")
    x = b.operand(an)
    if ta:
        x = b.emit("transpose", [x], {"perm": [1, 0]})
    sb = b.shape(bn)
    m = sb[0] if tb else sb[1]
    c_shape = b.shape(cn) if cn else None
    as_bias = cn is not None and b.const(cn) is not None and len(c_shape) <= 2 and (
        len(c_shape) < 2 or c_shape[0] == 1) and (not c_shape or c_shape[-1] in (1, m))
    if b.const(bn) is not None:
        w = b.weight(b.fresh(f"{bn}/gemm") if (tb or alpha != 1.0) else bn, (sb[1], sb[0]) if tb else sb,
                     lambda: (b.value(bn).T if tb else b.value(bn)) * alpha)
        ins = [x, w]
        if as_bias:
            ins.append(b.weight(b.fresh(f"{cn}/bias") if (beta != 1.0 or c_shape != (m,)) else cn, (m,),
                                lambda: np.broadcast_to(b.value(cn).astype(np.float64).reshape(-1) * beta, (m,)).copy()))
        y = b.emit("dense", ins, {}, out if (cn is None or as_bias) else None)
    else:
        y = b.emit("matmul", [x, b.operand(bn)], {"transpose_b": bool(tb)}, out if cn is None and alpha == 1.0 else None)
        if alpha != 1.0:
            k = b.weight(b.fresh(f"{out}/alpha"), (1,), lambda: np.array([alpha]))
            y = b.emit("mul", [y, k], {}, out if cn is None else None)
        as_bias = False
    if cn is not None and not as_bias:
        c = b.operand(cn) if beta == 1.0 else b.weight(b.fresh(f"{cn}/beta"), c_shape,
                                                       lambda: b.value(cn) * beta)
        b.emit("add", [y, c], {}, out)


def _reshape_like(b: Builder, node, a: dict) -> None:
    x = b.operand(node.input[0])
    out = node.output[0]
    shape = b.shape(out)
    if node.op_type == "Flatten" and int(a.get("axis", 1)) == 1 and len(b.tensors[x].shape) >= 2:
        b.emit("flatten", [x], {}, out)
    else:
        b.emit("reshape", [x], {"shape": list(shape)}, out)


def _transpose(b: Builder, node, a: dict) -> None:
    perm = a.get("perm")
    b.emit("transpose", [b.operand(node.input[0])], {"perm": list(perm)} if perm is not None else {}, node.output[0])


def _concat(b: Builder, node, a: dict) -> None:
    b.emit("concat", [b.operand(n) for n in node.input if n], {"axis": int(a["axis"])}, node.output[0])


def _split(b: Builder, node, a: dict) -> None:
    x = b.operand(node.input[0])
    xs = b.tensors[x].shape
    axis = int(a.get("axis", 0)) % len(xs)
    start = 0
    for o in node.output:
        size = b.shape(o)[axis]
        if o:
            b.emit("slice", [x], {"axis": axis, "start": start, "stop": start + size}, o)
        start += size


def _slice(b: Builder, node, a: dict) -> None:
    x = b.operand(node.input[0])
    xs = b.tensors[x].shape
    if b.prep.opset < 10:
        starts, ends = a["starts"], a["ends"]
        axes, steps = a.get("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        get = lambda i: [int(v) for v in b.small(node.input[i])] if len(node.input) > i and node.input[i] else None  # noqa: E731
        starts, ends = get(1), get(2)
        axes = get(3) or list(range(len(starts)))
        steps = get(4) or [1] * len(starts)
    cuts = []
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st != 1:
            b.fail(f"step {st} is not supported (only 1)")
        ax %= len(xs)
        lo, hi, _ = slice(s, e).indices(xs[ax])
        if (lo, hi) != (0, xs[ax]):
            cuts.append((ax, lo, hi))
    if not cuts:
        b.reshape(x, xs, node.output[0])
    for k, (ax, lo, hi) in enumerate(cuts):
        x = b.emit("slice", [x], {"axis": ax, "start": lo, "stop": hi}, node.output[0] if k == len(cuts) - 1 else None)


def _softmax(b: Builder, node, a: dict) -> None:
    x = b.operand(node.input[0])
    xs = b.tensors[x].shape
    out = node.output[0]
    if b.prep.opset >= 13:
        b.emit("softmax", [x], {"axis": int(a.get("axis", -1))}, out)
        return
    axis = int(a.get("axis", 1)) % len(xs)  # opset < 13: softmax of the input flattened at `axis`
    if axis == len(xs) - 1:
        b.emit("softmax", [x], {"axis": -1}, out)
        return
    flat = b.reshape(x, (math.prod(xs[:axis]), math.prod(xs[axis:])))
    b.reshape(b.emit("softmax", [flat], {"axis": -1}), xs, out)


def _reduce_mean(b: Builder, node, a: dict) -> None:
    x = b.operand(node.input[0])
    if b.prep.opset >= 18:
        # An absent or empty axes input reduces every axis, unless noop_with_empty_axes.
        axes = [int(v) for v in b.small(node.input[1])] if len(node.input) > 1 and node.input[1] else None
        axes = axes or None
        if axes is None and a.get("noop_with_empty_axes", 0):
            b.reshape(x, b.tensors[x].shape, node.output[0])
            return
    else:
        axes = a.get("axes")
    b.emit("reduce_mean", [x], {"axes": list(axes) if axes is not None else None,
                                "keepdims": bool(a.get("keepdims", 1))}, node.output[0])


def _layernorm(b: Builder, node, a: dict) -> None:
    if [o for o in node.output[1:] if o]:
        b.fail("the Mean and InvStdDev outputs are not supported")
    x = b.operand(node.input[0])
    xs = b.tensors[x].shape
    if int(a.get("axis", -1)) % len(xs) != len(xs) - 1:
        b.fail("only normalisation over the last axis is supported")
    d = xs[-1]
    if b.shape(node.input[1]) != (d,):
        b.fail(f"Scale must have shape [{d}]")
    gamma = b.operand(node.input[1])
    if len(node.input) > 2 and node.input[2]:
        beta = b.operand(node.input[2])
    else:
        beta = b.weight(b.fresh(f"{node.output[0]}/beta"), (d,), lambda: np.zeros(d, np.float32))
    b.emit("layernorm", [x, gamma, beta], {"eps": float(a.get("epsilon", 1e-5))}, node.output[0])


def _global_avgpool(b: Builder, node, a: dict) -> None:
    x = b.operand(node.input[0])
    if len(b.tensors[x].shape) != 4:
        b.fail("only 2-D inputs [N, C, H, W] are supported")
    b.reshape(b.emit("global_avgpool", [x]), b.shape(node.output[0]), node.output[0])


def _pool(b: Builder, node, a: dict) -> None:
    x = b.operand(node.input[0])
    xs = b.tensors[x].shape
    is_max = node.op_type == "MaxPool"
    out = node.output[0]
    if len(xs) == 3:  # computed as a 2-D pool of height 1
        x = b.reshape(x, xs[:2] + (1,) + xs[2:])
        xs, a = b.tensors[x].shape, _expand_1d(a)
        out = b.fresh(f"{node.output[0]}/2d")
    if len(xs) != 4:
        b.fail("only 1-D and 2-D pooling is supported")
    if is_max and [o for o in node.output[1:] if o]:
        b.fail("the Indices output is not supported")
    kernel = tuple(a["kernel_shape"])
    strides = tuple(a.get("strides", [1, 1]))
    if tuple(a.get("dilations", [1, 1])) != (1, 1):
        b.fail("dilated pooling is not supported")
    pads = _auto_pads(b, a, xs, kernel, strides, (1, 1))
    ceil = bool(a.get("ceil_mode", 0))
    cip = bool(a.get("count_include_pad", 0))
    sym = pads[0] == pads[2] and pads[1] == pads[3] and 2 * pads[0] <= kernel[0] and 2 * pads[1] <= kernel[1]
    if sym and not ceil and (is_max or cip or pads == (0, 0, 0, 0)):
        attrs = {"kernel": list(kernel), "stride": list(strides), "padding": [pads[0], pads[1]]}
        y = b.emit("maxpool2d" if is_max else "avgpool2d", [x], attrs, out)
    else:
        attrs = {"kernel": list(kernel), "strides": list(strides), "pads": list(pads), "ceil_mode": ceil}
        if not is_max:
            attrs["count_include_pad"] = cip
        y = b.emit("maxpool" if is_max else "avgpool", [x], attrs, out)
    if y != node.output[0]:
        b.reshape(y, b.shape(node.output[0]), node.output[0])


def _lrn(b: Builder, node, a: dict) -> None:
    b.emit("lrn", [b.operand(node.input[0])], {"size": int(a["size"]), "alpha": float(a.get("alpha", 1e-4)),
                                               "beta": float(a.get("beta", 0.75)), "bias": float(a.get("bias", 1.0))},
           node.output[0])


def _gather(b: Builder, node, a: dict) -> None:
    data, idx = node.input[0], node.input[1]
    axis = int(a.get("axis", 0))
    if b.const(data) is not None and b.const(idx) is None:
        ids = b.resolve(idx)
        if axis != 0 or len(b.shape(data)) != 2 or len(b.shape(ids)) != 2:
            b.fail("Gather on a weight must take rows (axis 0) of a 2-D table with 2-D indices [N, L]")
        if ids not in b.tensors or b.tensors[ids].dtype != "int64":
            b.fail(f"indices {ids!r} must be an int64 graph input")
        b.emit("embedding", [ids, b.operand(data)], {}, node.output[0])
        return
    if b.const(idx) is not None and b.const(data) is None:
        x = b.operand(data)
        xs = b.tensors[x].shape
        axis %= len(xs)
        v = np.asarray(b.small(idx)).astype(np.int64)
        flat = (v.reshape(-1) % xs[axis]).tolist()
        if flat and flat == list(range(flat[0], flat[0] + len(flat))):
            y = b.emit("slice", [x], {"axis": axis, "start": flat[0], "stop": flat[0] + len(flat)})
            b.reshape(y, b.shape(node.output[0]), node.output[0])
            return
    b.fail("only Gather of table rows by input ids, or of a contiguous constant range, is supported")


def _alias(b: Builder, node, a: dict) -> None:
    if node.op_type == "Dropout" and [o for o in node.output[1:] if o and b.readers.get(o)]:
        b.fail("the mask output is not supported")
    if node.op_type == "Cast":
        from onnx import helper

        to = np.dtype(helper.tensor_dtype_to_np_dtype(int(a["to"])))
        src = b.resolve(node.input[0])
        frm = b.tensors[src].dtype if src in b.tensors else None
        if to.kind != "f" or frm is not None:
            b.fail(f"a cast of data from {frm or 'float'} to {to} is not supported (numamem computes in "
                   "floating point; only int64 ids read by an embedding stay integers)")
    src = b.operand(node.input[0])
    out = node.output[0]
    if out in b.outputs:  # a graph output keeps its name: copy rather than alias
        b.reshape(src, b.tensors[src].shape, out)
    else:
        b.alias[out] = src


TRANSLATORS: dict[str, Callable] = {
    "Conv": _conv, "BatchNormalization": _batchnorm,
    "Relu": _unary("relu"), "Sigmoid": _unary("sigmoid"), "Tanh": _unary("tanh"), "Erf": _unary("erf"),
    "Sqrt": _unary("sqrt"), "Exp": _unary("exp"), "Clip": _clip, "Gelu": _gelu,
    "Neg": _unary("neg"), "Reciprocal": _unary("reciprocal"), "Abs": _unary("abs"), "Log": _unary("log"),
    "HardSwish": _unary("hard_swish"), "LeakyRelu": _slope("leaky_relu"), "HardSigmoid": _slope("hard_sigmoid"),
    "Max": _variadic("max"), "Min": _variadic("min"),
    "Add": _binary("add"), "Sub": _binary("sub"), "Mul": _binary("mul"), "Div": _binary("div"),
    "Pow": _binary("pow"), "Sum": _variadic("add"), "MatMul": _matmul, "Gemm": _gemm,
    "Reshape": _reshape_like, "Flatten": _reshape_like, "Squeeze": _reshape_like, "Unsqueeze": _reshape_like,
    "Transpose": _transpose, "Concat": _concat, "Split": _split, "Slice": _slice, "Softmax": _softmax,
    "ReduceMean": _reduce_mean, "LayerNormalization": _layernorm, "GlobalAveragePool": _global_avgpool,
    "MaxPool": _pool, "AveragePool": _pool, "LRN": _lrn, "Gather": _gather,
    "Identity": _alias, "Dropout": _alias, "Cast": _alias,
}

#: The ONNX op types :func:`translate` accepts (besides those folded away as constants).
SUPPORTED = tuple(sorted(TRANSLATORS))


def translate(prep: Prepared, *, values: bool) -> Imported:
    """Step 3 and 4 of the import: check the remaining nodes, then map them onto layers."""
    from onnx import helper

    b = Builder(prep, values)
    m = prep.model
    for node in m.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in TRANSLATORS:
            dom = node.domain or "ai.onnx"
            raise UnsupportedOpError(
                f"{prep.where}: node {node.name or node.output[0]!r} has op {node.op_type!r} of domain {dom!r} "
                f"(opset {prep.opset}), which numamem does not support; supported: {', '.join(SUPPORTED)}")
    for name in prep.inputs:
        if not b.readers.get(name) and name not in b.outputs:
            continue
        shape = prep.shapes.get(name)
        if shape is None:
            raise UnknownShapeError(f"{prep.where}: input {name!r} has no static shape")
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(prep.types.get(name, 1)))
        if dt.kind == "f" and not any(b.tensors[n].role == "input" and b.tensors[n].dtype is None
                                      for n in b.tensors):
            b.dtype = dt.name
        # Integer inputs stay integers only as embedding ids (the indices of a Gather); any other
        # (an attention mask, cast to float before use) is held as floats, exact below 2**24.
        ids = any(r.op_type == "Gather" and r.input[1] == name for r in b.readers.get(name, []))
        b.tensors[name] = Tensor(name, shape, "input", "int64" if dt.kind in "iub" and ids else None)
    for node in m.graph.node:
        if id(node) in b.skip:
            continue
        b.node = node
        TRANSLATORS[node.op_type](b, node, _attrs(node))
    for name in b.outputs:
        if name not in b.tensors or b.tensors[name].role != "output":
            raise UnsupportedOpError(f"{prep.where}: output {name!r} is not computed by a node (a constant or "
                                     "an input), which numamem does not support")
    b.fuse_activations()
    try:
        graph = Graph(m.graph.name or "onnx", b.dtype, b.tensors.values(), b.layers)
    except GraphError as exc:
        raise OnnxImportError(f"{prep.where}: the imported graph is invalid: {exc}") from None
    return Imported(graph, b.weights)
