"""Static memory packing: give every buffer an offset so that co-live buffers never overlap.

A buffer ``i`` is live on the half-open interval ``[lower[i], upper[i])`` and needs ``size[i]``
bytes. :func:`pack` returns offsets whose peak (highest ``offset + size``) is as close as it can
get to the lower bound (the largest total size live at one time), in two stages:

1. **Greedy portfolio.** Several fixed orderings (by size, area, lifetime length, conflicts,
   start) each placed by best fit and by first fit (:func:`numamem.planner._greedy.greedy`, a C
   loop; past :data:`GREEDY_FULL_PORTFOLIO_MAX` buffers only the ordering by size, since each run
   is quadratic). Greedy by size with best fit always runs first: the result is never worse
   (unless the time limit cuts that run short: the buffers it has not placed are then stacked).
2. **Skyline search.** If the best greedy peak is above the lower bound, a branch and bound over
   canonical placements (the method of MiniMalloc, Moffitt, ASPLOS 2023;
   :class:`numamem.planner._skyline.SkylineSearch`) tries capacities between the lower bound and
   the best peak so far, with node budgets that double every round, until it reaches the lower
   bound, proves a capacity infeasible all the way up, or runs out of time.

Determinism: both stages are deterministic (fixed orders, ties broken by buffer index, node
budgets rather than timers decide when an attempt gives up). The time limit can only cut the
search short: a call that finishes before its limit (``result.timed_out`` is False) returns the
same offsets for the same input on any machine; a call that hits the limit returns the best
packing found so far, which may depend on machine speed.

Alignment: with ``align > 1`` each buffer occupies its size rounded up to a multiple of ``align``
and every offset is a multiple of ``align``. ``peak`` and ``lower_bound`` both count rounded sizes,
so ``peak`` is a multiple of ``align`` and ``peak >= lower_bound`` always holds.

The CSV form of ``numamem pack`` (``id,lower,upper,size``) is read and written by
:mod:`numamem.cli.pack`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
import numpy as np

from numamem.planner import _greedy, _overlap, _skyline

__all__ = ["PackResult", "pack", "check", "lower_bound"]

#: Default search time when ``time_limit`` is None (seconds); the search returns earlier when it
#: reaches the lower bound or proves that nothing lower than its best peak fits.
DEFAULT_TIME_LIMIT = 10.0

# The skyline search keeps per-buffer neighbour lists and per-section member lists and recurses
# once per placed buffer; past these sizes its memory, depth and node cost rule it out, and the
# greedy portfolio's result is returned (2.5 % and 3.3 % above the bound on the two public
# instances with 18,000-29,000 buffers).
SEARCH_MAX_BUFFERS = 4000
SEARCH_MAX_PAIRS = 2_000_000
SEARCH_MAX_MEMBERSHIP = 4_000_000

# Each greedy run costs O(n^2) (a scan of the placed buffers per buffer, about 0.3 s of CPU for
# 28,500 buffers). Past this many buffers only the ordering by size runs (with best and first
# fit; on the two large public instances no other ordering does better), so that 30,000 buffers
# pack in about one second of CPU.
GREEDY_FULL_PORTFOLIO_MAX = 20_000
_LARGE_PORTFOLIO = ("size",)

# Bisection steps of the search per round (see _search).
_PROBES = 4


@dataclass(frozen=True)
class PackResult:
    """The outcome of :func:`pack`.

    Attributes
    ----------
    offsets : numpy.ndarray
        int64 offset of every buffer (multiples of the alignment).
    peak : int
        Highest ``offset + size`` (sizes rounded up to the alignment); 0 with no buffers.
    lower_bound : int
        Largest total (rounded) size live at one time: no packing has a lower peak.
    ratio : float
        ``peak / lower_bound`` (1.0 when both are 0).
    method : str
        The algorithm that produced these offsets, e.g. ``"greedy:size/best-fit"`` or
        ``"search:TAW"``.
    seconds : float
        Wall-clock time of the call.
    greedy_peak : int
        Peak of greedy by size with best fit, the baseline (``peak <= greedy_peak``).
    timed_out : bool
        True when the time limit cut the search short (the result may then vary with speed).
    proven_optimal : bool
        True when ``peak`` is known to be optimal (it equals the lower bound, or the search
        proved that ``peak - align`` does not fit).
    """

    offsets: np.ndarray = field(repr=False)
    peak: int
    lower_bound: int
    ratio: float
    method: str
    seconds: float
    greedy_peak: int = 0
    timed_out: bool = False
    proven_optimal: bool = False


# ---------------------------------------------------------------------------------------------
# Validation and bounds
# ---------------------------------------------------------------------------------------------

def _as_int_array(name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == object and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr):
        # NumPy keeps Python ints past int64 as objects
        raise ValueError(f"{name} has values beyond int64")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has values beyond int64")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _validate(lower, upper, size, align: int):
    lo = _as_int_array("lower", lower)
    up = _as_int_array("upper", upper)
    sz = _as_int_array("size", size)
    if not (lo.shape == up.shape == sz.shape):
        raise ValueError(
            f"lower, upper and size must have the same length (got {lo.size}, {up.size}, {sz.size})"
        )
    bad = np.flatnonzero(lo >= up)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"buffer {i}: lower ({lo[i]}) must be less than upper ({up[i]})")
    bad = np.flatnonzero(sz < 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"buffer {i}: size ({sz[i]}) must not be negative")
    if isinstance(align, bool) or not isinstance(align, (int, np.integer)):
        raise TypeError(f"align must be an int, got {type(align).__name__}")
    align = int(align)
    if align < 1 or align & (align - 1):
        raise ValueError(f"align must be a positive power of two, got {align}")
    return lo, up, sz, align


_INT64_MAX = int(np.iinfo(np.int64).max)


def _check_total(units: np.ndarray, align: int) -> None:
    """Refuse sizes whose (aligned) sum is past int64.

    Offsets, peaks and the live totals behind the lower bound are int64 and none of them
    exceeds that sum, so below it every result is exact; past it they would wrap silently.
    """
    if units.size and float(units.sum(dtype=np.float64)) * align >= 2.0**62:
        total = sum(units.tolist()) * align      # exact, only for the rare huge instances
        if total > _INT64_MAX:
            raise ValueError(f"the sizes (rounded up to align={align}) add up to {total} bytes, "
                             f"past int64 ({_INT64_MAX}): offsets and peaks could not be exact")


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values: ``np.unique`` by a sort.

    NumPy 2.4's ``np.unique`` (hash based) took 1.4 s for 400,000 int64 times where a sort
    takes 0.02 s: on a 200,000-buffer instance that alone was past a one-second time limit.
    """
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if ordered.size else ordered


