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
    """Random values of a sensible scale for the ``ConstantOfShape`` weight placeholders of ``model``.

    The scale follows what reads the tensor (through Unsqueeze/Reshape/Squeeze/Transpose): Conv
    filters He-normal (``sqrt(2/fan_in)``), Gemm and MatMul matrices LeCun-normal, batch-norm
    scales ``1 + 0.1 N(0,1)`` and variances uniform on [0.5, 1.5], Mul operands around 1, every
    other tensor (biases, means, shifts) ``0.1 N(0,1)``.

    Returns
    -------
    dict of str to ndarray
        By the placeholders' ONNX names.
    """
    onnx = require_onnx()
    from onnx import numpy_helper

    m, _where = load_model(model, values=False)
    rng = np.random.default_rng(seed)
    readers: dict[str, list] = {}
    for node in m.graph.node:
        for i, n in enumerate(node.input):
            readers.setdefault(n, []).append((node, i))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    passthrough = ("Unsqueeze", "Reshape", "Squeeze", "Transpose", "Cast", "Identity", "Flatten")

    def use(name: str, depth: int = 0):
        for node, i in readers.get(name, []):
            if node.op_type in passthrough and i == 0 and depth < 4:
                return use(node.output[0], depth + 1)
            return node, i
        return None, 0

    out = {}
    for node in m.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            continue
        shape = tuple(int(d) for d in inits[node.input[0]])
        name = node.output[0]
        reader, i = use(name)
        op = reader.op_type if reader is not None else ""
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in reader.attribute} if reader is not None else {}
        n = rng.standard_normal(shape)
        if op == "Conv" and i == 1:
            a = n * np.sqrt(2.0 / max(int(np.prod(shape[1:])), 1))
        elif op in ("Gemm", "MatMul") and len(shape) >= 2 and i in (0, 1):
            fan = shape[-1] if (op == "Gemm" and i == 1 and attrs.get("transB", 0)) else shape[-2]
            a = n * np.sqrt(1.0 / max(fan, 1))
        elif op == "BatchNormalization" and i == 4:
            a = rng.uniform(0.5, 1.5, shape)
        elif (op == "BatchNormalization" and i == 1) or op == "Mul":
            a = 1.0 + 0.1 * n
        else:
            a = 0.1 * n
        out[name] = a.astype(np.float32)
    return out


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
