"""Block kernels of the ``numamem-graph/1`` ops, writing into caller-provided memory.

One call computes one *block* of a layer's output: a :class:`~numamem.planner.boxes.Slice`
``(axis, start, stop)`` of the full output (``None``: all of it). Shapes, the axes an op splits
along and the region of each operand a block reads are the planner's rules
(:mod:`numamem.planner.ops`), so the executor reads exactly what the plan counted.

``k = bind(op, shapes, attrs, block, dtype)`` does the shape and region work once (and, for the
sliding-window ops, the window geometry: ``Kernel.prepare``); ``k(inputs,
out, scratch)`` then computes the block, as often as wanted and from any thread (concurrent
calls each with their own ``out`` and ``scratch``); ``run(...)`` does both at once. ``shapes``
are the full operand shapes. Each of ``inputs`` is the full operand or exactly the region the
block reads (``k.regions``); a concat operand the block does not read may be None. ``out`` has
shape ``k.out_shape`` and the graph's dtype and is written in place; matmul-based ops
(``KERNELS[op].contiguous_out``) compute into a temporary unless it is C-contiguous, and the
elementwise ops and ``batchnorm`` accept ``out`` being one of their inputs. ``scratch`` is None
(the kernel allocates its temporaries) or a ``uint8`` array of at least ``k.scratch_bytes``
bytes, carved at ``SCRATCH_ALIGN``-byte offsets. With scratch and a C-contiguous ``out`` a call
allocates nothing proportional to the data, except where :mod:`.layout` says. Errors are
:class:`ValueError` (the planner's :class:`~numamem.planner.ops.ShapeError` for shapes and
attributes), and :class:`IndexError` for embedding ids out of range. One module per op family,
each stating its numerics and scratch: :mod:`.conv`, :mod:`.dense`, :mod:`.pool`, :mod:`.norm`,
:mod:`.elementwise`, :mod:`.layout`, and for the ONNX-semantics ops :mod:`.window` and :mod:`.mathops`. Kernels compute in the dtype of ``out``.
"""
from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from numamem.planner import ops as _ops
from numamem.planner.boxes import Box, Shape, Slice, cut, extent, full
from numamem.runtime.kernels import conv, dense, elementwise, layout, mathops, norm, pool, window
from numamem.runtime.kernels._common import Buffer, Ctx, no_scratch
from numamem.runtime.kernels.elementwise import CHUNK_ELEMENTS

#: Alignment of the buffers carved out of a scratch array.
SCRATCH_ALIGN = 64


@dataclass(frozen=True)
class Kernel:
    """The block kernel of one op.

    Attributes
    ----------
    op : str
    run : callable
        ``run(inputs, out, ctx, buffers)``: the body, given inputs already cut to their regions
        and the scratch buffers of ``scratch``. Call it through :func:`bind` or :func:`run`.
    scratch : callable
        ``scratch(ctx)`` -> list of :class:`~._common.Buffer` the body takes, in order.
    contiguous_out : bool
        Whether the body needs ``out`` C-contiguous (matmul-based ops).
    prepare : callable or None
        ``prepare(ctx)`` -> what the body would otherwise work out from the shapes on every call
        (window geometry, taps, method); :func:`bind` runs it once for a non-empty block and
        hands the result to the body and to ``scratch`` as ``ctx.prep``.
    """

    op: str
    run: Callable[..., None]
    scratch: Callable[[Ctx], list[Buffer]]
    contiguous_out: bool = False
    prepare: Callable[[Ctx], Any] | None = None


