"""The ``conv2d`` kernel: cross-correlation with symmetric zero padding, groups, bias and activation.

Numerics follow PyTorch. A block is computed in one of three ways (the choice and its
measurements: "conv2d methods" in ``docs/performance.md``):

* ``gemm``: a 1x1, stride-1, unpadded convolution whose input region has the block's rows and
  columns (the whole image, or the block's rows of it); each sample already is the matrix, so
  one batched GEMM per group reads the input where it lies (a copy into scratch only when the
  region cannot be viewed as a matrix, as for a block of columns);
* ``im2col`` (every other layer with more than one input channel per group): a column buffer
  filled with one strided copy per kernel tap (only the border the padding covers is zeroed),
  then one GEMM per sample and group;
* ``depthwise`` (one input channel per group, as in MobileNetV2): per-tap vectorised
  multiply-adds over all the block's channels.

A fourth, ``offsets`` (one GEMM per kernel tap added into ``out``), measured slower and is kept
only for the benchmark and the tests: the private attribute ``_method`` (``"im2col"`` or
``"offsets"``) forces a method on any layer. Bias and activation are applied once to the whole
block after the GEMMs. Everything that depends only on shapes (window, method, groups, taps) is
worked out once at bind (:func:`conv2d_prepare`). ``out`` must be C-contiguous (the registry's
``contiguous_out``). Scratch, in elements (``P`` = output pixels of the block per sample):
``im2col`` ``C/groups*kh*kw*P``; ``depthwise`` one sample's output block, ``O_block*P``;
``gemm`` ``C/groups*P`` when its input region is not a matrix view, else none; plus the gelu
chunk when the fused activation is gelu.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numamem.planner.boxes import extent
from numamem.planner.ops import conv_params
from numamem.runtime.kernels._common import Buffer, Ctx, Tap, Window, taps, view_as, window
from numamem.runtime.kernels.elementwise import activate, activation_scratch

#: Values of the private ``_method`` attribute: the methods that compute any convolution.
FORCEABLE = ("im2col", "offsets")


@dataclass(frozen=True)
class ConvPrep:
    """What a bound ``conv2d`` block computes with, worked out once (:func:`conv2d_prepare`).

    Attributes
    ----------
    g : Window
        Where the block reads its input.
    method : str
        ``"gemm"``, ``"im2col"``, ``"offsets"`` or ``"depthwise"``.
    groups : tuple of (slice, slice)
        Per group the block meets: its rows of the block's output channels, and its channels of
        the input region.
    taps : tuple of Tap
        The kernel taps over the input region (empty for ``gemm``).
    runs : tuple of (slice, slice)
        ``depthwise`` only: per channel-multiplier residue, the block's output channels and the
        region's input channels they read, both as runs the taps vectorise over.
    gemm_view : bool
        ``gemm`` only: whether a sample's region can be a matrix view (else it is copied).
    act : str or None
        The fused activation.
    """

    g: Window
    method: str
    groups: tuple[tuple[slice, slice], ...]
    taps: tuple[Tap, ...]
    runs: tuple[tuple[slice, slice], ...]
    gemm_view: bool
    act: str | None


def conv_window(c: Ctx) -> Window:
    """Where the block of ``c`` reads its input."""
    stride, pad, _groups = conv_params(c.attrs)
    return window(c, stride, pad)


def conv_method(c: Ctx, g: Window) -> str:
    """``"gemm"``, ``"im2col"``, ``"depthwise"`` or the ``_method`` forced on the call.

    ``g`` is the block's :func:`conv_window`.
    """
    forced = c.attrs.get("_method")
    if forced is not None:
        if forced not in FORCEABLE:
            raise ValueError(f"conv2d attribute '_method' must be one of {', '.join(FORCEABLE)}, not {forced!r}")
        return forced
    cg = c.shapes[1][1]
    if cg == 1:
        return "depthwise"
    kh, kw = c.shapes[1][2:]
    xr = extent(c.regions[0])
    if kh == kw == 1 and g.sh == g.sw == 1 and g.org_h == g.org_w == 0 and (g.nh, g.nw) == xr[2:]:
        return "gemm"
    return "im2col"


def conv_groups(c: Ctx) -> tuple[tuple[slice, slice], ...]:
    """Groups the block's output channels meet: (block rows, x region channels) per group."""
    g = conv_params(c.attrs)[2]
    o_full, cg = c.shapes[1][0], c.shapes[1][1]
    opg = o_full // g
    lo, hi = (c.block.start, c.block.stop) if c.block.axis == 1 else (0, o_full)
    cx0 = c.regions[0][1][0]
    out = []
    for grp in range(lo // opg, (hi - 1) // opg + 1):
        a, b = max(lo, grp * opg), min(hi, (grp + 1) * opg)
        out.append((slice(a - lo, b - lo), slice(grp * cg - cx0, (grp + 1) * cg - cx0)))
    return tuple(out)


def _depthwise_runs(c: Ctx) -> tuple[tuple[slice, slice], ...]:
    """Per residue of the channel multiplier: (block output channels, region input channels).

    Output channel ``o`` reads input channel ``o // (O/groups)``; the block's channels that share
    a residue modulo the multiplier read a contiguous run of input channels.
    """
    opg = c.shapes[1][0] // conv_params(c.attrs)[2]
    o_full = c.shapes[1][0]
    lo, hi = (c.block.start, c.block.stop) if c.block.axis == 1 else (0, o_full)
    cx0 = c.regions[0][1][0]
    runs = []
    for r in range(opg):
        first = lo + ((r - lo) % opg)
        if first >= hi:
            continue
        cnt = len(range(first, hi, opg))
        ic0 = first // opg - cx0
        runs.append((slice(first - lo, first - lo + (cnt - 1) * opg + 1, opg), slice(ic0, ic0 + cnt)))
    return tuple(runs)


def conv2d_prepare(c: Ctx) -> ConvPrep:
    """The block's :class:`ConvPrep` (``c`` has a non-empty block)."""
    g = conv_window(c)
    method = conv_method(c, g)
    kh, kw = c.shapes[1][2:]
    xr = extent(c.regions[0])
    tp = () if method == "gemm" else taps(g, (kh, kw), xr[2:])
    runs = _depthwise_runs(c) if method == "depthwise" else ()
    # A region of whole rows (all columns) merges its rows into one matrix axis without a copy.
    gemm_view = method == "gemm" and xr[3] == c.shapes[0][3]
    return ConvPrep(g, method, conv_groups(c), tp, runs, gemm_view, c.attrs.get("activation"))


def prep_of(c: Ctx) -> ConvPrep:
    """The :class:`ConvPrep` bound with ``c``, or worked out now for a context without one."""
    return c.prep if isinstance(c.prep, ConvPrep) else conv2d_prepare(c)


def conv2d_scratch(c: Ctx) -> list[Buffer]:
    """The buffers of the block's method, then the gelu chunk if the activation is gelu."""
    p = prep_of(c)
    _o, cg, kh, kw = c.shapes[1]
    nh, nw = c.bshape[2], c.bshape[3]
    bufs: list[Buffer] = []
    if p.method == "im2col":
        bufs.append(Buffer((cg * kh * kw, nh * nw), c.dtype))
    elif p.method == "gemm" and not p.gemm_view:
        bufs.append(Buffer((cg, nh * nw), c.dtype))
    elif p.method == "offsets":
        opg = c.shapes[1][0] // conv_params(c.attrs)[2]
        ob = min(opg, c.bshape[1])
        bufs += [Buffer((cg, nh * nw), c.dtype), Buffer((ob, nh * nw), c.dtype), Buffer((kh * kw, ob, cg), c.dtype)]
    elif p.method == "depthwise":
        bufs.append(Buffer((c.bshape[1], nh, nw), c.dtype))
    return bufs + activation_scratch(c)


def fill_cols(xn: np.ndarray, col: np.ndarray, tps: tuple[Tap, ...]) -> None:
    """im2col of one sample: ``col[c, i, j, t, u] = x[c, t*sh+i+org_h, u*sw+j+org_w]`` or 0.

    ``tps`` are the window's :func:`~._common.taps` over ``xn``'s region.
    """
    for t in tps:
        dst = col[:, t.i, t.j]
        # Only the border the padding covers is zeroed: the rest is overwritten below.
        for b in t.border:
            dst[b] = 0
        if not t.empty:
            np.copyto(dst[t.out], xn[t.src])


def conv2d(ins, out, c: Ctx, bufs) -> None:
    """The block of ``conv2d`` into ``out`` (C-contiguous)."""
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    p = prep_of(c)
    chunk = bufs[-1] if p.act == "gelu" else None
    if p.method == "depthwise":
        _depthwise(x, w, bias, out, p, bufs[0])
        activate(out, p.act, chunk)
        return
    if p.method == "gemm":
        _gemm(x, w, out, p, bufs)
    else:
        _o, cg, kh, kw = w.shape
        P = p.g.nh * p.g.nw
        mats = [(rows, chans, w[rows].reshape(rows.stop - rows.start, cg * kh * kw)) for rows, chans in p.groups]
        for n in range(out.shape[0]):
            on = out[n]
            for rows, chans, wg in mats:
                og = on[rows].reshape(rows.stop - rows.start, P)  # a view: `out` is C-contiguous here
                if p.method == "im2col":
                    col = bufs[0]
                    fill_cols(x[n, chans], col.reshape(cg, kh, kw, p.g.nh, p.g.nw), p.taps)
                    np.matmul(wg, col, out=og)
                else:
                    _offsets(x[n, chans], w[rows], og, p, bufs)
    if bias is not None:
        out += bias[:, None, None]
    activate(out, p.act, chunk)


def _gemm(x, w, out, p: ConvPrep, bufs) -> None:
    """1x1 stride-1 unpadded: per group one GEMM batched over the samples, on the input in place."""
    N = out.shape[0]
    cg = w.shape[1]
    P = p.g.nh * p.g.nw
    for rows, chans in p.groups:
        o = rows.stop - rows.start
        wg = w[rows].reshape(o, cg)
        og = out[:, rows].reshape(N, o, P)  # a view: `out` is C-contiguous here
        src = view_as(x[:, chans], (N, cg, P)) if p.gemm_view else None
        if src is not None:
            np.matmul(wg, src, out=og)
            continue
        # A block of columns (or an input with unusual strides): gather each sample first.
        m = np.empty((cg, P), out.dtype) if p.gemm_view else bufs[0]
        for n in range(N):
            np.copyto(m.reshape(cg, p.g.nh, p.g.nw), x[n, chans])
            np.matmul(wg, m, out=og[n])


def _offsets(xg, wg, og, p: ConvPrep, bufs) -> None:
    """Per-kernel-tap accumulation: ``out += w[:, :, i, j] @ shifted(x)`` for every tap."""
    nh, nw = p.g.nh, p.g.nw
    ob, cg, kh, kw = wg.shape
    slab = bufs[0].reshape(cg, nh, nw)
    acc = bufs[1][:ob]
    wt = bufs[2][:, :ob].reshape(kh, kw, ob, cg)
    np.copyto(wt, wg.transpose(2, 3, 0, 1))  # taps outermost, so each tap's matrix is contiguous
    first = True
    for t in p.taps:
        if t.empty:
            continue
        slab[...] = 0
        np.copyto(slab[t.out], xg[t.src])
        if first:
            np.matmul(wt[t.i, t.j], slab.reshape(cg, nh * nw), out=og)
            first = False
        else:
            np.matmul(wt[t.i, t.j], slab.reshape(cg, nh * nw), out=acc)
            og += acc
    if first:
        og[...] = 0


def _depthwise(x, w, bias, out, p: ConvPrep, tmp) -> None:
    """Convolution with one input channel per group (depthwise, any channel multiplier).

    Each residue run of :attr:`ConvPrep.runs` is a handful of vectorised multiply-adds per kernel
    tap over all its channels at once.
    """
    live = [t for t in p.taps if not t.empty]
    for n in range(out.shape[0]):
        on = out[n]
        for osl, isl in p.runs:
            xs = x[n, isl]
            ws = w[osl, 0]
            ov, tv = on[osl], tmp[osl]
            if bias is None:
                ov[...] = 0
            else:
                np.copyto(ov, bias[osl, None, None])
            for t in live:
                tt = tv[t.out]
                np.multiply(xs[t.src], ws[:, t.i, t.j, None, None], out=tt)
                o = ov[t.out]
                np.add(o, tt, out=o)
