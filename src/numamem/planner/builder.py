"""A small API to write graphs in Python, with shape inference filling in output shapes."""
from __future__ import annotations

import re
from typing import Any, Sequence, Union

from numamem.planner.graph import Graph, GraphError, Layer, Tensor
from numamem.planner.ops import ShapeError, infer_shape

TensorLike = Union[Tensor, str]


class GraphBuilder:
    """Build a :class:`~numamem.planner.graph.Graph` layer by layer.

    Every op method appends one layer, infers its output shape, and returns the output
    :class:`~numamem.planner.graph.Tensor` (operands may be given as tensors or names). Layer
    names default to ``<op><n>``; the output tensor takes the layer's name unless ``out`` is given.
    Errors surface at once as :class:`~numamem.planner.graph.GraphError` naming the layer.

    Parameters
    ----------
    name : str
        The graph's name.
    dtype : str, default "float32"
        Element type of every tensor that does not give its own.

    Examples
    --------
    >>> g = GraphBuilder("tiny", dtype="float32")
    >>> x = g.input("x", (8, 64))
    >>> w = g.weight("w1", (64, 128))
    >>> h = g.dense(x, w, activation="relu")
    >>> h.shape
    (8, 128)
    >>> y = g.output(g.softmax(h))
    >>> graph = g.build()
    >>> [l.op for l in graph.layers], graph.outputs
    (['dense', 'softmax'], ['softmax2'])
    """

    def __init__(self, name: str, dtype: str = "float32"):
        self.name = name
        self.dtype = dtype
        self._tensors: dict[str, Tensor] = {}
        self._layers: list[Layer] = []
        self._layer_names: set[str] = set()

    # -------------------------------------------------------------- tensors
    def _add_tensor(self, tensor: Tensor) -> Tensor:
        if tensor.name in self._tensors:
            raise GraphError(f"tensor {tensor.name!r}: defined twice")
        if not all(isinstance(d, int) and d >= 1 for d in tensor.shape):
            raise GraphError(f"tensor {tensor.name!r}: shape must be positive ints, got {list(tensor.shape)}")
        self._tensors[tensor.name] = tensor
        return tensor

    def input(self, name: str, shape: Sequence[int], dtype: str | None = None) -> Tensor:
        """Declare a graph input of ``shape`` (``dtype`` overrides the graph's)."""
        return self._add_tensor(Tensor(name, tuple(int(d) for d in shape), "input", dtype))

    def weight(self, name: str, shape: Sequence[int], dtype: str | None = None) -> Tensor:
        """Declare a weight (parameter) tensor of ``shape``."""
        return self._add_tensor(Tensor(name, tuple(int(d) for d in shape), "weight", dtype))

    def output(self, tensor: TensorLike) -> Tensor:
        """Mark ``tensor`` (produced by a layer) as a graph output and return it."""
        t = self._get(tensor)
        if t.role in ("input", "weight"):
            raise GraphError(f"tensor {t.name!r}: a graph {t.role} cannot be an output")
        t = Tensor(t.name, t.shape, "output", t.dtype)
        self._tensors[t.name] = t
        return t

    def _get(self, tensor: TensorLike) -> Tensor:
        name = tensor.name if isinstance(tensor, Tensor) else tensor
        try:
            return self._tensors[name]
        except KeyError:
            raise GraphError(f"tensor {name!r} is not defined") from None

    # -------------------------------------------------------------- layers
    def layer(self, op: str, inputs: Sequence[TensorLike], *, name: str | None = None,
              out: str | None = None, **attrs: Any) -> Tensor:
        """Append a layer of any ``op`` and return its output tensor.

        Attributes whose value is None are left out (the op's default applies).
        """
        if name is None:
            base = re.sub(r"\d+$", "", op)
            k = len(self._layers) + 1
            name = f"{base}{k}"
            while name in self._layer_names or name in self._tensors:
                k += 1
                name = f"{base}{k}"
        if name in self._layer_names:
            raise GraphError(f"layer {name!r}: defined twice")
        ins = [self._get(t) for t in inputs]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        try:
            shape = infer_shape(op, [t.shape for t in ins], attrs)
        except ShapeError as exc:
            raise GraphError(f"layer {name!r} ({op}): {exc}") from None
        # Only an embedding changes the element type: its output takes the table's.
        dtype = ins[1].dtype if op == "embedding" else None
        result = self._add_tensor(Tensor(out or name, shape, None, dtype))
        self._layers.append(Layer(name, op, tuple(t.name for t in ins), (result.name,), attrs))
        self._layer_names.add(name)
        return result

    def dense(self, x: TensorLike, w: TensorLike, b: TensorLike | None = None, *,
              activation: str | None = None, name: str | None = None, out: str | None = None) -> Tensor:
        """``x · w + b`` over the last axis of ``x``, with an optional fused activation."""
        return self.layer("dense", [x, w] + ([b] if b is not None else []), name=name, out=out,
                          activation=activation)

    def matmul(self, a: TensorLike, b: TensorLike, *, transpose_b: bool = False,
               name: str | None = None, out: str | None = None) -> Tensor:
        """Batched ``a · b`` (or ``a · bᵀ``) over the last two axes."""
        return self.layer("matmul", [a, b], name=name, out=out, transpose_b=transpose_b or None)

    def conv2d(self, x: TensorLike, w: TensorLike, b: TensorLike | None = None, *, stride: Any = 1,
               padding: Any = 0, groups: int = 1, activation: str | None = None,
               name: str | None = None, out: str | None = None) -> Tensor:
        """2-D cross-correlation (NCHW, PyTorch semantics), optional bias and fused activation."""
        return self.layer("conv2d", [x, w] + ([b] if b is not None else []), name=name, out=out,
                          stride=None if stride == 1 else stride, padding=None if padding == 0 else padding,
                          groups=None if groups == 1 else groups, activation=activation)

    def _unary(op: str) -> Any:  # noqa: N805 - a method factory used in the class body
        def method(self: "GraphBuilder", x: TensorLike, *, name: str | None = None,
                   out: str | None = None) -> Tensor:
            return self.layer(op, [x], name=name, out=out)

        method.__name__ = op
        method.__doc__ = f"Elementwise ``{op}`` of ``x``."
        return method

    relu = _unary("relu")
    relu6 = _unary("relu6")
    gelu = _unary("gelu")
    sigmoid = _unary("sigmoid")
    global_avgpool = _unary("global_avgpool")
    global_avgpool.__doc__ = "Mean over H and W: ``[N, C, H, W] -> [N, C]``."
    flatten = _unary("flatten")
    flatten.__doc__ = "``[N, ...] -> [N, prod(...)]``."
    del _unary

    def add(self, a: TensorLike, b: TensorLike, *, activation: str | None = None,
            name: str | None = None, out: str | None = None) -> Tensor:
        """Elementwise ``a + b`` with NumPy broadcasting and an optional fused activation."""
        return self.layer("add", [a, b], name=name, out=out, activation=activation)

    def mul(self, a: TensorLike, b: TensorLike, *, name: str | None = None, out: str | None = None) -> Tensor:
        """Elementwise ``a * b`` with NumPy broadcasting."""
        return self.layer("mul", [a, b], name=name, out=out)

    def maxpool2d(self, x: TensorLike, kernel: Any, stride: Any = None, padding: Any = 0, *,
                  name: str | None = None, out: str | None = None) -> Tensor:
        """Max pooling (stride defaults to the kernel)."""
        return self.layer("maxpool2d", [x], name=name, out=out, kernel=kernel, stride=stride,
                          padding=None if padding == 0 else padding)

    def avgpool2d(self, x: TensorLike, kernel: Any, stride: Any = None, padding: Any = 0, *,
                  name: str | None = None, out: str | None = None) -> Tensor:
        """Average pooling counting padding (stride defaults to the kernel)."""
        return self.layer("avgpool2d", [x], name=name, out=out, kernel=kernel, stride=stride,
                          padding=None if padding == 0 else padding)

    def batchnorm(self, x: TensorLike, scale: TensorLike, shift: TensorLike, *,
                  name: str | None = None, out: str | None = None) -> Tensor:
        """Inference batch normalisation: ``x * scale + shift`` per channel (axis 1)."""
        return self.layer("batchnorm", [x, scale, shift], name=name, out=out)

    def layernorm(self, x: TensorLike, gamma: TensorLike, beta: TensorLike, *, eps: float | None = None,
                  name: str | None = None, out: str | None = None) -> Tensor:
        """Layer normalisation over the last axis."""
        return self.layer("layernorm", [x, gamma, beta], name=name, out=out, eps=eps)

    def softmax(self, x: TensorLike, axis: int = -1, *, name: str | None = None,
                out: str | None = None) -> Tensor:
        """Softmax along ``axis``."""
        return self.layer("softmax", [x], name=name, out=out, axis=None if axis == -1 else axis)

    def reshape(self, x: TensorLike, shape: Sequence[int], *, name: str | None = None,
                out: str | None = None) -> Tensor:
        """Reshape (one ``-1`` allowed)."""
        return self.layer("reshape", [x], name=name, out=out, shape=list(shape))

    def transpose(self, x: TensorLike, perm: Sequence[int] | None = None, *, name: str | None = None,
                  out: str | None = None) -> Tensor:
        """Permute axes (default: reverse them)."""
        return self.layer("transpose", [x], name=name, out=out, perm=None if perm is None else list(perm))

    def concat(self, xs: Sequence[TensorLike], axis: int = 0, *, name: str | None = None,
               out: str | None = None) -> Tensor:
        """Concatenate along ``axis``."""
        return self.layer("concat", list(xs), name=name, out=out, axis=axis)

    def embedding(self, ids: TensorLike, table: TensorLike, *, name: str | None = None,
                  out: str | None = None) -> Tensor:
        """Row lookup: ``ids[N, L]`` (int64) into ``table[V, D]`` gives ``[N, L, D]``."""
        return self.layer("embedding", [ids, table], name=name, out=out)

    # -------------------------------------------------------------- result
    def build(self) -> Graph:
        """Return the validated graph."""
        return Graph(self.name, self.dtype, self._tensors.values(), self._layers)
