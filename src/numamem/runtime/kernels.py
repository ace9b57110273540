"""Block kernels of the ``numamem-graph/1`` ops, writing into caller-provided memory.

The planned executor splits every layer's output into per-node *blocks* along one output axis
(the batch axis 0, or the op's feature/channel axis) and has each node's worker threads compute
their block straight into planned memory. A kernel here computes one such block.

Blocks
------
A :class:`Block` ``(axis, start, stop)`` names the half-open range ``[start, stop)`` of output
``axis`` (an axis of the layer's *full* output tensor, as the plan's ``slice`` entries do).
``block=None`` means the whole output. Which axes an op can be split along is
:func:`splittable`, which is the planner's rule (:mod:`numamem.planner.ops`, also the source of
:func:`input_regions` and :func:`output_shape`, so the executor reads exactly what the plan counted):

* batch split (``axis=0``): every op;
* feature split: ``dense`` and ``matmul`` on the last axis (weight columns ``[start, stop)``,
  or rows of ``b`` with ``transpose_b``), ``conv2d`` on axis 1 (filters ``[start, stop)``; the
  input channels of the groups those filters belong to), pools, ``global_avgpool`` and
  ``batchnorm`` on axis 1, ``embedding`` on axis 2 (table columns);
* also any axis of the elementwise ops, ``add``/``mul`` (broadcasting-aware), ``transpose``,
  ``concat``, ``reshape``/``flatten`` where the output axis *is* an input axis, the spatial axes
  of ``conv2d``/pools (the input rows read include the window's halo), every axis of ``layernorm``
  and ``softmax`` except the one they normalise over.

Calling a kernel
----------------
``run(op, inputs, out, attrs, block, scratch, shapes)`` computes one block. An executor that runs
a plan repeatedly binds each (layer, block) once, ``k = bind(op, shapes, attrs, block, dtype)``,
and calls ``k(inputs, out, scratch)`` each iteration (``k.out_shape``, ``k.regions`` and
``k.scratch_bytes`` tell it what to provide); that skips the per-call shape and region work
(a few microseconds of Python per call instead of 10-20). The arguments:

``inputs``
    The layer's operands in the op's order. Each is either the **full** tensor or exactly the
    **region** of it the block reads (:func:`input_regions`); the kernel tells them apart by
    comparing the array's shape with the operand's full shape (``shapes``, default: the shapes of
    ``inputs`` themselves, i.e. all full). So a batch-split executor may pass the node-local
    block of an activation, a feature-split executor the full activation and either the full
    weight or the node's slice of it. A concat operand that the block does not read may be
    ``None`` when ``shapes`` is given.
``out``
    The block of the output: an array of shape :func:`block_shape` and the graph's dtype (usually
    a view into planned memory). It is written in place and returned. Matmul-based ops
    (``dense``, ``matmul``, ``conv2d``) want ``out`` C-contiguous; given anything else they compute
    into a temporary and copy (an allocation of the block's size). Elementwise ops (activations,
    ``add``, ``mul``, ``batchnorm``) accept ``out`` being exactly one of their inputs (in place);
    other overlaps between ``out`` and the inputs are not supported.
``scratch``
    ``None`` (the kernel allocates what it needs) or a 1-D ``uint8`` array of at least
    :func:`scratch_bytes` bytes that the caller reserved (e.g. per worker thread in the node's
    arena). Buffers are carved from it at 64-byte aligned offsets.

Allocations
-----------
With scratch given and ``out`` C-contiguous, a call allocates no memory proportional to the data,
only Python objects, views and NumPy's own ufunc iterator buffers (at most 8192 elements per
operand, taken when an operand is strided or broadcast: about 100 KiB in float32 whatever the
size of the data). The tests check this with :mod:`tracemalloc` on blocks of 2 MiB and more.
Exceptions: ``out`` not C-contiguous for ``dense``/``matmul``/``conv2d`` (a block-sized
temporary); ``reshape``/``flatten`` when neither the input region nor ``out`` can be viewed in
the other's shape (a copy of the region); ``embedding`` ids that are not C-contiguous int64 (a
copy of the ids); an ``embedding`` column block cut from a full table gathers 8192 elements at a
time through a temporary of that size (pass the node's own contiguous slice of the table to
avoid even that).

Scratch per op (``itemsize`` of the graph dtype; ``P`` = output pixels of the block per sample):

==============  ==========================================================================
op              scratch
==============  ==========================================================================
conv2d          im2col column buffer of one sample and one group: ``C/groups*kh*kw*P``
                elements (none for 1x1, stride 1, unpadded, unsplit spatially); depthwise-like
                (``C/groups == 1``): one sample's output block, ``O_block*P`` elements; plus
                the gelu chunk when the fused activation is gelu
layernorm       per-row mean and variance: ``2*rows`` elements
softmax         per-row maximum / sum: ``rows`` elements
gelu, or fused  ``min(block size, CHUNK_ELEMENTS)`` elements (gelu is evaluated in chunks so it
``gelu``        needs no temporary of the output's size and can work in place)
others          none
==============  ==========================================================================

conv2d strategy
---------------
Measured on ResNet-50 layers at batch 1 (float32, one BLAS thread; ``asv_bench/scripts/bench_conv2d.py``,
methods interleaved run by run; four invocations of 15-21 runs each, ranges of the per-invocation
medians, time relative to the kept method, on a shared, loaded 2-core machine):

* im2col with one strided copy per kernel tap, then one GEMM per sample and group: **kept**;
* im2col through ``sliding_window_view`` of a padded copy: 0.98-1.10x (7x7/2 stem), 0.97-1.11x
  (3x3, 64 ch, 56x56), 0.98-1.02x (3x3, 256 ch, 14x14), 0.77-1.04x (3x3, 512 ch, 7x7): a tie,
  and it needs a padded copy of the sample on top of the column buffer;
* per-tap accumulation, one GEMM per tap added into ``out``: 2.67-3.14x, 0.86-0.96x, 0.99-1.08x,
  1.58-1.77x: slower overall (kept only as a private variant for the benchmark and tests).

Layers with one input channel per group (depthwise, as in MobileNetV2) use per-tap vectorised
multiply-adds over all channels instead of grouped im2col: 0.87-0.90x (144 channels, 56x56) and
0.03-0.07x (960 channels, 14x14, stride 2). 1x1, stride-1, unpadded convolutions skip im2col
(the sample already is the matrix).

Numerics follow PyTorch: ``conv2d`` is cross-correlation with symmetric zero padding;
``maxpool2d`` ignores padding (acts as ``-inf``), ``avgpool2d`` counts padded zeros
(``count_include_pad=True``), neither uses ``ceil_mode``; ``gelu`` is the tanh form
``0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x**3)))``; ``layernorm`` normalises the last axis with
biased variance and ``eps`` (default ``1e-5``); ``batchnorm`` is the inference form
``x*scale+shift`` per channel (axis 1). Kernels compute in the dtype of ``out``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from numamem.planner import ops as _ops

Shape = tuple[int, ...]
#: A hyper-rectangle of a tensor: one half-open ``(start, stop)`` range per axis (as the planner's).
Region = tuple[tuple[int, int], ...]

ACTIVATIONS = ("relu", "relu6", "gelu")
#: Elements of the chunk buffer that gelu works through (128 KiB in float32: stays in L2).
CHUNK_ELEMENTS = 1 << 15
#: Alignment of the buffers carved out of a scratch array.
SCRATCH_ALIGN = 64
#: Rows an embedding gathers at a time from a non-contiguous table block (bounds its temporary).
_GATHER_ELEMENTS = 1 << 13

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


# ============================================================================ blocks, helpers
@dataclass(frozen=True)
class Block:
    """The half-open range ``[start, stop)`` of output axis ``axis`` that one kernel call computes.

    Attributes
    ----------
    axis : int
        Axis of the full output tensor (non-negative).
    start, stop : int
        ``0 <= start <= stop <= out_shape[axis]``.
    """

    axis: int
    start: int
    stop: int

    def __post_init__(self) -> None:
        for name in ("axis", "start", "stop"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"Block.{name} must be an int, not {v!r}")
        if self.start < 0 or self.stop < self.start:
            raise ValueError(f"Block range [{self.start}, {self.stop}) is not a valid range")

    @property
    def length(self) -> int:
        """Number of indices in the block along its axis."""
        return self.stop - self.start


def as_block(block: Any, out_shape: Sequence[int]) -> Block:
    """Normalise ``block`` against the full output shape and check it fits.

    Parameters
    ----------
    block : Block, mapping, tuple or None
        A :class:`Block`, a plan ``slice`` mapping ``{"axis", "start", "stop"}``, a tuple
        ``(axis, start, stop)``, or ``None`` for the whole output (axis 0).
    out_shape : sequence of int
        Shape of the layer's full output.

    Returns
    -------
    Block
        With a non-negative axis.

    Raises
    ------
    ValueError
        If the axis or the range does not fit ``out_shape``.
    """
    nd = len(out_shape)
    if block is None:
        if nd == 0:
            raise ValueError("a 0-d output has no axis to split")
        return Block(0, 0, int(out_shape[0]))
    if isinstance(block, Block):
        axis, start, stop = block.axis, block.start, block.stop
    elif isinstance(block, Mapping):
        axis, start, stop = block["axis"], block["start"], block["stop"]
    else:
        axis, start, stop = block
    if not -nd <= axis < nd:
        raise ValueError(f"block axis {axis} is out of range for a {nd}-d output")
    axis = int(axis) % nd
    b = Block(axis, int(start), int(stop))
    if b.stop > out_shape[axis]:
        raise ValueError(f"block [{b.start}, {b.stop}) exceeds output axis {axis} of size {out_shape[axis]}")
    return b


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ValueError(f"{what} must be an int or a pair of ints, not {value!r}")


def _axis(axis: Any, ndim: int) -> int:
    if not -ndim <= int(axis) < ndim:
        raise ValueError(f"axis {axis} is out of range for {ndim} dimensions")
    return int(axis) % ndim


def _full(shape: Shape) -> Region:
    return tuple((0, int(d)) for d in shape)


def _region_shape(region: Region) -> Shape:
    return tuple(b - a for a, b in region)


def _valid(n_out: int, offset: int, stride: int, size: int) -> tuple[int, int, int]:
    """Output positions ``[t0, t1)`` whose input index ``t*stride + offset`` lies in ``[0, size)``.

    Returns ``(t0, t1, first input index)``; ``t0 == t1`` when none does. ``offset`` already holds
    the kernel tap, the padding and where the block and the input region start.
    """
    t0 = max(0, -(offset // stride))  # ceil(-offset / stride)
    t1 = min(n_out, (size - 1 - offset) // stride + 1)
    if t1 <= t0:
        return 0, 0, 0
    return t0, t1, t0 * stride + offset


def _view_as(a: np.ndarray, shape: Shape) -> np.ndarray | None:
    """``a`` reshaped to ``shape`` without a copy, or None when NumPy would have to copy."""
    try:
        v = a.reshape(shape)
    except ValueError:
        return None
    if v.size and not np.may_share_memory(v, a):
        return None
    return v


def _activate(out: np.ndarray, act: str | None, chunk: np.ndarray | None) -> None:
    """Apply the fused activation ``act`` to ``out`` in place."""
    if act is None:
        return
    if act == "relu":
        np.maximum(out, 0, out=out)
    elif act == "relu6":
        np.clip(out, 0, 6, out=out)
    elif act == "gelu":
        _gelu(out, out, chunk)
    else:
        raise ValueError(f"unknown activation {act!r} (expected one of {', '.join(ACTIVATIONS)})")


def _chunks(shape: Shape, limit: int):
    """Index tuples cutting an array of ``shape`` into pieces of at most ``limit`` elements.

    Pieces are leading-axis ranges when a row fits, else the method recurses into the row; the
    last axis alone is cut into ranges. Works for arrays of any strides.
    """
    if len(shape) == 0:
        yield ()
        return
    inner = math.prod(shape[1:])
    if inner <= limit:
        rows = max(1, limit // max(inner, 1))
        for i in range(0, shape[0], rows):
            yield (slice(i, min(i + rows, shape[0])),)
        return
    for i in range(shape[0]):
        for rest in _chunks(shape[1:], limit):
            yield (i,) + rest


def _gelu(x: np.ndarray, out: np.ndarray, chunk: np.ndarray | None) -> None:
    """tanh-form GELU of ``x`` into ``out`` chunk by chunk (``out`` may be ``x``)."""
    if chunk is None:
        chunk = np.empty(min(x.size, CHUNK_ELEMENTS), dtype=out.dtype)
    for idx in _chunks(x.shape, chunk.size):
        xc, oc = x[idx], out[idx]
        t = chunk[: xc.size].reshape(xc.shape)
        np.multiply(xc, xc, out=t)
        t *= _GELU_A
        t += 1.0
        t *= xc  # x + a*x**3
        t *= _GELU_C
        np.tanh(t, out=t)
        t += 1.0
        t *= xc
        np.multiply(t, 0.5, out=oc)


# ========================================================================== shape inference
def _check_act(attrs: Mapping[str, Any]) -> None:
    act = attrs.get("activation")
    if act is not None and act not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)} or None, not {act!r}")


def _conv_params(attrs: Mapping[str, Any]):
    return (_pair(attrs.get("stride", 1), "stride"), _pair(attrs.get("padding", 0), "padding"),
            int(attrs.get("groups", 1)))


def _pool_params(attrs: Mapping[str, Any]):
    if "kernel" not in attrs:
        raise ValueError("pooling needs attribute 'kernel'")
    kernel = _pair(attrs["kernel"], "kernel")
    return (kernel, _pair(attrs.get("stride", attrs["kernel"]), "stride"),
            _pair(attrs.get("padding", 0), "padding"))


def _perm(x: Shape, attrs: Mapping[str, Any]) -> tuple[int, ...]:
    perm = attrs.get("perm")
    if perm is None:
        return tuple(reversed(range(len(x))))
    perm = tuple(int(p) % len(x) for p in perm)
    if sorted(perm) != list(range(len(x))):
        raise ValueError(f"perm {attrs.get('perm')!r} is not a permutation of {len(x)} axes")
    return perm


def _graph_attrs(attrs: Mapping[str, Any]) -> dict:
    # Keys starting with "_" are this module's private switches (e.g. conv2d's "_method").
    return {k: v for k, v in attrs.items() if not k.startswith("_")}


def _infer(op: str, s: Sequence[Shape], attrs: Mapping[str, Any]) -> Shape:
    if op in ("dense", "conv2d", "add"):
        _check_act(attrs)
    return tuple(_ops.infer_shape(op, [tuple(t) for t in s], _graph_attrs(attrs)))


def _splittable(op: str, s: Sequence[Shape], out: Shape, attrs: Mapping[str, Any], axis: int) -> bool:
    return op in KERNELS and _ops.splittable(op, [tuple(t) for t in s], tuple(out), _graph_attrs(attrs), axis)


def _regions(op: str, s: Sequence[Shape], out: Shape, attrs: Mapping[str, Any], b: Block) -> list[Region | None]:
    if op not in KERNELS:
        raise ValueError(f"unknown op {op!r}")
    return list(_ops.input_regions(op, [tuple(t) for t in s], tuple(out), _graph_attrs(attrs),
                                   b.axis, b.start, b.stop))


# ========================================================================== call context
@dataclass
class _Ctx:
    """Everything a kernel body knows about its call besides the arrays."""

    op: str
    shapes: list[Shape]  # full operand shapes
    out_shape: Shape  # full output shape
    block: Block
    bshape: Shape  # shape of the output block
    regions: list[Region | None]
    attrs: Mapping[str, Any]
    dtype: np.dtype


# ============================================================================== conv2d
def _conv_geom(c: _Ctx):
    """Per spatial axis: (output positions in the block, offset of output 0's first tap)."""
    (sh, sw), (ph, pw), g = _conv_params(c.attrs)
    return _window_geom(c, (sh, sw), (ph, pw)) + (g,)


def _window_geom(c: _Ctx, stride: tuple[int, int], pad: tuple[int, int]):
    """Return ``(nh, nw, org_h, org_w, sh, sw)`` of a sliding-window block.

    Output position ``t`` (block-local) of the block reads input position
    ``t*stride + tap + org`` of the input *region* (region-local), with
    ``org = block_start*stride - pad - region_start`` on a spatially split axis, else ``-pad``.
    """
    b, xr = c.block, c.regions[0]
    orgs = []
    for k in (0, 1):
        ax = 2 + k
        lo = b.start if b.axis == ax else 0
        orgs.append(lo * stride[k] - pad[k] - xr[ax][0])
    return (c.bshape[2], c.bshape[3], orgs[0], orgs[1], stride[0], stride[1])


def _conv_method(c: _Ctx) -> str:
    cg = c.shapes[1][1]
    if cg == 1:
        return "depthwise"
    kh, kw = c.shapes[1][2:]
    nh, nw, oh, ow, sh, sw, _g = _conv_geom(c)
    xr = _region_shape(c.regions[0])
    spatial_full = xr[2:] == tuple(c.shapes[0][2:])  # then x[n, chans] is one contiguous run
    if kh == kw == 1 and sh == sw == 1 and oh == ow == 0 and (nh, nw) == xr[2:] and spatial_full:
        return "gemm"
    # "_method" is a private knob (not a graph attribute) that the benchmark and the tests use to
    # run the per-tap GEMM variant, which measured slower than im2col (module docstring).
    return c.attrs.get("_method", "im2col")


def _conv_scratch(c: _Ctx) -> list[tuple[Shape, np.dtype]]:
    method = _conv_method(c)
    _o, cg, kh, kw = c.shapes[1]
    nh, nw = c.bshape[2], c.bshape[3]
    bufs: list[tuple[Shape, np.dtype]] = []
    if method == "im2col":
        bufs.append(((cg * kh * kw, nh * nw), c.dtype))
    elif method == "offsets":
        g = int(c.attrs.get("groups", 1))
        opg = c.shapes[1][0] // g
        ob = min(opg, c.bshape[1])
        bufs += [((cg, nh * nw), c.dtype), ((ob, nh * nw), c.dtype), ((kh * kw, ob, cg), c.dtype)]
    elif method == "depthwise":
        bufs.append(((c.bshape[1], nh, nw), c.dtype))
    return bufs + _act_scratch(c)


def _conv_groups(c: _Ctx):
    """Groups the block's output channels meet: (block rows, x region channels) per group."""
    g = int(c.attrs.get("groups", 1))
    o_full, cg = c.shapes[1][0], c.shapes[1][1]
    opg = o_full // g
    lo, hi = (c.block.start, c.block.stop) if c.block.axis == 1 else (0, o_full)
    cx0 = c.regions[0][1][0]
    for grp in range(lo // opg, (hi - 1) // opg + 1):
        a, b = max(lo, grp * opg), min(hi, (grp + 1) * opg)
        yield slice(a - lo, b - lo), slice(grp * cg - cx0, (grp + 1) * cg - cx0)


def _fill_cols(xn: np.ndarray, col: np.ndarray, geom) -> None:
    """im2col of one sample: ``col[c, i, j, t, u] = x[c, t*sh+i+org_h, u*sw+j+org_w]`` or 0."""
    nh, nw, org_h, org_w, sh, sw = geom
    _c, kh, kw = col.shape[:3]
    H, W = xn.shape[1:]
    for i in range(kh):
        t0, t1, h0 = _valid(nh, i + org_h, sh, H)
        for j in range(kw):
            u0, u1, w0 = _valid(nw, j + org_w, sw, W)
            dst = col[:, i, j]
            if t1 == t0 or u1 == u0:
                dst[...] = 0
                continue
            # Only the border the padding covers is zeroed: the rest is overwritten below.
            if t0 > 0:
                dst[:, :t0] = 0
            if t1 < nh:
                dst[:, t1:] = 0
            if u0 > 0:
                dst[:, t0:t1, :u0] = 0
            if u1 < nw:
                dst[:, t0:t1, u1:] = 0
            src = xn[:, h0: h0 + (t1 - t0 - 1) * sh + 1: sh, w0: w0 + (u1 - u0 - 1) * sw + 1: sw]
            np.copyto(dst[:, t0:t1, u0:u1], src)


def _conv_run(ins, out, c: _Ctx, bufs) -> None:
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    act = c.attrs.get("activation")
    method = _conv_method(c)
    nh, nw, org_h, org_w, sh, sw, g = _conv_geom(c)
    geom = (nh, nw, org_h, org_w, sh, sw)
    _o, cg, kh, kw = w.shape
    P = nh * nw
    chunk = bufs[-1] if act == "gelu" else None
    if method == "depthwise":
        return _conv_depthwise(x, w, bias, out, c, geom, bufs[0], act, chunk)
    groups = list(_conv_groups(c))
    w2 = [w[rows].reshape(rows.stop - rows.start, cg * kh * kw) for rows, _ in groups]
    for n in range(out.shape[0]):
        on = out[n]
        for (rows, chans), wg in zip(groups, w2):
            og = on[rows].reshape(rows.stop - rows.start, P)  # a view: `out` is C-contiguous here
            xg = x[n, chans]
            if method == "gemm":
                src = _view_as(xg, (cg, P))
                if src is None:
                    src = np.ascontiguousarray(xg).reshape(cg, P)
                np.matmul(wg, src, out=og)
            elif method == "im2col":
                col = bufs[0]
                _fill_cols(xg, col.reshape(cg, kh, kw, nh, nw), geom)
                np.matmul(wg, col, out=og)
            else:
                _conv_offsets(xg, w[rows], og, geom, bufs)
            if bias is not None:
                og += bias[rows, None]
        _activate(on, act, chunk)


def _conv_offsets(xg, wg, og, geom, bufs) -> None:
    """Per-kernel-tap accumulation: ``out += w[:, :, i, j] @ shifted(x)`` for every tap."""
    nh, nw, org_h, org_w, sh, sw = geom
    ob, cg, kh, kw = wg.shape
    slab = bufs[0].reshape(cg, nh, nw)
    acc = bufs[1][:ob]
    wt = bufs[2][:, :ob].reshape(kh, kw, ob, cg)
    np.copyto(wt, wg.transpose(2, 3, 0, 1))  # taps outermost, so each tap's matrix is contiguous
    H, W = xg.shape[1:]
    first = True
    for i in range(kh):
        t0, t1, h0 = _valid(nh, i + org_h, sh, H)
        for j in range(kw):
            u0, u1, w0 = _valid(nw, j + org_w, sw, W)
            if t1 == t0 or u1 == u0:
                continue
            slab[...] = 0
            np.copyto(slab[:, t0:t1, u0:u1],
                      xg[:, h0: h0 + (t1 - t0 - 1) * sh + 1: sh, w0: w0 + (u1 - u0 - 1) * sw + 1: sw])
            if first:
                np.matmul(wt[i, j], slab.reshape(cg, nh * nw), out=og)
                first = False
            else:
                np.matmul(wt[i, j], slab.reshape(cg, nh * nw), out=acc)
                og += acc
    if first:
        og[...] = 0


def _conv_depthwise(x, w, bias, out, c: _Ctx, geom, tmp, act, chunk) -> None:
    """Convolution with one input channel per group (depthwise, any channel multiplier).

    Output channel ``o`` reads input channel ``o // (O/groups)``; the block's channels that share
    a residue modulo the multiplier read a contiguous run of input channels, so each residue is a
    handful of vectorised multiply-adds per kernel tap over all those channels at once.
    """
    nh, nw, org_h, org_w, sh, sw = geom
    g = int(c.attrs.get("groups", 1))
    o_full = c.shapes[1][0]
    opg = o_full // g
    lo, hi = (c.block.start, c.block.stop) if c.block.axis == 1 else (0, o_full)
    cx0 = c.regions[0][1][0]
    _ob, _one, kh, kw = w.shape
    H, W = x.shape[2:]
    for n in range(out.shape[0]):
        on = out[n]
        for r in range(opg):
            first = lo + ((r - lo) % opg)
            if first >= hi:
                continue
            cnt = len(range(first, hi, opg))
            osl = slice(first - lo, first - lo + (cnt - 1) * opg + 1, opg)
            ic0 = first // opg - cx0
            xs = x[n, ic0: ic0 + cnt]
            ws = w[osl, 0]
            ov, tv = on[osl], tmp[osl]
            if bias is None:
                ov[...] = 0
            else:
                np.copyto(ov, bias[osl, None, None])
            for i in range(kh):
                t0, t1, h0 = _valid(nh, i + org_h, sh, H)
                if t1 == t0:
                    continue
                for j in range(kw):
                    u0, u1, w0 = _valid(nw, j + org_w, sw, W)
                    if u1 == u0:
                        continue
                    src = xs[:, h0: h0 + (t1 - t0 - 1) * sh + 1: sh, w0: w0 + (u1 - u0 - 1) * sw + 1: sw]
                    t = tv[:, t0:t1, u0:u1]
                    np.multiply(src, ws[:, i, j, None, None], out=t)
                    o = ov[:, t0:t1, u0:u1]
                    np.add(o, t, out=o)
        _activate(on, act, chunk)


# ============================================================================ other bodies
def _act_scratch(c: _Ctx) -> list[tuple[Shape, np.dtype]]:
    if c.attrs.get("activation") == "gelu" or c.op == "gelu":
        return [((min(math.prod(c.bshape), CHUNK_ELEMENTS),), c.dtype)]
    return []


def _dense_run(ins, out, c: _Ctx, bufs) -> None:
    x, w = ins[0], ins[1]
    x2, o2 = x, out
    if x.ndim > 2:
        # One GEMM over all leading rows instead of one per leading index, when views allow.
        xv, ov = _view_as(x, (-1, x.shape[-1])), _view_as(out, (-1, out.shape[-1]))
        if xv is not None and ov is not None:
            x2, o2 = xv, ov
    np.matmul(x2, w, out=o2)
    if len(ins) > 2:
        np.add(out, ins[2], out=out)
    _activate(out, c.attrs.get("activation"), bufs[0] if bufs else None)


def _matmul_run(ins, out, c: _Ctx, bufs) -> None:
    a, b = ins
    if c.attrs.get("transpose_b", False):
        b = np.swapaxes(b, -1, -2)
    np.matmul(a, b, out=out)


def _unary_run(ins, out, c: _Ctx, bufs) -> None:
    x = ins[0]
    if c.op == "relu":
        np.maximum(x, 0, out=out)
    elif c.op == "relu6":
        np.clip(x, 0, 6, out=out)
    elif c.op == "gelu":
        _gelu(x, out, bufs[0])
    else:  # sigmoid: exp(-x) overflows to inf for x << 0, and 1/(1+inf) = 0 is the right answer
        np.negative(x, out=out)
        with np.errstate(over="ignore", under="ignore"):
            np.exp(out, out=out)
        out += 1.0
        np.reciprocal(out, out=out)


def _binary_run(ins, out, c: _Ctx, bufs) -> None:
    a, b = ins
    (np.add if c.op == "add" else np.multiply)(a, b, out=out)
    _activate(out, c.attrs.get("activation"), bufs[0] if bufs else None)


def _pool_run(ins, out, c: _Ctx, bufs) -> None:
    x = ins[0]
    (kh, kw), stride, pad = _pool_params(c.attrs)
    nh, nw, org_h, org_w, sh, sw = _window_geom(c, stride, pad)
    H, W = x.shape[2:]
    is_max = c.op == "maxpool2d"
    # Every window holds at least one real element (padding <= kernel/2), so -inf never survives.
    out[...] = -np.inf if is_max else 0
    for i in range(kh):
        t0, t1, h0 = _valid(nh, i + org_h, sh, H)
        if t1 == t0:
            continue
        for j in range(kw):
            u0, u1, w0 = _valid(nw, j + org_w, sw, W)
            if u1 == u0:
                continue
            src = x[:, :, h0: h0 + (t1 - t0 - 1) * sh + 1: sh, w0: w0 + (u1 - u0 - 1) * sw + 1: sw]
            o = out[:, :, t0:t1, u0:u1]
            (np.maximum if is_max else np.add)(o, src, out=o)
    if not is_max:
        out *= 1.0 / (kh * kw)  # count_include_pad: padded zeros count in the average


def _global_avgpool_run(ins, out, c: _Ctx, bufs) -> None:
    x = ins[0]
    np.sum(x, axis=(2, 3), out=out)
    out *= 1.0 / (x.shape[2] * x.shape[3])


def _batchnorm_run(ins, out, c: _Ctx, bufs) -> None:
    x, scale, shift = ins
    shape = (-1,) + (1,) * (x.ndim - 2)
    np.multiply(x, scale.reshape(shape), out=out)
    np.add(out, shift.reshape(shape), out=out)


def _layernorm_scratch(c: _Ctx) -> list[tuple[Shape, np.dtype]]:
    rows = c.bshape[:-1] + (1,)
    return [(rows, c.dtype), (rows, c.dtype)]


def _layernorm_run(ins, out, c: _Ctx, bufs) -> None:
    x, gamma, beta = ins
    mean, var = bufs
    d = x.shape[-1]
    np.sum(x, axis=-1, keepdims=True, out=mean)
    mean *= 1.0 / d
    np.subtract(x, mean, out=out)
    # Sum of squares per row without a squared temporary of the block's size.
    np.einsum("...i,...i->...", out, out, out=var[..., 0])
    var *= 1.0 / d
    var += float(c.attrs.get("eps", 1e-5))
    np.sqrt(var, out=var)
    np.divide(out, var, out=out)
    out *= gamma
    out += beta


def _softmax_scratch(c: _Ctx) -> list[tuple[Shape, np.dtype]]:
    ax = _axis(c.attrs.get("axis", -1), len(c.out_shape))
    return [(tuple(1 if k == ax else d for k, d in enumerate(c.bshape)), c.dtype)]


def _softmax_run(ins, out, c: _Ctx, bufs) -> None:
    x = ins[0]
    ax = _axis(c.attrs.get("axis", -1), x.ndim)
    (m,) = bufs
    np.max(x, axis=ax, keepdims=True, out=m)
    np.subtract(x, m, out=out)
    np.exp(out, out=out)
    np.sum(out, axis=ax, keepdims=True, out=m)
    np.divide(out, m, out=out)


def _copy_into(out: np.ndarray, src: np.ndarray) -> None:
    """Copy ``src`` (same number of elements, row-major order) into ``out``."""
    v = _view_as(out, src.shape)
    if v is not None:
        np.copyto(v, src)
    else:
        np.copyto(out, src.reshape(out.shape))  # reshape copies: neither side has a viewable layout


def _reshape_run(ins, out, c: _Ctx, bufs) -> None:
    _copy_into(out, ins[0])


def _transpose_run(ins, out, c: _Ctx, bufs) -> None:
    np.copyto(out, np.transpose(ins[0], _perm(c.shapes[0], c.attrs)))


def _concat_run(ins, out, c: _Ctx, bufs) -> None:
    cat = _axis(c.attrs.get("axis", 0), out.ndim)
    pos = 0
    for a in ins:
        if a is None:
            continue
        n = a.shape[cat]
        idx = (slice(None),) * cat + (slice(pos, pos + n),)
        np.copyto(out[idx], a)
        pos += n


def _embedding_run(ins, out, c: _Ctx, bufs) -> None:
    ids, table = ins
    if ids.dtype != np.int64 or not ids.flags.c_contiguous:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
    v = table.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= v):
        raise IndexError(f"embedding ids must lie in [0, {v})")
    if table.flags.c_contiguous:
        # mode="clip" (ids were checked above) because mode="raise" buffers the whole output.
        np.take(table, ids, axis=0, out=out, mode="clip")
        return
    # A column block cut from the full table: np.take would copy the whole block first, so
    # gather a bounded number of rows at a time instead (allocates <= _GATHER_ELEMENTS items).
    flat_ids = ids.reshape(-1)
    flat_out = _view_as(out, (flat_ids.size, out.shape[-1]))
    if flat_out is None:
        flat_out = out.reshape(flat_ids.size, out.shape[-1])
    rows = max(1, _GATHER_ELEMENTS // max(1, table.shape[1]))
    for r in range(0, flat_ids.size, rows):
        np.copyto(flat_out[r: r + rows], table[flat_ids[r: r + rows]])
    if not np.may_share_memory(flat_out, out):
        np.copyto(out, flat_out.reshape(out.shape))


def _none(c: _Ctx) -> list[tuple[Shape, np.dtype]]:
    return []


# ============================================================================= registry
@dataclass(frozen=True)
class Kernel:
    """The block kernel of one op.

    Attributes
    ----------
    op : str
    run : callable
        ``run(inputs, out, ctx, buffers)``: the body, given inputs already cut to their regions
        and the scratch buffers of ``scratch``. Call it through :func:`run`.
    scratch : callable
        ``scratch(ctx)`` -> list of ``(shape, dtype)`` buffers the body takes, in order.
    contiguous_out : bool
        Whether the body needs ``out`` C-contiguous (matmul-based ops).
    """

    op: str
    run: Callable[..., None]
    scratch: Callable[[_Ctx], list[tuple[Shape, np.dtype]]]
    contiguous_out: bool = False


KERNELS: dict[str, Kernel] = {
    k.op: k
    for k in (
        Kernel("dense", _dense_run, _act_scratch, True),
        Kernel("matmul", _matmul_run, _none, True),
        Kernel("conv2d", _conv_run, _conv_scratch, True),
        Kernel("relu", _unary_run, _none),
        Kernel("relu6", _unary_run, _none),
        Kernel("gelu", _unary_run, _act_scratch),
        Kernel("sigmoid", _unary_run, _none),
        Kernel("add", _binary_run, _act_scratch),
        Kernel("mul", _binary_run, _none),
        Kernel("maxpool2d", _pool_run, _none),
        Kernel("avgpool2d", _pool_run, _none),
        Kernel("global_avgpool", _global_avgpool_run, _none),
        Kernel("batchnorm", _batchnorm_run, _none),
        Kernel("layernorm", _layernorm_run, _layernorm_scratch),
        Kernel("softmax", _softmax_run, _softmax_scratch),
        Kernel("reshape", _reshape_run, _none),
        Kernel("flatten", _reshape_run, _none),
        Kernel("transpose", _transpose_run, _none),
        Kernel("concat", _concat_run, _none),
        Kernel("embedding", _embedding_run, _none),
    )
}


def _kernel(op: str) -> Kernel:
    try:
        return KERNELS[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r} (known: {', '.join(sorted(KERNELS))})") from None


def _context(op, shapes, attrs, block, dtype) -> _Ctx:
    _kernel(op)
    attrs = dict(attrs or {})
    shapes = [tuple(int(d) for d in s) for s in shapes]
    out_shape = _infer(op, shapes, attrs)
    b = as_block(block, out_shape)
    split = _splittable(op, shapes, out_shape, attrs, b.axis)
    if not split and not (b.start == 0 and b.stop == out_shape[b.axis]):
        raise ValueError(f"{op} cannot be split along output axis {b.axis}")
    bshape = tuple(b.length if k == b.axis else d for k, d in enumerate(out_shape))
    if not b.length:
        regions: list[Region | None] = [None] * len(shapes)
    elif split:
        regions = _regions(op, shapes, out_shape, attrs, b)
    else:  # the whole output along an axis it cannot be cut on: the block reads everything
        regions = [_full(s) for s in shapes]
    return _Ctx(op, shapes, out_shape, b, bshape, regions, attrs, np.dtype(dtype))


# =============================================================================== public API
def output_shape(op: str, shapes: Sequence[Sequence[int]], attrs: Mapping[str, Any] | None = None) -> Shape:
    """Full output shape of ``op`` on operands of ``shapes``.

    Parameters
    ----------
    op : str
        An op of the ``numamem-graph/1`` table.
    shapes : sequence of sequence of int
        Full operand shapes, in the op's order.
    attrs : mapping, optional
        The layer's attributes.

    Returns
    -------
    tuple of int

    Raises
    ------
    ValueError
        If the op is unknown or the shapes and attributes do not fit it.

    Examples
    --------
    >>> output_shape("conv2d", [(1, 3, 224, 224), (64, 3, 7, 7)], {"stride": 2, "padding": 3})
    (1, 64, 112, 112)
    """
    _kernel(op)
    return _infer(op, [tuple(int(d) for d in s) for s in shapes], attrs or {})


def splittable(op: str, shapes: Sequence[Sequence[int]], attrs: Mapping[str, Any] | None, axis: int) -> bool:
    """Whether the kernel of ``op`` computes blocks along output ``axis``.

    Parameters
    ----------
    op : str
    shapes : sequence of sequence of int
        Full operand shapes.
    attrs : mapping or None
    axis : int
        A non-negative axis of the full output.

    Returns
    -------
    bool
    """
    shapes = [tuple(int(d) for d in s) for s in shapes]
    out = output_shape(op, shapes, attrs)
    return _splittable(op, shapes, out, attrs or {}, axis)


def block_shape(op: str, shapes: Sequence[Sequence[int]], attrs: Mapping[str, Any] | None, block: Any) -> Shape:
    """Shape of the ``out`` array a call computing ``block`` takes.

    Parameters
    ----------
    op : str
    shapes : sequence of sequence of int
        Full operand shapes.
    attrs : mapping or None
    block : Block, mapping, tuple or None
        See :func:`as_block`.

    Returns
    -------
    tuple of int
    """
    return _context(op, shapes, attrs, block, np.float32).bshape


def input_regions(op: str, shapes: Sequence[Sequence[int]], attrs: Mapping[str, Any] | None,
                  block: Any) -> list[Region | None]:
    """The part of each operand that computing ``block`` reads.

    Parameters
    ----------
    op : str
    shapes : sequence of sequence of int
        Full operand shapes.
    attrs : mapping or None
    block : Block, mapping, tuple or None

    Returns
    -------
    list of Region or None
        Per operand, one ``(start, stop)`` pair per axis in full-tensor coordinates, or ``None``
        for a concat operand the block does not read. An operand passed to :func:`run` may be cut
        to exactly this region. For locality accounting, these are the bytes the block reads.

    Examples
    --------
    >>> input_regions("dense", [(8, 64), (64, 128)], {}, Block(1, 0, 64))
    [((0, 8), (0, 64)), ((0, 64), (0, 64))]
    """
    return list(_context(op, shapes, attrs, block, np.float32).regions)


def _carve(ctx: _Ctx, specs) -> list[tuple[int, int]]:
    """Byte offset and size of each scratch buffer (relative to a 64-byte aligned base)."""
    out, off = [], 0
    for shape, dt in specs:
        n = math.prod(shape) * np.dtype(dt).itemsize
        out.append((off, n))
        off += -(-n // SCRATCH_ALIGN) * SCRATCH_ALIGN
    return out


def scratch_bytes(op: str, shapes: Sequence[Sequence[int]], attrs: Mapping[str, Any] | None, block: Any,
                  dtype: Any = "float32") -> int:
    """Bytes of scratch memory one call computing ``block`` needs (0 if none).

    Parameters
    ----------
    op : str
    shapes : sequence of sequence of int
        Full operand shapes.
    attrs : mapping or None
    block : Block, mapping, tuple or None
    dtype : dtype-like
        The graph's dtype (the dtype of ``out``).

    Returns
    -------
    int
        Includes the slack that aligning the buffers to ``SCRATCH_ALIGN`` bytes may take, so any
        ``uint8`` array of this size works wherever it starts.

    Examples
    --------
    >>> scratch_bytes("conv2d", [(1, 64, 56, 56), (64, 64, 3, 3)], {"padding": 1}, None)
    7225408
    """
    return BoundKernel(op, shapes, attrs, block, dtype).scratch_bytes


class BoundKernel:
    """One block of one layer, with everything but the arrays worked out once.

    Made by :func:`bind`; calling it computes the block. An executor that runs the same plan many
    times binds each (layer, block) once and calls the result every iteration, which skips the
    shape inference, region and scratch-layout work :func:`run` redoes on each call.

    Attributes
    ----------
    op : str
    block : Block
    out_shape : tuple of int
        Shape of the ``out`` array a call takes (the block's shape).
    regions : list of Region or None
        What each operand's block reads (see :func:`input_regions`).
    scratch_bytes : int
        Size of the ``scratch`` array a call needs to allocate nothing (see :func:`scratch_bytes`).
    """

    def __init__(self, op: str, shapes: Sequence[Sequence[int]], attrs: Mapping[str, Any] | None,
                 block: Any, dtype: Any):
        self._kern = _kernel(op)
        self._ctx = ctx = _context(op, shapes, attrs, block, dtype)
        self.op = op
        self.block = ctx.block
        self.out_shape = ctx.bshape
        self.regions = list(ctx.regions)
        self._cuts = [None if r is None else tuple(slice(lo, hi) for lo, hi in r) for r in ctx.regions]
        self._region_shapes = [None if r is None else _region_shape(r) for r in ctx.regions]
        self._specs = self._kern.scratch(ctx) if ctx.block.length else []
        self._layout = _carve(ctx, self._specs)
        self.scratch_bytes = (self._layout[-1][0] + self._layout[-1][1] + SCRATCH_ALIGN
                              if self._specs else 0)

    def __repr__(self) -> str:
        return f"BoundKernel({self.op!r}, {self.block}, out_shape={self.out_shape})"

    def __call__(self, inputs: Sequence[np.ndarray | None], out: np.ndarray,
                 scratch: np.ndarray | None = None) -> np.ndarray:
        """Compute the block into ``out``; see :func:`run` for ``inputs``, ``out`` and ``scratch``.

        Parameters
        ----------
        inputs : sequence of ndarray or None
        out : ndarray
        scratch : ndarray of uint8, optional

        Returns
        -------
        ndarray
            ``out``.
        """
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
            cut = self._cuts[i]
            if cut is None:
                ins.append(None)
            elif a is None:
                raise ValueError(f"{self.op} operand {i} is None but the block reads it")
            elif a.shape == ctx.shapes[i]:
                ins.append(a[cut])
            elif a.shape == self._region_shapes[i]:
                ins.append(a)
            else:
                raise ValueError(
                    f"{self.op} operand {i} has shape {list(a.shape)}: neither the full {list(ctx.shapes[i])} "
                    f"nor the block's region {list(self._region_shapes[i])}")
        bufs: list[np.ndarray] = []
        if self._specs:
            if scratch is None:
                bufs = [np.empty(shape, dt) for shape, dt in self._specs]
            else:
                raw = scratch.reshape(-1).view(np.uint8)
                base = (-raw.ctypes.data) % SCRATCH_ALIGN
                if base + self._layout[-1][0] + self._layout[-1][1] > raw.size:
                    raise ValueError(f"{self.op}: scratch of {raw.size} bytes is too small, "
                                     f"needs {self.scratch_bytes}")
                bufs = [raw[base + off: base + off + n].view(dt).reshape(shape)
                        for (off, n), (shape, dt) in zip(self._layout, self._specs)]
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
    block : Block, mapping, tuple or None
        The output range (see :func:`as_block`); ``None``: the whole output.
    dtype : dtype-like
        The dtype of ``out`` (the graph's).

    Returns
    -------
    BoundKernel
        ``bound(inputs, out, scratch)`` computes the block.

    Raises
    ------
    ValueError
        If the op is unknown, the shapes or attributes do not fit, or the op cannot be split along
        the block's axis.

    Examples
    --------
    >>> k = bind("relu", [(4, 3)], None, Block(0, 1, 3))
    >>> k.out_shape, k.regions, k.scratch_bytes
    ((2, 3), [((1, 3), (0, 3))], 0)
    >>> k([np.array([[-1.0, 2, 3]] * 4, np.float32)], np.empty((2, 3), np.float32))
    array([[0., 2., 3.],
           [0., 2., 3.]], dtype=float32)
    """
    return BoundKernel(op, shapes, attrs, block, dtype)


def run(op: str, inputs: Sequence[np.ndarray | None], out: np.ndarray, attrs: Mapping[str, Any] | None = None,
        block: Any = None, scratch: np.ndarray | None = None,
        shapes: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Compute ``block`` of layer ``op`` into ``out``.

    Equivalent to ``bind(op, shapes, attrs, block, out.dtype)(inputs, out, scratch)``.

    Parameters
    ----------
    op : str
        An op of the ``numamem-graph/1`` table.
    inputs : sequence of ndarray
        Operands in the op's order, each the full tensor or exactly its region
        (:func:`input_regions`).
    out : ndarray
        The output block, shape :func:`block_shape`; written in place.
    attrs : mapping, optional
        The layer's attributes.
    block : Block, mapping, tuple or None
        The output range to compute (see :func:`as_block`); ``None``: the whole output.
    scratch : ndarray of uint8, optional
        At least :func:`scratch_bytes` bytes; ``None`` lets the kernel allocate its temporaries.
    shapes : sequence of sequence of int, optional
        Full operand shapes; default: the shapes of ``inputs`` (all given full).

    Returns
    -------
    ndarray
        ``out``.

    Raises
    ------
    ValueError
        If the op is unknown, the block cannot be computed on its own, shapes do not fit, or the
        scratch array is too small.

    Examples
    --------
    >>> x = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> w = np.eye(3, 4, dtype=np.float32)
    >>> out = np.empty((2, 2), np.float32)
    >>> run("dense", [x, w], out, block=Block(1, 1, 3))
    array([[1., 2.],
           [4., 5.]], dtype=float32)
    """
    if shapes is None:
        shapes = [a.shape for a in inputs]
    if len(shapes) != len(inputs):
        raise ValueError(f"{len(inputs)} inputs but {len(shapes)} shapes")
    return BoundKernel(op, shapes, attrs, block, out.dtype)(inputs, out, scratch)


__all__ = [
    "ACTIVATIONS", "Block", "BoundKernel", "bind", "CHUNK_ELEMENTS", "KERNELS", "Kernel", "Region", "SCRATCH_ALIGN",
    "as_block", "block_shape", "input_regions", "output_shape", "run", "scratch_bytes", "splittable",
]
