"""``numamem run``: run a graph planned and with the baselines, check and report
(a thin wrapper over :mod:`numamem.runtime.runner`)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from numamem.cli._args import (
    add_graph_args, add_nodes_arg, check_writable, positive_int, read_matrix, resolve_graph, resolve_nodes,
)
from numamem.cli._progress import Progress


#: Worker threads per node --workers may ask for: a bound far above any node's CPUs, so that a
#: typo is refused here rather than failing half-way through starting threads.
MAX_WORKERS = 1024


def workers_per_node(text: str) -> int:
    """argparse type of ``--workers``: 1 to :data:`MAX_WORKERS`."""
    value = positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"at most {MAX_WORKERS} worker threads per node, got {text!r}")
    return value


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
    from numamem.runtime import runner

    # np.savez adds .npz to a name without it: check the file it will really write
    outputs = args.outputs if not args.outputs or args.outputs.endswith(".npz") else args.outputs + ".npz"
    check_writable(args.json, "--json")
    check_writable(outputs, "--outputs")
    graph = resolve_graph(args.graph, args.batch, args.seq_len)
    nodes = resolve_nodes(args)
    if nodes is None:
        from numamem._topology import topology

        nodes = topology().memory_nodes()
    modes = _modes(args.mode)
    weights = runner.load_npz(args.weights, graph, graph.weights, "weight") if args.weights else None
    inputs = runner.load_npz(args.inputs, graph, graph.inputs, "input") if args.inputs else None
    bandwidth = None
    if args.bandwidth:
        target = runner.estimate_nodes(nodes)
        hint = ("; the estimate of a run on one node is for a two-node machine, nodes [0, 1]: measure one, "
                "or leave --bandwidth out for the published figures") if len(nodes) < 2 else ""
        bandwidth = read_matrix(args.bandwidth, "bandwidth", target, hint=hint).bench_result()
    reference = {"auto": None, "independent": True, "kernels": False}[args.reference]
    report = runner.run_graph(
        graph, nodes, modes, iters=args.iters, seed=args.seed, weights=weights, inputs=inputs,
        workers=args.workers, bandwidth=bandwidth, independent_reference=reference,
        progress=Progress("numamem run"), keep_outputs=bool(args.outputs),
    )
    if args.outputs:
        first = report["_outputs"][modes[0]]
        np.savez(outputs, **first)
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


def add_command(subparsers: Any) -> None:
    """Register ``numamem run``."""
    rp = subparsers.add_parser(
        "run",
        help="run a graph planned and with first-touch / interleave baselines, and report",
        description="Plan GRAPH over NUMA nodes of this machine, run it with every mode on the same "
        "weights and inputs (random from --seed unless given), check each mode's outputs against a "
        "float64 reference (relative error 1e-4), and report median times, bytes read locally and "
        "remotely, where the pages are, peak memory, and an estimated multi-socket speed-up.",
    )
    add_graph_args(rp)
    add_nodes_arg(rp, counts=False, default="all: every node with memory this process may use")
    rp.add_argument("--mode", default="planned,first-touch,interleave",
                    help="comma-separated modes among planned, first-touch, interleave (default: all)")
    rp.add_argument("--iters", type=positive_int, default=5, help="timed iterations per mode (default 5)")
    rp.add_argument("--seed", type=int, default=0, help="seed of random weights and inputs (default 0)")
    rp.add_argument("--weights", metavar="W.npz", help="weights by tensor name (default: random)")
    rp.add_argument("--inputs", metavar="X.npz", help="inputs by tensor name (default: random)")
    rp.add_argument("--outputs", metavar="Y.npz", help="write the first mode's outputs")
    rp.add_argument("--json", metavar="OUT", help="write the report (numamem-run/1)")
    rp.add_argument("--workers", type=workers_per_node, metavar="N",
                    help=f"worker threads per node, at most {MAX_WORKERS} (default: the node's CPUs)")
    rp.add_argument("--bandwidth", metavar="FILE",
                    help="numamem bench --json output: measured matrix for the speed-up estimate")
    rp.add_argument("--reference", choices=("auto", "independent", "kernels"), default="auto",
                    help="float64 reference: the independent reference ops, the kernels in float64, or "
                    "auto (independent up to 2e10 flops)")
    rp.add_argument("--layers", action="store_true", help="also print per-layer median times")
    rp.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    rp.set_defaults(func=cmd_run)
