"""Unit tests of the memory packer (numamem.planner.packing and its C loops)."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numamem.planner import _greedy, _skyline, packing
from numamem.cli.pack import read_csv
from numamem.planner.packing import PackResult, check, lower_bound, pack

# shared/ sits beside the repository (CI clones elsewhere with a copy of shared/ beside it).
BENCHDATA = next((p for p in (Path(__file__).resolve().parents[3] / "shared" / "benchdata",
                              Path("/work/shared/benchdata")) if p.is_dir()),
                 Path(__file__).resolve().parents[3] / "shared" / "benchdata")


def brute_overlaps(lower, upper, size, offsets):
    """Pairs (i, j) of co-live buffers that overlap in memory, by brute force."""
    bad = []
    for i, j in itertools.combinations(range(len(size)), 2):
        if size[i] == 0 or size[j] == 0:
            continue
        if lower[i] < upper[j] and lower[j] < upper[i]:
            if offsets[i] < offsets[j] + size[j] and offsets[j] < offsets[i] + size[i]:
                bad.append((i, j))
    return bad


def brute_lower_bound(lower, upper, size):
    times = sorted(set(lower))
    return max((sum(s for l, u, s in zip(lower, upper, size) if l <= t < u) for t in times), default=0)


@st.composite
def instances(draw, max_buffers=24):
    n = draw(st.integers(0, max_buffers))
    lower, upper, size = [], [], []
    for _ in range(n):
        lo = draw(st.integers(0, 30))
        lower.append(lo)
        upper.append(lo + draw(st.integers(1, 12)))
        size.append(draw(st.one_of(st.just(0), st.integers(1, 100), st.integers(1, 5000))))
    return lower, upper, size


# --- properties ------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.sampled_from([1, 1, 8, 64]))
def test_random_instances_pack_validly(inst, align):
    lower, upper, size = inst
    r = pack(lower, upper, size, align=align, time_limit=5)
    rounded = [-(-s // align) * align for s in size]
    assert r.offsets.dtype == np.int64 and r.offsets.shape == (len(size),)
    assert not brute_overlaps(lower, upper, rounded, r.offsets.tolist())
    assert all(o % align == 0 and o >= 0 for o in r.offsets.tolist())
    assert r.lower_bound == brute_lower_bound(lower, upper, rounded)
    assert r.peak == max((o + s for o, s in zip(r.offsets.tolist(), rounded)), default=0)
    assert r.peak >= r.lower_bound
    assert r.peak <= r.greedy_peak
    if r.proven_optimal and r.lower_bound:
        assert r.ratio >= 1.0
    again = pack(lower, upper, size, align=align, time_limit=5)
    if not (r.timed_out or again.timed_out):
        assert np.array_equal(r.offsets, again.offsets)
        assert r.method == again.method


def brute_optimum(lower, upper, size):
    """The optimal peak, by first fit over every placement order.

    Placing buffers in the order of their offsets in an optimal packing, each at the lowest
    offset where it fits, never puts one higher than there; so some order reaches the optimum.
    """
    items = [i for i in range(len(size)) if size[i] > 0]
    best = None
    for perm in itertools.permutations(items):
        placed = []
        peak = 0
        for i in perm:
            spans = sorted((o, o + size[j]) for j, o in placed
                           if lower[i] < upper[j] and lower[j] < upper[i])
            off = 0
            for a, z in spans:
                if a >= off + size[i]:
                    break
                off = max(off, z)
            placed.append((i, off))
            peak = max(peak, off + size[i])
            if best is not None and peak >= best:
                break
        if best is None or peak < best:
            best = peak
    return best or 0


@settings(max_examples=80, deadline=None)
@given(instances(max_buffers=6))
def test_small_instances_reach_the_brute_force_optimum(inst):
    lower, upper, size = inst
    r = pack(lower, upper, size, time_limit=30)
    assert not r.timed_out
    assert r.proven_optimal
    assert r.peak == brute_optimum(lower, upper, size)


@settings(max_examples=80, deadline=None)
@given(instances(max_buffers=6), st.integers(0, 2))
def test_skyline_search_is_sound_and_complete(inst, heuristic):
    """At the optimum the search finds a packing; one below it, it proves there is none."""
    lower, upper, size = (np.asarray(x, dtype=np.int64) for x in inst)
    keep = size > 0
    lower, upper, size = lower[keep], upper[keep], size[keep]
    if size.size == 0:
        return
    solver = packing._build_search(lower, upper, size)
    best = brute_optimum(lower.tolist(), upper.tolist(), size.tolist())
    status, offsets, _ = solver.solve(best, 10**7, float("inf"), heuristic)
    assert status == "ok"
    assert int((offsets + size).max()) <= best
    check(lower, upper, size, offsets)
    status, offsets, _ = solver.solve(best - 1, 10**7, float("inf"), heuristic)
    assert status == "infeasible" and offsets is None


def test_skyline_search_reports_budget_and_deadline():
    data_lower = np.arange(0, 40, dtype=np.int64) % 7
    data_upper = data_lower + 1 + np.arange(40, dtype=np.int64) % 5
    size = 1 + (np.arange(40, dtype=np.int64) * 7919) % 97
    solver = packing._build_search(data_lower, data_upper, size)
    lb = lower_bound(data_lower, data_upper, size)
    status, offsets, nodes = solver.solve(lb, 1, float("inf"), 0)
    assert status in ("budget", "ok", "infeasible")
    if status == "budget":
        assert nodes == 1 and offsets is None
    status, _, _ = solver.solve(lb, 10**9, 0.0, 0)   # deadline long past
    assert status in ("deadline", "ok", "infeasible")


@settings(max_examples=60, deadline=None)
@given(instances(max_buffers=16))
def test_greedy_loop_places_validly(inst):
    lower, upper, size = (np.asarray(x, dtype=np.int64) for x in inst)
    keep = np.flatnonzero(size > 0)
    for best_fit in (True, False):
        off = _greedy.greedy(lower, upper, size, keep.astype(np.int64), best_fit)
        assert (off[keep] >= 0).all()
        assert (np.delete(off, keep) == -1).all()
        sub = off.copy()
        sub[sub < 0] = 0
        check(lower, upper, size, sub)


# --- edge cases -------------------------------------------------------------------------------

def test_empty_input():
    r = pack([], [], [])
    assert isinstance(r, PackResult)
    assert r.offsets.shape == (0,) and r.offsets.dtype == np.int64
    assert r.peak == 0 and r.lower_bound == 0 and r.ratio == 1.0


def test_zero_sizes():
    r = pack([0, 0, 1], [5, 5, 3], [0, 0, 0], align=64)
    assert r.peak == 0 and r.lower_bound == 0
    assert r.offsets.tolist() == [0, 0, 0]
    r = pack([0, 0], [5, 5], [0, 10])
    assert r.peak == 10 and r.offsets.tolist() == [0, 0]


def test_single_buffer():
    r = pack([3], [4], [100], align=64)
    assert r.offsets.tolist() == [0]
    assert r.peak == 128 and r.lower_bound == 128 and r.ratio == 1.0


def test_all_disjoint_peak_is_max_size():
    lower = list(range(0, 100, 10))
    upper = [l + 10 for l in lower]
    size = [5, 70, 3, 9, 12, 70, 1, 2, 33, 40]
    r = pack(lower, upper, size)
    assert r.peak == 70 and r.lower_bound == 70
    assert r.offsets.tolist() == [0] * 10


def test_half_open_lifetimes_share_memory():
    # [0,2) and [2,4) are never live together.
    r = pack([0, 2], [2, 4], [10, 10])
    assert r.peak == 10 and r.offsets.tolist() == [0, 0]


@pytest.mark.parametrize(
    "lower, upper, size, bound",
    [
        # Found by random search: every greedy ordering needs bound + 1 here.
        ([3, 1, 2, 2, 3], [6, 3, 4, 3, 4], [1, 2, 2, 2, 3], 6),
        ([0, 0, 3, 1, 1, 3], [3, 3, 6, 4, 2, 6], [4, 2, 3, 2, 2, 4], 10),
    ],
)
def test_search_beats_every_greedy(lower, upper, size, bound):
    r = pack(lower, upper, size, time_limit=5)
    assert r.lower_bound == bound
    assert r.peak == bound and r.method.startswith("search:")
    assert r.greedy_peak == bound + 1
    assert not brute_overlaps(lower, upper, size, r.offsets.tolist())


def test_alignment_rounds_sizes_and_offsets():
    r = pack([0, 0, 0], [1, 1, 1], [1, 100, 4096], align=4096)
    assert all(o % 4096 == 0 for o in r.offsets.tolist())
    assert r.lower_bound == 3 * 4096 and r.peak == 3 * 4096
    assert lower_bound([0, 0, 0], [1, 1, 1], [1, 100, 4096], align=4096) == 3 * 4096


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([0, 5], [1, 5], [1, 1]), {}, "buffer 1"),
        (([3], [2], [1]), {}, "buffer 0"),
        (([0], [1], [-1]), {}, "buffer 0"),
        (([0, 1], [1], [1, 1]), {}, "same length"),
        (([0], [1], [1]), {"align": 3}, "power of two"),
        (([0], [1], [1]), {"align": 0}, "power of two"),
        (([0], [1], [1]), {"time_limit": -1}, "time_limit"),
    ],
)
def test_invalid_input_raises_value_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pack(*args, **kwargs)


def test_non_integer_input_raises_type_error():
    with pytest.raises(TypeError):
        pack([0.5], [1.0], [1.0])


def test_result_is_frozen():
    r = pack([0], [1], [1])
    with pytest.raises(Exception):
        r.peak = 3  # type: ignore[misc]


def test_zero_time_limit_still_runs_greedy_by_size():
    rng = np.random.default_rng(7)
    lower = rng.integers(0, 50, 60)
    upper = lower + rng.integers(1, 20, 60)
    size = rng.integers(1, 1000, 60)
    r = pack(lower, upper, size, time_limit=0)
    check(lower, upper, size, r.offsets)
    assert r.peak <= r.greedy_peak


# --- check() ----------------------------------------------------------------------------------

def test_check_accepts_valid_and_rejects_overlaps():
    check([0, 0], [2, 2], [4, 4], [0, 4])
    check([0, 2], [2, 4], [4, 4], [0, 0])          # not co-live
    check([0, 0], [2, 2], [0, 4], [2, 0])          # zero size overlaps nothing
    with pytest.raises(ValueError, match="buffers 0 and 1|buffers 1 and 0"):
        check([0, 1], [2, 3], [4, 4], [0, 3])
    with pytest.raises(ValueError, match="overlap"):
        check([0, 0, 0], [9, 9, 9], [4, 4, 4], [0, 8, 2])
    with pytest.raises(ValueError, match="negative offset"):
        check([0], [1], [1], [-1])
    with pytest.raises(ValueError, match="length"):
        check([0], [1], [1], [0, 0])


@settings(max_examples=100, deadline=None)
@given(instances(max_buffers=10), st.data())
def test_check_agrees_with_brute_force(inst, data):
    lower, upper, size = inst
    offsets = [data.draw(st.integers(0, 200)) for _ in size]
    bad = brute_overlaps(lower, upper, size, offsets)
    if bad:
        with pytest.raises(ValueError, match="overlap"):
            check(lower, upper, size, offsets)
    else:
        check(lower, upper, size, offsets)


# --- search object ----------------------------------------------------------------------------

def test_skyline_search_rejects_inconsistent_input():
    with pytest.raises(ValueError):
        _skyline.SkylineSearch([0], [1], [0], [1], [0, 0], [], [0, 1], [0])   # size 0
    with pytest.raises(ValueError):
        _skyline.SkylineSearch([1], [1], [0], [2], [0, 0], [], [0, 1], [0])   # span past sections
    with pytest.raises(ValueError, match="nbr_start"):
        _skyline.SkylineSearch([1, 1], [1, 1], [0, 0], [1, 1], [0, 5, 2], [1, 0], [0, 2], [0, 1])
    with pytest.raises(ValueError, match="sec_start"):
        _skyline.SkylineSearch([1, 1], [1, 1], [0, 0], [1, 1], [0, 1, 2], [1, 0], [1, 2], [0, 1])
    with pytest.raises(ValueError, match="section"):
        _skyline.SkylineSearch([1, 1], [1, 1], [0, 0], [1, 1], [0, 1, 2], [1, 0], [0, 2], [0, 0])
    ok = _skyline.SkylineSearch([1, 1], [1, 1], [0, 0], [1, 1], [0, 1, 2], [1, 0], [0, 2], [0, 1])
    assert ok.solve(2, 100, float("inf"), 0)[0] == "ok"
    assert ok.solve(1, 100, float("inf"), 0)[0] == "infeasible"
    with pytest.raises(ValueError):
        ok.solve(2, 100, float("inf"), 3)
    with pytest.raises(ValueError):
        ok.solve(2, 0, float("inf"), 0)


# --- benchmark instances ----------------------------------------------------------------------

@pytest.mark.skipif(not BENCHDATA.is_dir(), reason="public benchdata not on this machine")
def test_search_is_deterministic_and_splits_components():
    # G has three time components; the search reaches its bound within a fraction of a second.
    data = read_csv(BENCHDATA / "minimalloc-challenging/G.1048576.csv")
    first = pack(data.lower, data.upper, data.size, time_limit=60)
    second = pack(data.lower, data.upper, data.size, time_limit=60)
    assert first.peak == first.lower_bound and first.method.startswith("search:")
    assert np.array_equal(first.offsets, second.offsets) and first.method == second.method
    check(data.lower, data.upper, data.size, first.offsets)


@pytest.mark.skipif(not BENCHDATA.is_dir(), reason="public benchdata not on this machine")
def test_time_limit_cuts_the_search_short():
    data = read_csv(BENCHDATA / "minimalloc-challenging/D.1048576.csv")  # above its bound
    r = pack(data.lower, data.upper, data.size, time_limit=0.3)
    assert r.timed_out and not r.proven_optimal
    assert r.seconds < 3
    assert r.lower_bound < r.peak <= r.greedy_peak
    check(data.lower, data.upper, data.size, r.offsets)


@pytest.mark.skipif(not BENCHDATA.is_dir(), reason="public benchdata not on this machine")
@pytest.mark.parametrize("name", ["minimalloc-challenging/C.1048576.csv", "idealloc/iopddl_G_1.csv"])
def test_benchmark_instances_reach_their_bound(name):
    data = read_csv(BENCHDATA / name)
    r = pack(data.lower, data.upper, data.size, time_limit=20)
    check(data.lower, data.upper, data.size, r.offsets)
    assert r.peak == r.lower_bound
    assert r.greedy_peak > r.peak or "greedy" in r.method
