"""Sliding-window kernels with ONNX semantics: ``conv``, ``maxpool``, ``avgpool`` and ``lrn``.

``conv`` is ONNX Conv in 2-D: pads ``[top, left, bottom, right]`` (any, asymmetric), strides,
dilations and groups. Without dilation it is the ``conv2d`` kernel (:mod:`.conv`) with the
leading pads as its padding: a window's trailing pad is only positions past the input, which the
window arithmetic already reads as zeros. With dilation it is one GEMM per sample and group over
a dilated im2col buffer (scratch ``C/group*kh*kw*P`` elements, ``P`` the block's output pixels
per sample). The pools follow ONNX Runtime: ``maxpool`` ignores padding; ``avgpool`` divides by
the window's part inside the input (``count_include_pad=0``) or inside the padded input
(``count_include_pad=1``), in ``ceil_mode`` too. ``lrn`` normalises over a channel window of
``size`` as ONNX LRN; it allocates its temporaries (a few block-sized arrays). Scratch: none for
the pools and ``lrn``.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from numamem.planner.ops_onnx import conv_geometry, lrn_params, pool_geometry
from numamem.runtime.kernels import conv as _conv
from numamem.runtime.kernels._common import Buffer, Ctx, valid, window
from numamem.runtime.kernels.elementwise import activate, activation_scratch


def _as_conv2d(c: Ctx) -> Ctx:
    """``c`` with its ``conv`` attributes spelt as ``conv2d``'s (no dilation)."""
    strides, pads, _dil, group = conv_geometry(c.attrs)
    attrs = {"stride": strides, "padding": (pads[0], pads[1]), "groups": group}
    for key in ("activation", "_method"):
        if c.attrs.get(key) is not None:
            attrs[key] = c.attrs[key]
    return dataclasses.replace(c, attrs=attrs)


def _dilated(c: Ctx) -> bool:
    return conv_geometry(c.attrs)[2] != (1, 1)


def conv_scratch(c: Ctx) -> list[Buffer]:
    """``conv2d``'s scratch without dilation; the dilated column buffer (and gelu chunk) with it."""
    if not _dilated(c):
        return _conv.conv2d_scratch(_as_conv2d(c))
    _o, cg, kh, kw = c.shapes[1]
    return [Buffer((cg * kh * kw, c.bshape[2] * c.bshape[3]), c.dtype)] + activation_scratch(c)


def conv(ins, out, c: Ctx, bufs) -> None:
    """The block of ``conv`` into ``out`` (C-contiguous)."""
    if not _dilated(c):
        return _conv.conv2d(ins, out, _as_conv2d(c), bufs)
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    strides, pads, (dh, dw), _group = conv_geometry(c.attrs)
    g = window(c, strides, (pads[0], pads[1]))
    _o, cg, kh, kw = w.shape
    col = bufs[0]
    P = g.nh * g.nw
    groups = list(_conv.conv_groups(_as_conv2d(c)))
    H, W = x.shape[2:]
    for n in range(out.shape[0]):
        on = out[n]
        for rows, chans in groups:
            xg = x[n, chans]
            c5 = col.reshape(cg, kh, kw, g.nh, g.nw)
            for i in range(kh):
                t0, t1, h0 = valid(g.nh, i * dh + g.org_h, g.sh, H)
                for j in range(kw):
                    u0, u1, w0 = valid(g.nw, j * dw + g.org_w, g.sw, W)
                    dst = c5[:, i, j]
                    dst[...] = 0
                    if t1 > t0 and u1 > u0:
                        dst[:, t0:t1, u0:u1] = xg[:, h0: h0 + (t1 - t0 - 1) * g.sh + 1: g.sh,
                                                  w0: w0 + (u1 - u0 - 1) * g.sw + 1: g.sw]
            og = on[rows].reshape(rows.stop - rows.start, P)
            np.matmul(w[rows].reshape(rows.stop - rows.start, cg * kh * kw), col, out=og)
            if bias is not None:
                og += bias[rows, None]
        activate(on, c.attrs.get("activation"), bufs[1] if len(bufs) > 1 else None)


def _counts(n_out: int, first: int, stride: int, kernel: int, before: int, after: int, size: int,
            include_pad: bool) -> np.ndarray:
    """Elements each of ``n_out`` windows (global index from ``first``) averages along one axis."""
    start = (first + np.arange(n_out)) * stride - before
    end = np.minimum(start + kernel, size + after)
    if include_pad:
        return (end - start).astype(np.float64)
    return (np.minimum(end, size) - np.maximum(start, 0)).astype(np.float64)


def pool(ins, out, c: Ctx, bufs) -> None:
    """``maxpool`` or ``avgpool`` of the block into ``out``."""
    x = ins[0]
    (kh, kw), strides, pads, _ceil = pool_geometry(c.attrs)
    g = window(c, strides, (pads[0], pads[1]))
    H, W = x.shape[2:]
    is_max = c.op == "maxpool"
    out[...] = -np.inf if is_max else 0
    for i in range(kh):
        t0, t1, h0 = valid(g.nh, i + g.org_h, g.sh, H)
        if t1 == t0:
            continue
        for j in range(kw):
            u0, u1, w0 = valid(g.nw, j + g.org_w, g.sw, W)
            if u1 == u0:
                continue
            src = x[:, :, h0: h0 + (t1 - t0 - 1) * g.sh + 1: g.sh, w0: w0 + (u1 - u0 - 1) * g.sw + 1: g.sw]
            o = out[:, :, t0:t1, u0:u1]
            (np.maximum if is_max else np.add)(o, src, out=o)
    if is_max:
        return
    include = bool(c.attrs.get("count_include_pad", False))
    b = c.block
    full_h, full_w = c.shapes[0][2:]
    ch = _counts(g.nh, b.start if b.axis == 2 else 0, g.sh, kh, pads[0], pads[2], full_h, include)
    cw = _counts(g.nw, b.start if b.axis == 3 else 0, g.sw, kw, pads[1], pads[3], full_w, include)
    out *= (1.0 / np.outer(ch, cw)).astype(out.dtype)


def lrn(ins, out, c: Ctx, bufs) -> None:
    """ONNX LRN of the block (all channels) into ``out``."""
    x = ins[0]
    size, alpha, beta, bias = lrn_params(c.attrs)
    C = x.shape[1]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    sq = np.square(x, dtype=out.dtype)
    # Channel window sums by a cumulative sum over the channel axis, padded with zeros.
    cs = np.zeros((x.shape[0], C + 1) + x.shape[2:], dtype=np.float64)
    np.cumsum(sq, axis=1, out=cs[:, 1:])
    top = np.minimum(np.arange(C) + hi + 1, C)
    bot = np.maximum(np.arange(C) - lo, 0)
    s = (cs[:, top] - cs[:, bot]).astype(out.dtype)
    s *= alpha / size
    s += bias
    np.power(s, -beta, out=s)
    np.multiply(x, s, out=out)
