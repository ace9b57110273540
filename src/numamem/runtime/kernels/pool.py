"""Pooling kernels: ``maxpool2d``, ``avgpool2d`` and ``global_avgpool``.

Numerics follow PyTorch: ``maxpool2d`` ignores padding (it acts as ``-inf``), ``avgpool2d``
counts padded zeros (``count_include_pad=True``), neither uses ``ceil_mode``. The window pools
accumulate tap by tap into ``out`` (one strided maximum or addition per kernel tap over the whole
block; the taps, :func:`~._common.taps`, are worked out once at bind); a spatially split block
reads its rows plus the window's halo. Scratch: none.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numamem.planner.boxes import extent
from numamem.planner.ops import pool_params
from numamem.runtime.kernels._common import Ctx, Tap, taps, window


@dataclass(frozen=True)
class PoolPrep:
    """A bound window-pool block: its taps that read input, and the average's factor.

    Attributes
    ----------
    taps : tuple of Tap
        The non-empty taps over the input region; for a maximum, one that reaches every output
        position comes first when there is one (the order of a maximum does not matter).
    is_max : bool
    scale : numpy.ndarray or float or None
        What ``out`` is multiplied by at the end (None for a maximum): a float, or an array
        broadcasting against the block's ``[H, W]`` when the divisor varies with the position.
    """

    taps: tuple[Tap, ...]
    is_max: bool
    scale: np.ndarray | float | None


def live_taps(c: Ctx, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int],
              full_first: bool = False) -> tuple[Tap, ...]:
    """The taps of the block of ``c`` that read some input (what a pool iterates).

    With ``full_first`` a tap that reaches every output position (no border) is moved first.
    """
    tps = [t for t in taps(window(c, stride, pad), kernel, extent(c.regions[0])[2:]) if not t.empty]
    if full_first:
        tps.sort(key=lambda t: bool(t.border))  # stable: otherwise row-major
    return tuple(tps)


def window_pool_prepare(c: Ctx) -> PoolPrep:
    """The block's :class:`PoolPrep` (``c`` has a non-empty block)."""
    (kh, kw), stride, pad = pool_params(c.attrs)
    is_max = c.op == "maxpool2d"
    # count_include_pad: padded zeros count in the average
    return PoolPrep(live_taps(c, (kh, kw), stride, pad, is_max), is_max, None if is_max else 1.0 / (kh * kw))


def accumulate(x: np.ndarray, out: np.ndarray, p: PoolPrep) -> None:
    """Every window's maximum or sum of ``x`` into ``out``, one strided ufunc per tap."""
    op = np.maximum if p.is_max else np.add
    tps = p.taps
    if tps and not tps[0].border:  # the first tap reaches every output: start from its copy
        np.copyto(out, x[tps[0].src])  # (for a sum, 0 + x == x: the same values as adding it to zeros)
        tps = tps[1:]
    else:
        # Every window holds at least one real element (padding <= kernel/2), so -inf never survives.
        out[...] = -np.inf if p.is_max else 0
    for t in tps:
        o = out[t.out]
        op(o, x[t.src], out=o)
    if p.scale is not None:
        out *= p.scale


def window_pool(ins, out, c: Ctx, bufs) -> None:
    """``maxpool2d`` or ``avgpool2d`` of the block into ``out``."""
    accumulate(ins[0], out, c.prep if isinstance(c.prep, PoolPrep) else window_pool_prepare(c))


def global_avgpool(ins, out, c: Ctx, bufs) -> None:
    """Mean over the spatial axes 2 and 3 into ``out``."""
    x = ins[0]
    np.sum(x, axis=(2, 3), out=out)
    out *= 1.0 / (x.shape[2] * x.shape[3])
