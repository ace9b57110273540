"""The runtime: planned execution against the first-touch and interleave baselines.

* :class:`Step` -- one forward pass per mode (``time_step``), each mode in its own process.
* :class:`SpeedupVsFirstTouch` -- the figure that matters: planned and first-touch executors
  alive in one process, steps alternating between them, ``track_speedup`` = median first-touch
  step / median planned step (same run, same load). ``> 1`` means planned is faster.
* :class:`Memory` -- peak memory of materialising and running each mode (``peakmem_*``, whole
  process), the plan's arena total and the sum of all tensors (``track_*``, MiB).

Models: ``mlp`` at batch 64 and ``resnet50`` at batch 2 on the first usable node (on a multi-node
machine, on every usable node). Smoke mode (``NUMAMEM_ASV_SMOKE=1``) uses small MLPs instead.
"""
import gc

import numpy as np

import numamem.models
from numamem.planner import plan
from numamem.runtime.executor import make_executor
from numamem.runtime.runner import random_tensors

from .common import MiB, smoke_or, usable_nodes

CASES = smoke_or(
    {"mlp-b64": ("mlp", 64, {}), "resnet50-b2": ("resnet50", 2, {})},
    {"mlp-small-b64": ("mlp", 64, {"features": (256, 512, 512, 64)}),
     "mlp-small-b8": ("mlp", 8, {"features": (256, 1024, 64)})},
)
#: Alternating steps per mode in SpeedupVsFirstTouch (the ratio is of medians over these).
ROUNDS = smoke_or(15, 3)


def _prepare(case):
    name, batch, kw = CASES[case]
    g = numamem.models.get(name, batch=batch, **kw)
    p = plan(g, nodes=usable_nodes())
    ws, xs = random_tensors(g, 0)
    return g, p, ws, xs


def _executor(mode, g, p, ws, xs):
    ex = make_executor(mode, p, g)
    ex.load_weights(ws)
    ex.set_inputs(xs)
    ex.step()  # warm: BLAS buffers, first faults of the baselines' heap
    return ex


class Step:
    """One forward pass of each mode."""

    params = (list(CASES), ["planned", "first-touch", "interleave"])
    param_names = ["model", "mode"]
    number = 1
    repeat = (5, 15, 60.0)
    timeout = 600

    def setup(self, case, mode):
        g, p, ws, xs = _prepare(case)
        self.ex = _executor(mode, g, p, ws, xs)

    def teardown(self, case, mode):
        self.ex.close()
        del self.ex
        gc.collect()

    def time_step(self, case, mode):
        self.ex.step()


class SpeedupVsFirstTouch:
    """Planned against first-touch in one process, steps alternating (ratio of medians)."""

    params = (list(CASES),)
    param_names = ["model"]
    number = 1
    repeat = 1
    timeout = 900

    def setup(self, case):
        g, p, ws, xs = _prepare(case)
        self.exs = {m: _executor(m, g, p, ws, xs) for m in ("planned", "first-touch")}

    def teardown(self, case):
        for ex in self.exs.values():
            ex.close()
        del self.exs
        gc.collect()

    def track_speedup(self, case):
        times = {m: [] for m in self.exs}
        for i in range(ROUNDS):
            order = ("planned", "first-touch") if i % 2 else ("first-touch", "planned")
            for m in order:
                times[m].append(self.exs[m].step())
        return float(np.median(times["first-touch"]) / np.median(times["planned"]))

    track_speedup.unit = "x (first-touch / planned)"


class Memory:
    """Peak memory of each mode, against the plan's arenas and the sum of all tensors."""

    params = (list(CASES),)
    param_names = ["model"]
    timeout = 600

    def setup(self, case):
        self.g, self.p, self.ws, self.xs = _prepare(case)

    def _run(self, mode):
        ex = _executor(mode, self.g, self.p, self.ws, self.xs)
        ex.step()
        ex.close()

    def peakmem_planned(self, case):
        self._run("planned")

    def peakmem_first_touch(self, case):
        self._run("first-touch")

    def track_plan_arena_mib(self, case):
        return sum(a.size for a in self.p.arenas) / MiB

    track_plan_arena_mib.unit = "MiB"

    def track_all_tensors_mib(self, case):
        return sum(self.g.nbytes(n) for n in self.g.tensors) / MiB

    track_all_tensors_mib.unit = "MiB"
