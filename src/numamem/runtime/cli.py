"""``numamem run`` and ``numamem bench``: thin wrappers over :mod:`numamem.runtime.runner` and
:mod:`numamem.runtime.bench`."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
from numamem.cli import positive_int
from numamem._jsonfile import dump_json


class Progress:
    """Status lines on stderr, once the command has run for ``after`` seconds, at most every ``every`` s."""

    def __init__(self, prog: str, after: float = 3.0, every: float = 1.0, stream=None):
        self.prog, self.after, self.every = prog, after, every
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.monotonic()
        self._last = -1e9

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now - self.t0 < self.after or now - self._last < self.every:
            return
        self._last = now
        print(f"{self.prog}: [{now - self.t0:5.1f} s] {message}", file=self.stream, flush=True)


def _modes(text: str) -> list[str]:
    from numamem.runtime.executor import MODES

    modes = [m.strip() for m in text.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise ValueError(f"--mode: unknown mode {m!r} (known: {', '.join(MODES)})")
    if not modes:
        raise ValueError("--mode: give at least one mode")
    if len(set(modes)) != len(modes):
        raise ValueError(f"--mode repeats a mode: {text!r}")
    return modes


def cmd_run(args: argparse.Namespace) -> int:
    """Run ``numamem run``."""
    from numamem.planner.cli import _matrix_file, parse_nodes, resolve_graph
    from numamem.runtime import runner

    graph = resolve_graph(args.graph, args.batch, args.seq_len)
    nodes = parse_nodes(args.nodes) if args.nodes else None
    modes = _modes(args.mode)
    weights = runner.load_npz(args.weights, graph, graph.weights, "weight") if args.weights else None
    inputs = runner.load_npz(args.inputs, graph, graph.inputs, "input") if args.inputs else None
    bandwidth = None
    if args.bandwidth:
        with open(args.bandwidth, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{args.bandwidth}: bad JSON: {exc}") from None
        # a whole numamem bench result keeps its threads per node for the estimate
        bandwidth = data if isinstance(data, dict) and "bandwidth" in data else _matrix_file(args.bandwidth, "bandwidth")
    reference = {"auto": None, "independent": True, "kernels": False}[args.reference]
    report = runner.run_graph(
        graph, nodes, modes, iters=args.iters, seed=args.seed, weights=weights, inputs=inputs,
        workers=args.workers, bandwidth=bandwidth, independent_reference=reference,
        progress=Progress("numamem run"), keep_outputs=bool(args.outputs),
    )
    if args.outputs:
        first = report["_outputs"][modes[0]]
        np.savez(args.outputs, **first)
    if args.json:
        runner.write_json(report, args.json)
    if not args.quiet:
        print(runner.format_report(report, layers=args.layers))
    if not report["ok"]:
        bad = [m for m, e in report["modes"].items() if not e["ok"]]
        print(f"numamem run: error: outputs of {', '.join(bad)} differ from the float64 reference by more "
              f"than {runner.RTOL:g}", file=sys.stderr)
        return 1
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``numamem bench``."""
    from numamem.runtime import bench

    result = bench.measure(quick=args.quick, progress=Progress("numamem bench"))
    if args.json:
        dump_json(result, args.json)
    print(bench.format_table(result))
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``run`` and ``bench``."""
    rp = subparsers.add_parser(
        "run",
        help="run a graph planned and with first-touch / interleave baselines, and report",
        description="Plan GRAPH over NUMA nodes of this machine, run it with every mode on the same "
        "weights and inputs (random from --seed unless given), check each mode's outputs against a "
        "float64 reference (relative error 1e-4), and report median times, bytes read locally and "
        "remotely, where the pages are, peak memory, and an estimated multi-socket speed-up.",
    )
    rp.add_argument("graph", metavar="GRAPH", help="built-in model name or numamem-graph/1 file")
    rp.add_argument("--batch", type=positive_int, help="batch size of a built-in model (default 1)")
    rp.add_argument("--seq-len", type=positive_int, help="sequence length of bert_base (default 128)")
    rp.add_argument("--nodes", help="node ids (0,1 or 2,) or a count N; they must exist here "
                    "(default: every allowed node with memory)")
    rp.add_argument("--mode", default="planned,first-touch,interleave",
                    help="comma-separated modes among planned, first-touch, interleave (default: all)")
    rp.add_argument("--iters", type=positive_int, default=5, help="timed iterations per mode (default 5)")
    rp.add_argument("--seed", type=int, default=0, help="seed of random weights and inputs (default 0)")
    rp.add_argument("--weights", metavar="W.npz", help="weights by tensor name (default: random)")
    rp.add_argument("--inputs", metavar="X.npz", help="inputs by tensor name (default: random)")
    rp.add_argument("--outputs", metavar="Y.npz", help="write the first mode's outputs")
    rp.add_argument("--json", metavar="OUT", help="write the report (numamem-run/1)")
    rp.add_argument("--workers", type=positive_int, help="worker threads per node (default: the node's CPUs)")
    rp.add_argument("--bandwidth", metavar="FILE",
                    help="numamem bench --json output: measured matrix for the speed-up estimate")
    rp.add_argument("--reference", choices=("auto", "independent", "kernels"), default="auto",
                    help="float64 reference: the independent reference ops, the kernels in float64, or "
                    "auto (independent up to 2e10 flops)")
    rp.add_argument("--layers", action="store_true", help="also print per-layer median times")
    rp.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    rp.set_defaults(func=cmd_run)

    bp = subparsers.add_parser(
        "bench",
        help="measure this machine: per node-pair bandwidth and latency, allocation costs",
        description="Per pair of (CPU node, memory node): read bandwidth of the CPU node's threads over "
        "a buffer placed on the memory node, and latency by a dependent pointer chase over a random "
        "cyclic permutation in a buffer bigger than the last-level cache; and the cost of numamem.empty "
        "against np.empty. --json writes a file that `numamem plan --bandwidth` and `numamem run "
        "--bandwidth` read.",
    )
    bp.add_argument("--json", metavar="OUT", help="write the measurements (numamem-bench/1)")
    bp.add_argument("--quick", action="store_true", help="smaller buffers and fewer repeats (a few seconds)")
    bp.set_defaults(func=cmd_bench)
