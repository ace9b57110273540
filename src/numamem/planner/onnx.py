"""ONNX models as ``numamem-graph/1`` graphs: :func:`from_onnx` and the weights, :func:`onnx_weights`.

Import is four steps on a copy of the model:

1. **Inputs.** Symbolic input dimensions get their values from ``input_shapes`` (the whole
   shape, by input name) or ``batch`` (a symbolic dimension 0); a dimension left without a value
   is a :class:`MissingDimError` naming the input and the dimension.
2. **Shapes and constants.** ONNX shape inference (strict, with data propagation) runs, then
   every node whose inputs are all constants (initializers, ``Constant`` outputs, and ``Shape``
   of a tensor whose shape is now static) is evaluated by ONNX's reference evaluator and becomes
   a constant; the two repeat until nothing changes, so ``Shape -> Gather -> Unsqueeze -> Concat
   -> Reshape`` chains end with a static shape. A constant whose value is not at hand (external
   data not loaded while planning) keeps its shape and is evaluated when weights are asked for.
3. **Checks.** Every remaining node must be an op numamem has (else :class:`UnsupportedOpError`
   naming the node, op type, domain, opset and the supported list) and every tensor it touches
   must have a static shape (else :class:`UnknownShapeError` naming the tensor and its producer).
4. **Layers.** :mod:`numamem.planner.onnx_nodes` maps each node onto graph-format layers.
   Constants read by layers become weights; Dropout and Identity disappear; a BatchNormalization
   that alone reads a Conv's output is folded into that Conv.

The light models of ONNX's own test set keep their weights as ``ConstantOfShape`` placeholders
(every element 0.02). :func:`placeholder_values` gives them random values of a sensible scale
and :func:`with_values` writes such values into a copy of the model as initializers, so ONNX
Runtime and numamem can be run on the same weights.

Loading a path for planning does not read external data (``load_external_data=False``): a
multi-GB model is planned from its shapes alone; :func:`onnx_weights` reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from numamem.planner.graph import Graph
from numamem.planner.onnx_nodes import SUPPORTED, translate
from numamem.planner.onnx_prepare import (
    MissingDimError, OnnxImportError, UnknownShapeError, UnsupportedOpError, load_model, prepare, require_onnx,
)

__all__ = ["MissingDimError", "OnnxImportError", "SUPPORTED", "UnknownShapeError", "UnsupportedOpError",
           "from_onnx", "onnx_weights", "placeholder_values", "with_values"]


# -------------------------------------------------------------------------- public API
def from_onnx(model: Any, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
              batch: int | None = None) -> Graph:
    """Import an ONNX model as a ``numamem-graph/1`` :class:`~numamem.planner.Graph`.

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
        A path is loaded without its external data: planning needs only shapes.
    input_shapes : mapping of str to sequence of int, optional
        Whole shapes of inputs, by the model's input names: ``{"input": (1, 3, 224, 224)}``.
    batch : int, optional
        The value of a symbolic dimension 0 of every input not in ``input_shapes``.

    Returns
    -------
    Graph
        Named after the model's graph; inputs and outputs keep the model's names.

    Raises
    ------
    ImportError
        If the ``onnx`` package is missing.
    OnnxImportError
        (a ``ValueError``) for a malformed or truncated file or inconsistent model; its subclasses
        :class:`MissingDimError`, :class:`UnsupportedOpError` and :class:`UnknownShapeError`
        for the cases they name.
    """
    return translate(prepare(model, input_shapes, batch, values=False), values=False).graph


def onnx_weights(model: Any, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 batch: int | None = None, values: Mapping[str, np.ndarray] | None = None
                 ) -> dict[str, np.ndarray]:
    """The weights of ``from_onnx(model, ...)``, by the graph's weight names.

    External data is read. Folded weights (a BatchNormalization folded into its Conv, a Gemm's
    transposed and scaled matrix) are computed here from the model's tensors.

    Parameters
    ----------
    model, input_shapes, batch
        As for :func:`from_onnx`.
    values : mapping of str to ndarray, optional
        Values replacing the model's own for these tensors (initializers or ``ConstantOfShape``
        outputs, by their ONNX names), such as :func:`placeholder_values` gives.
    """
    prep = prepare(model, input_shapes, batch, values=True, overrides=values)
    return translate(prep, values=True).weights


def placeholder_values(model: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Random values for the ``ConstantOfShape`` weight placeholders of ``model``, scaled so that
    activations stay of order one through the whole network.

    He or LeCun scaling alone keeps a plain Conv/ReLU stack in range, but not a residual network
    whose batch norms are near-identity: every residual sum doubles the second moment, and ResNet-50's
    logits come out in the tens of thousands, a one-hot softmax. So the scales follow the
    expected second moment ``E[x^2]`` of every tensor, propagated through the graph in order
    (:func:`_moment_of`; graph inputs are taken as standard normal, as ``numamem run``'s random
    inputs are):

    - a Conv filter, Gemm or MatMul matrix is normal with variance ``1 / (K * E[x^2])`` for a
      contraction of ``K`` terms over an operand of second moment ``E[x^2]``, so its output has a
      second moment of about one (He scaling on a ReLU output of unit variance, generalised);
    - a BatchNormalization normalises what it is given: variance ``E[x^2] * U(0.5, 1.5)``, mean
      ``0.1 sqrt(E[x^2]) N(0,1)``, scale ``1 + 0.1 N(0,1)``, shift ``0.1 N(0,1)``;
    - Mul operands are ``1 + 0.1 N(0,1)``; every other placeholder (biases) ``0.1 N(0,1)``.

    A placeholder reaches its reader through Unsqueeze/Reshape/Squeeze/Transpose/Cast/Identity/
    Flatten. The values depend on the model and ``seed`` only, not on the inputs.

    Returns
    -------
    dict of str to ndarray
        By the placeholders' ONNX names.
    """
    return _placeholders(model, seed)[0]


