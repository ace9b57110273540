"""The layer graph and its ``numamem-graph/1`` JSON form.

A :class:`Graph` is a list of tensors (inputs, weights, activations, outputs) and a list of layers
in execution order: step *i* is the *i*-th layer. Building one (from JSON or with
:class:`~numamem.planner.builder.GraphBuilder`) validates it completely, so the planner can trust
it: every error names the layer or tensor at fault and is a :class:`GraphError` (a ``ValueError``,
which the ``numamem`` command reports as one line).

Lifetime convention (used for the peaks quoted in ARCHITECTURE.md and by the planner): a tensor is
live from the step of the layer that produces it (graph inputs and weights: step 0) through the
last step that reads it, both inclusive. Weights and graph outputs stay live until the last step.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from numamem.planner.ops import ShapeError, infer_shape
from numamem._jsonfile import dump_json

FORMAT = "numamem-graph/1"
ROLES = ("input", "weight", "output")
#: Deepest nesting of lists and objects a graph document may have: a graph needs four (document,
#: tensor list, tensor, shape) and an attribute value two more (a pair of pairs at most).
MAX_DEPTH = 32


def too_deep(data: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``data`` nests lists and dicts more than ``limit`` levels deep.

    Checked iteratively before a parsed document is read, so that a hostile one cannot exhaust
    Python's recursion, here or in the ``repr`` of an error message (plan files use it too).

    >>> too_deep({"a": [[1]]}, 3), too_deep({"a": [[1]]}, 2)
    (False, True)
    """
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((v, depth + 1) for v in children)
    return False


class GraphError(ValueError):
    """A graph that is not valid ``numamem-graph/1``: the message names what is wrong and where."""


@dataclass(frozen=True)
class Tensor:
    """One tensor of a graph.

    Attributes
    ----------
    name : str
    shape : tuple of int
    role : {"input", "weight", "output", None}
        ``None`` is an intermediate activation.
    dtype : str or None
        Overrides the graph's dtype (``int64`` ids of an embedding).
    """

    name: str
    shape: tuple[int, ...]
    role: str | None = None
    dtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The tensor's entry in ``numamem-graph/1``."""
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape)}
        if self.role is not None:
            d["role"] = self.role
        if self.dtype is not None:
            d["dtype"] = self.dtype
        return d


