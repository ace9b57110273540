"""A ``numamem-graph/1`` layer graph as a PyTorch module, so built-in models run under PyTorch.

:func:`graph_module` turns a :class:`~numamem.planner.Graph` and its weights into an
``nn.Module`` whose ``forward`` takes the graph's inputs in order and returns its outputs as a
tuple, computed with ``torch.nn.functional`` in the graph's dtype. The weights are buffers, so
:func:`numamem.engines.torch.place_module` and :class:`~numamem.engines.torch.NodeReplicas`
place them like any module's. Axis 0 of every input is the batch: a ``reshape`` whose first
extent is the graph's batch keeps the batch of the tensor it gets, so the module runs on any
part of the batch.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from numamem.engines._nodes import require

__all__ = ["graph_module"]


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def _act(F, x, name):
    if name is None:
        return x
    if name == "relu":
        return F.relu(x)
    if name == "relu6":
        return F.relu6(x)
    if name == "gelu":
        return F.gelu(x, approximate="tanh")
    raise ValueError(f"unknown activation {name!r}")


def _op(torch, F, op: str, xs: list, attrs: Mapping[str, Any], batch: int):
    act = attrs.get("activation")
    if op == "dense":
        y = torch.matmul(xs[0], xs[1])
        return _act(F, y + xs[2] if len(xs) > 2 else y, act)
    if op == "matmul":
        b = xs[1].transpose(-1, -2) if attrs.get("transpose_b") else xs[1]
        return torch.matmul(xs[0], b)
    if op == "conv2d":
        y = F.conv2d(xs[0], xs[1], xs[2] if len(xs) > 2 else None, _pair(attrs.get("stride", 1)),
                     _pair(attrs.get("padding", 0)), 1, int(attrs.get("groups", 1)))
        return _act(F, y, act)
    if op in ("relu", "relu6", "gelu"):
        return _act(F, xs[0], op)
    if op == "sigmoid":
        return torch.sigmoid(xs[0])
    if op == "add":
        return _act(F, xs[0] + xs[1], act)
    if op == "mul":
        return xs[0] * xs[1]
    if op in ("maxpool2d", "avgpool2d"):
        kernel = _pair(attrs["kernel"])
        stride = _pair(attrs["stride"]) if attrs.get("stride") is not None else kernel
        padding = _pair(attrs.get("padding", 0))
        if op == "maxpool2d":
            return F.max_pool2d(xs[0], kernel, stride, padding)
        return F.avg_pool2d(xs[0], kernel, stride, padding, count_include_pad=True)
    if op == "global_avgpool":
        return xs[0].mean(dim=(2, 3))
    if op == "batchnorm":
        shape = (1, -1) + (1,) * (xs[0].dim() - 2)
        return xs[0] * xs[1].reshape(shape) + xs[2].reshape(shape)
    if op == "layernorm":
        return F.layer_norm(xs[0], xs[0].shape[-1:], xs[1], xs[2], float(attrs.get("eps", 1e-5)))
    if op == "softmax":
        return torch.softmax(xs[0], dim=int(attrs.get("axis", -1)))
    if op == "reshape":
        shape = list(attrs["shape"])
        if shape and shape[0] == batch:
            shape[0] = xs[0].shape[0]
        return xs[0].reshape(shape)
    if op == "flatten":
        return xs[0].reshape(xs[0].shape[0], -1)
    if op == "transpose":
        perm = attrs.get("perm")
        return xs[0].permute(*(perm if perm is not None else range(xs[0].dim() - 1, -1, -1)))
    if op == "concat":
        return torch.cat(xs, dim=int(attrs.get("axis", 0)))
    if op == "embedding":
        return F.embedding(xs[0], xs[1])
    raise ValueError(f"op {op!r} has no PyTorch form here")


def graph_module(graph, weights: Mapping[str, np.ndarray]):
    """Return an ``nn.Module`` computing ``graph`` with ``weights`` (copied into its buffers).

    Parameters
    ----------
    graph : numamem.planner.Graph
    weights : mapping of str to array_like
        Every weight of the graph by tensor name.

    Returns
    -------
    torch.nn.Module
        ``forward(*inputs)`` takes ``graph.inputs`` in order and returns a tuple in the order
        of ``graph.outputs``; it is in eval mode.

    Raises
    ------
    KeyError
        Naming a weight of the graph that ``weights`` lacks.
    ValueError
        For an op with no PyTorch form.
    """
    torch = require("torch", "torch")
    F = torch.nn.functional
    missing = [n for n in graph.weights if n not in weights]
    if missing:
        raise KeyError(f"weights lacks {missing}")
    batch = int(graph.tensors[graph.inputs[0]].shape[0]) if graph.inputs else 0

    class GraphModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            # Buffer names may not contain dots; keep the graph's names in a side table.
            self.slots = {name: f"w{i}" for i, name in enumerate(graph.weights)}
            for name, slot in self.slots.items():
                dtype = np.dtype(graph.tensor_dtype(name))
                self.register_buffer(slot, torch.from_numpy(np.array(weights[name], dtype=dtype, copy=True)))
            self.graph = graph

        def forward(self, *inputs):
            if len(inputs) != len(graph.inputs):
                raise TypeError(f"expected {len(graph.inputs)} inputs {graph.inputs}, got {len(inputs)}")
            env = dict(zip(graph.inputs, inputs))
            for name, slot in self.slots.items():
                env[name] = getattr(self, slot)
            for layer in graph.layers:
                env[layer.outputs[0]] = _op(torch, F, layer.op, [env[n] for n in layer.inputs],
                                            layer.attrs, batch)
            return tuple(env[n] for n in graph.outputs)

        def extra_repr(self) -> str:
            return f"graph={graph.name!r}, layers={len(graph.layers)}, weights={len(self.slots)}"

    return GraphModule().eval()

