"""``numamem plan``: partition a graph over NUMA nodes and print (or write) the plan."""
from __future__ import annotations

import argparse
from typing import Any

from numamem.cli._args import (
    add_graph_args, add_nodes_arg, check_writable, positive_int, read_matrix, resolve_graph, resolve_nodes,
)

#: Nodes a plan describes without --nodes or --node-count: 0 and 1, of any machine.
DEFAULT_NODE_COUNT = 2


def cmd_plan(args: argparse.Namespace) -> int:
    """Run ``numamem plan``."""
    from numamem.planner.planner import plan

    check_writable(args.json, "--json")
    check_writable(args.export_graph, "--export-graph")
    graph = resolve_graph(args.graph, args.batch, args.seq_len, args.input_shape)
    nodes = resolve_nodes(args)
    if nodes is None:
        nodes = list(range(DEFAULT_NODE_COUNT))
    distances = read_matrix(args.distances, "distances", nodes) if args.distances else None
    bandwidth = read_matrix(args.bandwidth, "bandwidth", nodes) if args.bandwidth else None
    if args.export_graph:
        graph.to_json(args.export_graph)
    p = plan(
        graph,
        nodes=nodes,
        page_size=args.page_size,
        batch_axis_only=args.batch_axis_only,
        distances=distances.values if distances else None,
        bandwidth=bandwidth.values if bandwidth else None,
        alignment=args.alignment,
        replicate_bytes=args.replicate_bytes,
        time_limit=args.time_limit,
    )
    if args.json:
        p.to_json(args.json)
    if not args.quiet:
        print(p.report(layers=not args.no_layers))
    return 0


def add_command(subparsers: Any) -> None:
    """Register ``numamem plan``."""
    ap = subparsers.add_parser(
        "plan",
        help="plan a layer graph over NUMA nodes (blocks, arenas, traffic)",
        description="Partition GRAPH over NUMA nodes, place every block in per-node arenas with "
        "memory reuse, verify the plan and print arenas against their lower bounds, page padding "
        "and remote bytes per layer. A plan is data: with --node-count it may describe nodes this "
        "machine lacks; --nodes names nodes of this machine.",
    )
    add_graph_args(ap)
    add_nodes_arg(ap, counts=True, default="--node-count 2, nodes 0 and 1 of any machine")
    ap.add_argument("--page-size", type=positive_int, default=4096, help="page size in bytes (default 4096)")
    ap.add_argument("--alignment", type=positive_int, default=64, help="alignment of single-node blocks (default 64)")
    ap.add_argument("--batch-axis-only", action="store_true",
                    help="split every layer on its batch axis instead of choosing per layer")
    ap.add_argument("--distances", metavar="FILE",
                    help="JSON node distance matrix (by node id, or a list in the order of the nodes; "
                    "numamem topology --json output works)")
    ap.add_argument("--bandwidth", metavar="FILE",
                    help="JSON measured bandwidth matrix in bytes/s (numamem bench --json output works)")
    ap.add_argument("--replicate-bytes", type=int, help="replicate weights up to this size (default 16 MiB)")
    ap.add_argument("--time-limit", type=float, help="packer time limit per node in seconds")
    ap.add_argument("--json", metavar="OUT", help="write the plan (numamem-plan/1)")
    ap.add_argument("--export-graph", metavar="OUT", help="write the graph (numamem-graph/1)")
    ap.add_argument("--no-layers", action="store_true", help="print arenas only, not the per-layer table")
    ap.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    ap.set_defaults(func=cmd_plan)
