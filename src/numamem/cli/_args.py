"""Arguments shared by the ``numamem`` commands, and the one reader of node-pair matrix files.

Every command declares ``GRAPH``/``--batch``/``--seq-len`` with :func:`add_graph_args` and its
nodes with :func:`add_nodes_arg`, so the same option means the same thing everywhere (as asv's
``commands/common_args.py`` does for its commands). Values that need the machine or a file
(node ids, graphs, matrices) are resolved by the command itself, so their errors go through
:func:`numamem.cli.main`'s one error policy.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = [
    "CommandError", "MAX_NODES", "NodeMatrix", "add_graph_args", "add_nodes_arg", "node_count", "parse_nodes",
    "positive_float", "positive_int", "read_matrix", "resolve_graph", "resolve_nodes",
]


class CommandError(Exception):
    """An error a command reports as one line on stderr with exit status 2.

    Defined here rather than in :mod:`numamem.cli` so that the command modules, which
    :mod:`numamem.cli` imports, need not import their own package back.
    """


# ----------------------------------------------------------------------------- argparse types
def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0 (a time limit in seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


# ----------------------------------------------------------------------------- shared options
def add_graph_args(parser: argparse.ArgumentParser) -> None:
    """Declare ``GRAPH``, ``--batch`` and ``--seq-len`` (read by :func:`resolve_graph`)."""
    parser.add_argument("graph", metavar="GRAPH", help="built-in model name or numamem-graph/1 file")
    parser.add_argument("--batch", type=positive_int, help="batch size of a built-in model (default 1)")
    parser.add_argument("--seq-len", type=positive_int, help="sequence length of bert_base (default 128)")


#: Linux numbers at most 1024 NUMA nodes (MAX_NUMNODES with the largest CONFIG_NODES_SHIFT, 10).
MAX_NODES = 1024


def node_count(text: str) -> int:
    """argparse type of ``--node-count``: 1 to :data:`MAX_NODES`."""
    value = positive_int(text)
    if value > MAX_NODES:
        raise argparse.ArgumentTypeError(f"Linux has at most {MAX_NODES} NUMA nodes, got {text!r}")
    return value


def add_nodes_arg(parser: argparse.ArgumentParser, *, counts: bool, default: str) -> None:
    """Declare ``--nodes`` (and with ``counts``, ``--node-count``, exclusive of it).

    ``--nodes`` takes node ids of this machine in numactl's syntax (:func:`parse_nodes`);
    ``--node-count N`` means nodes 0 to N-1 of any machine (a plan is data). ``default`` says in
    the help what the command does with neither. :func:`resolve_nodes` reads both.
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--nodes", metavar="IDS",
                       help="node ids of this machine, as numactl writes them: 0 or 0,2 or 0-3 or 0-1,3 "
                       f"or all (default: {default})")
    if counts:
        group.add_argument("--node-count", type=node_count, metavar="N",
                           help="nodes 0 to N-1 of a machine that need not be this one")


def parse_nodes(text: str) -> list[int] | None:
    """Parse a node list in numactl's syntax: ids ascending, or None for ``all``.

    Items are ids (``2``) or inclusive ranges (``0-3``) separated by commas; a node may appear
    once. The relative (``+``) and inverted (``!``) forms of numactl are not taken.

    >>> parse_nodes("0"), parse_nodes("2,0"), parse_nodes("0-1,3"), parse_nodes("all")
    ([0], [0, 2], [0, 1, 3], None)

    Raises
    ------
    ValueError
        On an empty list or item, a reversed range, a node named twice, an id past
        :data:`MAX_NODES`, or anything else (the message quotes the text).
    """
    spec = text.strip()
    if spec.lower() == "all":
        return None
    if not spec:
        raise ValueError("--nodes is empty: give node ids such as 0, 0,2, 0-3 or all")
    if spec[0] in "+!":
        raise ValueError(f"--nodes {text!r}: numactl's relative (+) and inverted (!) node lists are "
                         "not supported; give node ids such as 0, 0,2, 0-3 or all")
    nodes: set[int] = set()
    for item in spec.split(","):
        item = item.strip()
        first, dash, last = item.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            what = "an empty item" if not item else f"{item!r} is not a node id or a range a-b"
            raise ValueError(f"--nodes {text!r}: {what} (node ids as numactl writes them: 0, 0,2, 0-3, 0-1,3, all)")
        lo = int(first)
        hi = int(last) if dash else lo
        if hi < lo:
            raise ValueError(f"--nodes {text!r}: the range {item} runs backwards (write {hi}-{lo})")
        if hi >= MAX_NODES:
            raise ValueError(f"--nodes {text!r}: node {hi} is past the last node id Linux allows ({MAX_NODES - 1})")
        again = nodes.intersection(range(lo, hi + 1))
        if again:
            raise ValueError(f"--nodes {text!r}: node {min(again)} is named twice")
        nodes.update(range(lo, hi + 1))
    return sorted(nodes)


def resolve_nodes(args: argparse.Namespace) -> list[int] | None:
    """The nodes ``--nodes`` or ``--node-count`` ask for, or None when neither is given.

    ``--nodes`` ids must be nodes this process may place memory on (checked here, by
    :meth:`numamem.Topology.check_memory_node`); ``all`` is every such node.
    """
    if args.nodes is not None:
        from numamem._topology import topology

        topo = topology()
        nodes = parse_nodes(args.nodes)
        if nodes is None:
            return topo.memory_nodes()
        for n in nodes:
            topo.check_memory_node(n, "--nodes")
        return nodes
    count = getattr(args, "node_count", None)
    if count is not None:
        return list(range(count))
    return None


# ----------------------------------------------------------------------------- graphs
def resolve_graph(spec: str, batch: int | None = None, seq_len: int | None = None):
    """A built-in model name (with ``batch``/``seq_len``) or a ``numamem-graph/1`` file.

    Returns
    -------
    numamem.planner.Graph
    """
    import numamem.models as models
    from numamem.planner.graph import load_graph

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


# ----------------------------------------------------------------------------- matrix files
@dataclass(frozen=True)
class NodeMatrix:
    """A node-pair matrix read from a file by :func:`read_matrix`.

    Attributes
    ----------
    path : str
        The file it came from.
    values : object
        A square list (in the order of the nodes) or a mapping ``{a: {b: value}}`` by node id.
    threads : mapping or None
        Threads per reader node, when the file is ``numamem bench`` output.
    """

    path: str
    values: Any
    threads: Mapping[str, Any] | None = None

    def bench_result(self) -> dict[str, Any]:
        """The matrix as :func:`numamem.runtime.runner.run_graph` takes a ``numamem bench`` result."""
        out: dict[str, Any] = {"bandwidth": self.values}
        if self.threads is not None:
            out["threads"] = self.threads
        return out


def read_matrix(path: str, key: str) -> NodeMatrix:
    """Read a node-pair matrix from JSON: a square list, ``{a: {b: v}}``, or an object holding one under ``key``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: bad JSON: {exc}") from None
    threads = None
    if isinstance(data, dict) and key in data:
        threads = data.get("threads") if isinstance(data.get("threads"), dict) else None
        data = data[key]
    if not isinstance(data, (list, dict)):
        raise ValueError(f"{path}: expected a square list or an object of node-pair {key}")
    return NodeMatrix(path=path, values=data, threads=threads)
