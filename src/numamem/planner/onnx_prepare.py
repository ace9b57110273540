"""Steps 1 and 2 of the ONNX import: load, fix the inputs, infer shapes, fold constants.

See :mod:`numamem.planner.onnx` for the whole import. This module knows ONNX files and
protobufs only; it builds no graph. Loading a path for planning does not read external data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["Const", "MissingDimError", "OnnxImportError", "Prepared", "UnknownShapeError", "UnsupportedOpError",
           "load_model", "prepare", "require_onnx"]


class OnnxImportError(ValueError):
    """An ONNX model numamem cannot import; the message says what and where."""


class UnsupportedOpError(OnnxImportError):
    """A node whose op (or attribute, or use) numamem does not support."""


class UnknownShapeError(OnnxImportError):
    """A tensor whose shape is still not static after inference and constant folding."""


class MissingDimError(OnnxImportError):
    """A symbolic input dimension with no value given."""


def require_onnx():
    """The ``onnx`` module, or an :class:`ImportError` saying how to install it."""
    try:
        import onnx
        import onnx.reference  # noqa: F401  (constant folding)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("importing ONNX models needs the onnx package: pip install numamem[onnx]") from exc
    return onnx


@dataclass
class Const:
    """A tensor known before the run: its shape, dtype and value (None: not read yet)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    value: np.ndarray | None = None
    placeholder: bool = False  # a ConstantOfShape output: a weight the model does not store


# -------------------------------------------------------------------------------- loading
def load_model(model: Any, *, values: bool):
    """A private copy of ``model`` (a path or a ModelProto), with external data only if ``values``."""
    onnx = require_onnx()
    from google.protobuf.message import DecodeError

    if isinstance(model, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        return m, f"model {m.graph.name!r}"
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path or an onnx.ModelProto, not {type(model).__name__}")
    path = os.fspath(model)
    try:
        m = onnx.load(path, load_external_data=values)
    except (DecodeError, RuntimeError, ValueError, EOFError) as exc:
        raise OnnxImportError(f"{path}: not a readable ONNX model (malformed or truncated: {exc})") from None
    if not m.graph.node:
        raise OnnxImportError(f"{path}: not a readable ONNX model (its graph has no nodes)")
    if not values:
        _load_small_external(m, path)
    return m, path


#: External tensors of at most this many elements are read even for planning: they are the
#: shapes, axes and bounds that decide the graph, not the weights.
SMALL_EXTERNAL = 1024


def _load_small_external(m, path: str) -> None:
    onnx = require_onnx()
    from onnx.external_data_helper import load_external_data_for_tensor

    base = os.path.dirname(os.path.abspath(path))
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL and int(np.prod(t.dims)) <= SMALL_EXTERNAL:
            try:
                load_external_data_for_tensor(t, base)
            except Exception:  # unreadable: an error later only if the graph needs this value
                continue
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]


def _opset(m) -> int:
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise OnnxImportError("the model imports no version of the default ONNX domain")


def _fix_inputs(m, where: str, input_shapes: Mapping[str, Sequence[int]] | None, batch: int | None) -> None:
    """Write the values of symbolic input dimensions into the model's input types."""
    inits = {t.name for t in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    given = dict(input_shapes or {})
    names = {i.name for i in inputs}
    extra = sorted(set(given) - names)
    if extra:
        raise OnnxImportError(f"{where}: input_shapes names {extra[0]!r}, which is not an input "
                              f"(inputs: {', '.join(sorted(names))})")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int, not {batch!r}")
    for inp in inputs:
        tt = inp.type.tensor_type
        dims = tt.shape.dim
        if inp.name in given:
            shape = tuple(given[inp.name])
            if len(shape) != len(dims) or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in shape):
                raise OnnxImportError(f"{where}: input_shapes[{inp.name!r}] = {list(shape)} must be {len(dims)} "
                                      "positive ints")
            for d, v in zip(dims, shape):
                if d.HasField("dim_value") and d.dim_value != v:
                    raise OnnxImportError(f"{where}: input {inp.name!r} fixes its dimension to {d.dim_value}, "
                                          f"input_shapes gives {v}")
                d.dim_value = int(v)
            continue
        for k, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                if k == 0 and batch is not None and d.dim_value != batch:
                    raise OnnxImportError(f"{where}: input {inp.name!r} fixes its batch dimension to "
                                          f"{d.dim_value}; batch={batch} cannot change it")
                continue
            if k == 0 and batch is not None:
                d.dim_value = batch
                continue
            label = f"{d.dim_param!r}" if d.dim_param else "unnamed"
            raise MissingDimError(
                f"{where}: input {inp.name!r} dimension {k} ({label}) has no value: give "
                f"input_shapes={{{inp.name!r}: (...)}}" + (" or batch" if k == 0 else ""))