KERNELS: dict[str, Kernel] = {
    k.op: k
    for k in (
        Kernel("dense", dense.dense, elementwise.activation_scratch, True),
        Kernel("matmul", dense.matmul, no_scratch, True),
        Kernel("conv2d", conv.conv2d, conv.conv2d_scratch, True, conv.conv2d_prepare),
        Kernel("relu", elementwise.unary, no_scratch),
        Kernel("relu6", elementwise.unary, no_scratch),
        Kernel("gelu", elementwise.unary, elementwise.activation_scratch),
        Kernel("sigmoid", elementwise.unary, no_scratch),
        Kernel("add", elementwise.binary, elementwise.activation_scratch),
        Kernel("mul", elementwise.binary, no_scratch),
        Kernel("maxpool2d", pool.window_pool, no_scratch, prepare=pool.window_pool_prepare),
        Kernel("avgpool2d", pool.window_pool, no_scratch, prepare=pool.window_pool_prepare),
        Kernel("global_avgpool", pool.global_avgpool, no_scratch),
        Kernel("batchnorm", norm.batchnorm, no_scratch),
        Kernel("layernorm", norm.layernorm, norm.layernorm_scratch),
        Kernel("softmax", norm.softmax, norm.softmax_scratch),
        Kernel("reshape", layout.reshape, no_scratch),
        Kernel("flatten", layout.reshape, no_scratch),
        Kernel("transpose", layout.transpose, no_scratch),
        Kernel("concat", layout.concat, no_scratch),
        Kernel("embedding", layout.embedding, no_scratch),
        # ONNX-semantics ops (numamem.planner.ops_onnx)
        Kernel("conv", window.conv, window.conv_scratch, True, window.conv_prepare),
        Kernel("maxpool", window.pool, no_scratch, prepare=window.pool_prepare),
        Kernel("avgpool", window.pool, no_scratch, prepare=window.pool_prepare),
        Kernel("lrn", window.lrn, no_scratch),
        *(Kernel(op, mathops.unary, no_scratch) for op in (
            "tanh", "erf", "sqrt", "exp", "gelu_erf", "clip", "neg", "reciprocal", "abs", "log", "leaky_relu",
            "hard_sigmoid", "hard_swish")),
        *(Kernel(op, mathops.binary, no_scratch) for op in ("sub", "div", "pow", "max", "min")),
        Kernel("reduce_mean", mathops.reduce_mean, no_scratch),
        Kernel("slice", mathops.slice_, no_scratch),
    )
}


def as_slice(block: Any, out_shape: Sequence[int]) -> Slice:
    """Normalise ``block`` against the full output shape and check it fits.

    Parameters
    ----------
    block : Slice, mapping, tuple or None
        A :class:`~numamem.planner.boxes.Slice`, a plan ``slice`` mapping ``{"axis", "start",
        "stop"}``, a tuple ``(axis, start, stop)`` (the axis may be negative), or ``None`` for
        the whole output (axis 0).
    out_shape : sequence of int
        Shape of the layer's full output.

    Returns
    -------
    Slice
        With a non-negative axis.

    Raises
    ------
    ValueError
        If the axis or the range does not fit ``out_shape``.
    TypeError
        If ``block`` is none of the forms above.

    Examples
    --------
    >>> as_slice((-1, 2, 5), (4, 8))
    Slice(axis=1, start=2, stop=5)
    """
    nd = len(out_shape)
    if block is None:
        if nd == 0:
            raise ValueError("a 0-d output has no axis to split")
        return Slice(0, 0, int(out_shape[0]))
    if isinstance(block, Slice):
        axis, start, stop = block.axis, block.start, block.stop
    elif isinstance(block, Mapping):
        axis, start, stop = block["axis"], block["start"], block["stop"]
    elif isinstance(block, (tuple, list)):
        if len(block) != 3:
            raise ValueError(f"block must be (axis, start, stop), not {block!r}")
        axis, start, stop = block
    else:
        raise TypeError(f"block must be a Slice, a mapping, an (axis, start, stop) tuple or None, not {block!r}")
    axis = _ops.normalize_axis(operator.index(axis), nd, "block axis")
    s = Slice(axis, start, stop)
    if s.stop > out_shape[axis]:
        raise ValueError(f"block [{s.start}, {s.stop}) exceeds output axis {axis} of size {out_shape[axis]}")
    return s


def _kernel(op: str) -> Kernel:
    try:
        return KERNELS[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r} (known: {', '.join(sorted(KERNELS))})") from None


def _graph_attrs(attrs: Mapping[str, Any]) -> dict:
    # Keys starting with "_" are the kernels' private switches (conv2d's "_method"), not graph attributes.
    return {k: v for k, v in attrs.items() if not k.startswith("_")}


