"""Index geometry shared by the planner and the runtime: boxes and axis slices.

A *box* is a hyper-rectangle of a tensor, one half-open ``(start, stop)`` range per axis, in the
coordinates of the whole tensor. A :class:`Slice` is the part ``[start, stop)`` of a tensor along
one axis: a plan block's extent, and the output range one kernel call computes.

This is the lowest planner module (it imports nothing from numamem): the partitioner, the ops
table, the kernels and the executor all take their geometry from here, so one rule has one
implementation. The plan checker (:mod:`numamem.planner.check`) deliberately keeps its own copy
so that a mistake here cannot fool the planner and the checker alike.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Sequence

Shape = tuple[int, ...]
#: A hyper-rectangle of a tensor: one half-open ``(start, stop)`` range per axis.
Box = tuple[tuple[int, int], ...]


def _index(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {value!r}") from None


@dataclass(frozen=True)
class Slice:
    """The part ``[start, stop)`` of a tensor along ``axis``.

    Attributes
    ----------
    axis : int
        A non-negative axis of the whole tensor.
    start, stop : int
        ``0 <= start <= stop``.

    Examples
    --------
    >>> Slice(1, 0, 64).length
    64
    """

    axis: int
    start: int
    stop: int

    def __post_init__(self) -> None:
        for name in ("axis", "start", "stop"):
            object.__setattr__(self, name, _index(getattr(self, name), f"Slice.{name}"))
        if self.axis < 0:
            raise ValueError(f"Slice.axis must be non-negative, not {self.axis}")
        if self.start < 0 or self.stop < self.start:
            raise ValueError(f"[{self.start}, {self.stop}) is not a valid range")

    @property
    def length(self) -> int:
        """Number of indices in the slice along its axis."""
        return self.stop - self.start

    def box(self, shape: Sequence[int]) -> Box:
        """The box of a tensor of ``shape`` that this slice covers."""
        return on_axis(shape, self.axis, self.start, self.stop)


def full(shape: Sequence[int]) -> Box:
    """The box covering all of a tensor of ``shape``.

    >>> full((2, 3))
    ((0, 2), (0, 3))
    """
    return tuple((0, int(d)) for d in shape)


def on_axis(shape: Sequence[int], axis: int, lo: int, hi: int) -> Box:
    """The box ``[lo, hi)`` along ``axis`` and everything along the other axes.

    >>> on_axis((4, 5), 1, 1, 3)
    ((0, 4), (1, 3))
    """
    return tuple((lo, hi) if k == axis else (0, int(d)) for k, d in enumerate(shape))


def extent(box: Box) -> Shape:
    """The shape of the sub-array a box selects."""
    return tuple(b - a for a, b in box)


def volume(box: Box) -> int:
    """Number of elements in ``box`` (0 for an empty box)."""
    return math.prod(max(0, b - a) for a, b in box)


def overlap(b1: Box, b2: Box) -> int:
    """Number of elements two boxes share."""
    return math.prod(max(0, min(hi1, hi2) - max(lo1, lo2)) for (lo1, hi1), (lo2, hi2) in zip(b1, b2))


def intersect(b1: Box, b2: Box) -> Box | None:
    """The box two boxes share, or None when they share no element."""
    out = []
    for (lo1, hi1), (lo2, hi2) in zip(b1, b2):
        lo, hi = max(lo1, lo2), min(hi1, hi2)
        if hi <= lo:
            return None
        out.append((lo, hi))
    return tuple(out)


def contains(outer: Box, inner: Box) -> bool:
    """True when every element of ``inner`` lies in ``outer``."""
    return all(lo1 <= lo2 and hi2 <= hi1 for (lo1, hi1), (lo2, hi2) in zip(outer, inner))


def cut(box: Box, origin: Sequence[int]) -> tuple[slice, ...]:
    """Index that selects ``box`` from an array whose element 0 sits at ``origin``.

    >>> cut(((2, 4), (0, 3)), (2, 0))
    (slice(0, 2, None), slice(0, 3, None))
    """
    return tuple(slice(a - o, b - o) for (a, b), o in zip(box, origin))


def split_axis(box: Box, shape: Sequence[int]) -> int | None:
    """The single axis on which ``box`` is not the full extent, 0 if it is full, else None."""
    axes = [k for k, ((a, b), d) in enumerate(zip(box, shape)) if (a, b) != (0, d)]
    if not axes:
        return 0 if len(shape) else None
    return axes[0] if len(axes) == 1 else None


def split_even(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """Even contiguous split of ``range(lo, hi)`` into ``parts`` ranges, the first ones longer.

    Never returns more ranges than there are indices, nor fewer than one.

    >>> split_even(0, 10, 3)
    [(0, 4), (4, 7), (7, 10)]
    >>> split_even(5, 7, 4)
    [(5, 6), (6, 7)]
    """
    n = hi - lo
    parts = max(1, min(parts, n))
    q, r = divmod(n, parts)
    out, start = [], lo
    for i in range(parts):
        stop = start + q + (1 if i < r else 0)
        out.append((start, stop))
        start = stop
    return out


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``.

    >>> round_up(4097, 4096)
    8192
    """
    return -(-n // multiple) * multiple