def _placeholders(model: Any, seed: int) -> tuple[dict[str, np.ndarray], dict[str, "_Stats"]]:
    """:func:`placeholder_values` and the expected statistics of every tensor, by ONNX name."""
    onnx = require_onnx()
    from onnx import numpy_helper

    m, _where = load_model(model, values=False)
    rng = np.random.default_rng(seed)
    readers: dict[str, list] = {}
    for node in m.graph.node:
        for i, n in enumerate(node.input):
            readers.setdefault(n, []).append((node, i))
    inits = {}
    for t in m.graph.initializer:
        try:
            inits[t.name] = numpy_helper.to_array(t)
        except Exception:  # external data not read while planning: its statistics are not known
            continue
    passthrough = ("Unsqueeze", "Reshape", "Squeeze", "Transpose", "Cast", "Identity", "Flatten")

    def use(name: str, depth: int = 0):
        """The node reading placeholder ``name`` (through pass-through ops), its input index, and
        the name under which that node reads it."""
        for node, i in readers.get(name, []):
            if node.op_type in passthrough and i == 0 and depth < 4:
                return use(node.output[0], depth + 1)
            return node, i, name
        return None, 0, name

    shapes = {node.output[0]: tuple(int(d) for d in inits[node.input[0]]) for node in m.graph.node
              if node.op_type == "ConstantOfShape" and node.input and node.input[0] in inits}
    # The shape its reader sees a placeholder with (after a Reshape, say) decides its fan-in.
    seen_shape: dict[str, tuple[int, ...]] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
        for vi in inferred.graph.value_info:
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                seen_shape[vi.name] = tuple(int(d.dim_value) for d in dims)
    except Exception:  # an inconsistent model: the placeholders' own shapes will do
        pass
    # Placeholders by the node that reads them: drawn when the propagation reaches that node.
    read_by: dict[int, list] = {}
    for name in shapes:
        reader, i, seen_as = use(name)
        if reader is not None:
            read_by.setdefault(id(reader), []).append((name, i, seen_as))
    # Statistics: graph inputs standard normal, constants their own, placeholders once drawn.
    stats: dict[str, _Stats] = {n: _Stats.of(a) for n, a in inits.items() if a.dtype.kind == "f"}
    for i in m.graph.input:
        stats.setdefault(i.name, _Stats(0.0, 1.0))
    values = dict(inits)
    out: dict[str, np.ndarray] = {}
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    v = numpy_helper.to_array(a.t)
                    values[node.output[0]] = v
                    if v.dtype.kind == "f":
                        stats[node.output[0]] = _Stats.of(v)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for name, i, seen_as in read_by.get(id(node), ()):
            shape = shapes[name]
            seen = seen_shape.get(seen_as, shape) if seen_as != name else shape
            a = out[name] = _draw(node.op_type, i, shape, seen, attrs, node, stats, rng)
            values[name] = a
            values[seen_as] = a.reshape(seen) if int(np.prod(seen)) == a.size else a
            stats[name] = stats[seen_as] = _Stats.of(a)
        if node.output and node.op_type != "ConstantOfShape":
            st = _propagate(node.op_type, node, attrs, stats, values)
            for o in node.output:
                stats[o] = st
    return out, stats