def _live_profile(lo: np.ndarray, up: np.ndarray, sz: np.ndarray):
    """Distinct times and the total size live on each elementary interval between them."""
    times = _distinct(np.concatenate([lo, up]))
    diff = np.zeros(times.size + 1, dtype=np.int64)
    np.add.at(diff, np.searchsorted(times, lo), sz)
    np.add.at(diff, np.searchsorted(times, up), -sz)
    return times, np.cumsum(diff)[:-1]


def lower_bound(lower, upper, size, *, align: int = 1) -> int:
    """Return the largest total size live at one time (sizes rounded up to ``align``).

    Parameters
    ----------
    lower, upper, size : sequences of int
        Buffer ``i`` is live on ``[lower[i], upper[i])`` and needs ``size[i]`` bytes.
    align : int, optional
        Alignment (a power of two); sizes are rounded up to it.

    Returns
    -------
    int
        The bound; no packing has a lower peak.
    """
    lo, up, sz, align = _validate(lower, upper, size, align)
    units = -(-sz // align)
    if units.size == 0:
        return 0
    return int(_live_profile(lo, up, units)[1].max()) * align


# ---------------------------------------------------------------------------------------------
# Greedy portfolio
# ---------------------------------------------------------------------------------------------

def _range_max(values: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """``max(values[start[i]:stop[i]])`` for every i (non-empty ranges), by a sparse table."""
    table = [values]
    width = 1
    while 2 * width <= values.size:
        prev = table[-1]
        table.append(np.maximum(prev[:-width], prev[width:]))
        width *= 2
    length = stop - start
    level = np.floor(np.log2(np.maximum(length, 1))).astype(np.int64)
    out = np.empty(start.size, dtype=values.dtype)
    for k in np.unique(level):
        sel = level == k
        row = table[k]
        out[sel] = np.maximum(row[start[sel]], row[stop[sel] - (1 << k)])
    return out


#: The greedy orderings, in the order they run.
GREEDY_ORDERS = ("size", "area", "length", "conflicts", "start")


def _greedy_order(name: str, lo: np.ndarray, up: np.ndarray, sz: np.ndarray) -> np.ndarray:
    """One greedy placement order (int64 indices); ties always go to the lower index."""
    length = up - lo
    # np.lexsort sorts by its last key first and is stable, so equal keys keep index order.
    if name == "size":
        order = np.lexsort((-length, -sz))
    elif name == "area":
        area = sz.astype(np.float64) * length   # float: a sort key that must not overflow
        order = np.lexsort((-sz, -area))
    elif name == "length":
        order = np.lexsort((-sz, -length))
    elif name == "conflicts":
        # The largest total live during the buffer's lifetime (MiniMalloc's "T").
        times, live = _live_profile(lo, up, sz)
        conflict = _range_max(live, np.searchsorted(times, lo), np.searchsorted(times, up))
        order = np.lexsort((-length, -sz, -conflict))
    elif name == "start":
        order = np.lexsort((-sz, lo))
    else:
        raise ValueError(f"unknown greedy order {name!r}")
    return order.astype(np.int64)


def _peak(offsets: np.ndarray, units: np.ndarray) -> int:
    return int((offsets + units).max()) if units.size else 0


# ---------------------------------------------------------------------------------------------
# Skyline search
# ---------------------------------------------------------------------------------------------

def _pair_count(lo: np.ndarray, up: np.ndarray) -> int:
    """Number of pairs of buffers whose lifetimes overlap."""
    los = np.sort(lo)
    ups = np.sort(up)
    started = np.searchsorted(los, up, "left")     # buffers starting before i ends (i included)
    ended = np.searchsorted(ups, lo, "right")      # buffers ending before i starts
    return int((started - ended - 1).sum() // 2)


def _build_search(lo: np.ndarray, up: np.ndarray, units: np.ndarray):
    """Preprocess buffers (all of positive size) for :class:`_skyline.SkylineSearch`.

    Returns None when the instance is past the search's size limits.
    """
    n = units.size
    if n == 0 or n > SEARCH_MAX_BUFFERS or _pair_count(lo, up) > SEARCH_MAX_PAIRS:
        return None
    times = _distinct(np.concatenate([lo, up]))
    rlo = np.searchsorted(times, lo)
    rup = np.searchsorted(times, up)
    starts = np.zeros(times.size, dtype=bool)
    ends = np.zeros(times.size, dtype=bool)
    starts[rlo] = True
    ends[rup] = True
    # Sections: elementary intervals [t_k, t_k+1) where some buffer starts at t_k and some ends
    # at t_k+1. Any other interval's live set is contained in a neighbour's, so its constraint
    # is implied; these are exactly the maximal sets of co-live buffers.
    maximal = np.flatnonzero(starts[:-1] & ends[1:])
    slo = np.searchsorted(maximal, rlo, "left")
    shi = np.searchsorted(maximal, rup, "left")
    span = shi - slo
    if span.min() < 1:  # cannot happen: every lifetime contains a maximal interval
        raise AssertionError("skyline preprocessing: a buffer spans no section")
    membership = int(span.sum())
    if membership > SEARCH_MAX_MEMBERSHIP:
        return None
    # Section member lists (CSR), buffers in index order within a section.
    owner = np.repeat(np.arange(n, dtype=np.int64), span)
    first = np.repeat(np.cumsum(span) - span, span)
    section = np.repeat(slo, span) + (np.arange(membership, dtype=np.int64) - first)
    order = np.argsort(section, kind="stable")
    sec_mem = owner[order]
    sec_start = np.zeros(maximal.size + 1, dtype=np.int64)
    np.cumsum(np.bincount(section, minlength=maximal.size), out=sec_start[1:])
    # Neighbour lists (CSR): in start order, i overlaps every later-starting j with lo[j] < up[i].
    by_start = np.argsort(lo, kind="stable")
    lo_sorted = lo[by_start]
    pos = np.arange(n, dtype=np.int64)
    count = np.searchsorted(lo_sorted, up[by_start], "left") - pos - 1
    count = np.maximum(count, 0)
    total = int(count.sum())
    a_pos = np.repeat(pos, count)
    b_pos = a_pos + 1 + (np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(count) - count, count))
    a, b = by_start[a_pos], by_start[b_pos]
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    order = np.lexsort((dst, src))
    nbr = dst[order]
    nbr_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=nbr_start[1:])
    return _skyline.SkylineSearch(units, up - lo, slo, shi, nbr_start, nbr, sec_start, sec_mem)


def _attempt(solver, cap: int, budget: int, deadline: float, heuristics):
    """Try the preordering ``heuristics`` (indices) in turn at ``cap``, ``budget`` nodes each.

    Returns ``(outcome, offsets, heuristic index)`` with outcome ``"ok"``, ``"infeasible"``
    (proven), ``"budget"`` or ``"deadline"``.
    """
    for h in heuristics:
        if time.monotonic() >= deadline:
            return "deadline", None, h
        status, offsets, _ = solver.solve(cap, budget, deadline, h)
        if status in ("ok", "infeasible", "deadline"):
            return status, offsets, h
    return "budget", None, h


def _search(solver, units, lb: int, best_peak: int, deadline: float):
    """Run the capacity schedule; return (offsets or None, peak, heuristic, timed_out, proven).

    Round r has a budget of ``B = n * 2**(r+2)`` search nodes per attempt. It makes up to
    :data:`_PROBES` bisection steps between the lowest capacity not proven infeasible and the
    best peak so far (one heuristic each, so that instances whose optimum lies above the bound
    still improve), then tries that lowest capacity with every heuristic in turn (MiniMalloc's
    own round robin: most instances fit their lower bound). The heuristic that succeeded last
    leads; a failed step passes the lead on. A capacity proven infeasible raises the bound for
    good. Only node counts decide, so the sequence of attempts is deterministic; the deadline
    only cuts it short (the steps come first in a round so that a round cut short has spent its
    time on improving the best peak).
    """
    n = units.size
    count = len(_skyline.HEURISTICS)
    best = None
    method = ""
    proven_lb = lb               # nothing below this fits (proven)
    tolerance = max(1, lb // 1000)
    budget = 2 * n
    lead = 0
    while best_peak > proven_lb:
        budget *= 2
        # Bisection steps first: the bound attempt last keeps most of a round cut short by the
        # deadline on the steps that improve the best peak.
        lo = proven_lb
        for _ in range(_PROBES):
            if best_peak - lo <= tolerance:
                break
            cap = (lo + best_peak) // 2
            outcome, offsets, h = _attempt(solver, cap, budget, deadline, [lead])
            if outcome == "deadline":
                return best, best_peak, method, True, False
            if outcome == "ok":
                best, best_peak, method = offsets, _peak(offsets, units), _skyline.HEURISTICS[h]
            else:
                lead = (lead + 1) % count
                lo = cap + 1
                if outcome == "infeasible":
                    proven_lb = lo
        if best_peak <= proven_lb:
            break
        everyone = [(lead + k) % count for k in range(count)]
        outcome, offsets, h = _attempt(solver, proven_lb, budget, deadline, everyone)
        if outcome == "deadline":
            return best, best_peak, method, True, False
        if outcome == "ok":
            best, best_peak, method = offsets, _peak(offsets, units), _skyline.HEURISTICS[h]
            break
        if outcome == "infeasible":
            proven_lb += 1
    return best, best_peak, method, False, True


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def pack(lower, upper, size, *, align: int = 1, time_limit: float | None = None) -> PackResult:
    """Assign offsets to buffers so that buffers live at the same time never overlap.

    Parameters
    ----------
    lower, upper : sequences of int
        Buffer ``i`` is live on the half-open interval ``[lower[i], upper[i])``; ``lower < upper``.
    size : sequence of int
        Bytes each buffer needs (0 allowed: such a buffer gets offset 0 and occupies nothing).
    align : int, optional
        Every offset is a multiple of ``align`` (a power of two), and each buffer occupies its
        size rounded up to ``align``.
    time_limit : float or None, optional
        Seconds the whole call may take (default :data:`DEFAULT_TIME_LIMIT`). The search stops
        at the limit, or earlier when it reaches the lower bound or proves its best peak
        optimal; a greedy run still going at the limit (instances of about 10^5 buffers) stacks
        the buffers it has not placed yet above the others, so the call returns at once with a
        valid packing marked ``timed_out``.

    Returns
    -------
    PackResult
        Offsets, peak, lower bound, their ratio, the method that won and the time taken.

    Raises
    ------
    ValueError
        On mismatched lengths, ``lower[i] >= upper[i]`` or a negative size (the message names
        the buffer index), values past int64, sizes adding up past int64, or an alignment that
        is not a positive power of two.
    KeyboardInterrupt
        On Ctrl-C, promptly: the C loops look for signals every few milliseconds.
    TypeError
        On non-integer input.

    Notes
    -----
    Deterministic: a call that finishes within its time limit returns the same offsets for the
    same input every time; see the module documentation.
    """
    start = time.monotonic()
    lo, up, sz, align = _validate(lower, upper, size, align)
    if time_limit is None:
        time_limit = DEFAULT_TIME_LIMIT
    time_limit = float(time_limit)
    if not time_limit >= 0:
        raise ValueError(f"time_limit must be non-negative, got {time_limit}")
    deadline = start + time_limit
    n = sz.size
    offsets = np.zeros(n, dtype=np.int64)
    units_all = -(-sz // align)
    _check_total(units_all, align)
    live = np.flatnonzero(units_all > 0)  # zero-size buffers stay at offset 0
    lo_l, up_l, un_l = lo[live], up[live], units_all[live]
    lb = int(_live_profile(lo_l, up_l, un_l)[1].max()) if live.size else 0

    best = np.zeros(live.size, dtype=np.int64)
    best_peak = 0
    greedy_peak = 0
    method = "trivial"
    timed_out = False
    proven = True
    if live.size:
        best_peak = -1
        names = GREEDY_ORDERS if live.size <= GREEDY_FULL_PORTFOLIO_MAX else _LARGE_PORTFOLIO
        for name in names:
            order = _greedy_order(name, lo_l, up_l, un_l)
            for best_fit in (True, False):
                # Each greedy run is quadratic; past the deadline it stacks what it has not
                # placed yet (valid, at once), so even the baseline honours the time limit.
                off, placed = _greedy.greedy_until(lo_l, up_l, un_l, order, best_fit, deadline)
                peak = _peak(off, un_l)
                if best_peak < 0:
                    greedy_peak = peak
                if best_peak < 0 or peak < best_peak:
                    best, best_peak = off, peak
                    method = f"greedy:{name}/{'best' if best_fit else 'first'}-fit"
                    if placed < order.size:
                        method += f" (cut by the time limit after {placed} buffers; the rest stacked)"
                if best_peak == lb:
                    break
                # Greedy by size runs first; the others only while time remains.
                if placed < order.size or time.monotonic() >= deadline:
                    timed_out = True
                    break
            if best_peak == lb or timed_out:
                break
        proven = best_peak == lb
        if not proven and not timed_out:
            solver = _build_search(lo_l, up_l, un_l)
            if solver is None:
                proven = False
            else:
                found, peak, heuristic, timed_out, proven = _search(
                    solver, un_l, lb, best_peak, deadline
                )
                if found is not None and peak < best_peak:
                    best, best_peak, method = found, peak, f"search:{heuristic}"
    offsets[live] = best * align
    peak = best_peak * align
    lb *= align
    try:
        # Cheap next to the packing itself, and it keeps a packer bug from ever handing out
        # overlapping memory.
        check(lo, up, units_all * align, offsets)
    except ValueError as exc:  # pragma: no cover - only a bug in this module gets here
        raise RuntimeError(f"internal error of the packer ({method}): {exc}") from exc
    return PackResult(
        offsets=offsets,
        peak=int(peak),
        lower_bound=int(lb),
        ratio=float(peak / lb) if lb else 1.0,
        method=method,
        seconds=time.monotonic() - start,
        greedy_peak=int(greedy_peak * align),
        timed_out=bool(timed_out),
        proven_optimal=bool(proven),
    )


def check(lower, upper, size, offsets) -> None:
    """Raise if two buffers that are live at the same time overlap in memory.

    Independent of the packer: a sweep over time keeps the live buffers sorted by offset and
    checks each new buffer against its neighbours in that order (the loop is
    :func:`numamem.planner._overlap.first_overlap`, in C since it runs after every packing: a
    Python loop took 1.6 s of a one-second time limit on 200,000 buffers).

    Parameters
    ----------
    lower, upper, size, offsets : sequences of int
        Lifetimes ``[lower[i], upper[i])``, sizes and offsets of the buffers.

    Raises
    ------
    ValueError
        On invalid input, a negative offset, or an overlap (naming both buffers).
    """
    lo, up, sz, _ = _validate(lower, upper, size, 1)
    off = _as_int_array("offsets", offsets)
    if off.shape != sz.shape:
        raise ValueError(f"offsets must have length {sz.size}, got {off.size}")
    bad = np.flatnonzero(off < 0)
    if bad.size:
        raise ValueError(f"buffer {int(bad[0])}: negative offset {off[bad[0]]}")
    bad = np.flatnonzero(off > _INT64_MAX - sz)
    if bad.size:
        raise ValueError(f"buffer {int(bad[0])}: offset + size is past int64")
    nz = np.flatnonzero(sz > 0)
    # Events: ends before starts at the same time (lifetimes are half-open).
    times = np.concatenate([up[nz], lo[nz]])
    kinds = np.concatenate([np.zeros(nz.size, np.int8), np.ones(nz.size, np.int8)])
    who = np.concatenate([nz, nz])
    # A stable sort by time keeps ends (listed first) before starts at the same time, as
    # lexsort((kinds, times)) would, at a fraction of its cost.
    order = np.argsort(times, kind="stable")
    by_rank = np.argsort(off, kind="stable").astype(np.int64)   # (offset, index) order
    rank = np.empty(off.size, dtype=np.int64)
    rank[by_rank] = np.arange(off.size, dtype=np.int64)
    pair = _overlap.first_overlap(np.ascontiguousarray(who[order]), np.ascontiguousarray(kinds[order]),
                               rank, by_rank, off, off + sz)
    if pair is not None:
        raise ValueError(f"buffers {pair[0]} and {pair[1]} are live together and overlap in memory")
