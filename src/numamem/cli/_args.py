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
    "CommandError", "NodeMatrix", "add_graph_args", "add_nodes_arg", "parse_nodes", "positive_float",
    "positive_int", "read_matrix", "resolve_graph", "resolve_nodes",
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


def add_nodes_arg(parser: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    """Declare ``--nodes`` (read by :func:`resolve_nodes`)."""
    parser.add_argument("--nodes", default=default, help=help)


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


def resolve_nodes(args: argparse.Namespace) -> list[int] | None:
    """The node ids ``args`` asks for, or None when ``--nodes`` is not given."""
    return parse_nodes(args.nodes) if args.nodes else None


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