# ------------------------------------------------------------------------ shapes, folding
def _infer(m, where: str):
    onnx = require_onnx()
    try:
        return onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # InferenceError, ValidationError: the model is inconsistent
        raise OnnxImportError(f"{where}: ONNX shape inference failed: {exc}") from None


def _static_shapes(m) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    g = m.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if all(d >= 0 for d in dims):
            shapes[vi.name] = tuple(dims)
    for t in g.initializer:
        shapes[t.name] = tuple(t.dims)
    return shapes


def _elem_types(m) -> dict[str, int]:
    types = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for t in m.graph.initializer:
        types[t.name] = t.data_type
    return types


def _initializers(m) -> dict[str, Const]:
    onnx = require_onnx()
    from onnx import numpy_helper

    out = {}
    for t in m.graph.initializer:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        # External data not loaded (planning): the shape alone.
        value = None if t.data_location == onnx.TensorProto.EXTERNAL else numpy_helper.to_array(t)
        out[t.name] = Const(tuple(t.dims), dtype, value)
    return out


def _evaluate(node, opsets, values: list[np.ndarray]) -> list[np.ndarray]:
    """Run one node with ONNX's reference evaluator."""
    onnx = require_onnx()
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [n for n in node.input if n]
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for n, v in zip(names, values)]
    outs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output if n]
    g = helper.make_graph([node], "fold", ins, outs)
    model = helper.make_model(g, opset_imports=opsets)
    res = ReferenceEvaluator(model).run(None, dict(zip(names, values)))
    return [np.asarray(r) for r in res]


def _fold(m, consts: dict[str, Const], shapes: dict[str, tuple[int, ...]], types: dict[str, int],
          where: str, materialize: bool, overrides: Mapping[str, Any]) -> bool:
    """Turn every node computable before the run into constants; True if any was.

    ``materialize`` False (planning) leaves ``ConstantOfShape`` values unmade: VGG-19's
    placeholders alone would be half a gigabyte.
    """
    onnx = require_onnx()
    from onnx import numpy_helper

    keep, changed = [], False
    for node in m.graph.node:
        ins = [n for n in node.input if n]
        outs = [n for n in node.output if n]
        if node.domain not in ("", "ai.onnx"):
            keep.append(node)
            continue
        if node.op_type == "Shape" and ins and ins[0] in shapes:
            shape = np.array(shapes[ins[0]], dtype=np.int64)
            start = next((a.i for a in node.attribute if a.name == "start"), 0)
            end = next((a.i for a in node.attribute if a.name == "end"), len(shape))
            consts[outs[0]] = Const(shape[start:end].shape, np.dtype(np.int64), shape[start:end])
            changed = True
            continue
        if node.op_type == "Size" and ins and ins[0] in shapes:
            consts[outs[0]] = Const((), np.dtype(np.int64), np.array(int(np.prod(shapes[ins[0]])), np.int64))
            changed = True
            continue
        if node.op_type != "Constant" and not (ins and all(n in consts for n in ins)):
            keep.append(node)
            continue
        values = [consts[n].value for n in ins]
        if node.op_type == "ConstantOfShape":
            shape = tuple(int(d) for d in values[0]) if values[0] is not None else None
            if shape is None:
                keep.append(node)
                continue
            attr = next((a for a in node.attribute if a.name == "value"), None)
            fill = numpy_helper.to_array(attr.t) if attr is not None else np.zeros(1, np.float32)
            value = np.full(shape, fill.reshape(-1)[0], fill.dtype) if materialize else None
            consts[outs[0]] = Const(shape, fill.dtype, value, placeholder=True)
            if outs[0] in overrides:
                _override(consts[outs[0]], outs[0], overrides[outs[0]])
        elif all(v is not None for v in values):
            try:
                res = _evaluate(node, m.opset_import, values)
            except Exception as exc:
                raise OnnxImportError(f"{where}: node {node.name or node.output[0]!r} ({node.op_type}) on "
                                      f"constants could not be evaluated: {exc}") from None
            for n, r in zip(outs, res):
                consts[n] = Const(r.shape, r.dtype, r)
        elif all(n in shapes for n in outs):
            # A constant computed from unloaded external data (planning): its shape now; its value
            # is only needed by onnx_weights, which loads the data and folds it for real.
            for n in outs:
                dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(types.get(n, onnx.TensorProto.FLOAT)))
                consts[n] = Const(shapes[n], dt, None)
        else:
            keep.append(node)
            continue
        changed = True
    if changed:
        del m.graph.node[:]
        m.graph.node.extend(keep)
        _declare(m, consts)
    return changed


