"""Benchmark script (not a test): Dask with numamem-bound workers and placed arrays against plain Dask.

Uses the cases of ``asv_bench/benchmarks/dask.py`` (two one-thread worker processes per cluster;
a chunked matmul kept on the workers, and a row reduction), with both clusters alive and the
calls alternating so machine noise hits them alike. Prints the median of N calls per mode, the
ratio plain / numamem mode (``> 1``: numamem faster), and the MiB of ``x`` each cluster's workers hold
on a node other than their own (from the kernel).

Run: ``OPENBLAS_NUM_THREADS=1 python asv_bench/scripts/bench_dask.py [--runs N]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.dask import COLS, MODES, OPS, ROWS, Setup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    setups = {m: Setup(m) for m in MODES}
    try:
        print(f"x: {ROWS} x {COLS} float64 ({ROWS * COLS * 8 / 2**20:.0f} MiB), {args.runs} runs per mode")
        for op in OPS:
            times = {m: [] for m in MODES}
            for i in range(args.runs):
                for m in (MODES if i % 2 else MODES[::-1]):
                    start = time.perf_counter()
                    setups[m].run(op)
                    times[m].append(time.perf_counter() - start)
            med = {m: statistics.median(t) for m, t in times.items()}
            cells = "   ".join(f"{m} {med[m] * 1e3:7.1f} ms" for m in MODES)
            ratios = "   ".join(f"plain/{m} {med['plain'] / med[m]:.3f}" for m in MODES if m != "plain")
            print(f"{op:10s} {cells}   {ratios}")
        for m, s in setups.items():
            print(f"remote MiB held by {m} workers: {s.remote_mib():.1f}")
    finally:
        for s in setups.values():
            s.close()


if __name__ == "__main__":
    main()
