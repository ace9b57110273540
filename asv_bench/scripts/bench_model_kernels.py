"""Benchmark script (not a test): every kernel call of a planned model, this tree's kernels against another's.

Plans MODEL (a built-in name, a graph file or an ONNX model) on node 0 with ``--workers`` workers,
takes each worker's kernel calls of every layer (what planned mode runs, block by block), and
calls them one after the other in this thread with one BLAS thread, on random inputs: the serial
kernel time of one forward pass, without the executor's threads, barriers and copies. With
``--against SRC`` (another checkout's ``src`` directory, such as main's) the same calls are bound
with that tree's kernels too and the two sides alternate pass by pass (ABBA), so machine noise
hits them alike. Times are the calling thread's CPU time (``time.thread_time``): on a shared
machine, other processes' load moves them much less than wall time. Prints per op the median
per-pass sum and the ratio.

Run: ``python asv_bench/scripts/bench_model_kernels.py MODEL [--passes N] [--against SRC]``.
The figures: "conv2d kernel speed" in ``docs/performance.md``.
"""
from __future__ import annotations

import argparse
import collections
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_conv2d import other_kernels  # noqa: E402  (a sibling script)

from numamem import models, planner, threads  # noqa: E402
from numamem.runtime import kernels as K  # noqa: E402
from numamem.runtime.program import Group, layer_work  # noqa: E402


def load_graph(name: str, batch: int):
    """An ONNX model (``.onnx``, symbolic batch set to ``batch`` if it has one) or a built-in model."""
    if name.endswith(".onnx"):
        return planner.from_onnx(name, batch=batch)
    return models.get(name, batch=batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--passes", type=int, default=11)
    ap.add_argument("--against", metavar="SRC")
    args = ap.parse_args()
    graph = load_graph(args.model, args.batch)
    plan = planner.plan(graph, nodes=[0])
    work = layer_work(plan, graph, [Group(0, 0, 0, args.workers)])
    sides = {"this": K}
    if args.against:
        sides = {"before": other_kernels(args.against), "after": K}
    rng = np.random.default_rng(0)
    calls = {s: [] for s in sides}
    for layer, per_group in zip(graph.layers, work):
        shapes = [tuple(graph.tensors[n].shape) for n in layer.inputs]
        dtype = np.dtype(graph.tensor_dtype(layer.outputs[0]))
        ins = [(rng.standard_normal(s) * 0.5).astype(graph.tensor_dtype(n)) for s, n in zip(shapes, layer.inputs)]
        for nw in per_group.values():
            for worker_calls in nw.calls:
                for call in worker_calls:
                    results = []
                    for side, kmod in sides.items():
                        k = kmod.bind(layer.op, shapes, layer.attrs, call.piece, dtype)
                        out = np.empty(k.out_shape, dtype)
                        scratch = np.empty(k.scratch_bytes, np.uint8)
                        f = (lambda k=k, ins=ins, out=out, scratch=scratch: k(ins, out, scratch))
                        f()
                        results.append(out)
                        calls[side].append((layer.op, f))
                    if len(results) == 2:
                        np.testing.assert_allclose(results[1], results[0], rtol=1e-4, atol=1e-4 * np.abs(results[0]).max())
    per_op = {s: collections.defaultdict(list) for s in sides}
    total = {s: [] for s in sides}
    names = list(sides)
    with threads.blas_single_thread():
        for p in range(args.passes):
            for side in (names if p % 2 == 0 else names[::-1]):
                acc = collections.Counter()
                for op, f in calls[side]:
                    t = time.thread_time()
                    f()
                    acc[op] += time.thread_time() - t
                total[side].append(sum(acc.values()))
                for op, v in acc.items():
                    per_op[side][op].append(v)
    ncalls = len(calls[names[0]])
    med = {s: statistics.median(v) for s, v in total.items()}
    print(f"{pathlib.Path(args.model).name} batch {args.batch}: {ncalls} kernel calls per pass ({args.workers} workers' blocks), "
          f"median of {args.passes} passes, thread CPU time")
    head = "  ".join(f"{s:>10s}" for s in names)
    print(f"  {'op':16s} {head}" + ("   after/before" if len(names) == 2 else ""))
    ops_sorted = sorted(per_op[names[0]], key=lambda o: -statistics.median(per_op[names[0]][o]))
    for op in ops_sorted + ["total"]:
        vals = [med[s] if op == "total" else statistics.median(per_op[s][op]) for s in names]
        line = "  ".join(f"{v * 1e3:7.2f} ms" for v in vals)
        ratio = f"   {vals[1] / vals[0]:.3f}" if len(vals) == 2 else ""
        print(f"  {op:16s} {line}{ratio}")


if __name__ == "__main__":
    main()
