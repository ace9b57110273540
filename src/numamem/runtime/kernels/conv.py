"""The ``conv2d`` kernel: cross-correlation with symmetric zero padding, groups, bias and activation.

Numerics follow PyTorch. A block is computed sample by sample, in one of three ways (the choice
and its measurements: "conv2d methods" in ``docs/performance.md``):

* ``gemm``: a 1x1, stride-1, unpadded convolution over whole rows; the sample already is the
  matrix, one GEMM per sample and group;
* ``im2col`` (every other layer with more than one input channel per group): a column buffer
  filled with one strided copy per kernel tap (only the border the padding covers is zeroed),
  then one GEMM per sample and group;
* ``depthwise`` (one input channel per group, as in MobileNetV2): per-tap vectorised
  multiply-adds over all the block's channels.

A fourth, ``offsets`` (one GEMM per kernel tap added into ``out``), measured slower and is kept
only for the benchmark and the tests: the private attribute ``_method`` (``"im2col"`` or
``"offsets"``) forces a method on any layer. ``out`` must be C-contiguous (the registry's
``contiguous_out``). Scratch, in elements (``P`` = output pixels of the block per sample):
``im2col`` ``C/groups*kh*kw*P``; ``depthwise`` one sample's output block, ``O_block*P``;
``gemm`` none; plus the gelu chunk when the fused activation is gelu.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from numamem.planner.boxes import extent
from numamem.planner.ops import conv_params
from numamem.runtime.kernels._common import Buffer, Ctx, Window, valid, view_as, window
from numamem.runtime.kernels.elementwise import activate, activation_scratch

#: Values of the private ``_method`` attribute: the methods that compute any convolution.
FORCEABLE = ("im2col", "offsets")


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
    spatial_full = xr[2:] == tuple(c.shapes[0][2:])  # then x[n, chans] is one contiguous run
    if (kh == kw == 1 and g.sh == g.sw == 1 and g.org_h == g.org_w == 0 and (g.nh, g.nw) == xr[2:]
            and spatial_full):
        return "gemm"
    return "im2col"


def conv2d_scratch(c: Ctx) -> list[Buffer]:
    """The buffers of the block's method, then the gelu chunk if the activation is gelu."""
    method = conv_method(c, conv_window(c))
    _o, cg, kh, kw = c.shapes[1]
    nh, nw = c.bshape[2], c.bshape[3]
    bufs: list[Buffer] = []
    if method == "im2col":
        bufs.append(Buffer((cg * kh * kw, nh * nw), c.dtype))
    elif method == "offsets":
        opg = c.shapes[1][0] // conv_params(c.attrs)[2]
        ob = min(opg, c.bshape[1])
        bufs += [Buffer((cg, nh * nw), c.dtype), Buffer((ob, nh * nw), c.dtype), Buffer((kh * kw, ob, cg), c.dtype)]
    elif method == "depthwise":
        bufs.append(Buffer((c.bshape[1], nh, nw), c.dtype))
    return bufs + activation_scratch(c)