@dataclass(frozen=True)
class _Stats:
    """Mean and second moment of a tensor's elements, the two numbers the propagation tracks."""

    mean: float
    ms: float

    @classmethod
    def of(cls, a: np.ndarray) -> "_Stats":
        a = np.asarray(a, np.float64)
        return cls(float(a.mean()), float(np.mean(a * a))) if a.size else cls(0.0, 0.0)

    @property
    def var(self) -> float:
        return max(self.ms - self.mean ** 2, 0.0)

    def scaled(self, f: float) -> "_Stats":
        return _Stats(self.mean * f, self.ms * f * f)


def _draw(op: str, i: int, shape: tuple, seen: tuple, attrs: Mapping[str, Any], node: Any,
          stats: Mapping[str, "_Stats"], rng: np.random.Generator) -> np.ndarray:
    """Values of a placeholder of ``shape``, input ``i`` of ``node`` which reads it with shape
    ``seen`` (see :func:`placeholder_values`)."""
    def ms(k: int) -> float:  # second moment of the node's input k (1 when not known)
        st = stats.get(node.input[k]) if k < len(node.input) else None
        return max(st.ms, 1e-12) if st is not None else 1.0

    n = rng.standard_normal(shape)
    if op == "Conv" and i == 1:
        k = int(np.prod(seen[1:]))  # in-channels per group x kernel window
        a = n / np.sqrt(max(k, 1) * ms(0))
    elif op in ("Gemm", "MatMul") and i in (0, 1) and len(seen) >= 2:
        if op == "Gemm":
            trans = attrs.get("transA" if i == 0 else "transB", 0)
            k = seen[0] if (i == 0) == bool(trans) else seen[1]
            alpha = float(attrs.get("alpha", 1.0))
        else:
            k = seen[-1] if i == 0 else seen[-2]
            alpha = 1.0
        a = n / np.sqrt(max(k, 1) * ms(1 - i) * alpha ** 2)
    elif op == "BatchNormalization" and i == 4:
        a = ms(0) * rng.uniform(0.5, 1.5, shape)
    elif op == "BatchNormalization" and i == 3:
        a = 0.1 * np.sqrt(ms(0)) * n
    elif (op == "BatchNormalization" and i == 1) or op == "Mul":
        a = 1.0 + 0.1 * n
    else:
        a = 0.1 * n
    return a.astype(np.float32)


def _relu(st: "_Stats") -> "_Stats":
    """Mean and second moment of ``max(z, 0)`` for a normal ``z`` of ``st``'s mean and moment."""
    from math import erf, exp, pi, sqrt

    mu, sd = st.mean, sqrt(st.var)
    if sd == 0.0:
        return _Stats(max(mu, 0.0), max(mu, 0.0) ** 2)
    a = mu / sd
    cdf, pdf = 0.5 * (1 + erf(a / sqrt(2))), exp(-a * a / 2) / sqrt(2 * pi)
    return _Stats(mu * cdf + sd * pdf, (mu * mu + sd * sd) * cdf + mu * sd * pdf)


#: Pooling on the statistics: the mean moves by ``shift`` standard deviations and the variance
#: is multiplied by ``var`` (fitted on the light models' random networks; they need only be
#: right within a small factor).
_POOL = {"MaxPool": (0.5, 0.5), "GlobalMaxPool": (2.0, 0.3), "AveragePool": (0.0, 0.8),
         "GlobalAveragePool": (0.0, 0.3)}


