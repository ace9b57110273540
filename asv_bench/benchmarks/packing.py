"""The memory packer on the public planner instances (GitHub issue 5).

``time_pack`` is the full packer (greedy portfolio, then the skyline search up to the default
time limit); ``time_greedy_by_size`` is the baseline measured in the same run, so the two can be
compared as a ratio. ``track_ratio`` / ``track_greedy_ratio`` record peak / lower bound of each.
Instances come from ``$NUMAMEM_BENCHDATA`` (default: ``shared/benchdata`` beside the repository);
a missing file skips its case. Smoke mode packs three quick instances with a 1 s limit.
"""
import os
from pathlib import Path

import numpy as np

from numamem.cli.pack import read_csv
from numamem.planner import _greedy, packing

from .common import smoke_or

_REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("NUMAMEM_BENCHDATA", _REPO.parent / "shared" / "benchdata"))
INSTANCES = smoke_or(
    [f"minimalloc-challenging/{c}.1048576.csv" for c in "ABCDEFGHIJK"] + [
        "idealloc/somas_tensors_resnet50.csv",
        "idealloc/iopddl_G_1.csv",
        "idealloc/iopddl_S_1.csv",
        "idealloc/somas_tensors_pangu_2.6B.csv",
    ],
    ["minimalloc-challenging/C.1048576.csv", "minimalloc-challenging/G.1048576.csv", "idealloc/iopddl_G_1.csv"],
)
TIME_LIMIT = smoke_or(None, 1.0)


def load(name):
    path = DATA / name
    if not path.exists():
        raise NotImplementedError(f"{path} missing")  # asv: skip this case
    return read_csv(path)


def greedy_by_size(data):
    live = np.flatnonzero(data.size > 0)
    lo, up, sz = data.lower[live], data.upper[live], data.size[live]
    order = np.lexsort((-(up - lo), -sz)).astype(np.int64)
    off = _greedy.greedy(lo, up, sz, order, True)
    return int((off + sz).max()) if sz.size else 0


class Pack:
    params = [INSTANCES]
    param_names = ["instance"]
    number = 1
    repeat = 3
    warmup_time = 0
    timeout = 120

    def setup(self, name):
        self.data = load(name)

    def time_pack(self, name):
        d = self.data
        packing.pack(d.lower, d.upper, d.size, time_limit=TIME_LIMIT)

    def time_greedy_by_size(self, name):
        greedy_by_size(self.data)


class PackQuality:
    params = [INSTANCES]
    param_names = ["instance"]
    timeout = 120

    def setup(self, name):
        self.data = load(name)

    def track_ratio(self, name):
        d = self.data
        return packing.pack(d.lower, d.upper, d.size, time_limit=TIME_LIMIT).ratio

    track_ratio.unit = "peak / lower bound"

    def track_greedy_ratio(self, name):
        d = self.data
        return greedy_by_size(d) / packing.lower_bound(d.lower, d.upper, d.size)

    track_greedy_ratio.unit = "peak / lower bound"
