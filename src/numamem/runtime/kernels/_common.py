"""What every kernel body shares: the call context, scratch buffer specs and window geometry (taps)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from numamem.planner.boxes import Box, Shape, Slice


@dataclass(frozen=True)
class Buffer:
    """One scratch buffer a kernel body takes, carved out of the caller's scratch array.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype
    """

    shape: Shape
    dtype: np.dtype


@dataclass
class Ctx:
    """Everything a kernel body knows about its call besides the arrays.

    Attributes
    ----------
    op : str
    shapes : list of tuple of int
        Full operand shapes.
    out_shape : tuple of int
        Full output shape of the layer.
    block : Slice
        The output range the call computes.
    bshape : tuple of int
        Shape of the output block (of ``out``).
    regions : list of Box or None
        What the block reads of each operand, in full-tensor coordinates (None: nothing).
    attrs : mapping
        The layer's attributes, with the private ``_``-prefixed switches (conv2d's ``_method``).
    dtype : numpy.dtype
        The dtype of ``out``.
    prep : object or None
        What the kernel's ``prepare`` worked out once at bind (window geometry, taps, method), so
        a call does none of it; None when the kernel has no ``prepare`` or it was not run (a
        body called directly then works it out itself).
    """

    op: str
    shapes: list[Shape]
    out_shape: Shape
    block: Slice
    bshape: Shape
    regions: list[Box | None]
    attrs: Mapping[str, Any]
    dtype: np.dtype
    prep: Any = None


def no_scratch(c: Ctx) -> list[Buffer]:
    """The scratch of an op that needs none."""
    return []


@dataclass(frozen=True)
class Window:
    """Where a sliding-window block (conv2d, pools) reads its input.

    Output position ``t`` of the block (block-local) along height reads input position
    ``t*sh + tap + org_h`` of the input *region* (region-local), likewise along width; with
    ``org = block_start*stride - pad - region_start`` on a spatially split axis, else ``-pad``.

    Attributes
    ----------
    nh, nw : int
        Output positions of the block along height and width.
    org_h, org_w : int
        Input position (region-local) of output position 0's first tap.
    sh, sw : int
        Strides.
    """

    nh: int
    nw: int
    org_h: int
    org_w: int
    sh: int
    sw: int


def window(c: Ctx, stride: tuple[int, int], pad: tuple[int, int]) -> Window:
    """The :class:`Window` of the block of ``c`` for a window of ``stride`` and ``pad``."""
    b, xr = c.block, c.regions[0]
    orgs = []
    for k in (0, 1):
        ax = 2 + k
        lo = b.start if b.axis == ax else 0
        orgs.append(lo * stride[k] - pad[k] - xr[ax][0])
    return Window(c.bshape[2], c.bshape[3], orgs[0], orgs[1], stride[0], stride[1])


def valid(n_out: int, offset: int, stride: int, size: int) -> tuple[int, int, int]:
    """Output positions ``[t0, t1)`` whose input index ``t*stride + offset`` lies in ``[0, size)``.

    Returns ``(t0, t1, first input index)``; ``t0 == t1`` when none does. ``offset`` already holds
    the kernel tap, the padding and where the block and the input region start.

    Examples
    --------
    Tap 0 of a window with padding 1 and stride 1 over 4 inputs: output 0 reads the padding,
    outputs 1 to 3 read inputs 0 to 2.

    >>> valid(4, -1, 1, 4)
    (1, 4, 0)
    """
    t0 = max(0, -(offset // stride))  # ceil(-offset / stride)
    t1 = min(n_out, (size - 1 - offset) // stride + 1)
    if t1 <= t0:
        return 0, 0, 0
    return t0, t1, t0 * stride + offset


@dataclass(frozen=True)
class Tap:
    """One tap ``(i, j)`` of a sliding window over one input region, as index tuples.

    ``out`` selects the block-local output positions whose input for this tap lies inside the
    region and ``src`` the (strided) input positions they read, both as ``(..., rows, cols)`` so
    they index a sample ``[C, H, W]`` and a batch ``[N, C, H, W]`` alike: ``a[out]`` and
    ``x[src]`` have the same shape. ``border`` covers the rest of the output (the positions this
    tap finds in the padding), as a few such index tuples; ``empty`` is True when the tap reads
    nothing (then ``border`` is the whole output).

    Attributes
    ----------
    i, j : int
        Kernel row and column.
    out, src : tuple
    border : tuple of tuple
    empty : bool
    """

    i: int
    j: int
    out: tuple
    src: tuple
    border: tuple
    empty: bool


def taps(g: Window, kernel: tuple[int, int], size: tuple[int, int],
         dilation: tuple[int, int] = (1, 1)) -> tuple[Tap, ...]:
    """Every tap of a ``kernel``-sized window (row-major) over an input region of ``size`` (H, W).

    The one place that works out which output positions each kernel tap reaches: the
    convolutions' im2col, per-tap and depthwise loops and the pools all iterate these. It runs
    once per bound block (the kernels' ``prepare``), not per call.

    Examples
    --------
    A 3-wide window with padding 1 over 4 inputs, one output row: tap 0 misses output 0.

    >>> t = taps(Window(1, 4, 0, -1, 1, 1), (1, 3), (1, 4))[0]
    >>> t.out, t.src, t.border
    ((Ellipsis, slice(0, 1, None), slice(1, 4, None)), (Ellipsis, slice(0, 1, 1), slice(0, 3, 1)), ((Ellipsis, slice(0, 1, None), slice(0, 1, None)),))
    """
    nh, nw = g.nh, g.nw
    H, W = size
    out = []
    for i in range(kernel[0]):
        t0, t1, h0 = valid(nh, i * dilation[0] + g.org_h, g.sh, H)
        for j in range(kernel[1]):
            u0, u1, w0 = valid(nw, j * dilation[1] + g.org_w, g.sw, W)
            if t1 == t0 or u1 == u0:
                whole = (Ellipsis, slice(0, nh), slice(0, nw))
                out.append(Tap(i, j, (Ellipsis, slice(0, 0), slice(0, 0)), (Ellipsis, slice(0, 0), slice(0, 0)),
                               (whole,), True))
                continue
            border = []
            if t0 > 0:
                border.append((Ellipsis, slice(0, t0), slice(0, nw)))
            if t1 < nh:
                border.append((Ellipsis, slice(t1, nh), slice(0, nw)))
            if u0 > 0:
                border.append((Ellipsis, slice(t0, t1), slice(0, u0)))
            if u1 < nw:
                border.append((Ellipsis, slice(t0, t1), slice(u1, nw)))
            src = (Ellipsis, slice(h0, h0 + (t1 - t0 - 1) * g.sh + 1, g.sh),
                   slice(w0, w0 + (u1 - u0 - 1) * g.sw + 1, g.sw))
            out.append(Tap(i, j, (Ellipsis, slice(t0, t1), slice(u0, u1)), src, tuple(border), False))
    return tuple(out)


def view_as(a: np.ndarray, shape: Shape) -> np.ndarray | None:
    """``a`` reshaped to ``shape`` without a copy, or None when NumPy would have to copy."""
    try:
        v = a.reshape(shape)
    except ValueError:
        return None
    if v.size and not np.may_share_memory(v, a):
        return None
    return v