def _propagate(op: str, node: Any, attrs: Mapping[str, Any], stats: Mapping[str, "_Stats"],
               values: Mapping[str, np.ndarray]) -> "_Stats":
    """Expected statistics of ``node``'s output from its inputs' (one rule per op; others pass
    their first input's through)."""
    ins = [stats.get(n, _Stats(0.0, 1.0)) if n else _Stats(0.0, 0.0) for n in node.input]
    x = ins[0] if ins else _Stats(0.0, 1.0)

    def arr(k: int) -> np.ndarray | None:
        return values.get(node.input[k]) if k < len(node.input) else None

    def contraction(k: int, a: "_Stats", b: "_Stats", bias: "_Stats | None", scale: float = 1.0) -> "_Stats":
        # K products of independent terms (the weights are drawn independently of the data)
        mean = scale * k * a.mean * b.mean
        ms = scale ** 2 * (k * a.ms * b.ms + k * (k - 1) * (a.mean * b.mean) ** 2)
        if bias is not None:
            mean, ms = mean + bias.mean, ms + bias.ms + 2 * mean * bias.mean
        return _Stats(mean, ms)

    def dim(k: int, axis: int) -> int:
        a = arr(k)
        return int(a.shape[axis]) if a is not None and a.ndim >= 2 else 1

    if op == "Conv":
        w = arr(1)
        k = int(np.prod(w.shape[1:])) if w is not None else 1
        return contraction(k, x, ins[1], ins[2] if len(ins) > 2 else None)
    if op == "Gemm":
        k = dim(1, 1 if attrs.get("transB", 0) else 0) if arr(1) is not None else dim(0, 0 if attrs.get("transA", 0) else 1)
        beta = float(attrs.get("beta", 1.0))
        c = ins[2].scaled(beta) if len(ins) > 2 else None
        return contraction(k, ins[0], ins[1], c, float(attrs.get("alpha", 1.0)))
    if op == "MatMul":
        k = dim(1, -2) if arr(1) is not None else dim(0, -1)
        return contraction(k, ins[0], ins[1], None)
    if op == "BatchNormalization":
        p = [arr(k) for k in (1, 2, 3, 4)]
        if any(v is None for v in p):
            return x
        s, b, m, v = (np.asarray(a, np.float64) for a in p)
        g = s / np.sqrt(v + float(attrs.get("epsilon", 1e-5)))
        mean = g * (x.mean - m) + b
        ms = g * g * (x.ms - 2 * x.mean * m + m * m) + 2 * b * g * (x.mean - m) + b * b
        return _Stats(float(np.mean(mean)), float(np.mean(ms)))
    if op == "Relu":
        return _relu(x)
    if op == "LeakyRelu":
        alpha = float(attrs.get("alpha", 0.01))
        pos, neg = _relu(x), _relu(_Stats(-x.mean, x.ms))
        return _Stats(pos.mean - alpha * neg.mean, pos.ms + alpha ** 2 * neg.ms)
    if op == "Clip":
        low = attrs.get("min", 0.0 if len(node.input) > 1 and _is_zero(arr(1)) else None)
        return _relu(x) if low == 0.0 else x
    if op in _POOL:
        shift, var = _POOL[op]
        sd = np.sqrt(x.var)
        mean = x.mean + shift * sd
        return _Stats(mean, mean ** 2 + var * x.var)
    if op == "LRN":
        f = (float(attrs.get("bias", 1.0)) + float(attrs.get("alpha", 1e-4)) * x.ms) ** -float(attrs.get("beta", 0.75))
        return x.scaled(f)
    if op in ("Add", "Sum", "Sub"):
        sign = [1.0] + [(-1.0 if op == "Sub" else 1.0)] * (len(ins) - 1)
        mean = sum(sg * st.mean for sg, st in zip(sign, ins))
        return _Stats(mean, mean ** 2 + sum(st.var for st in ins))
    if op == "Mul":
        return _Stats(float(np.prod([st.mean for st in ins])), float(np.prod([st.ms for st in ins])))
    if op == "Div" and len(ins) > 1:
        return _Stats(x.mean / (ins[1].mean or 1.0), x.ms / max(ins[1].ms, 1e-12))
    if op == "Concat":
        return _Stats(float(np.mean([st.mean for st in ins])), float(np.mean([st.ms for st in ins])))
    if op in ("Sigmoid", "HardSigmoid", "Softmax"):
        return _Stats(0.5, 0.3)
    if op in ("Tanh", "Erf"):
        return _Stats(0.0, min(x.ms, 0.5))
    return x


def _is_zero(a: np.ndarray | None) -> bool:
    return a is not None and a.size == 1 and float(a.reshape(-1)[0]) == 0.0


def with_values(model: Any, values: Mapping[str, np.ndarray]):
    """A copy of ``model`` in which ``values`` (by ONNX name) are initializers.

    A ``ConstantOfShape`` whose output is given is removed; an initializer of the same name is
    replaced. The result runs in ONNX Runtime on exactly the weights numamem is given.
    """
    require_onnx()
    from onnx import helper, numpy_helper

    m, _where = load_model(model, values=True)
    keep = [n for n in m.graph.node if not (n.op_type == "ConstantOfShape" and n.output[0] in values)]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    # Initializers nothing reads any more (the placeholders' shapes) go, with their input entries.
    read = {n for node in m.graph.node for n in node.input} | {o.name for o in m.graph.output}
    inits = [t for t in m.graph.initializer if t.name not in values and t.name in read]
    gone = {t.name for t in m.graph.initializer} - {t.name for t in inits}
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    for name, v in values.items():
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(v), name))
    ins = [i for i in m.graph.input if i.name not in gone or i.name in values]
    if m.ir_version < 4:  # IR 3 lists every initializer among the graph inputs
        listed = {i.name for i in ins}
        ins += [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype),
                                              list(np.shape(v))) for n, v in values.items() if n not in listed]
    del m.graph.input[:]
    m.graph.input.extend(ins)
    return m
