"""Elementwise math and reductions with ONNX semantics: ``tanh``, ``erf``, ``sqrt``, ``exp``,
``gelu_erf``, ``neg``, ``reciprocal``, ``abs``, ``log``, ``leaky_relu``, ``hard_sigmoid``,
``hard_swish``, ``clip``, ``sub``, ``div``, ``pow``, ``max``, ``min``, ``reduce_mean``, and ``slice``.
``leaky_relu``, ``hard_sigmoid`` and ``hard_swish`` allocate one block-sized temporary.

NumPy has no ``erf``; :func:`erf` is the rational approximation that Eigen and XLA use for
float32 (a clamp to [-4, 4], then an odd degree-13 over an even degree-8 polynomial; a few float32
ulps from the true value), evaluated in chunks of :data:`~.elementwise.CHUNK_ELEMENTS` through one
scratch buffer. ``gelu_erf`` is ``x/2*(1+erf(x/sqrt 2))`` through the same chunk. The unary and
binary ops accept ``out`` being one of their inputs. Scratch: the chunk for ``erf`` and
``gelu_erf``; none otherwise.
"""
from __future__ import annotations

import math

import numpy as np

from numamem.planner.ops_onnx import clip_bounds, reduce_axes, slope_params
from numamem.runtime.kernels._common import Ctx
from numamem.runtime.kernels.elementwise import CHUNK_ELEMENTS, _chunks

_ALPHA = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)  # x^13 ... x^1
_BETA = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
         -1.42647390514189e-02)  # x^8 ... x^0


def _erf_chunk(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """erf of one chunk, as a new array of ``dtype``."""
    xc = np.clip(x, -4.0, 4.0).astype(dtype, copy=False)
    x2 = xc * xc
    p = np.full_like(x2, _ALPHA[0])
    for a in _ALPHA[1:]:
        p *= x2
        p += a
    q = np.full_like(x2, _BETA[0])
    for b in _BETA[1:]:
        q *= x2
        q += b
    p *= xc
    p /= q
    return p


def erf(x: np.ndarray, out: np.ndarray) -> None:
    """The error function of ``x`` into ``out`` (``out`` may be ``x``).

    Examples
    --------
    >>> x = np.array([-1.0, 0.0, 0.5, 3.0], np.float32)
    >>> erf(x, x)
    >>> bool(np.abs(x - np.array([-0.8427008, 0.0, 0.5204999, 0.9999779])).max() < 1e-6)
    True
    """
    for idx in _chunks(x.shape, CHUNK_ELEMENTS):
        out[idx] = _erf_chunk(x[idx], out.dtype)


def gelu_erf(x: np.ndarray, out: np.ndarray) -> None:
    """``x/2*(1+erf(x/sqrt 2))`` into ``out`` (``out`` may be ``x``)."""
    for idx in _chunks(x.shape, CHUNK_ELEMENTS):
        xc = x[idx]
        t = _erf_chunk(xc * (1.0 / math.sqrt(2.0)), out.dtype)
        t += 1.0
        t *= xc
        np.multiply(t, 0.5, out=out[idx])


def unary(ins, out, c: Ctx, bufs) -> None:
    """A unary op of this module of ``ins[0]`` into ``out``."""
    x = ins[0]
    if c.op == "tanh":
        np.tanh(x, out=out)
    elif c.op == "sqrt":
        np.sqrt(x, out=out)
    elif c.op == "exp":
        with np.errstate(over="ignore"):
            np.exp(x, out=out)
    elif c.op == "erf":
        erf(x, out)
    elif c.op == "gelu_erf":
        gelu_erf(x, out)
    elif c.op == "neg":
        np.negative(x, out=out)
    elif c.op == "reciprocal":
        with np.errstate(divide="ignore"):
            np.reciprocal(x, out=out)
    elif c.op == "abs":
        np.abs(x, out=out)
    elif c.op == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            np.log(x, out=out)
    elif c.op == "leaky_relu":
        alpha, _ = slope_params(c.op, c.attrs)
        np.multiply(x, np.where(x < 0, out.dtype.type(alpha), out.dtype.type(1)), out=out)
    elif c.op in ("hard_sigmoid", "hard_swish"):
        alpha, beta = slope_params("hard_sigmoid", c.attrs) if c.op == "hard_sigmoid" else (1 / 6, 0.5)
        t = np.multiply(x, alpha, dtype=out.dtype)
        t += beta
        np.clip(t, 0, 1, out=t)
        if c.op == "hard_swish":
            t *= x
        np.copyto(out, t)
    else:  # clip
        lo, hi = clip_bounds(c.attrs)
        src = x
        if lo is not None:
            np.maximum(src, lo, out=out)
            src = out
        if hi is not None:
            np.minimum(src, hi, out=out)
            src = out
        if src is not out:
            np.copyto(out, x)


def binary(ins, out, c: Ctx, bufs) -> None:
    """``sub``, ``div``, ``pow``, ``max`` or ``min`` of two broadcasting operands into ``out``."""
    a, b = ins
    f = {"sub": np.subtract, "div": np.divide, "pow": np.power, "max": np.maximum, "min": np.minimum}[c.op]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        f(a, b, out=out)


def reduce_mean(ins, out, c: Ctx, bufs) -> None:
    """Mean over the layer's ``axes`` into ``out``."""
    x = ins[0]
    axes = reduce_axes(c.shapes[0], c.attrs)
    keep = bool(c.attrs.get("keepdims", True))
    np.sum(x, axis=axes, keepdims=keep, out=out)
    out *= 1.0 / math.prod(c.shapes[0][a] for a in axes)


def slice_(ins, out, c: Ctx, bufs) -> None:
    """``slice``: the block's region of the input is exactly its output."""
    np.copyto(out, ins[0])
