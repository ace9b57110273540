"""Dask through numamem: NUMA-bound workers and placed arrays against plain Dask.

* :class:`Compute` -- one chunked matmul (``x @ w``, kept on the workers) or one reduction
  (``(x * x).sum(axis=1)``) per call, on two one-thread worker processes: ``numamem`` workers are
  preloaded with ``numamem.dask`` (bound to the machine's CPU nodes, round-robin; on a one-node
  machine both to node 0; task memory from the node's numamem pool), ``x`` is a placed array and
  tasks are routed to its chunks' nodes; ``numamem-policy`` is the same with
  ``--numamem-allocator policy`` (NumPy's allocator under the node's kernel policy); ``plain``
  workers have no preload and ``x`` is an ordinary dask array with the same chunks.
* :class:`SpeedupVsPlain` -- a numamem cluster and a plain one alive in one process, calls
  alternating, ``track_speedup`` = median plain call / median numamem call (``> 1``: numamem is
  faster); ``track_remote_mib*`` = MiB of ``x`` that the workers hold on a node other than their
  own (from the kernel, :func:`numamem.dask.report`).

On one node parity is expected: binding changes nothing there but adds the routing overhead.
Smoke mode (``NUMAMEM_ASV_SMOKE=1``) uses a small ``x``.
"""
import gc
import logging
import os
import time

import numpy as np

from .common import MiB, cpu_nodes, smoke_or

#: ``x`` is ROWS x COLS float64 in CHUNK-row chunks, ``w`` is COLS x OUT.
ROWS, COLS, CHUNK, OUT = smoke_or((8192, 1024, 1024, 256), (512, 128, 128, 32))
#: Alternating calls per mode in SpeedupVsPlain (the ratio is of medians over these).
ROUNDS = smoke_or(5, 1)
# The worker processes log too: a heartbeat racing the close logs a CommClosedError traceback
# from each worker process, which tools/asv-smoke would take for a failed benchmark. Children
# inherit this setting through the environment (dask reads DASK_* variables at import).
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")

OPS = ["matmul", "reduction"]
MODES = ["numamem", "numamem-policy", "plain"]


class ClusterPair:
    """Two one-thread worker processes, preloaded or not, with ``x`` persisted on them."""

    def __init__(self, mode):
        try:
            import dask.array as da
            from distributed import Client, LocalCluster, wait

            import numamem.dask as nd
        except ImportError:
            raise NotImplementedError("needs numamem[dask]") from None
        self.mode, self.da, self.nd, self.wait = mode, da, nd, wait
        preload = {}
        self.placed = mode.startswith("numamem")
        if self.placed:
            nodes = ",".join(map(str, cpu_nodes()))
            allocator = "policy" if mode == "numamem-policy" else "pool"
            preload = {"preload": ["numamem.dask"],
                       "preload_argv": ["--numamem-nodes", nodes, "--numamem-allocator", allocator]}
        # silence_logs: a worker's heartbeat racing the scheduler's close logs a traceback, which
        # tools/asv-smoke would take for a failed benchmark.
        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=0,
                                    dashboard_address=":0", silence_logs=logging.CRITICAL, **preload)
        self.client = Client(self.cluster, set_as_default=False)
        with self.client.as_current():
            if self.placed:
                x = nd.placed_array((ROWS, COLS), np.float64, chunks=(CHUNK, COLS), fill="random")
                self.x = nd.persist(x)
            else:
                rng = da.random.default_rng(0)
                self.x = self.client.persist(rng.random((ROWS, COLS), chunks=(CHUNK, COLS)))
            self.w = self.client.persist(da.ones((COLS, OUT), chunks=(COLS, OUT)) / COLS)
            wait([self.x, self.w])
        self.run("matmul")  # warm: imports, BLAS, the workers' first faults

    def run(self, op):
        with self.client.as_current():
            if op == "matmul":
                y = self.x @ self.w
                y = self.nd.persist(y) if self.placed else self.client.persist(y)
                self.wait(y)
                del y
            else:
                y = (self.x * self.x).sum(axis=1)
                if self.placed:
                    self.nd.compute(y)
                else:
                    self.client.compute(y).result()

    def remote_mib(self):
        with self.client.as_current():
            return sum(r.remote_data_bytes for r in self.nd.report(self.client)) / MiB

    def close(self):
        self.client.close()
        self.cluster.close()
        gc.collect()


class Compute:
    """One call of each op on numamem-bound and plain workers."""

    params = (MODES, OPS)
    param_names = ["workers", "op"]
    number = 1
    repeat = (3, 5, 60.0)
    timeout = 600

    def setup(self, mode, op):
        self.s = ClusterPair(mode)

    def teardown(self, mode, op):
        self.s.close()

    def time_compute(self, mode, op):
        self.s.run(op)


class SpeedupVsPlain:
    """A numamem mode against plain Dask in one process, calls alternating (ratio of medians)."""

    params = (OPS, [m for m in MODES if m != "plain"])
    param_names = ["op", "workers"]
    number = 1
    repeat = 1
    timeout = 900

    def setup(self, op, mode):
        self.s = {m: ClusterPair(m) for m in (mode, "plain")}

    def teardown(self, op, mode):
        for s in self.s.values():
            s.close()

    def track_speedup(self, op, mode):
        times = {m: [] for m in self.s}
        for i in range(ROUNDS):
            for m in (list(self.s) if i % 2 else list(self.s)[::-1]):
                start = time.perf_counter()
                self.s[m].run(op)
                times[m].append(time.perf_counter() - start)
        return float(np.median(times["plain"]) / np.median(times[mode]))

    track_speedup.unit = "x (plain / numamem)"

    def track_remote_mib(self, op, mode):
        return self.s[mode].remote_mib()

    track_remote_mib.unit = "MiB"

    def track_remote_mib_plain(self, op, mode):
        return self.s["plain"].remote_mib()

    track_remote_mib_plain.unit = "MiB"
