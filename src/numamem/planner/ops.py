"""Operator table of the ``numamem-graph/1`` format: operands, attributes and shape inference.

Every op of ARCHITECTURE.md's table has one :class:`OpSpec` here. Shape inference is pure
arithmetic on tuples; it raises :class:`ShapeError` with a message that names the operand and the
problem, which :mod:`numamem.planner.graph` prefixes with the layer's name.

The same module also knows, for each op, which bytes of which input an output slice depends on
(:func:`input_regions`) and how many floating-point operations a layer costs (:func:`flops`):
that is what the partitioner needs, and keeping it beside shape inference keeps one op's rules in
one place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from numamem.planner.boxes import Box, Shape, full, on_axis

ACTIVATIONS = ("relu", "relu6", "gelu")


class ShapeError(ValueError):
    """An operand's shape or an attribute does not fit the op."""


@dataclass(frozen=True)
class OpSpec:
    """What an op takes: operand counts, allowed attributes, and its shape rule."""

    name: str
    min_inputs: int
    max_inputs: int | None  # None: any number (concat)
    attrs: tuple[str, ...]
    infer: Callable[[Sequence[Shape], Mapping[str, object]], Shape]


# ----------------------------------------------------------------------------------- helpers
def pair(value: object, what: str) -> tuple[int, int]:
    """Normalise an int or a 2-sequence of ints (PyTorch style) to a pair of ints.

    ``what`` names the attribute in the :class:`ShapeError` raised for anything else.
    """
    if isinstance(value, bool):
        raise ShapeError(f"{what} must be an int or a pair of ints, not {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return (int(value[0]), int(value[1]))
    raise ShapeError(f"{what} must be an int or a pair of ints, not {value!r}")


def _int_attr(attrs: Mapping[str, object], key: str, default: int) -> int:
    value = attrs.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShapeError(f"attribute {key!r} must be an int, not {value!r}")
    return value


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_activation(attrs: Mapping[str, object]) -> None:
    """Raise :class:`ShapeError` unless the fused ``activation`` attribute is known or absent."""
    act = attrs.get("activation")
    if act is not None and act not in ACTIVATIONS:
        raise ShapeError(f"activation must be one of {', '.join(ACTIVATIONS)} or null, not {act!r}")


def broadcast_shapes(*shapes: Shape) -> Shape:
    """NumPy broadcasting of ``shapes``; raise :class:`ShapeError` when they do not broadcast."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(ndim):
        dims = {s[k - ndim + len(s)] for s in shapes if k - ndim + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ShapeError("shapes " + ", ".join(_fmt(s) for s in shapes) + " do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def normalize_axis(axis: object, ndim: int, what: str = "axis") -> int:
    """``axis`` as a non-negative axis of ``ndim`` dimensions, or :class:`ShapeError`."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ShapeError(f"{what} must be an int, not {axis!r}")
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{what} {axis} is out of range for {ndim} dimensions")
    return axis % ndim


def _window(size: int, kernel: int, stride: int, pad: int, what: str) -> int:
    if kernel < 1 or stride < 1 or pad < 0:
        raise ShapeError(f"{what}: kernel and stride must be >= 1 and padding >= 0")
    out = (size + 2 * pad - kernel) // stride + 1
    if out < 1:
        raise ShapeError(f"{what}: kernel {kernel} does not fit input size {size} with padding {pad}")
    return out


# --------------------------------------------------------------------------- shape rules
def _dense(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    check_activation(attrs)
    x, w = shapes[0], shapes[1]
    if len(x) < 2:
        raise ShapeError(f"input x must have at least 2 dimensions [N, K], got {_fmt(x)}")
    if len(w) != 2:
        raise ShapeError(f"weight must be 2-D [K, M], got {_fmt(w)}")
    if x[-1] != w[0]:
        raise ShapeError(f"input x {_fmt(x)} has K={x[-1]} but weight {_fmt(w)} has K={w[0]}")
    if len(shapes) == 3 and shapes[2] != (w[1],):
        raise ShapeError(f"bias must have shape [{w[1]}], got {_fmt(shapes[2])}")
    return x[:-1] + (w[1],)


def _matmul(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    a, b = shapes
    tb = attrs.get("transpose_b", False)
    if not isinstance(tb, bool):
        raise ShapeError(f"attribute 'transpose_b' must be a bool, not {tb!r}")
    if len(a) < 2 or len(b) < 2:
        raise ShapeError(f"operands must have at least 2 dimensions, got {_fmt(a)} and {_fmt(b)}")
    kb, n = (b[-1], b[-2]) if tb else (b[-2], b[-1])
    if a[-1] != kb:
        raise ShapeError(
            f"a {_fmt(a)} has K={a[-1]} but b {_fmt(b)} has K={kb}" + (" (transpose_b)" if tb else "")
        )
    return broadcast_shapes(a[:-2], b[:-2]) + (a[-2], n)


def _conv2d(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    check_activation(attrs)
    x, w = shapes[0], shapes[1]
    if len(x) != 4:
        raise ShapeError(f"input x must be 4-D [N, C, H, W], got {_fmt(x)}")
    if len(w) != 4:
        raise ShapeError(f"weight must be 4-D [O, C/groups, kh, kw], got {_fmt(w)}")
    groups = _int_attr(attrs, "groups", 1)
    if groups < 1 or x[1] % groups or w[0] % groups:
        raise ShapeError(f"groups={groups} must divide input channels {x[1]} and output channels {w[0]}")
    if w[1] != x[1] // groups:
        raise ShapeError(
            f"weight {_fmt(w)} has {w[1]} input channels per group but x {_fmt(x)} with "
            f"groups={groups} needs {x[1] // groups}"
        )
    if len(shapes) == 3 and shapes[2] != (w[0],):
        raise ShapeError(f"bias must have shape [{w[0]}], got {_fmt(shapes[2])}")
    (sh, sw), (ph, pw), _ = conv_params(attrs)
    return (x[0], w[0], _window(x[2], w[2], sh, ph, "height"), _window(x[3], w[3], sw, pw, "width"))


def conv_params(attrs: Mapping[str, object]) -> tuple[tuple[int, int], tuple[int, int], int]:
    """Return ``(stride, padding, groups)`` of a conv2d layer (defaults 1, 0 and 1)."""
    return (pair(attrs.get("stride", 1), "stride"), pair(attrs.get("padding", 0), "padding"),
            _int_attr(attrs, "groups", 1))


def _same(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    return shapes[0]


def _binary(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    check_activation(attrs)
    return broadcast_shapes(shapes[0], shapes[1])


def _mul(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    return broadcast_shapes(shapes[0], shapes[1])


def pool_params(attrs: Mapping[str, object]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Return ``(kernel, stride, padding)`` pairs of a pooling layer (stride defaults to kernel)."""
    if "kernel" not in attrs:
        raise ShapeError("attribute 'kernel' is required")
    kernel = pair(attrs["kernel"], "kernel")
    stride = pair(attrs.get("stride", attrs["kernel"]), "stride")
    padding = pair(attrs.get("padding", 0), "padding")
    return kernel, stride, padding


def _pool(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    x = shapes[0]
    if len(x) != 4:
        raise ShapeError(f"input x must be 4-D [N, C, H, W], got {_fmt(x)}")
    (kh, kw), (sh, sw), (ph, pw) = pool_params(attrs)
    if 2 * ph > kh or 2 * pw > kw:
        raise ShapeError("padding must be at most half the kernel size (as in PyTorch)")
    return (x[0], x[1], _window(x[2], kh, sh, ph, "height"), _window(x[3], kw, sw, pw, "width"))


def _global_avgpool(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    x = shapes[0]
    if len(x) != 4:
        raise ShapeError(f"input x must be 4-D [N, C, H, W], got {_fmt(x)}")
    return x[:2]


def _batchnorm(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    x = shapes[0]
    if len(x) < 2:
        raise ShapeError(f"input x must have a channel axis [N, C, ...], got {_fmt(x)}")
    for what, s in (("scale", shapes[1]), ("shift", shapes[2])):
        if s != (x[1],):
            raise ShapeError(f"{what} must have shape [{x[1]}], got {_fmt(s)}")
    return x


def _layernorm(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    x = shapes[0]
    if len(x) < 1:
        raise ShapeError("input x must have at least one dimension")
    eps = attrs.get("eps", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ShapeError(f"attribute 'eps' must be a non-negative number, not {eps!r}")
    for what, s in (("gamma", shapes[1]), ("beta", shapes[2])):
        if s != (x[-1],):
            raise ShapeError(f"{what} must have shape [{x[-1]}], got {_fmt(s)}")
    return x


def _softmax(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    normalize_axis(attrs.get("axis", -1), len(shapes[0]))
    return shapes[0]


def reshape_target(x: Shape, target: object) -> Shape:
    """Resolve a reshape target (one ``-1`` allowed) against input shape ``x``."""
    if not isinstance(target, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in target
    ):
        raise ShapeError(f"attribute 'shape' must be a list of ints, not {target!r}")
    total = math.prod(x)
    if list(target).count(-1) > 1 or any(d < -1 or d == 0 for d in target):
        raise ShapeError(f"shape {list(target)} may hold one -1 and otherwise positive sizes")
    known = math.prod(d for d in target if d != -1)
    if -1 in target:
        if total % known:
            raise ShapeError(f"cannot reshape {_fmt(x)} to {list(target)}")
        target = [total // known if d == -1 else d for d in target]
    if math.prod(target) != total:
        raise ShapeError(f"cannot reshape {_fmt(x)} ({total} elements) to {_fmt(target)}")
    return tuple(int(d) for d in target)


def _reshape(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    if "shape" not in attrs:
        raise ShapeError("attribute 'shape' is required")
    return reshape_target(shapes[0], attrs["shape"])


def transpose_perm(x: Shape, attrs: Mapping[str, object]) -> tuple[int, ...]:
    """The permutation of a transpose layer (default: reversed axes, as NumPy)."""
    perm = attrs.get("perm")
    if perm is None:
        return tuple(reversed(range(len(x))))
    if not isinstance(perm, (list, tuple)) or sorted(
        p % len(x) if isinstance(p, int) and -len(x) <= p < len(x) else -1 for p in perm
    ) != list(range(len(x))):
        raise ShapeError(f"attribute 'perm' {perm!r} is not a permutation of {len(x)} axes")
    return tuple(p % len(x) for p in perm)


def _transpose(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    x = shapes[0]
    return tuple(x[p] for p in transpose_perm(x, attrs))


def _flatten(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    x = shapes[0]
    if len(x) < 1:
        raise ShapeError("input x must have a batch axis")
    return (x[0], math.prod(x[1:]))


def _concat(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    first = shapes[0]
    axis = normalize_axis(attrs.get("axis", 0), len(first))
    for s in shapes[1:]:
        if len(s) != len(first) or any(a != b for k, (a, b) in enumerate(zip(s, first)) if k != axis):
            raise ShapeError(
                f"operands {_fmt(first)} and {_fmt(s)} differ outside the concatenation axis {axis}"
            )
    return first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1 :]


def _embedding(shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    ids, table = shapes
    if len(ids) != 2:
        raise ShapeError(f"ids must be 2-D [N, L], got {_fmt(ids)}")
    if len(table) != 2:
        raise ShapeError(f"table must be 2-D [V, D], got {_fmt(table)}")
    return ids + (table[1],)


OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("dense", 2, 3, ("activation",), _dense),
        OpSpec("matmul", 2, 2, ("transpose_b",), _matmul),
        OpSpec("conv2d", 2, 3, ("stride", "padding", "groups", "activation"), _conv2d),
        OpSpec("relu", 1, 1, (), _same),
        OpSpec("relu6", 1, 1, (), _same),
        OpSpec("gelu", 1, 1, (), _same),
        OpSpec("sigmoid", 1, 1, (), _same),
        OpSpec("add", 2, 2, ("activation",), _binary),
        OpSpec("mul", 2, 2, (), _mul),
        OpSpec("maxpool2d", 1, 1, ("kernel", "stride", "padding"), _pool),
        OpSpec("avgpool2d", 1, 1, ("kernel", "stride", "padding"), _pool),
        OpSpec("global_avgpool", 1, 1, (), _global_avgpool),
        OpSpec("batchnorm", 3, 3, (), _batchnorm),
        OpSpec("layernorm", 3, 3, ("eps",), _layernorm),
        OpSpec("softmax", 1, 1, ("axis",), _softmax),
        OpSpec("reshape", 1, 1, ("shape",), _reshape),
        OpSpec("transpose", 1, 1, ("perm",), _transpose),
        OpSpec("flatten", 1, 1, (), _flatten),
        OpSpec("concat", 1, None, ("axis",), _concat),
        OpSpec("embedding", 2, 2, (), _embedding),
    )
}

ELEMENTWISE = ("relu", "relu6", "gelu", "sigmoid")


@dataclass(frozen=True)
class OpRules:
    """Every rule of one op in one object: shape, splittable axes, input regions and flops.

    Ops added this way (:mod:`numamem.planner.ops_onnx`) keep all their rules together;
    :func:`register` puts them in :data:`OPS` and the functions below dispatch to them.
    ``splittable(in_shapes, out_shape, attrs, axis)``, ``regions(in_shapes, out_shape, attrs,
    axis, lo, hi)`` and ``flops(in_shapes, out_shape, attrs)`` have the meaning of the module
    functions of the same names.
    """

    spec: OpSpec
    splittable: Callable[[Sequence[Shape], Shape, Mapping[str, object], int], bool]
    regions: Callable[[Sequence[Shape], Shape, Mapping[str, object], int, int, int], list]
    flops: Callable[[Sequence[Shape], Shape, Mapping[str, object]], int]


#: The rules of the ops registered with :func:`register`, by name.
RULES: dict[str, OpRules] = {}


def register(rules: OpRules) -> None:
    """Add an op with all its rules; an op name may be registered once."""
    name = rules.spec.name
    if name in OPS:
        raise ValueError(f"op {name!r} is already defined")
    OPS[name] = rules.spec
    RULES[name] = rules


def infer_shape(op: str, shapes: Sequence[Shape], attrs: Mapping[str, object]) -> Shape:
    """Return the output shape of ``op`` applied to operands of ``shapes`` with ``attrs``.

    Parameters
    ----------
    op : str
        An op name of the ``numamem-graph/1`` table.
    shapes : sequence of tuple of int
        Operand shapes in the op's order.
    attrs : mapping
        The layer's attributes.

    Returns
    -------
    tuple of int

    Raises
    ------
    ShapeError
        If ``op`` is unknown, the operand count is wrong, an attribute is unknown or invalid, or the
        shapes do not fit.

    Examples
    --------
    >>> infer_shape("conv2d", [(1, 3, 224, 224), (64, 3, 7, 7)], {"stride": 2, "padding": 3})
    (1, 64, 112, 112)
    >>> infer_shape("add", [(8, 1, 5), (4, 5)], {})
    (8, 4, 5)
    """
    spec = OPS.get(op)
    if spec is None:
        raise ShapeError(f"unknown op {op!r} (known: {', '.join(sorted(OPS))})")
    n = len(shapes)
    if n < spec.min_inputs or (spec.max_inputs is not None and n > spec.max_inputs):
        want = (
            f"at least {spec.min_inputs}" if spec.max_inputs is None
            else str(spec.min_inputs) if spec.min_inputs == spec.max_inputs
            else f"{spec.min_inputs} to {spec.max_inputs}"
        )
        raise ShapeError(f"{op} takes {want} inputs, got {n}")
    unknown = sorted(set(attrs) - set(spec.attrs))
    if unknown:
        raise ShapeError(
            f"unknown attribute(s) {', '.join(map(repr, unknown))} for {op}"
            + (f" (allowed: {', '.join(spec.attrs)})" if spec.attrs else " (it takes none)")
        )
    return tuple(int(d) for d in spec.infer([tuple(s) for s in shapes], attrs))


# ------------------------------------------------------------------- work and dependencies
def flops(op: str, in_shapes: Sequence[Shape], out_shape: Shape, attrs: Mapping[str, object]) -> int:
    """Floating-point operations of one layer (multiply-add counts 2), for the cost model.

    Views (reshape, flatten) cost nothing; data movement (transpose, concat, embedding) counts one
    operation per element so the cost model still sees that they touch memory.
    """
    if op in RULES:
        return RULES[op].flops(in_shapes, out_shape, attrs)
    elems = math.prod(out_shape)
    if op == "dense":
        return 2 * in_shapes[0][-1] * elems + (elems if len(in_shapes) == 3 else 0)
    if op == "matmul":
        k = in_shapes[0][-1]
        return 2 * k * elems
    if op == "conv2d":
        _, cg, kh, kw = in_shapes[1]
        return 2 * cg * kh * kw * elems + (elems if len(in_shapes) == 3 else 0)
    if op in ("maxpool2d", "avgpool2d"):
        (kh, kw), _, _ = pool_params(attrs)
        return kh * kw * elems
    if op == "global_avgpool":
        return math.prod(in_shapes[0])
    if op in ("layernorm", "softmax"):
        return 5 * elems
    if op == "batchnorm":
        return 2 * elems
    if op in ("reshape", "flatten"):
        return 0
    return elems


def splittable(op: str, in_shapes: Sequence[Shape], out_shape: Shape, attrs: Mapping[str, object], axis: int) -> bool:
    """True when output ``axis`` of the layer can be computed in independent slices.

    A slice of the output along such an axis depends on a known rectangle of every input
    (:func:`input_regions`). Reductions (softmax and layernorm over their axis) and reshapes that
    mix the axis with others cannot be split along it.
    """
    nd = len(out_shape)
    if not 0 <= axis < nd:
        return False
    if op in RULES:
        return RULES[op].splittable(in_shapes, out_shape, attrs, axis)
    if op in ("conv2d", "maxpool2d", "avgpool2d", "global_avgpool", "dense", "matmul", "embedding",
              "transpose", "concat", "batchnorm", "add", "mul") or op in ELEMENTWISE:
        return True
    if op == "layernorm":
        return axis != nd - 1
    if op == "softmax":
        return axis != normalize_axis(attrs.get("axis", -1), nd)
    if op in ("reshape", "flatten"):
        return _reshape_axis(in_shapes[0], out_shape, axis) is not None
    return False


def _reshape_axis(x: Shape, out: Shape, axis: int) -> int | None:
    """The input axis that output ``axis`` of a reshape is, or None when it mixes axes.

    In row-major order, output axis k is input axis j exactly when both have the same size and the
    same number of elements before them; slicing one then slices the other identically.
    """
    before = math.prod(out[:axis])
    for j, d in enumerate(x):
        if d == out[axis] and math.prod(x[:j]) == before:
            return j
    return None


def _broadcast_box(shape: Shape, out_shape: Shape, axis: int, lo: int, hi: int) -> Box:
    """Box of a broadcast operand needed for output slice [lo, hi) on ``axis``."""
    j = axis - (len(out_shape) - len(shape))
    if j < 0 or shape[j] == 1:
        return full(shape)
    return on_axis(shape, j, lo, hi)


def conv_batch_or_channel_regions(in_shapes: Sequence[Shape], groups: int, axis: int, lo: int,
                                  hi: int) -> list:
    """What a convolution block of rows ``[lo, hi)`` of output axis 0 (batch) or 1 (channels) reads.

    ``in_shapes`` is ``(x, w)`` or ``(x, w, bias)``. A channel block reads its own filters, its
    bias entries, and the input channels of the groups those filters belong to (all of them
    when ``groups == 1``). Shared by ``conv2d`` and ONNX ``Conv``, which differ only along the
    spatial axes.
    """
    x, w = in_shapes[0], in_shapes[1]
    if axis == 0:
        return [on_axis(x, 0, lo, hi)] + [full(s) for s in in_shapes[1:]]
    if groups == 1:
        xr = full(x)
    else:
        opg, ipg = w[0] // groups, x[1] // groups
        xr = on_axis(x, 1, (lo // opg) * ipg, ((hi - 1) // opg + 1) * ipg)
    return [xr, on_axis(w, 0, lo, hi)] + ([((lo, hi),)] if len(in_shapes) == 3 else [])


def _halo(lo: int, hi: int, kernel: int, stride: int, pad: int, size: int) -> tuple[int, int]:
    """Input rows read by output rows [lo, hi) of a sliding window (clipped to the input).

    Windows lying wholly in the padding read nothing: the range is then empty, never reversed.
    """
    start = min(size, max(0, lo * stride - pad))
    return start, max(start, min(size, (hi - 1) * stride - pad + kernel))


def input_regions(
    op: str,
    in_shapes: Sequence[Shape],
    out_shape: Shape,
    attrs: Mapping[str, object],
    axis: int,
    lo: int,
    hi: int,
) -> list[Box | None]:
    """Rectangles of each input read to compute output slice ``[lo, hi)`` along ``axis``.

    ``None`` marks an input the slice does not read at all (a concat operand outside the slice).
    Only meaningful where :func:`splittable` is true.

    Examples
    --------
    A feature-split dense layer reads every row of its input and a slice of its weight's columns:

    >>> input_regions("dense", [(8, 64), (64, 128)], (8, 128), {}, 1, 0, 64)
    [((0, 8), (0, 64)), ((0, 64), (0, 64))]
    """
    if op in RULES:
        return RULES[op].regions(in_shapes, out_shape, attrs, axis, lo, hi)
    nd = len(out_shape)
    x = in_shapes[0]
    if op == "dense":
        if axis == nd - 1:
            regs: list[Box | None] = [full(x), on_axis(in_shapes[1], 1, lo, hi)]
            if len(in_shapes) == 3:
                regs.append(((lo, hi),))
            return regs
        return [on_axis(x, axis, lo, hi)] + [full(s) for s in in_shapes[1:]]
    if op == "matmul":
        a, b = in_shapes
        tb = bool(attrs.get("transpose_b", False))
        if axis == nd - 2:
            return [on_axis(a, len(a) - 2, lo, hi), full(b)]
        if axis == nd - 1:
            return [full(a), on_axis(b, len(b) - (2 if tb else 1), lo, hi)]
        return [_broadcast_box(a[:-2], out_shape[:-2], axis, lo, hi) + full(a[-2:]),
                _broadcast_box(b[:-2], out_shape[:-2], axis, lo, hi) + full(b[-2:])]
    if op == "conv2d":
        w = in_shapes[1]
        if axis < 2:
            return conv_batch_or_channel_regions(in_shapes, int(attrs.get("groups", 1)), axis, lo, hi)
        k = axis - 2
        stride = pair(attrs.get("stride", 1), "stride")[k]
        pad = pair(attrs.get("padding", 0), "padding")[k]
        return [on_axis(x, axis, *_halo(lo, hi, w[2 + k], stride, pad, x[axis]))] + [
            full(s) for s in in_shapes[1:]
        ]
    if op in ("maxpool2d", "avgpool2d"):
        if axis < 2:
            return [on_axis(x, axis, lo, hi)]
        kernel, stride, pad = pool_params(attrs)
        k = axis - 2
        return [on_axis(x, axis, *_halo(lo, hi, kernel[k], stride[k], pad[k], x[axis]))]
    if op == "global_avgpool":
        return [on_axis(x, axis, lo, hi)]
    if op == "batchnorm":
        par = [((lo, hi),) if axis == 1 else full(s) for s in in_shapes[1:]]
        return [on_axis(x, axis, lo, hi)] + par
    if op == "layernorm":
        return [on_axis(x, axis, lo, hi), full(in_shapes[1]), full(in_shapes[2])]
    if op in ("add", "mul"):
        return [_broadcast_box(s, out_shape, axis, lo, hi) for s in in_shapes]
    if op in ELEMENTWISE or op == "softmax":
        return [on_axis(x, axis, lo, hi)]
    if op in ("reshape", "flatten"):
        j = _reshape_axis(x, out_shape, axis)
        assert j is not None
        return [on_axis(x, j, lo, hi)]
    if op == "transpose":
        return [on_axis(x, transpose_perm(x, attrs)[axis], lo, hi)]
    if op == "concat":
        cat = normalize_axis(attrs.get("axis", 0), nd)
        if axis != cat:
            return [on_axis(s, axis, lo, hi) for s in in_shapes]
        regs = []
        start = 0
        for s in in_shapes:
            a, b = max(lo - start, 0), min(hi - start, s[cat])
            regs.append(on_axis(s, cat, a, b) if a < b else None)
            start += s[cat]
        return regs
    if op == "embedding":
        ids, table = in_shapes
        if axis == 2:
            return [full(ids), on_axis(table, 1, lo, hi)]
        return [on_axis(ids, axis, lo, hi), full(table)]
    raise ShapeError(f"no dependency rule for op {op!r}")
