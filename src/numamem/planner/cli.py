"""``numamem plan`` (and, when present, ``numamem pack``): thin wrappers over the Python API."""
from __future__ import annotations

import argparse
import importlib
import json
import os
from typing import Any

from numamem.planner.graph import Graph, load_graph
from numamem.cli import positive_int


def parse_nodes(text: str) -> list[int]:
    """Parse ``--nodes``: a comma-separated list of ids (``0,2``; ``3,`` is node 3 alone) or a count.

    >>> parse_nodes("0,2"), parse_nodes("4"), parse_nodes("3,")
    ([0, 2], [0, 1, 2, 3], [3])
    """
    text = text.strip()
    try:
        if "," in text:
            nodes = [int(p) for p in text.split(",") if p.strip()]
        else:
            count = int(text)
            if count < 1:
                raise ValueError
            nodes = list(range(count))
    except ValueError:
        raise ValueError(f"--nodes must be a count N or a comma-separated list of node ids, got {text!r}") from None
    if not nodes or any(n < 0 for n in nodes):
        raise ValueError(f"--nodes must name non-negative node ids, got {text!r}")
    return nodes


def _matrix_file(path: str, key: str) -> Any:
    """Read a node-pair matrix from JSON: a square list, ``{a: {b: v}}``, or an object holding one under ``key``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: bad JSON: {exc}") from None
    if isinstance(data, dict) and key in data:
        data = data[key]
    if not isinstance(data, (list, dict)):
        raise ValueError(f"{path}: expected a square list or an object of node-pair {key}")
    return data


def resolve_graph(spec: str, batch: int | None = None, seq_len: int | None = None) -> Graph:
    """A built-in model name (with ``batch``/``seq_len``) or a ``numamem-graph/1`` file."""
    import numamem.models as models

    key = spec.strip().lower().replace("-", "_")
    if key in models.names():
        kwargs: dict[str, Any] = {}
        if seq_len is not None:
            if key != "bert_base":
                raise ValueError("--seq-len applies to bert_base only")
            kwargs["seq_len"] = seq_len
        return models.get(key, batch=1 if batch is None else batch, **kwargs)
    if not os.path.exists(spec):
        raise ValueError(f"{spec!r} is neither a built-in model ({', '.join(models.names())}) nor a file")
    if batch is not None or seq_len is not None:
        raise ValueError("--batch and --seq-len apply to built-in models; a graph file fixes its shapes")
    return load_graph(spec)


def cmd_plan(args: argparse.Namespace) -> int:
    """Run ``numamem plan``."""
    from numamem.planner.planner import plan

    graph = resolve_graph(args.graph, args.batch, args.seq_len)
    if args.export_graph:
        graph.to_json(args.export_graph)
    p = plan(
        graph,
        nodes=parse_nodes(args.nodes),
        page_size=args.page_size,
        batch_axis_only=args.batch_axis_only,
        distances=_matrix_file(args.distances, "distances") if args.distances else None,
        bandwidth=_matrix_file(args.bandwidth, "bandwidth") if args.bandwidth else None,
        alignment=args.alignment,
        replicate_bytes=args.replicate_bytes,
        time_limit=args.time_limit,
    )
    if args.json:
        p.to_json(args.json)
    if not args.quiet:
        print(p.report(layers=not args.no_layers))
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``plan`` (and ``pack``, from :mod:`numamem.planner.pack_cli`, when it exists)."""
    ap = subparsers.add_parser(
        "plan",
        help="plan a layer graph over NUMA nodes (blocks, arenas, traffic)",
        description="Partition GRAPH over NUMA nodes, place every block in per-node arenas with "
        "memory reuse, verify the plan and print arenas against their lower bounds, page padding "
        "and remote bytes per layer. A plan is data: the nodes need not exist on this machine.",
    )
    ap.add_argument("graph", metavar="GRAPH", help="built-in model name or numamem-graph/1 file")
    ap.add_argument("--batch", type=positive_int, help="batch size of a built-in model (default 1)")
    ap.add_argument("--seq-len", type=positive_int, help="sequence length of bert_base (default 128)")
    ap.add_argument("--nodes", default="0,1",
                    help="node ids as a list (0,1 or 2,) or a count N meaning 0..N-1 (default 0,1)")
    ap.add_argument("--page-size", type=positive_int, default=4096, help="page size in bytes (default 4096)")
    ap.add_argument("--alignment", type=positive_int, default=64, help="alignment of single-node blocks (default 64)")
    ap.add_argument("--batch-axis-only", action="store_true",
                    help="split every layer on its batch axis instead of choosing per layer")
    ap.add_argument("--distances", metavar="FILE", help="JSON node distance matrix (order of --nodes, or by id)")
    ap.add_argument("--bandwidth", metavar="FILE", help="JSON measured bandwidth matrix in bytes/s")
    ap.add_argument("--replicate-bytes", type=int, help="replicate weights up to this size (default 16 MiB)")
    ap.add_argument("--time-limit", type=float, help="packer time limit per node in seconds")
    ap.add_argument("--json", metavar="OUT", help="write the plan (numamem-plan/1)")
    ap.add_argument("--export-graph", metavar="OUT", help="write the graph (numamem-graph/1)")
    ap.add_argument("--no-layers", action="store_true", help="print arenas only, not the per-layer table")
    ap.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    ap.set_defaults(func=cmd_plan)

    try:
        pack_cli = importlib.import_module("numamem.planner.pack_cli")
    except ModuleNotFoundError as exc:
        if exc.name != "numamem.planner.pack_cli":
            raise
    else:
        pack_cli.add_commands(subparsers)
