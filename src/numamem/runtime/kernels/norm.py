"""Normalisation kernels: ``batchnorm``, ``layernorm`` and ``softmax``.

``batchnorm`` is the inference form ``x*scale+shift`` per channel (axis 1) and may work in place
(``out`` is ``x``). ``layernorm`` normalises the last axis with the biased variance and ``eps``
(default ``1e-5``), then applies ``gamma`` and ``beta``; ``softmax`` normalises ``axis`` (default
-1) after subtracting the maximum. Neither splits along the axis it normalises. Scratch:
``layernorm`` the per-row mean and variance (``2*rows`` elements), ``softmax`` the per-row
maximum, reused for the sum (``rows`` elements), ``batchnorm`` none.
"""
from __future__ import annotations

import numpy as np

from numamem.planner.ops import normalize_axis
from numamem.runtime.kernels._common import Buffer, Ctx


def batchnorm(ins, out, c: Ctx, bufs) -> None:
    """``x*scale + shift`` per channel into ``out``."""
    x, scale, shift = ins
    shape = (-1,) + (1,) * (x.ndim - 2)
    np.multiply(x, scale.reshape(shape), out=out)
    np.add(out, shift.reshape(shape), out=out)


def layernorm_scratch(c: Ctx) -> list[Buffer]:
    """Per-row mean and variance of the block."""
    rows = c.bshape[:-1] + (1,)
    return [Buffer(rows, c.dtype), Buffer(rows, c.dtype)]


def layernorm(ins, out, c: Ctx, bufs) -> None:
    """Layer normalisation over the last axis into ``out``."""
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


def softmax_scratch(c: Ctx) -> list[Buffer]:
    """Per-row maximum (then sum) of the block."""
    ax = normalize_axis(c.attrs.get("axis", -1), len(c.out_shape))
    return [Buffer(tuple(1 if k == ax else d for k, d in enumerate(c.bshape)), c.dtype)]


def softmax(ins, out, c: Ctx, bufs) -> None:
    """Softmax over ``axis`` into ``out``."""
    x = ins[0]
    ax = normalize_axis(c.attrs.get("axis", -1), x.ndim)
    (m,) = bufs
    np.max(x, axis=ax, keepdims=True, out=m)
    np.subtract(x, m, out=out)
    np.exp(out, out=out)
    np.sum(out, axis=ax, keepdims=True, out=m)
    np.divide(out, m, out=out)