def _context(op: str, shapes: Sequence[Sequence[int]], attrs: Mapping[str, Any] | None, block: Any,
             dtype: Any) -> Ctx:
    _kernel(op)
    attrs = dict(attrs or {})
    graph_attrs = _graph_attrs(attrs)
    shapes = [tuple(int(d) for d in s) for s in shapes]
    out_shape = _ops.infer_shape(op, shapes, graph_attrs)
    b = as_slice(block, out_shape)
    split = _ops.splittable(op, shapes, out_shape, graph_attrs, b.axis)
    if not split and not (b.start == 0 and b.stop == out_shape[b.axis]):
        raise ValueError(f"{op} cannot be split along output axis {b.axis}")
    bshape = tuple(b.length if k == b.axis else d for k, d in enumerate(out_shape))
    if not b.length:
        regions: list[Box | None] = [None] * len(shapes)
    elif split:
        regions = list(_ops.input_regions(op, shapes, out_shape, graph_attrs, b.axis, b.start, b.stop))
    else:  # the whole output along an axis it cannot be cut on: the block reads everything
        regions = [full(s) for s in shapes]
    return Ctx(op, shapes, out_shape, b, bshape, regions, attrs, np.dtype(dtype))


@dataclass(frozen=True)
class _Carved:
    """Where one scratch buffer lies in the scratch array (relative to a 64-byte aligned base)."""

    offset: int
    nbytes: int
    shape: Shape
    dtype: np.dtype


