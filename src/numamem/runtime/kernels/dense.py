"""Matrix-product kernels: ``dense`` (with bias and fused activation) and ``matmul``.

Both compute with one ``np.matmul`` into ``out`` and want ``out`` C-contiguous (the registry's
``contiguous_out``): given anything else, :class:`~numamem.runtime.kernels.BoundKernel` computes
into a block-sized temporary and copies. A feature block reads a column block of the weight
(rows of ``b`` with ``transpose_b``). Scratch: the gelu chunk for ``activation="gelu"``.
"""
from __future__ import annotations

import numpy as np

from numamem.runtime.kernels._common import Ctx, view_as
from numamem.runtime.kernels.elementwise import activate


def dense(ins, out, c: Ctx, bufs) -> None:
    """``x @ w (+ bias)``, then the fused activation, into ``out``."""
    x, w = ins[0], ins[1]
    x2, o2 = x, out
    if x.ndim > 2:
        # One GEMM over all leading rows instead of one per leading index, when views allow.
        xv, ov = view_as(x, (-1, x.shape[-1])), view_as(out, (-1, out.shape[-1]))
        if xv is not None and ov is not None:
            x2, o2 = xv, ov
    np.matmul(x2, w, out=o2)
    if len(ins) > 2:
        np.add(out, ins[2], out=out)
    activate(out, c.attrs.get("activation"), bufs[0] if bufs else None)


def matmul(ins, out, c: Ctx, bufs) -> None:
    """Batched ``a @ b`` (``a @ swapaxes(b)`` with ``transpose_b``) into ``out``."""
    a, b = ins
    if c.attrs.get("transpose_b", False):
        b = np.swapaxes(b, -1, -2)
    np.matmul(a, b, out=out)
