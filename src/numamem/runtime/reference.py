"""An independent float64 reference of every ``numamem-graph/1`` op, and a whole-graph forward.

This is the yardstick the block kernels (:mod:`numamem.runtime.kernels`) and the executor are
checked against, so it shares no code with them and is written the other way round: it computes
whole tensors (no blocks, no ``out=``, no scratch), in float64, from the textbook definitions.
Sliding windows are explicit loops over output positions with NumPy only reducing one window;
padding is materialised with :func:`numpy.pad`; matrix products are :func:`numpy.einsum`
contractions rather than :func:`numpy.matmul`. It is meant for small shapes: slow, but obvious.

:func:`reference_forward` runs a graph given in a plain form (a list of layers as dicts, or any
objects with ``op``, ``inputs``, ``outputs`` and ``attrs`` attributes), so it does not depend on
the planner's classes.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _f64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def activation(x: np.ndarray, name: str | None) -> np.ndarray:
    """Apply the fused activation ``name`` (``relu``, ``relu6``, ``gelu`` or ``None``).

    Parameters
    ----------
    x : ndarray
    name : str or None

    Returns
    -------
    ndarray
        float64.
    """
    x = _f64(x)
    if name is None:
        return x
    if name == "relu":
        return np.where(x > 0, x, 0.0)
    if name == "relu6":
        return np.minimum(np.where(x > 0, x, 0.0), 6.0)
    if name == "gelu":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    raise ValueError(f"unknown activation {name!r}")


def dense(x, w, b=None, activation_name=None):
    """``x @ w + b`` over the last axis of ``x``, then the activation.

    Parameters
    ----------
    x : array_like, shape (..., K)
    w : array_like, shape (K, M)
    b : array_like, shape (M,), optional
    activation_name : {None, "relu", "relu6", "gelu"}

    Returns
    -------
    ndarray, shape (..., M), float64
    """
    x, w = _f64(x), _f64(w)
    y = np.zeros(x.shape[:-1] + (w.shape[1],))
    for j in range(w.shape[1]):  # one output feature at a time: a dot product per row
        y[..., j] = np.sum(x * w[:, j], axis=-1)
    if b is not None:
        y = y + _f64(b)
    return activation(y, activation_name)


def matmul(a, b, transpose_b=False):
    """Batched ``a @ b`` (or ``a @ b^T``) with NumPy broadcasting of the batch axes.

    Parameters
    ----------
    a : array_like, shape (..., M, K)
    b : array_like, shape (..., K, N), or (..., N, K) with ``transpose_b``
    transpose_b : bool

    Returns
    -------
    ndarray, shape (broadcast batch..., M, N), float64
    """
    a, b = _f64(a), _f64(b)
    if transpose_b:
        b = np.swapaxes(b, -1, -2)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = np.broadcast_to(a, batch + a.shape[-2:])
    b = np.broadcast_to(b, batch + b.shape[-2:])
    y = np.zeros(batch + (a.shape[-2], b.shape[-1]))
    for idx in np.ndindex(*batch):
        for m in range(a.shape[-2]):
            y[idx + (m,)] = np.einsum("k,kn->n", a[idx + (m,)], b[idx])
    return y


def conv2d(x, w, b=None, stride=1, padding=0, groups=1, activation_name=None):
    """2-D cross-correlation (as PyTorch's ``conv2d``), NCHW, symmetric zero padding.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    w : array_like, shape (O, C/groups, kh, kw)
    b : array_like, shape (O,), optional
    stride, padding : int or pair of int
    groups : int
    activation_name : {None, "relu", "relu6", "gelu"}

    Returns
    -------
    ndarray, shape (N, O, OH, OW), float64
    """
    # PyTorch's conv2d is ONNX Conv with symmetric pads and no dilation: one loop serves both.
    return conv(x, w, b, strides=stride, pads=padding, dilations=1, group=groups,
                activation_name=activation_name)


def pool2d(x, kernel, stride=None, padding=0, kind="max"):
    """Max or average pooling as PyTorch (the average counts padding; no ceil mode).

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    kernel : int or pair of int
    stride : int or pair of int, optional
        Defaults to ``kernel``.
    padding : int or pair of int
    kind : {"max", "avg"}

    Returns
    -------
    ndarray, shape (N, C, OH, OW), float64
    """
    x = _f64(x)
    kh, kw = _pair(kernel)
    sh, sw = _pair(kernel if stride is None else stride)
    ph, pw = _pair(padding)
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    oh = (x.shape[2] + 2 * ph - kh) // sh + 1
    ow = (x.shape[3] + 2 * pw - kw) // sw + 1
    y = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * sh: i * sh + kh, j * sw: j * sw + kw]
            y[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.sum(axis=(2, 3)) / (kh * kw)
    return y


def layernorm(x, gamma, beta, eps=1e-5):
    """Normalise over the last axis (biased variance), then scale and shift.

    Parameters
    ----------
    x : array_like, shape (..., D)
    gamma, beta : array_like, shape (D,)
    eps : float

    Returns
    -------
    ndarray, float64
    """
    x = _f64(x)
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * _f64(gamma) + _f64(beta)


def softmax(x, axis=-1):
    """``exp(x - max) / sum`` along ``axis``.

    Parameters
    ----------
    x : array_like
    axis : int

    Returns
    -------
    ndarray, float64
    """
    x = _f64(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _op(op: str, xs: list[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    act = attrs.get("activation")
    if op == "dense":
        return dense(xs[0], xs[1], xs[2] if len(xs) > 2 else None, act)
    if op == "matmul":
        return matmul(xs[0], xs[1], bool(attrs.get("transpose_b", False)))
    if op == "conv2d":
        return conv2d(xs[0], xs[1], xs[2] if len(xs) > 2 else None, attrs.get("stride", 1),
                      attrs.get("padding", 0), int(attrs.get("groups", 1)), act)
    if op in ("relu", "relu6", "gelu"):
        return activation(xs[0], op)
    if op == "sigmoid":
        x = _f64(xs[0])
        return 1.0 / (1.0 + np.exp(-np.clip(x, -700, 700)))
    if op == "add":
        return activation(_f64(xs[0]) + _f64(xs[1]), act)
    if op == "mul":
        return _f64(xs[0]) * _f64(xs[1])
    if op in ("maxpool2d", "avgpool2d"):
        return pool2d(xs[0], attrs["kernel"], attrs.get("stride"), attrs.get("padding", 0),
                      "max" if op == "maxpool2d" else "avg")
    if op == "global_avgpool":
        x = _f64(xs[0])
        return x.sum(axis=(2, 3)) / (x.shape[2] * x.shape[3])
    if op == "batchnorm":
        x = _f64(xs[0])
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * _f64(xs[1]).reshape(shape) + _f64(xs[2]).reshape(shape)
    if op == "layernorm":
        return layernorm(xs[0], xs[1], xs[2], float(attrs.get("eps", 1e-5)))
    if op == "softmax":
        return softmax(xs[0], int(attrs.get("axis", -1)))
    if op == "reshape":
        return _f64(xs[0]).reshape(tuple(attrs["shape"]))
    if op == "flatten":
        x = _f64(xs[0])
        return x.reshape(x.shape[0], -1)
    if op == "transpose":
        perm = attrs.get("perm")
        return np.transpose(_f64(xs[0]), None if perm is None else tuple(perm))
    if op == "concat":
        return np.concatenate([_f64(x) for x in xs], axis=int(attrs.get("axis", 0)))
    if op == "embedding":
        ids = np.asarray(xs[0])
        if ids.dtype.kind not in "iu":
            raise TypeError("embedding ids must be integers")
        table = _f64(xs[1])
        y = np.empty(ids.shape + (table.shape[1],))
        for idx in np.ndindex(*ids.shape):
            i = int(ids[idx])
            if not 0 <= i < table.shape[0]:  # a negative id would silently count from the end
                raise IndexError(f"embedding id {i} outside [0, {table.shape[0]})")
            y[idx] = table[i]
        return y
    return _onnx_op(op, xs, attrs)


# ----------------------------------------------------------------------- ONNX-semantics ops
def _pads4(v: Any) -> tuple[int, int, int, int]:
    if isinstance(v, (list, tuple)) and len(v) == 4:
        return tuple(int(p) for p in v)  # type: ignore[return-value]
    h, w = _pair(v)
    return h, w, h, w


def conv(x, w, b=None, strides=1, pads=0, dilations=1, group=1, activation_name=None):
    """ONNX Conv in 2-D: pads ``[top, left, bottom, right]``, dilations, groups.

    Returns
    -------
    ndarray, shape (N, O, OH, OW), float64
    """
    x, w = _f64(x), _f64(w)
    sh, sw = _pair(strides)
    dh, dw = _pair(dilations)
    pt, pl, pb, pr = _pads4(pads)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // group
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    oh = (h + pt + pb - eh) // sh + 1
    ow = (wd + pl + pr - ew) // sw + 1
    y = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * sh: i * sh + eh: dh, j * sw: j * sw + ew: dw]
            for g in range(group):
                y[:, g * og:(g + 1) * og, i, j] = np.einsum(
                    "nckl,ockl->no", win[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og])
    if b is not None:
        y = y + _f64(b)[:, None, None]
    return activation(y, activation_name)


def onnx_pool(x, kernel, strides=1, pads=0, ceil_mode=False, count_include_pad=False, kind="max"):
    """ONNX MaxPool / AveragePool in 2-D as ONNX Runtime computes them.

    Output positions are ``floor`` (or ``ceil``) of ``(H + pads - k) / s + 1``, dropping a last
    window that would start past the input and its leading pad; the average divides by the
    window's elements inside the input, or inside the padded input with ``count_include_pad``.

    Returns
    -------
    ndarray, shape (N, C, OH, OW), float64
    """
    x = _f64(x)
    kh, kw = _pair(kernel)
    sh, sw = _pair(strides)
    pt, pl, pb, pr = _pads4(pads)
    H, W = x.shape[2:]

    def n_out(size, k, s, a, b):
        span = size + a + b - k
        out = (-(-span // s) if ceil_mode else span // s) + 1
        return out - 1 if ceil_mode and (out - 1) * s >= size + a else out

    oh, ow = n_out(H, kh, sh, pt, pb), n_out(W, kw, sw, pl, pr)
    y = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        h0 = i * sh - pt
        for j in range(ow):
            w0 = j * sw - pl
            a, bb = max(h0, 0), min(h0 + kh, H)
            c, d = max(w0, 0), min(w0 + kw, W)
            win = x[:, :, a:bb, c:d]
            if kind == "max":
                y[:, :, i, j] = win.max(axis=(2, 3))
            else:
                if count_include_pad:
                    cnt = (min(h0 + kh, H + pb) - h0) * (min(w0 + kw, W + pr) - w0)
                else:
                    cnt = (bb - a) * (d - c)
                y[:, :, i, j] = win.sum(axis=(2, 3)) / cnt
    return y


def lrn(x, size, alpha=1e-4, beta=0.75, bias=1.0):
    """ONNX LRN: ``x / (bias + alpha/size * sum of squares over a channel window)**beta``."""
    x = _f64(x)
    C = x.shape[1]
    y = np.empty_like(x)
    for ch in range(C):
        lo, hi = max(0, ch - (size - 1) // 2), min(C - 1, ch + -(-(size - 1) // 2))
        s = (x[:, lo:hi + 1] ** 2).sum(axis=1)
        y[:, ch] = x[:, ch] / (bias + alpha / size * s) ** beta
    return y


_ERF = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    """The error function, element by element with :func:`math.erf` (float64)."""
    return _ERF(_f64(x)).astype(np.float64)


def _onnx_op(op: str, xs: list[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    if op == "conv":
        return conv(xs[0], xs[1], xs[2] if len(xs) > 2 else None, attrs.get("strides", 1), attrs.get("pads", 0),
                    attrs.get("dilations", 1), int(attrs.get("group", 1)), attrs.get("activation"))
    if op in ("maxpool", "avgpool"):
        return onnx_pool(xs[0], attrs["kernel"], attrs.get("strides", 1), attrs.get("pads", 0),
                         bool(attrs.get("ceil_mode", False)), bool(attrs.get("count_include_pad", False)),
                         "max" if op == "maxpool" else "avg")
    if op == "lrn":
        return lrn(xs[0], int(attrs["size"]), float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75)),
                   float(attrs.get("bias", 1.0)))
    x = _f64(xs[0])
    if op == "tanh":
        return np.tanh(x)
    if op == "erf":
        return erf(x)
    if op == "sqrt":
        return np.sqrt(x)
    if op == "exp":
        return np.exp(x)
    if op == "gelu_erf":
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    if op == "clip":
        lo, hi = attrs.get("min"), attrs.get("max")
        return np.minimum(np.maximum(x, -np.inf if lo is None else lo), np.inf if hi is None else hi)
    if op == "neg":
        return -x
    if op == "reciprocal":
        return 1.0 / x
    if op == "abs":
        return np.abs(x)
    if op == "log":
        return np.log(x)
    if op == "leaky_relu":
        return np.where(x >= 0, x, float(attrs.get("alpha", 0.01)) * x)
    if op == "hard_sigmoid":
        return np.maximum(0.0, np.minimum(1.0, float(attrs.get("alpha", 0.2)) * x + float(attrs.get("beta", 0.5))))
    if op == "hard_swish":
        return x * np.maximum(0.0, np.minimum(1.0, x / 6.0 + 0.5))
    if op in ("sub", "div", "pow", "max", "min"):
        y = _f64(xs[1])
        return {"sub": np.subtract, "div": np.divide, "pow": np.power, "max": np.maximum, "min": np.minimum}[op](x, y)
    if op == "reduce_mean":
        axes = attrs.get("axes")
        return x.mean(axis=None if axes is None else tuple(int(a) for a in axes),
                      keepdims=bool(attrs.get("keepdims", True)))
    if op == "slice":
        idx = [slice(None)] * x.ndim
        idx[int(attrs.get("axis", 0))] = slice(int(attrs["start"]), int(attrs["stop"]))
        return x[tuple(idx)]
    raise ValueError(f"unknown op {op!r}")


def apply(op: str, inputs: Iterable[Any], attrs: Mapping[str, Any] | None = None) -> np.ndarray:
    """Compute one layer ``op`` on whole operands; the result is float64.

    Parameters
    ----------
    op : str
        An op of the ``numamem-graph/1`` table.
    inputs : iterable of array_like
        Operands in the op's order (embedding ids stay integers).
    attrs : mapping, optional
        The layer's attributes.

    Returns
    -------
    ndarray

    Examples
    --------
    >>> apply("avgpool2d", [np.ones((1, 1, 2, 2))], {"kernel": 2, "padding": 1}).ravel()
    array([0.25, 0.25, 0.25, 0.25])
    """
    return _op(op, [np.asarray(x) for x in inputs], dict(attrs or {}))


def _field(layer: Any, key: str) -> Any:
    if isinstance(layer, Mapping):
        return layer[key] if key != "attrs" else layer.get("attrs", {})
    return getattr(layer, key, {} if key == "attrs" else None)


def _layer_attrs(layer: Any) -> dict[str, Any]:
    attrs = dict(_field(layer, "attrs") or {})
    if isinstance(layer, Mapping):  # loose attributes beside name/op/inputs/outputs, as the format allows
        for k, v in layer.items():
            if k not in ("name", "op", "inputs", "outputs", "attrs"):
                attrs.setdefault(k, v)
    return attrs


def reference_forward(graph_like: Any, weights: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Run a layer graph with the reference ops, in float64.

    Parameters
    ----------
    graph_like : mapping, sequence or object
        A ``numamem-graph/1`` dict (its ``"layers"`` are used), a list of layers, or an object
        with a ``layers`` attribute. A layer is a mapping with ``op``, ``inputs``, ``outputs`` and
        optional ``attrs`` (other keys count as attributes too), or an object with those
        attributes. Layers run in list order.
    weights, inputs : mapping of str to array_like
        The graph's weights and inputs by tensor name.

    Returns
    -------
    dict of str to ndarray
        Every tensor: the given weights and inputs and each layer's output (float64, embedding ids
        unchanged).

    Raises
    ------
    KeyError
        If a layer reads a tensor that is neither given nor produced earlier.
    """
    layers = graph_like
    if isinstance(graph_like, Mapping):
        layers = graph_like["layers"]
    elif hasattr(graph_like, "layers"):
        layers = graph_like.layers
    env: dict[str, np.ndarray] = {}
    for name, a in list(weights.items()) + list(inputs.items()):
        a = np.asarray(a)
        env[name] = a if a.dtype.kind in "iu" else a.astype(np.float64)
    for layer in layers:
        op = _field(layer, "op")
        ins = [env[n] for n in _field(layer, "inputs")]
        outs = list(_field(layer, "outputs"))
        if len(outs) != 1:
            raise ValueError(f"layer {_field(layer, 'name')!r}: expected one output, got {outs}")
        env[outs[0]] = _op(op, ins, _layer_attrs(layer))
    return env


__all__ = ["activation", "apply", "conv", "conv2d", "dense", "erf", "layernorm", "lrn", "matmul", "onnx_pool",
           "pool2d", "reference_forward", "softmax"]
