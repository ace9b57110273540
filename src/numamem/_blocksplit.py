"""Block-split arrays: the geometry of splitting an array over nodes, and its blocks.

An array created with ``nodes=[...]`` and ``axis=k`` is one mapping whose i-th block of rows along
``k`` is placed on ``nodes[i]``; :func:`split_blocks` chooses the split points (on page boundaries)
and :func:`blocks` hands the blocks back as views.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from numamem._pool import Pool
from numamem.inspect import owner, request_of

__all__ = ["BlockSpan", "split_blocks", "ArrayBlock", "blocks"]


@dataclass(frozen=True)
class BlockSpan:
    """One block of a split, in bytes of the mapping (kept in ``Region.info['blocks']``)."""

    index: int
    node: int
    start: int  # along the split axis
    stop: int
    offset: int  # bytes from the region start
    nbytes: int


def split_blocks(shape, dtype, order, axis, nodes, page_size) -> tuple[BlockSpan, ...]:
    """Split ``shape`` along ``axis`` into ``len(nodes)`` contiguous blocks ending on page boundaries."""
    ndim = len(shape)
    if ndim == 0:
        raise ValueError("a 0-d array cannot be split over nodes")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for shape {shape}")
    axis %= ndim
    # A block along `axis` is one contiguous byte range only if every axis that varies slower
    # than it has extent 1 (C order: the axes before it; F order: the axes after it).
    outer = shape[:axis] if order == "C" else shape[axis + 1:]
    inner = shape[axis + 1:] if order == "C" else shape[:axis]
    if any(extent != 1 for extent in outer) and math.prod(shape) != 0:
        raise ValueError(
            f"blocks along axis {axis} of a {order}-order array of shape {shape} are not contiguous; "
            f"split along the {'first' if order == 'C' else 'last'} axis whose slower axes have extent 1")
    row_bytes = math.prod(inner) * dtype.itemsize
    extent = shape[axis]
    count = len(nodes)
    # Split points must fall on page boundaries: a multiple of `granule` rows.
    granule = page_size // math.gcd(page_size, row_bytes) if row_bytes else 1
    bounds = [0]
    for i in range(1, count):
        ideal = extent * i / count
        snapped = int(round(ideal / granule)) * granule
        bounds.append(min(max(snapped, bounds[-1]), extent))
    bounds.append(extent)
    return tuple(
        BlockSpan(i, nodes[i], bounds[i], bounds[i + 1], bounds[i] * row_bytes,
                  (bounds[i + 1] - bounds[i]) * row_bytes)
        for i in range(count)
    )


@dataclass(frozen=True)
class ArrayBlock:
    """One block of a block-split array: ``array`` is the view of rows ``[start, stop)`` of ``axis``."""

    index: int
    node: int
    axis: int
    start: int
    stop: int
    offset: int
    nbytes: int
    array: np.ndarray


def blocks(array) -> list[ArrayBlock]:
    """Return the per-node blocks of a block-split array (one block for other numamem arrays).

    Parameters
    ----------
    array : numpy.ndarray
        An array as returned by a numamem creator, or made by NumPy inside
        :func:`numamem.on_node` (not a view of one: block bounds are stated in the created
        array's indices).
    """
    own = owner(array)
    req = request_of(own)
    if req is None:
        raise TypeError("blocks() describes arrays numamem placed; this array's memory is "
                        f"{'not numamem' if own is None else 'a ' + type(own).__name__ + ' no creator placed'}")
    array = np.asarray(array)
    if isinstance(own, Pool):
        created = array.base is None
    else:
        created = array.shape == own.info["shape"] and array.ctypes.data == own.address + own.info.get("offset", 0)
    if not created:
        raise ValueError("blocks() takes the array numamem created, not a view of it")
    spans = () if isinstance(own, Pool) else own.info.get("blocks") or ()
    if not spans:
        extent = array.shape[0] if array.ndim else 1
        node = req.node if req.node is not None else -1
        return [ArrayBlock(0, node, 0, 0, extent, 0, array.nbytes, array)]
    axis = req.axis % array.ndim
    result = []
    for span in spans:
        index = [slice(None)] * array.ndim
        index[axis] = slice(span.start, span.stop)
        result.append(ArrayBlock(span.index, span.node, axis, span.start, span.stop, span.offset, span.nbytes,
                                 array[tuple(index)]))
    return result