def conv_groups(c: Ctx) -> Iterator[tuple[slice, slice]]:
    """Groups the block's output channels meet: (block rows, x region channels) per group."""
    g = conv_params(c.attrs)[2]
    o_full, cg = c.shapes[1][0], c.shapes[1][1]
    opg = o_full // g
    lo, hi = (c.block.start, c.block.stop) if c.block.axis == 1 else (0, o_full)
    cx0 = c.regions[0][1][0]
    for grp in range(lo // opg, (hi - 1) // opg + 1):
        a, b = max(lo, grp * opg), min(hi, (grp + 1) * opg)
        yield slice(a - lo, b - lo), slice(grp * cg - cx0, (grp + 1) * cg - cx0)


def fill_cols(xn: np.ndarray, col: np.ndarray, g: Window) -> None:
    """im2col of one sample: ``col[c, i, j, t, u] = x[c, t*sh+i+org_h, u*sw+j+org_w]`` or 0."""
    nh, nw, org_h, org_w, sh, sw = g.nh, g.nw, g.org_h, g.org_w, g.sh, g.sw
    _c, kh, kw = col.shape[:3]
    H, W = xn.shape[1:]
    for i in range(kh):
        t0, t1, h0 = valid(nh, i + org_h, sh, H)
        for j in range(kw):
            u0, u1, w0 = valid(nw, j + org_w, sw, W)
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


def conv2d(ins, out, c: Ctx, bufs) -> None:
    """The block of ``conv2d`` into ``out`` (C-contiguous)."""
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    act = c.attrs.get("activation")
    g = conv_window(c)
    method = conv_method(c, g)
    _o, cg, kh, kw = w.shape
    P = g.nh * g.nw
    chunk = bufs[-1] if act == "gelu" else None
    if method == "depthwise":
        return _depthwise(x, w, bias, out, c, g, bufs[0], act, chunk)
    groups = list(conv_groups(c))
    w2 = [w[rows].reshape(rows.stop - rows.start, cg * kh * kw) for rows, _ in groups]
    for n in range(out.shape[0]):
        on = out[n]
        for (rows, chans), wg in zip(groups, w2):
            og = on[rows].reshape(rows.stop - rows.start, P)  # a view: `out` is C-contiguous here
            xg = x[n, chans]
            if method == "gemm":
                src = view_as(xg, (cg, P))
                if src is None:
                    src = np.ascontiguousarray(xg).reshape(cg, P)
                np.matmul(wg, src, out=og)
            elif method == "im2col":
                col = bufs[0]
                fill_cols(xg, col.reshape(cg, kh, kw, g.nh, g.nw), g)
                np.matmul(wg, col, out=og)
            else:
                _offsets(xg, w[rows], og, g, bufs)
            if bias is not None:
                og += bias[rows, None]
        activate(on, act, chunk)


def _offsets(xg, wg, og, g: Window, bufs) -> None:
    """Per-kernel-tap accumulation: ``out += w[:, :, i, j] @ shifted(x)`` for every tap."""
    nh, nw, org_h, org_w, sh, sw = g.nh, g.nw, g.org_h, g.org_w, g.sh, g.sw
    ob, cg, kh, kw = wg.shape
    slab = bufs[0].reshape(cg, nh, nw)
    acc = bufs[1][:ob]
    wt = bufs[2][:, :ob].reshape(kh, kw, ob, cg)
    np.copyto(wt, wg.transpose(2, 3, 0, 1))  # taps outermost, so each tap's matrix is contiguous
    H, W = xg.shape[1:]
    first = True
    for i in range(kh):
        t0, t1, h0 = valid(nh, i + org_h, sh, H)
        for j in range(kw):
            u0, u1, w0 = valid(nw, j + org_w, sw, W)
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


def _depthwise(x, w, bias, out, c: Ctx, g: Window, tmp, act, chunk) -> None:
    """Convolution with one input channel per group (depthwise, any channel multiplier).

    Output channel ``o`` reads input channel ``o // (O/groups)``; the block's channels that share
    a residue modulo the multiplier read a contiguous run of input channels, so each residue is a
    handful of vectorised multiply-adds per kernel tap over all those channels at once.
    """
    nh, nw, org_h, org_w, sh, sw = g.nh, g.nw, g.org_h, g.org_w, g.sh, g.sw
    groups = conv_params(c.attrs)[2]
    o_full = c.shapes[1][0]
    opg = o_full // groups
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
                t0, t1, h0 = valid(nh, i + org_h, sh, H)
                if t1 == t0:
                    continue
                for j in range(kw):
                    u0, u1, w0 = valid(nw, j + org_w, sw, W)
                    if u1 == u0:
                        continue
                    src = xs[:, h0: h0 + (t1 - t0 - 1) * sh + 1: sh, w0: w0 + (u1 - u0 - 1) * sw + 1: sw]
                    t = tv[:, t0:t1, u0:u1]
                    np.multiply(src, ws[:, i, j, None, None], out=t)
                    o = ov[:, t0:t1, u0:u1]
                    np.add(o, t, out=o)
        activate(on, act, chunk)
