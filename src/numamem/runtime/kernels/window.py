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
from dataclasses import dataclass

import numpy as np

from numamem.planner.boxes import extent
from numamem.planner.ops_onnx import conv_geometry, lrn_params, pool_geometry
from numamem.runtime.kernels import conv as _conv
from numamem.runtime.kernels._common import Buffer, Ctx, Tap, Window, taps, window
from numamem.runtime.kernels.elementwise import activate, activation_scratch
from numamem.runtime.kernels.pool import PoolPrep, accumulate, live_taps


def _as_conv2d(c: Ctx) -> Ctx:
    """``c`` with its ``conv`` attributes spelt as ``conv2d``'s (no dilation)."""
    strides, pads, _dil, group = conv_geometry(c.attrs)
    attrs = {"stride": strides, "padding": (pads[0], pads[1]), "groups": group}
    for key in ("activation", "_method"):
        if c.attrs.get(key) is not None:
            attrs[key] = c.attrs[key]
    return dataclasses.replace(c, attrs=attrs, prep=None)


def _dilated(c: Ctx) -> bool:
    return conv_geometry(c.attrs)[2] != (1, 1)


@dataclass(frozen=True)
class DilatedPrep:
    """A bound dilated ``conv`` block, worked out once (:func:`conv_prepare`).

    Attributes
    ----------
    g : Window
        Where the block reads its input.
    groups : tuple of (slice, slice)
        As :attr:`.conv.ConvPrep.groups`.
    taps : tuple of Tap
        The dilated kernel taps over the input region.
    act : str or None
        The fused activation.
    """

    g: Window
    groups: tuple[tuple[slice, slice], ...]
    taps: tuple[Tap, ...]
    act: str | None


def conv_prepare(c: Ctx) -> Ctx | DilatedPrep:
    """Without dilation the ``conv2d`` context (with its own prep) to hand over; else a :class:`DilatedPrep`."""
    c2 = _as_conv2d(c)
    if not _dilated(c):
        return dataclasses.replace(c2, prep=_conv.conv2d_prepare(c2))
    strides, pads, dil, _group = conv_geometry(c.attrs)
    g = window(c, strides, (pads[0], pads[1]))
    kh, kw = c.shapes[1][2:]
    return DilatedPrep(g, _conv.conv_groups(c2), taps(g, (kh, kw), extent(c.regions[0])[2:], dil),
                       c.attrs.get("activation"))


def conv_scratch(c: Ctx) -> list[Buffer]:
    """``conv2d``'s scratch without dilation; the dilated column buffer (and gelu chunk) with it."""
    if not _dilated(c):
        return _conv.conv2d_scratch(c.prep if isinstance(c.prep, Ctx) else _as_conv2d(c))
    _o, cg, kh, kw = c.shapes[1]
    return [Buffer((cg * kh * kw, c.bshape[2] * c.bshape[3]), c.dtype)] + activation_scratch(c)


def conv(ins, out, c: Ctx, bufs) -> None:
    """The block of ``conv`` into ``out`` (C-contiguous)."""
    p = c.prep if c.prep is not None else conv_prepare(c)
    if isinstance(p, Ctx):
        return _conv.conv2d(ins, out, p, bufs)
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    _o, cg, kh, kw = w.shape
    col = bufs[0]
    P = p.g.nh * p.g.nw
    c5 = col.reshape(cg, kh, kw, p.g.nh, p.g.nw)
    mats = [(rows, chans, w[rows].reshape(rows.stop - rows.start, cg * kh * kw)) for rows, chans in p.groups]
    for n in range(out.shape[0]):
        on = out[n]
        for rows, chans, wg in mats:
            _conv.fill_cols(x[n, chans], c5, p.taps)
            np.matmul(wg, col, out=on[rows].reshape(rows.stop - rows.start, P))
    if bias is not None:
        out += bias[:, None, None]
    activate(out, p.act, bufs[1] if len(bufs) > 1 else None)


def _counts(n_out: int, first: int, stride: int, kernel: int, before: int, after: int, size: int,
            include_pad: bool) -> np.ndarray:
    """Elements each of ``n_out`` windows (global index from ``first``) averages along one axis."""
    start = (first + np.arange(n_out)) * stride - before
    end = np.minimum(start + kernel, size + after)
    if include_pad:
        return (end - start).astype(np.float64)
    return (np.minimum(end, size) - np.maximum(start, 0)).astype(np.float64)


def pool_prepare(c: Ctx) -> PoolPrep:
    """The block's :class:`~.pool.PoolPrep`: its taps, and for ``avgpool`` the divisors as factors."""
    (kh, kw), strides, pads, _ceil = pool_geometry(c.attrs)
    tps = live_taps(c, (kh, kw), strides, (pads[0], pads[1]), c.op == "maxpool")
    if c.op == "maxpool":
        return PoolPrep(tps, True, None)
    include = bool(c.attrs.get("count_include_pad", False))
    b = c.block
    nh, nw = c.bshape[2:]
    full_h, full_w = c.shapes[0][2:]
    ch = _counts(nh, b.start if b.axis == 2 else 0, strides[0], kh, pads[0], pads[2], full_h, include)
    cw = _counts(nw, b.start if b.axis == 3 else 0, strides[1], kw, pads[1], pads[3], full_w, include)
    return PoolPrep(tps, False, (1.0 / np.outer(ch, cw)).astype(c.dtype))


def pool(ins, out, c: Ctx, bufs) -> None:
    """``maxpool`` or ``avgpool`` of the block into ``out``."""
    accumulate(ins[0], out, c.prep if isinstance(c.prep, PoolPrep) else pool_prepare(c))


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
