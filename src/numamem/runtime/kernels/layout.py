"""Data-movement kernels: ``reshape``, ``flatten``, ``transpose``, ``concat`` and ``embedding``.

Each copies (or gathers) into ``out``; none needs scratch. What they may allocate:
``reshape``/``flatten`` a copy of the region when neither it nor ``out`` can be viewed in the
other's shape; ``embedding`` a copy of the ids when they are not C-contiguous int64, and, for a
column block cut from the full table, a temporary of at most :data:`GATHER_ELEMENTS` elements
that the gather goes through (pass the node's own contiguous slice of the table to avoid it).
``embedding`` raises :class:`IndexError` for an id outside ``[0, V)``.
"""
from __future__ import annotations

import numpy as np

from numamem.planner.ops import normalize_axis, transpose_perm
from numamem.runtime.kernels._common import Ctx, view_as

#: Elements an embedding gathers at a time from a non-contiguous table block (bounds its temporary).
GATHER_ELEMENTS = 1 << 13


def _copy_into(out: np.ndarray, src: np.ndarray) -> None:
    """Copy ``src`` (same number of elements, row-major order) into ``out``."""
    v = view_as(out, src.shape)
    if v is not None:
        np.copyto(v, src)
    else:
        np.copyto(out, src.reshape(out.shape))  # reshape copies: neither side has a viewable layout


def reshape(ins, out, c: Ctx, bufs) -> None:
    """``reshape`` and ``flatten``: the region's elements in row-major order into ``out``."""
    _copy_into(out, ins[0])


def transpose(ins, out, c: Ctx, bufs) -> None:
    """The region with its axes permuted by ``perm`` into ``out``."""
    np.copyto(out, np.transpose(ins[0], transpose_perm(c.shapes[0], c.attrs)))


def concat(ins, out, c: Ctx, bufs) -> None:
    """The operands the block reads, one after the other along ``axis``, into ``out``."""
    cat = normalize_axis(c.attrs.get("axis", 0), out.ndim)
    pos = 0
    for a in ins:
        if a is None:
            continue
        n = a.shape[cat]
        idx = (slice(None),) * cat + (slice(pos, pos + n),)
        np.copyto(out[idx], a)
        pos += n


def embedding(ins, out, c: Ctx, bufs) -> None:
    """Rows ``table[ids]`` into ``out``."""
    ids, table = ins
    if ids.dtype != np.int64 or not ids.flags.c_contiguous:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
    v = table.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= v):
        raise IndexError(f"embedding ids must lie in [0, {v})")
    if table.flags.c_contiguous:
        # mode="clip" (ids were checked above) because mode="raise" buffers the whole output.
        np.take(table, ids, axis=0, out=out, mode="clip")
        return
    # A column block cut from the full table: np.take would copy the whole block first, so
    # gather a bounded number of rows at a time instead (allocates <= GATHER_ELEMENTS items).
    flat_ids = ids.reshape(-1)
    flat_out = view_as(out, (flat_ids.size, out.shape[-1]))
    if flat_out is None:
        flat_out = out.reshape(flat_ids.size, out.shape[-1])
    rows = max(1, GATHER_ELEMENTS // max(1, table.shape[1]))
    for r in range(0, flat_ids.size, rows):
        np.copyto(flat_out[r: r + rows], table[flat_ids[r: r + rows]])
    if not np.may_share_memory(flat_out, out):
        np.copyto(out, flat_out.reshape(out.shape))