@dataclass(frozen=True)
class Layer:
    """One layer: ``op`` applied to ``inputs`` (tensor names) producing ``outputs``."""

    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The layer's entry in ``numamem-graph/1``."""
        d: dict[str, Any] = {
            "name": self.name, "op": self.op, "inputs": list(self.inputs), "outputs": list(self.outputs),
        }
        if self.attrs:
            d["attrs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.attrs.items()}
        return d


def _dtype_name(value: object, where: str) -> str:
    try:
        dt = np.dtype(value)  # type: ignore[call-overload]
    except TypeError:
        raise GraphError(f"{where}: unknown dtype {value!r}") from None
    if dt.kind not in "biuf" or dt.hasobject:
        raise GraphError(f"{where}: dtype {value!r} is not a numeric type")
    return dt.name


class Graph:
    """A validated layer graph in execution order.

    Parameters
    ----------
    name : str
    dtype : str
        Element type of every tensor without its own ``dtype``.
    tensors : iterable of Tensor
    layers : iterable of Layer

    Raises
    ------
    GraphError
        If the graph is invalid (see :meth:`validate`).

    Examples
    --------
    >>> from numamem.planner import GraphBuilder
    >>> g = GraphBuilder("tiny", dtype="float32")
    >>> x = g.input("x", (8, 64))
    >>> h = g.dense(x, g.weight("w1", (64, 128)), activation="relu")
    >>> graph = g.build()
    >>> graph.tensor(h).shape, graph.activation_peak()
    ((8, 128), 6144)
    """

    def __init__(self, name: str, dtype: str, tensors: Iterable[Tensor], layers: Iterable[Layer]):
        if not isinstance(name, str) or not name:
            raise GraphError("graph: 'name' must be a non-empty string")
        self.name = name
        self.dtype = _dtype_name(dtype, f"graph {name!r}")
        self.tensors: dict[str, Tensor] = {}
        for t in tensors:
            if t.name in self.tensors:
                raise GraphError(f"tensor {t.name!r}: defined twice")
            self.tensors[t.name] = t
        self.layers: list[Layer] = list(layers)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check the whole graph; raise :class:`GraphError` naming the first problem found.

        Checked: tensor names, shapes, roles and dtypes; layer names unique; ops known with the
        right operand count and attributes; every operand defined and already produced (inputs and
        weights exist from the start); each tensor produced once, by a layer unless it is an input
        or a weight; output shapes equal to what the op gives.
        """
        for t in self.tensors.values():
            where = f"tensor {t.name!r}"
            if not isinstance(t.name, str) or not t.name:
                raise GraphError(f"tensor {t.name!r}: name must be a non-empty string")
            if not isinstance(t.shape, tuple) or not t.shape or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in t.shape
            ):
                raise GraphError(f"{where}: shape must be a non-empty list of positive ints, got {list(t.shape) if isinstance(t.shape, tuple) else t.shape!r}")
            if t.role not in (None,) + ROLES:
                raise GraphError(f"{where}: unknown role {t.role!r} (expected one of {', '.join(ROLES)})")
            if t.dtype is not None:
                _dtype_name(t.dtype, where)
        produced: dict[str, int] = {}
        names: set[str] = set()
        for step, layer in enumerate(self.layers):
            where = f"layer {layer.name!r} ({layer.op})"
            if not isinstance(layer.name, str) or not layer.name:
                raise GraphError(f"layer at step {step}: name must be a non-empty string")
            if layer.name in names:
                raise GraphError(f"layer {layer.name!r}: defined twice")
            names.add(layer.name)
            if not layer.inputs:
                raise GraphError(f"{where}: has no inputs")
            if len(layer.outputs) != 1:
                raise GraphError(f"{where}: must have exactly one output, has {len(layer.outputs)}")
            for name in layer.inputs:
                t = self.tensors.get(name)
                if t is None:
                    raise GraphError(f"{where}: input tensor {name!r} is not defined")
                if t.role not in ("input", "weight") and name not in produced:
                    later = next((l.name for l in self.layers[step:] if name in l.outputs), None)
                    raise GraphError(
                        f"{where}: tensor {name!r} is used before it is produced"
                        + (f" (by layer {later!r})" if later else " (no layer produces it)")
                    )
            out = layer.outputs[0]
            t_out = self.tensors.get(out)
            if t_out is None:
                raise GraphError(f"{where}: output tensor {out!r} is not defined")
            if t_out.role in ("input", "weight"):
                raise GraphError(f"{where}: output tensor {out!r} is a graph {t_out.role} and cannot be produced")
            if out in produced:
                raise GraphError(
                    f"{where}: tensor {out!r} is already produced by layer {self.layers[produced[out]].name!r}"
                )
            if out in layer.inputs:
                raise GraphError(f"{where}: tensor {out!r} is both an input and the output")
            try:
                shape = infer_shape(layer.op, [self.tensors[n].shape for n in layer.inputs], layer.attrs)
            except ShapeError as exc:
                raise GraphError(f"{where}: {exc}") from None
            if layer.op == "embedding" and self.tensor_dtype(layer.inputs[0]) != "int64":
                raise GraphError(f"{where}: ids tensor {layer.inputs[0]!r} must have dtype int64")
            if shape != t_out.shape:
                raise GraphError(
                    f"{where}: output tensor {out!r} has shape {list(t_out.shape)} but {layer.op} of "
                    + ", ".join(str(list(self.tensors[n].shape)) for n in layer.inputs)
                    + f" gives {list(shape)}"
                )
            produced[out] = step
        for t in self.tensors.values():
            if t.role not in ("input", "weight") and t.name not in produced:
                raise GraphError(f"tensor {t.name!r}: no layer produces it")

    # ------------------------------------------------------------------ queries
    def tensor(self, name: "str | Tensor") -> Tensor:
        """The tensor called ``name`` (or of the same name as a given tensor); ``KeyError`` if none."""
        name = name.name if isinstance(name, Tensor) else name
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"graph {self.name!r} has no tensor {name!r}") from None

    def layer(self, name: str) -> Layer:
        """The layer called ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"graph {self.name!r} has no layer {name!r}")

    def tensor_dtype(self, name: str) -> str:
        """The dtype name of tensor ``name`` (its own, or the graph's)."""
        t = self.tensors[name]
        return np.dtype(t.dtype).name if t.dtype is not None else self.dtype

    def itemsize(self, name: str) -> int:
        """Bytes per element of tensor ``name``."""
        return np.dtype(self.tensor_dtype(name)).itemsize

    def nbytes(self, name: str) -> int:
        """Bytes of tensor ``name``."""
        return math.prod(self.tensors[name].shape) * self.itemsize(name)

    @property
    def inputs(self) -> list[str]:
        """Names of the graph inputs, in definition order."""
        return [t.name for t in self.tensors.values() if t.role == "input"]

    @property
    def weights(self) -> list[str]:
        """Names of the weights, in definition order."""
        return [t.name for t in self.tensors.values() if t.role == "weight"]

    @property
    def outputs(self) -> list[str]:
        """Names of the graph outputs, in definition order."""
        return [t.name for t in self.tensors.values() if t.role == "output"]

    @property
    def activations(self) -> list[str]:
        """Every tensor that is not a weight (inputs, intermediates, outputs), in definition order."""
        return [t.name for t in self.tensors.values() if t.role != "weight"]

    def producer(self, name: str) -> int | None:
        """Step of the layer producing ``name``, or None for inputs and weights."""
        for step, layer in enumerate(self.layers):
            if name in layer.outputs:
                return step
        return None

    def lifetimes(self) -> dict[str, tuple[int, int]]:
        """First and last step (inclusive) at which each tensor must hold its bytes.

        A tensor is live from the step producing it (inputs and weights: 0) through its last
        reader; weights and outputs stay live through the last step. A tensor that nobody reads is
        live at its producing step only. Unused inputs and weights get ``(0, 0)`` (or the whole run
        for weights).
        """
        last_step = max(len(self.layers) - 1, 0)
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for t in self.tensors.values():
            if t.role in ("input", "weight"):
                first[t.name] = last[t.name] = 0
        for step, layer in enumerate(self.layers):
            for name in layer.inputs:
                last[name] = step
            for name in layer.outputs:
                first[name] = last[name] = step
        for t in self.tensors.values():
            if t.role in ("weight", "output"):
                last[t.name] = last_step
        return {name: (first[name], last[name]) for name in self.tensors}

    def activation_peak(self, *, live: Mapping[str, tuple[int, int]] | None = None) -> int:
        """Largest total bytes of non-weight tensors live at one step (inputs included).

        This is the lower bound on activation memory on a single node: ResNet-50 (float32, batch
        1) gives 9.1875 MiB.
        """
        live = self.lifetimes() if live is None else live
        steps = np.zeros(len(self.layers) + 2, dtype=np.int64)
        for name in self.activations:
            a, b = live[name]
            steps[a] += self.nbytes(name)
            steps[b + 1] -= self.nbytes(name)
        return int(np.cumsum(steps).max(initial=0))

    def total_bytes(self, role: str | None = "activation") -> int:
        """Sum of tensor bytes: ``"activation"`` (every non-weight tensor), ``"weight"``, or None (all)."""
        if role is None:
            names = list(self.tensors)
        elif role == "activation":
            names = self.activations
        else:
            names = [t.name for t in self.tensors.values() if t.role == role]
        return sum(self.nbytes(n) for n in names)

    def flops(self) -> int:
        """Floating-point operations of one pass (multiply-add counts 2)."""
        from numamem.planner.ops import flops

        return sum(
            flops(l.op, [self.tensors[n].shape for n in l.inputs], self.tensors[l.outputs[0]].shape, l.attrs)
            for l in self.layers
        )

    def __repr__(self) -> str:
        return f"<Graph {self.name!r}: {len(self.layers)} layers, {len(self.tensors)} tensors, {self.dtype}>"

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The graph as a ``numamem-graph/1`` JSON object."""
        return {
            "format": FORMAT,
            "name": self.name,
            "dtype": self.dtype,
            "tensors": [t.to_dict() for t in self.tensors.values()],
            "layers": [l.to_dict() for l in self.layers],
        }

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int | None = 1) -> str:
        """Serialise to ``numamem-graph/1``; also write it to ``path`` when given."""
        return dump_json(self.to_dict(), path, indent=indent)

    save = to_json

    @classmethod
    def from_dict(cls, data: Any) -> "Graph":
        """Build and validate a graph from a parsed ``numamem-graph/1`` object.

        Raises
        ------
        GraphError
            If ``data`` is not a valid graph, including one nested more than :data:`MAX_DEPTH`
            levels deep.
        """
        if not isinstance(data, dict):
            raise GraphError("graph: the JSON document must be an object")
        if too_deep(data):
            raise GraphError(f"graph: nested too deeply to be a graph (more than {MAX_DEPTH} levels)")
        fmt = data.get("format")
        if fmt != FORMAT:
            raise GraphError(f"graph: format must be {FORMAT!r}, got {fmt!r}")
        for key, kind in (("name", str), ("tensors", list), ("layers", list)):
            if not isinstance(data.get(key), kind):
                raise GraphError(f"graph: {key!r} is missing or not a {kind.__name__}")
        tensors = []
        for i, t in enumerate(data["tensors"]):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise GraphError(f"tensor #{i}: must be an object with a string 'name'")
            shape = t.get("shape")
            if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
                raise GraphError(f"tensor {t['name']!r}: 'shape' must be a list of ints, got {shape!r}")
            extra = sorted(set(t) - {"name", "shape", "role", "dtype"})
            if extra:
                raise GraphError(f"tensor {t['name']!r}: unknown field(s) {', '.join(extra)}")
            role = t.get("role")
            if role == "activation":  # an explicit spelling of "no role"
                role = None
            tensors.append(Tensor(t["name"], tuple(shape), role, t.get("dtype")))
        layers = []
        for i, l in enumerate(data["layers"]):
            if not isinstance(l, dict) or not isinstance(l.get("name"), str):
                raise GraphError(f"layer #{i}: must be an object with a string 'name'")
            where = f"layer {l['name']!r}"
            if not isinstance(l.get("op"), str):
                raise GraphError(f"{where}: 'op' must be a string")
            for key in ("inputs", "outputs"):
                v = l.get(key)
                if not isinstance(v, list) or not all(isinstance(n, str) for n in v):
                    raise GraphError(f"{where}: {key!r} must be a list of tensor names")
            attrs = l.get("attrs", {})
            if not isinstance(attrs, dict):
                raise GraphError(f"{where}: 'attrs' must be an object")
            # Attributes written beside the standard fields are accepted too: the format's
            # example shows none, and hand-written files often put them there.
            loose = {k: v for k, v in l.items() if k not in ("name", "op", "inputs", "outputs", "attrs")}
            layers.append(Layer(l["name"], l["op"], tuple(l["inputs"]), tuple(l["outputs"]), {**loose, **attrs}))
        return cls(data["name"], data.get("dtype", "float32"), tensors, layers)

    @classmethod
    def from_json(cls, text: str) -> "Graph":
        """Parse ``numamem-graph/1`` text; bad JSON is a :class:`GraphError` too."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GraphError(f"graph: bad JSON: {exc}") from None
        except RecursionError:
            # json.loads recurses once per nesting level: a hostile document must not be a traceback
            raise GraphError(f"graph: JSON nested too deeply to be a graph (more than {MAX_DEPTH} levels)") from None
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Graph) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def load_graph(path: str | os.PathLike) -> Graph:
    """Read a ``numamem-graph/1`` file.

    Raises
    ------
    GraphError
        If the file is not UTF-8 text, not valid JSON (or nested past the parser's depth) or not
        a valid graph; the message names the file.
    OSError
        If the file cannot be read.
    """
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GraphError(f"{os.fspath(path)}: not a UTF-8 text file (byte {exc.start}): expected a "
                         "numamem-graph/1 JSON file") from None
    try:
        return Graph.from_json(text)
    except GraphError as exc:
        raise GraphError(f"{os.fspath(path)}: {exc}") from None
