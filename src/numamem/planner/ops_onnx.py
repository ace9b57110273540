"""Ops with ONNX semantics that the built-in ops do not cover exactly.

The ONNX importer (:mod:`numamem.planner.onnx`) maps an ONNX node onto a built-in op of
:mod:`numamem.planner.ops` where the two agree exactly (a Conv with symmetric pads is a
``conv2d``) and onto one of these otherwise. Each op is one :class:`~numamem.planner.ops.OpRules`
(shape, splittable axes, input regions, flops) registered into the op table when this module is
imported, which :mod:`numamem.planner` does, so every user of the op table sees them.

| op | inputs | attrs | semantics |
|---|---|---|---|
| ``conv`` | x[N,C,H,W], w[O,C/group,kh,kw], b[O]? | ``strides``, ``pads`` [t,l,b,r], ``dilations``, ``group``, ``activation`` | ONNX Conv (2-D) |
| ``maxpool``, ``avgpool`` | x[N,C,H,W] | ``kernel``, ``strides``, ``pads`` [t,l,b,r], ``ceil_mode``, ``count_include_pad`` (avg) | ONNX MaxPool / AveragePool (2-D) |
| ``lrn`` | x[N,C,...] | ``size``, ``alpha``, ``beta``, ``bias`` | ONNX LRN |
| ``tanh``, ``erf``, ``sqrt``, ``exp``, ``gelu_erf``, ``neg``, ``reciprocal``, ``abs``, ``log``, ``hard_swish`` | x | | elementwise (``gelu_erf``: ``x/2*(1+erf(x/sqrt 2))``; ``hard_swish``: ``x*max(0, min(1, x/6+1/2))``) |
| ``leaky_relu``, ``hard_sigmoid`` | x | ``alpha`` (and ``beta``) | ONNX LeakyRelu, HardSigmoid |
| ``clip`` | x | ``min``, ``max`` (null: unbounded) | elementwise |
| ``sub``, ``div``, ``pow``, ``max``, ``min`` | a, b | | NumPy broadcasting |
| ``reduce_mean`` | x | ``axes``, ``keepdims`` | mean over ``axes`` |
| ``slice`` | x | ``axis``, ``start``, ``stop`` | ``x[..., start:stop, ...]`` on one axis (Split, Slice) |
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from numamem.planner.boxes import Box, Shape, full, on_axis
from numamem.planner.ops import (
    OpRules, OpSpec, ShapeError, _broadcast_box, broadcast_shapes, check_activation,
    conv_batch_or_channel_regions, normalize_axis, pair, register,
)

Attrs = Mapping[str, object]


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def pads4(value: object, what: str = "pads") -> tuple[int, int, int, int]:
    """Normalise ``pads`` to ``(top, left, bottom, right)``: an int, a pair (symmetric) or 4 ints."""
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        return tuple(int(v) for v in value)  # type: ignore[return-value]
    h, w = pair(value, what)
    if h < 0 or w < 0:
        raise ShapeError(f"{what} must be non-negative, not {value!r}")
    return (h, w, h, w)


def _positive_pair(attrs: Attrs, key: str, default: object) -> tuple[int, int]:
    p = pair(attrs.get(key, default), key)
    if p[0] < 1 or p[1] < 1:
        raise ShapeError(f"attribute {key!r} must be >= 1, not {list(p)}")
    return p


def conv_geometry(attrs: Attrs) -> tuple[tuple[int, int], tuple[int, int, int, int], tuple[int, int], int]:
    """``(strides, pads, dilations, group)`` of a ``conv`` layer (defaults 1, 0, 1, 1)."""
    group = attrs.get("group", 1)
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ShapeError(f"attribute 'group' must be a positive int, not {group!r}")
    return (_positive_pair(attrs, "strides", 1), pads4(attrs.get("pads", 0)),
            _positive_pair(attrs, "dilations", 1), group)


def _out_size(size: int, extent: int, stride: int, before: int, after: int, ceil: bool, what: str) -> int:
    span = size + before + after - extent
    if span < 0:
        raise ShapeError(f"{what}: window of extent {extent} does not fit input size {size} with pads "
                         f"{before}+{after}")
    if not ceil:
        return span // stride + 1
    out = -(-span // stride) + 1
    # ONNX Runtime (and PyTorch): the last window must start inside the input or the leading pad.
    if (out - 1) * stride >= size + before:
        out -= 1
    return out


def halo(lo: int, hi: int, extent: int, stride: int, before: int, size: int) -> tuple[int, int]:
    """Input rows read by output rows ``[lo, hi)`` of a window of ``extent`` (clipped to the input)."""
    start = min(size, max(0, lo * stride - before))
    return start, max(start, min(size, (hi - 1) * stride - before + extent))


# ----------------------------------------------------------------------------------- conv
def _conv_shape(shapes: Sequence[Shape], attrs: Attrs) -> Shape:
    check_activation(attrs)
    x, w = shapes[0], shapes[1]
    if len(x) != 4 or len(w) != 4:
        raise ShapeError(f"x and w must be 4-D [N, C, H, W] and [O, C/group, kh, kw], got {_fmt(x)} and {_fmt(w)}")
    (sh, sw), (pt, pl, pb, pr), (dh, dw), group = conv_geometry(attrs)
    if x[1] % group or w[0] % group or w[1] != x[1] // group:
        raise ShapeError(f"group={group}: x {_fmt(x)} and w {_fmt(w)} do not agree on channels")
    if len(shapes) == 3 and shapes[2] != (w[0],):
        raise ShapeError(f"bias must have shape [{w[0]}], got {_fmt(shapes[2])}")
    return (x[0], w[0], _out_size(x[2], (w[2] - 1) * dh + 1, sh, pt, pb, False, "height"),
            _out_size(x[3], (w[3] - 1) * dw + 1, sw, pl, pr, False, "width"))


def _conv_regions(ins: Sequence[Shape], out: Shape, attrs: Attrs, axis: int, lo: int, hi: int) -> list:
    x, w = ins[0], ins[1]
    (sh, sw), (pt, pl, _pb, _pr), (dh, dw), group = conv_geometry(attrs)
    if axis < 2:
        return conv_batch_or_channel_regions(ins, group, axis, lo, hi)
    k = axis - 2
    stride, before, dil = (sh, pt, dh) if k == 0 else (sw, pl, dw)
    extent = (w[2 + k] - 1) * dil + 1
    return [on_axis(x, axis, *halo(lo, hi, extent, stride, before, x[axis]))] + [full(s) for s in ins[1:]]


def _conv_flops(ins: Sequence[Shape], out: Shape, attrs: Attrs) -> int:
    _o, cg, kh, kw = ins[1]
    elems = math.prod(out)
    return 2 * cg * kh * kw * elems + (elems if len(ins) == 3 else 0)


# ----------------------------------------------------------------------------------- pools
def pool_geometry(attrs: Attrs) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int], bool]:
    """``(kernel, strides, pads, ceil_mode)`` of a ``maxpool``/``avgpool`` layer (strides default 1)."""
    if "kernel" not in attrs:
        raise ShapeError("attribute 'kernel' is required")
    ceil = attrs.get("ceil_mode", False)
    if not isinstance(ceil, (bool, int)):
        raise ShapeError(f"attribute 'ceil_mode' must be a bool, not {ceil!r}")
    kernel = _positive_pair(attrs, "kernel", 1)
    pads = pads4(attrs.get("pads", 0))
    if pads[0] >= kernel[0] or pads[2] >= kernel[0] or pads[1] >= kernel[1] or pads[3] >= kernel[1]:
        raise ShapeError(f"pads {list(pads)} must be smaller than the kernel {list(kernel)}")
    return kernel, _positive_pair(attrs, "strides", 1), pads, bool(ceil)


def _pool_shape(shapes: Sequence[Shape], attrs: Attrs) -> Shape:
    x = shapes[0]
    if len(x) != 4:
        raise ShapeError(f"input x must be 4-D [N, C, H, W], got {_fmt(x)}")
    cip = attrs.get("count_include_pad", False)
    if not isinstance(cip, (bool, int)):
        raise ShapeError(f"attribute 'count_include_pad' must be a bool, not {cip!r}")
    (kh, kw), (sh, sw), (pt, pl, pb, pr), ceil = pool_geometry(attrs)
    return (x[0], x[1], _out_size(x[2], kh, sh, pt, pb, ceil, "height"),
            _out_size(x[3], kw, sw, pl, pr, ceil, "width"))


def _pool_regions(ins: Sequence[Shape], out: Shape, attrs: Attrs, axis: int, lo: int, hi: int) -> list:
    x = ins[0]
    if axis < 2:
        return [on_axis(x, axis, lo, hi)]
    (kh, kw), (sh, sw), (pt, pl, _pb, _pr), _ceil = pool_geometry(attrs)
    k, s, b = (kh, sh, pt) if axis == 2 else (kw, sw, pl)
    return [on_axis(x, axis, *halo(lo, hi, k, s, b, x[axis]))]


def _pool_flops(ins: Sequence[Shape], out: Shape, attrs: Attrs) -> int:
    (kh, kw), _s, _p, _c = pool_geometry(attrs)
    return kh * kw * math.prod(out)


# ----------------------------------------------------------------------------------- lrn
def lrn_params(attrs: Attrs) -> tuple[int, float, float, float]:
    """``(size, alpha, beta, bias)`` of an ``lrn`` layer (ONNX defaults 1e-4, 0.75, 1.0)."""
    size = attrs.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ShapeError(f"attribute 'size' must be a positive int, not {size!r}")
    vals = []
    for key, default in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)):
        v = attrs.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ShapeError(f"attribute {key!r} must be a number, not {v!r}")
        vals.append(float(v))
    return size, vals[0], vals[1], vals[2]


def _lrn_shape(shapes: Sequence[Shape], attrs: Attrs) -> Shape:
    lrn_params(attrs)
    if len(shapes[0]) < 3:
        raise ShapeError(f"input x must be [N, C, ...] with at least one spatial axis, got {_fmt(shapes[0])}")
    return shapes[0]


# ----------------------------------------------------------------------------- elementwise
def _same(shapes: Sequence[Shape], attrs: Attrs) -> Shape:
    return shapes[0]


def clip_bounds(attrs: Attrs) -> tuple[float | None, float | None]:
    """``(min, max)`` of a ``clip`` layer; None is unbounded."""
    out = []
    for key in ("min", "max"):
        v = attrs.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ShapeError(f"attribute {key!r} must be a number or null, not {v!r}")
        out.append(None if v is None else float(v))
    return out[0], out[1]


def _clip_shape(shapes: Sequence[Shape], attrs: Attrs) -> Shape:
    clip_bounds(attrs)
    return shapes[0]


def slope_params(op: str, attrs: Attrs) -> tuple[float, float]:
    """``(alpha, beta)`` of ``leaky_relu`` (alpha 0.01) or ``hard_sigmoid`` (alpha 0.2, beta 0.5)."""
    defaults = {"leaky_relu": (0.01, 0.0), "hard_sigmoid": (0.2, 0.5)}[op]
    out = []
    for key, default in zip(("alpha", "beta"), defaults):
        v = attrs.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ShapeError(f"attribute {key!r} must be a number, not {v!r}")
        out.append(float(v))
    return out[0], out[1]


def _slope_shape(op: str):
    def infer(shapes: Sequence[Shape], attrs: Attrs) -> Shape:
        slope_params(op, attrs)
        return shapes[0]
    return infer


def _broadcast(shapes: Sequence[Shape], attrs: Attrs) -> Shape:
    return broadcast_shapes(shapes[0], shapes[1])


def _any_axis(ins: Sequence[Shape], out: Shape, attrs: Attrs, axis: int) -> bool:
    return True


def _same_regions(ins: Sequence[Shape], out: Shape, attrs: Attrs, axis: int, lo: int, hi: int) -> list:
    return [on_axis(ins[0], axis, lo, hi)]


def _broadcast_regions(ins: Sequence[Shape], out: Shape, attrs: Attrs, axis: int, lo: int, hi: int) -> list:
    return [_broadcast_box(s, out, axis, lo, hi) for s in ins]


def _per_element(cost: int):
    def f(ins: Sequence[Shape], out: Shape, attrs: Attrs) -> int:
        return cost * math.prod(out)
    return f


# ---------------------------------------------------------------------------- reduce_mean
def reduce_axes(x: Shape, attrs: Attrs) -> tuple[int, ...]:
    """The sorted, non-negative axes a ``reduce_mean`` layer reduces (all when ``axes`` is absent)."""
    axes = attrs.get("axes")
    if axes is None:
        return tuple(range(len(x)))
    if not isinstance(axes, (list, tuple)) or not axes:
        raise ShapeError(f"attribute 'axes' must be a non-empty list of ints, not {axes!r}")
    norm = sorted({normalize_axis(a, len(x), "axes entry") for a in axes})
    if len(norm) != len(axes):
        raise ShapeError(f"attribute 'axes' {list(axes)} repeats an axis")
    return tuple(norm)


def _kept_axis(x: Shape, attrs: Attrs, axis: int) -> int | None:
    """The input axis that output ``axis`` of a reduction is, or None when it is a reduced one."""
    red = reduce_axes(x, attrs)
    if attrs.get("keepdims", True):
        return None if axis in red else axis
    kept = [k for k in range(len(x)) if k not in red]
    return kept[axis]


def _reduce_shape(shapes: Sequence[Shape], attrs: Attrs) -> Shape:
    x = shapes[0]
    red = reduce_axes(x, attrs)
    keep = attrs.get("keepdims", True)
    if not isinstance(keep, (bool, int)):
        raise ShapeError(f"attribute 'keepdims' must be a bool, not {keep!r}")
    out = tuple(1 if k in red else d for k, d in enumerate(x)) if keep else tuple(
        d for k, d in enumerate(x) if k not in red)
    if not out:
        raise ShapeError("reducing every axis without keepdims gives a 0-d tensor, which graphs do not hold")
    return out


def _reduce_regions(ins: Sequence[Shape], out: Shape, attrs: Attrs, axis: int, lo: int, hi: int) -> list:
    j = _kept_axis(ins[0], attrs, axis)
    assert j is not None
    return [on_axis(ins[0], j, lo, hi)]


# ----------------------------------------------------------------------------------- slice
def slice_params(x: Shape, attrs: Attrs) -> tuple[int, int, int]:
    """``(axis, start, stop)`` of a ``slice`` layer, checked against input shape ``x``."""
    axis = normalize_axis(attrs.get("axis", 0), len(x))
    start, stop = attrs.get("start"), attrs.get("stop")
    for key, v in (("start", start), ("stop", stop)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ShapeError(f"attribute {key!r} must be an int, not {v!r}")
    if not 0 <= start < stop <= x[axis]:  # type: ignore[operator]
        raise ShapeError(f"slice [{start}, {stop}) does not fit axis {axis} of size {x[axis]}")
    return axis, start, stop  # type: ignore[return-value]


def _slice_shape(shapes: Sequence[Shape], attrs: Attrs) -> Shape:
    x = shapes[0]
    axis, start, stop = slice_params(x, attrs)
    return x[:axis] + (stop - start,) + x[axis + 1:]


def _slice_regions(ins: Sequence[Shape], out: Shape, attrs: Attrs, axis: int, lo: int, hi: int) -> list:
    x = ins[0]
    cut, start, stop = slice_params(x, attrs)
    box: Box = tuple((start, stop) if k == cut else (0, d) for k, d in enumerate(x))
    a, b = box[axis]
    return [box[:axis] + ((a + lo, a + hi),) + box[axis + 1:]]


def _register() -> tuple[str, ...]:
    names = []

    def rules(spec, split, regions, flops):
        register(OpRules(spec, split, regions, flops))
        names.append(spec.name)

    rules(OpSpec("conv", 2, 3, ("strides", "pads", "dilations", "group", "activation"), _conv_shape),
          _any_axis, _conv_regions, _conv_flops)
    rules(OpSpec("maxpool", 1, 1, ("kernel", "strides", "pads", "ceil_mode"), _pool_shape),
          _any_axis, _pool_regions, _pool_flops)
    rules(OpSpec("avgpool", 1, 1, ("kernel", "strides", "pads", "ceil_mode", "count_include_pad"), _pool_shape),
          _any_axis, _pool_regions, _pool_flops)
    # Channel blocks of LRN would read a halo of neighbouring channels: split the other axes only.
    rules(OpSpec("lrn", 1, 1, ("size", "alpha", "beta", "bias"), _lrn_shape),
          lambda ins, out, attrs, axis: axis != 1, _same_regions,
          lambda ins, out, attrs: (lrn_params(attrs)[0] + 4) * math.prod(out))
    for name in ("tanh", "erf", "sqrt", "exp", "gelu_erf", "neg", "reciprocal", "abs", "log", "hard_swish"):
        rules(OpSpec(name, 1, 1, (), _same), _any_axis, _same_regions, _per_element(1))
    rules(OpSpec("leaky_relu", 1, 1, ("alpha",), _slope_shape("leaky_relu")), _any_axis, _same_regions,
          _per_element(1))
    rules(OpSpec("hard_sigmoid", 1, 1, ("alpha", "beta"), _slope_shape("hard_sigmoid")), _any_axis, _same_regions,
          _per_element(1))
    rules(OpSpec("clip", 1, 1, ("min", "max"), _clip_shape), _any_axis, _same_regions, _per_element(1))
    for name in ("sub", "div", "pow", "max", "min"):
        rules(OpSpec(name, 2, 2, (), _broadcast), _any_axis, _broadcast_regions, _per_element(1))
    rules(OpSpec("reduce_mean", 1, 1, ("axes", "keepdims"), _reduce_shape),
          lambda ins, out, attrs, axis: _kept_axis(ins[0], attrs, axis) is not None, _reduce_regions,
          lambda ins, out, attrs: math.prod(ins[0]))
    rules(OpSpec("slice", 1, 1, ("axis", "start", "stop"), _slice_shape), _any_axis, _slice_regions,
          _per_element(1))
    return tuple(names)


#: The ops this module adds to the op table.
ONNX_OPS = _register()
