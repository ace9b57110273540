"""The builder the ONNX translators (:mod:`numamem.planner.onnx_nodes`) emit layers into.

It resolves ONNX tensor names through the aliases that Identity, Dropout and Cast leave, turns
constants into weights (computed only when values are wanted), checks every emitted layer's shape
against the op table and, for a node's final output, against ONNX's inferred shape, and names
layers and intermediate tensors uniquely.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from numamem.planner.graph import Graph, Layer, Tensor
from numamem.planner.onnx_prepare import Const, OnnxImportError, Prepared, UnknownShapeError, UnsupportedOpError
from numamem.planner.ops import ShapeError, infer_shape

__all__ = ["Builder", "Imported"]


@dataclass
class Imported:
    """What translation gives: the graph and, when values were at hand, its weights."""

    graph: Graph
    weights: dict[str, np.ndarray] = field(default_factory=dict)


class Builder:
    """Collects tensors, layers and weights while nodes are translated."""

    def __init__(self, prep: Prepared, values: bool):
        self.prep = prep
        self.values = values
        self.tensors: dict[str, Tensor] = {}
        self.layers: list[Layer] = []
        self.weights: dict[str, np.ndarray] = {}
        self.alias: dict[str, str] = {}
        self.layer_names: set[str] = set()
        self.skip: set[int] = set()  # ids of nodes already folded into another
        self.node = None
        self.readers: dict[str, list] = {}
        for node in prep.model.graph.node:
            for n in node.input:
                self.readers.setdefault(n, []).append(node)
        self.outputs = [o.name for o in prep.model.graph.output]
        self.dtype = "float32"  # the graph's: that of the first floating input

    # ---------------------------------------------------------------- names and tensors
    def fail(self, msg: str, cls=UnsupportedOpError):
        n = self.node
        raise cls(f"{self.prep.where}: node {n.name or n.output[0]!r} ({n.op_type}, opset {self.prep.opset}): {msg}")

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def const(self, name: str) -> Const | None:
        return self.prep.consts.get(self.resolve(name))

    def shape(self, name: str) -> tuple[int, ...]:
        name = self.resolve(name)
        if name in self.tensors:
            return self.tensors[name].shape
        c = self.prep.consts.get(name)
        if c is not None:
            return tuple(c.shape)
        if name in self.prep.shapes:
            return self.prep.shapes[name]
        producer = next((n for n in self.prep.model.graph.node if name in n.output), None)
        who = f"node {producer.name or producer.output[0]!r} ({producer.op_type})" if producer else "a graph input"
        raise UnknownShapeError(f"{self.prep.where}: tensor {name!r} (made by {who}) has no static shape "
                                "after shape inference and constant folding")

    def value(self, name: str) -> np.ndarray | None:
        """The value of constant ``name`` (None while planning); error if it is not a constant."""
        c = self.const(name)
        if c is None:
            self.fail(f"input {name!r} must be a constant (an initializer or computable before the run)")
        if c.value is None and self.values:
            self.fail(f"constant {name!r} has no value (external data not loaded?)", OnnxImportError)
        return c.value

    def small(self, name: str) -> np.ndarray:
        """The value of a small constant (shapes, axes, bounds), needed even while planning."""
        v = self.value(name)
        if v is None:
            self.fail(f"input {name!r} must be a constant stored in the model")
        return v

    def weight(self, name: str, shape: tuple[int, ...], make: Callable[[], np.ndarray] | None = None) -> str:
        """Declare weight ``name`` of ``shape``; ``make()`` computes it when values are wanted."""
        shape = tuple(int(d) for d in shape) or (1,)
        if name in self.tensors:
            return name
        self.tensors[name] = Tensor(name, shape, "weight")
        if self.values:
            v = np.asarray(make() if make is not None else self.value(name))
            self.weights[name] = v.reshape(shape).astype(self.dtype, copy=False)
        return name

    def operand(self, name: str) -> str:
        """The graph tensor for ONNX tensor ``name``: an activation, or the constant as a weight."""
        name = self.resolve(name)
        if name in self.tensors:
            return name
        c = self.prep.consts.get(name)
        if c is not None:  # an integer constant (Pow's exponent) becomes a weight of the graph's dtype too
            return self.weight(name, c.shape)
        self.shape(name)  # raises for an unknown shape
        self.fail(f"tensor {name!r} is not produced by any supported node")

    def fresh(self, base: str) -> str:
        name, k = base, 2
        while name in self.tensors or name in self.prep.consts or name in self.prep.shapes:
            name, k = f"{base}/{k}", k + 1
        return name

    def emit(self, op: str, inputs: list[str], attrs: dict[str, Any] | None = None, out: str | None = None) -> str:
        """Add one layer; its output is ``out`` (default: a fresh name) with the op table's shape."""
        attrs = {k: v for k, v in (attrs or {}).items() if v is not None}
        n = self.node
        base = n.name or f"{n.op_type}_{n.output[0]}"
        lname, k = base, 2
        while lname in self.layer_names:
            lname, k = f"{base}/{k}", k + 1
        self.layer_names.add(lname)
        out = out or self.fresh(f"{n.output[0]}/{op}")
        try:
            shape = infer_shape(op, [self.tensors[i].shape for i in inputs], attrs)
        except ShapeError as exc:
            self.fail(f"as {op}: {exc}", OnnxImportError)
        if out in self.prep.shapes and self.prep.shapes[out] != shape:
            self.fail(f"numamem's {op} gives shape {list(shape)} but ONNX infers {list(self.prep.shapes[out])}",
                      OnnxImportError)
        self.tensors[out] = Tensor(out, shape, "output" if out in self.outputs else None)
        self.layers.append(Layer(lname, op, tuple(inputs), (out,), attrs))
        return out

    def reshape(self, x: str, shape: tuple[int, ...], out: str | None = None) -> str:
        if shape == self.tensors[x].shape and out is None:
            return x
        return self.emit("reshape", [x], {"shape": list(shape)}, out)

    def fuse_activations(self) -> None:
        """Fold each ``relu``/``relu6``/``gelu`` into the layer making its input, as a fused ``activation``.

        That is the inference form the built-in models are written in: one layer and one tensor
        fewer, so the activation never reads and writes memory on its own. Done where the producer
        takes an ``activation`` (conv2d, conv, dense, add) and has none yet, and its output is read
        by the activation alone and is not a graph output.
        """
        readers: dict[str, int] = {}
        for layer in self.layers:
            for n in layer.inputs:
                readers[n] = readers.get(n, 0) + 1
        producer = {layer.outputs[0]: k for k, layer in enumerate(self.layers)}
        drop: set[int] = set()
        for k, layer in enumerate(self.layers):
            if layer.op not in ("relu", "relu6", "gelu"):
                continue
            src = layer.inputs[0]
            j = producer.get(src)
            if j is None or readers[src] != 1 or self.tensors[src].role is not None:
                continue
            prev = self.layers[j]
            if prev.op not in ("conv2d", "conv", "dense", "add") or prev.attrs.get("activation") is not None:
                continue
            out = layer.outputs[0]
            self.layers[j] = Layer(prev.name, prev.op, prev.inputs, (out,), {**prev.attrs, "activation": layer.op})
            producer[out] = j
            del self.tensors[src]
            drop.add(k)
        self.layers = [layer for k, layer in enumerate(self.layers) if k not in drop]
