"""``numamem bench``: measure this machine (a thin wrapper over :mod:`numamem.runtime.bench`)."""
from __future__ import annotations

import argparse
from typing import Any

from numamem.cli._args import check_writable
from numamem.cli._progress import Progress


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``numamem bench``."""
    from numamem._jsonfile import dump_json
    from numamem.runtime import bench

    check_writable(args.json, "--json")
    result = bench.measure(quick=args.quick, progress=Progress("numamem bench"))
    if args.json:
        dump_json(result, args.json)
    print(bench.format_table(result))
    return 0


def add_command(subparsers: Any) -> None:
    """Register ``numamem bench``."""
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