def _carve(specs: Sequence[Buffer]) -> list[_Carved]:
    out, off = [], 0
    for spec in specs:
        n = math.prod(spec.shape) * np.dtype(spec.dtype).itemsize
        out.append(_Carved(off, n, spec.shape, spec.dtype))
        off += -(-n // SCRATCH_ALIGN) * SCRATCH_ALIGN
    return out


class BoundKernel:
    """One block of one layer, with everything but the arrays worked out once.

    Made by :func:`bind`; calling it computes the block.

    Attributes
    ----------
    op : str
    block : Slice
        The output range, with a non-negative axis.
    out_shape : tuple of int
        Shape of the ``out`` array a call takes (the block's shape).
    regions : list of Box or None
        Per operand, the box the block reads in full-tensor coordinates, or ``None`` for a concat
        operand it does not read; these are the bytes the block reads.
    scratch_bytes : int
        Size of the ``scratch`` array a call needs to allocate nothing (0 if none). It includes
        the slack that aligning the buffers may take, so any ``uint8`` array of this size works
        wherever it starts.
    """

    def __init__(self, op: str, shapes: Sequence[Sequence[int]], attrs: Mapping[str, Any] | None,
                 block: Any, dtype: Any):
        self._kern = _kernel(op)
        ctx = _context(op, shapes, attrs, block, dtype)
        if self._kern.prepare is not None and ctx.block.length:
            ctx = dataclasses.replace(ctx, prep=self._kern.prepare(ctx))
        self._ctx = ctx
        self.op = op
        self.block = ctx.block
        self.out_shape = ctx.bshape
        self.regions = list(ctx.regions)
        self._cuts = [None if r is None else cut(r, (0,) * len(r)) for r in ctx.regions]
        self._region_shapes = [None if r is None else extent(r) for r in ctx.regions]
        self._layout = _carve(self._kern.scratch(ctx) if ctx.block.length else [])
        self._scratch_end = self._layout[-1].offset + self._layout[-1].nbytes if self._layout else 0
        self.scratch_bytes = self._scratch_end + SCRATCH_ALIGN if self._layout else 0

    def __repr__(self) -> str:
        return f"BoundKernel({self.op!r}, {self.block}, out_shape={self.out_shape})"

    def __call__(self, inputs: Sequence[np.ndarray | None], out: np.ndarray,
                 scratch: np.ndarray | None = None) -> np.ndarray:
        """Compute the block into ``out`` (see the module docstring for the arguments); return ``out``."""
        ctx = self._ctx
        if out.shape != self.out_shape:
            raise ValueError(f"{self.op}: out has shape {list(out.shape)}, the block needs {list(self.out_shape)}")
        if out.dtype != ctx.dtype:
            raise ValueError(f"{self.op}: out has dtype {out.dtype}, the kernel was bound for {ctx.dtype}")
        if len(inputs) != len(ctx.shapes):
            raise ValueError(f"{self.op}: {len(inputs)} inputs, expected {len(ctx.shapes)}")
        if not ctx.block.length:
            return out
        ins = []
        for i, a in enumerate(inputs):
            idx = self._cuts[i]
            if idx is None:
                ins.append(None)
            elif a is None:
                raise ValueError(f"{self.op} operand {i} is None but the block reads it")
            elif a.shape == ctx.shapes[i]:
                ins.append(a[idx])
            elif a.shape == self._region_shapes[i]:
                ins.append(a)
            else:
                raise ValueError(
                    f"{self.op} operand {i} has shape {list(a.shape)}: neither the full {list(ctx.shapes[i])} "
                    f"nor the block's region {list(self._region_shapes[i])}")
        bufs: list[np.ndarray] = []
        if self._layout:
            if scratch is None:
                bufs = [np.empty(p.shape, p.dtype) for p in self._layout]
            else:
                raw = scratch.reshape(-1).view(np.uint8)
                base = (-raw.ctypes.data) % SCRATCH_ALIGN
                if base + self._scratch_end > raw.size:
                    raise ValueError(f"{self.op}: scratch of {raw.size} bytes is too small, "
                                     f"needs {self.scratch_bytes}")
                bufs = [raw[base + p.offset: base + p.offset + p.nbytes].view(p.dtype).reshape(p.shape)
                        for p in self._layout]
        if self._kern.contiguous_out and not out.flags.c_contiguous:
            tmp = np.empty(out.shape, out.dtype)  # documented: BLAS wants a contiguous target
            self._kern.run(ins, tmp, ctx, bufs)
            np.copyto(out, tmp)
        else:
            self._kern.run(ins, out, ctx, bufs)
        return out


def bind(op: str, shapes: Sequence[Sequence[int]], attrs: Mapping[str, Any] | None = None, block: Any = None,
         dtype: Any = "float32") -> BoundKernel:
    """Prepare the computation of ``block`` of layer ``op`` for repeated calls.

    Parameters
    ----------
    op : str
        An op of the ``numamem-graph/1`` table.
    shapes : sequence of sequence of int
        Full operand shapes, in the op's order.
    attrs : mapping, optional
        The layer's attributes.
    block : Slice, mapping, tuple or None
        The output range (see :func:`as_slice`); ``None``: the whole output.
    dtype : dtype-like
        The dtype of ``out`` (the graph's).

    Returns
    -------
    BoundKernel

    Raises
    ------
    ValueError
        If the op is unknown, the shapes or attributes do not fit, or the op cannot be split along
        the block's axis.

    Examples
    --------
    >>> k = bind("relu", [(4, 3)], None, Slice(0, 1, 3))
    >>> k.out_shape, k.regions, k.scratch_bytes
    ((2, 3), [((1, 3), (0, 3))], 0)
    >>> k([np.array([[-1.0, 2, 3]] * 4, np.float32)], np.empty((2, 3), np.float32))
    array([[0., 2., 3.],
           [0., 2., 3.]], dtype=float32)
    >>> bind("conv2d", [(1, 64, 56, 56), (64, 64, 3, 3)], {"padding": 1}).scratch_bytes
    7225408
    """
    return BoundKernel(op, shapes, attrs, block, dtype)


def run(op: str, inputs: Sequence[np.ndarray | None], out: np.ndarray, attrs: Mapping[str, Any] | None = None,
        block: Any = None, scratch: np.ndarray | None = None,
        shapes: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Compute ``block`` of layer ``op`` into ``out`` in one call; return ``out``.

    The same as ``bind(op, shapes, attrs, block, out.dtype)(inputs, out, scratch)``; ``shapes``
    defaults to the shapes of ``inputs`` (all given full).

    Examples
    --------
    >>> x = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> w = np.eye(3, 4, dtype=np.float32)
    >>> run("dense", [x, w], np.empty((2, 2), np.float32), block=Slice(1, 1, 3))
    array([[1., 2.],
           [4., 5.]], dtype=float32)
    """
    if shapes is None:
        shapes = [a.shape for a in inputs]
    if len(shapes) != len(inputs):
        raise ValueError(f"{len(inputs)} inputs but {len(shapes)} shapes")
    return BoundKernel(op, shapes, attrs, block, out.dtype)(inputs, out, scratch)


__all__ = ["BoundKernel", "CHUNK_ELEMENTS", "KERNELS", "Kernel", "SCRATCH_ALIGN", "as_slice", "bind", "run"]
