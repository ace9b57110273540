"""Pooling kernels: ``maxpool2d``, ``avgpool2d`` and ``global_avgpool``.

Numerics follow PyTorch: ``maxpool2d`` ignores padding (it acts as ``-inf``), ``avgpool2d``
counts padded zeros (``count_include_pad=True``), neither uses ``ceil_mode``. The window pools
accumulate tap by tap into ``out`` (one strided maximum or addition per kernel tap over the whole
block); a spatially split block reads its rows plus the window's halo. Scratch: none.
"""
from __future__ import annotations

import numpy as np

from numamem.planner.ops import pool_params
from numamem.runtime.kernels._common import Ctx, valid, window


def window_pool(ins, out, c: Ctx, bufs) -> None:
    """``maxpool2d`` or ``avgpool2d`` of the block into ``out``."""
    x = ins[0]
    (kh, kw), stride, pad = pool_params(c.attrs)
    g = window(c, stride, pad)
    nh, nw, org_h, org_w, sh, sw = g.nh, g.nw, g.org_h, g.org_w, g.sh, g.sw
    H, W = x.shape[2:]
    is_max = c.op == "maxpool2d"
    # Every window holds at least one real element (padding <= kernel/2), so -inf never survives.
    out[...] = -np.inf if is_max else 0
    for i in range(kh):
        t0, t1, h0 = valid(nh, i + org_h, sh, H)
        if t1 == t0:
            continue
        for j in range(kw):
            u0, u1, w0 = valid(nw, j + org_w, sw, W)
            if u1 == u0:
                continue
            src = x[:, :, h0: h0 + (t1 - t0 - 1) * sh + 1: sh, w0: w0 + (u1 - u0 - 1) * sw + 1: sw]
            o = out[:, :, t0:t1, u0:u1]
            (np.maximum if is_max else np.add)(o, src, out=o)
    if not is_max:
        out *= 1.0 / (kh * kw)  # count_include_pad: padded zeros count in the average


def global_avgpool(ins, out, c: Ctx, bufs) -> None:
    """Mean over the spatial axes 2 and 3 into ``out``."""
    x = ins[0]
    np.sum(x, axis=(2, 3), out=out)
    out *= 1.0 / (x.shape[2] * x.shape[3])
