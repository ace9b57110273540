"""The static planner: packing time and quality on synthetic lifetime sets, and built-in model plans.

* :class:`PackSynthetic` -- :func:`numamem.planner.packing.pack` (default time limit, as
  ``numamem pack`` uses it) on seeded synthetic buffer sets of 10^2 to 10^5 buffers: time, and
  ``track_ratio`` = peak / lower bound (1.0 is optimal).
* :class:`PlanModels` -- ``numamem.plan(numamem.models.get(name, batch=...), nodes=[0, 1])`` for
  every built-in model: planning time, and per-arena packed peak and arena size over the lower
  bound (a plan is data: the nodes need not exist on this machine).

The public instances of ``/work/shared/benchdata`` are benchmarked in ``packing.py``.
In smoke mode (``NUMAMEM_ASV_SMOKE=1``) the synthetic sets stop at 10^3 buffers and models use
batch 1 only.
"""
import numpy as np

import numamem
from numamem.planner.packing import pack

from .common import MiB, smoke_or

COUNTS = smoke_or([100, 1_000, 10_000, 100_000], [100, 1_000])


def synthetic_buffers(n, seed=0):
    """A reproducible buffer-lifetime set shaped like a DNN's activations.

    Start times are uniform over ``n // 4`` steps, lifetimes geometric with mean 8 steps (most
    buffers are read by the next layer or two, a few live long, like skip connections), sizes
    log-uniform between 64 B and 4 MiB. About 30 buffers are live at any step.

    Parameters
    ----------
    n : int
        Number of buffers.
    seed : int, optional
        Seed of NumPy's default generator.

    Returns
    -------
    lower, upper, size : numpy.ndarray
        int64 arrays; buffer ``i`` is live on ``[lower[i], upper[i])`` and needs ``size[i]`` bytes.
    """
    rng = np.random.default_rng(seed)
    steps = max(n // 4, 10)
    lower = rng.integers(0, steps, n)
    upper = lower + np.minimum(rng.geometric(1 / 8, n), steps)
    size = np.exp(rng.uniform(np.log(64), np.log(4 * MiB), n)).round().astype(np.int64)
    return lower.astype(np.int64), upper.astype(np.int64), size


class PackSynthetic:
    """Packing synthetic lifetime sets of 10^2 to 10^5 buffers (64-byte alignment)."""

    params = [COUNTS]
    param_names = ["buffers"]
    timeout = 600

    def setup_cache(self):
        # One packing per count for the quality figures: the largest set takes seconds, too long
        # to repeat for every track_ call. The packer is deterministic within its time limit.
        out = {}
        for n in COUNTS:
            result = pack(*synthetic_buffers(n), align=64)
            out[n] = {"ratio": result.ratio, "seconds": result.seconds, "timed_out": result.timed_out}
        return out

    def setup(self, cache, buffers):
        self.buffers = synthetic_buffers(buffers)

    def time_pack(self, cache, buffers):
        pack(*self.buffers, align=64)

    def track_ratio(self, cache, buffers):
        """Packed peak over the lower bound (1.0: optimal)."""
        return cache[buffers]["ratio"]

    track_ratio.unit = "peak/lower bound"

    def track_timed_out(self, cache, buffers):
        """1 when the packer's time limit cut the search short (the ratio may then vary)."""
        return int(cache[buffers]["timed_out"])

    track_timed_out.unit = "bool"


class PlanModels:
    """Planning every built-in model onto two nodes."""

    params = (["mlp", "vgg16", "resnet50", "mobilenet_v2", "bert_base"], smoke_or([1, 8], [1]))
    param_names = ["model", "batch"]
    timeout = 300

    def setup(self, model, batch):
        self.graph = numamem.models.get(model, batch=batch)

    def time_plan(self, model, batch):
        numamem.plan(self.graph, nodes=[0, 1])

    def time_build_graph(self, model, batch):
        numamem.models.get(model, batch=batch)

    def track_peak_over_lower_bound(self, model, batch):
        """Largest packed peak / lower bound over the arenas (1.0: every arena at its bound)."""
        arenas = numamem.plan(self.graph, nodes=[0, 1]).arenas
        return max(a.peak / a.lower_bound for a in arenas)

    track_peak_over_lower_bound.unit = "peak/lower bound"

    def track_size_over_lower_bound(self, model, batch):
        """Largest arena size (peak rounded up to a page) / lower bound over the arenas."""
        arenas = numamem.plan(self.graph, nodes=[0, 1]).arenas
        return max(a.size / a.lower_bound for a in arenas)

    track_size_over_lower_bound.unit = "size/lower bound"

    def track_arena_mib(self, model, batch):
        """Total arena size over both nodes, MiB."""
        arenas = numamem.plan(self.graph, nodes=[0, 1]).arenas
        return sum(a.size for a in arenas) / MiB

    track_arena_mib.unit = "MiB"