def _declare(m, consts: dict[str, Const]) -> None:
    """Make the constants visible to shape inference: small values as initializers, the rest as typed inputs."""
    onnx = require_onnx()
    from onnx import helper, numpy_helper

    have = {t.name for t in m.graph.initializer} | {i.name for i in m.graph.input}
    for name, c in consts.items():
        if name in have:
            continue
        if c.value is not None and c.value.size <= 4096:
            m.graph.initializer.append(numpy_helper.from_array(np.asarray(c.value), name))
        else:
            m.graph.input.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(c.dtype), list(c.shape)))


@dataclass
class Prepared:
    """A model after inputs are fixed, shapes inferred and constants folded."""

    model: Any
    where: str
    opset: int
    consts: dict[str, Const]
    shapes: dict[str, tuple[int, ...]]
    types: dict[str, int]
    inputs: list[str]


def _override(c: Const, name: str, v: Any) -> None:
    v = np.asarray(v)
    if tuple(v.shape) != tuple(c.shape):
        raise ValueError(f"values[{name!r}] has shape {list(v.shape)}, the model's is {list(c.shape)}")
    c.value = v.astype(c.dtype, copy=False)


def prepare(model: Any, input_shapes=None, batch=None, *, values: bool,
            overrides: Mapping[str, Any] | None = None) -> Prepared:
    """Steps 1 and 2 of the import (see the module docstring).

    ``overrides`` replace the values of initializers and ``ConstantOfShape`` outputs by ONNX name
    *before* folding, so constants computed from them (a Reshape or Unsqueeze of a weight) see them.
    """
    m, where = load_model(model, values=values)
    opset = _opset(m)
    _fix_inputs(m, where, input_shapes, batch)
    inits = {t.name for t in m.graph.initializer}
    inputs = [i.name for i in m.graph.input if i.name not in inits]
    consts = _initializers(m)
    overrides = dict(overrides or {})
    placeholders = {n.output[0] for n in m.graph.node if n.op_type == "ConstantOfShape"}
    for name in overrides:
        if name not in consts and name not in placeholders:
            raise ValueError(f"values names {name!r}, which is neither an initializer nor a ConstantOfShape output")
        if name in consts:
            _override(consts[name], name, overrides[name])
    for _ in range(64):
        m = _infer(m, where)
        shapes = _static_shapes(m)
        types = _elem_types(m)
        if not _fold(m, consts, shapes, types, where, values, overrides):
            break
    return Prepared(m, where, opset, consts, shapes, types, inputs)
