"""What every kernel body shares: the call context, scratch buffer specs and window geometry."""
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
    """

    op: str
    shapes: list[Shape]
    out_shape: Shape
    block: Slice
    bshape: Shape
    regions: list[Box | None]
    attrs: Mapping[str, Any]
    dtype: np.dtype


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


def view_as(a: np.ndarray, shape: Shape) -> np.ndarray | None:
    """``a`` reshaped to ``shape`` without a copy, or None when NumPy would have to copy."""
    try:
        v = a.reshape(shape)
    except ValueError:
        return None
    if v.size and not np.may_share_memory(v, a):
        return None
    return v
