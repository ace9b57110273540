"""Elementwise kernels (``relu``, ``relu6``, ``gelu``, ``sigmoid``, ``add``, ``mul``) and the fused activations.

``gelu`` is the tanh form ``0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x**3)))``, as PyTorch's
``approximate="tanh"``. It is evaluated in chunks of at most :data:`CHUNK_ELEMENTS` through one
scratch buffer, so it needs no temporary of the output's size and can work in place. The ops here
accept ``out`` being exactly one of their inputs. Scratch: the gelu chunk, for ``gelu`` and for
``add`` with ``activation="gelu"``; none otherwise. The fused activations of ``dense``,
``conv2d`` and ``add`` are applied by :func:`activate`.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from numamem.planner.boxes import Shape
from numamem.planner.ops import ACTIVATIONS
from numamem.runtime.kernels._common import Buffer, Ctx

#: Elements of the chunk buffer that gelu works through (128 KiB in float32: stays in L2).
CHUNK_ELEMENTS = 1 << 15

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def activation_scratch(c: Ctx) -> list[Buffer]:
    """The gelu chunk when the op is gelu or its fused activation is; else nothing."""
    if c.attrs.get("activation") == "gelu" or c.op == "gelu":
        return [Buffer((min(math.prod(c.bshape), CHUNK_ELEMENTS),), c.dtype)]
    return []


def activate(out: np.ndarray, act: str | None, chunk: np.ndarray | None) -> None:
    """Apply the fused activation ``act`` (one of ``ACTIVATIONS`` or None) to ``out`` in place."""
    if act is None:
        return
    if act == "relu":
        np.maximum(out, 0, out=out)
    elif act == "relu6":
        np.clip(out, 0, 6, out=out)
    elif act == "gelu":
        gelu(out, out, chunk)
    else:  # shape inference rejects these first; a body called around it must not compute garbage
        raise ValueError(f"unknown activation {act!r} (expected one of {', '.join(ACTIVATIONS)})")


def _chunks(shape: Shape, limit: int) -> Iterator[tuple]:
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


def gelu(x: np.ndarray, out: np.ndarray, chunk: np.ndarray | None) -> None:
    """tanh-form GELU of ``x`` into ``out`` chunk by chunk (``out`` may be ``x``).

    ``chunk`` is the 1-D scratch buffer of :func:`activation_scratch`; None allocates one.

    Examples
    --------
    >>> x = np.array([-1.0, 0.0, 1.0], np.float32)
    >>> gelu(x, x, None)
    >>> x
    array([-0.158808,  0.      ,  0.841192], dtype=float32)
    """
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


def unary(ins, out, c: Ctx, bufs) -> None:
    """``relu``, ``relu6``, ``gelu`` or ``sigmoid`` of ``ins[0]`` into ``out``."""
    x = ins[0]
    if c.op == "relu":
        np.maximum(x, 0, out=out)
    elif c.op == "relu6":
        np.clip(x, 0, 6, out=out)
    elif c.op == "gelu":
        gelu(x, out, bufs[0])
    else:  # sigmoid: exp(-x) overflows to inf for x << 0, and 1/(1+inf) = 0 is the right answer
        np.negative(x, out=out)
        with np.errstate(over="ignore", under="ignore"):
            np.exp(out, out=out)
        out += 1.0
        np.reciprocal(out, out=out)


def binary(ins, out, c: Ctx, bufs) -> None:
    """``add`` (with its fused activation) or ``mul`` of two broadcasting operands into ``out``."""
    a, b = ins
    (np.add if c.op == "add" else np.multiply)(a, b, out=out)
    activate(out, c.attrs.get("activation"), bufs[0] if bufs else None)
