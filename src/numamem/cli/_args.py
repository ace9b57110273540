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
    "CommandError", "MAX_NODES", "NodeMatrix", "add_graph_args", "add_nodes_arg", "check_writable", "import_onnx",
    "input_shape", "is_onnx", "node_count", "parse_nodes", "positive_float", "positive_int", "read_json", "read_matrix", "resolve_graph", "resolve_nodes",
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
    """Declare ``GRAPH``, ``--batch``, ``--seq-len`` and ``--input-shape`` (read by :func:`resolve_graph`)."""
    parser.add_argument("graph", metavar="GRAPH", help="built-in model name, numamem-graph/1 file or .onnx model")
    parser.add_argument("--batch", type=positive_int,
                        help="batch size of a built-in model (default 1), or the symbolic dimension 0 of "
                        "an ONNX model's inputs")
    parser.add_argument("--seq-len", type=positive_int, help="sequence length of bert_base (default 128)")
    parser.add_argument("--input-shape", type=input_shape, action="append", metavar="NAME=AxBxC",
                        help="whole shape of an ONNX model's input, such as data=1x3x224x224 (repeatable)")


def input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """argparse type of ``--input-shape``: ``NAME=AxBxC`` as ``(name, (A, B, C))``.

    The name is everything before the last ``=`` (ONNX names may hold ``=``); each dimension is
    a whole number of at least 1.

    >>> input_shape("data=1x3x224x224")
    ('data', (1, 3, 224, 224))
    """
    name, eq, dims = text.rpartition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=AxBxC (an input name, '=', dimensions joined by x), got {text!r}")
    parts = dims.lower().split("x")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: the shape {dims!r} must be positive whole numbers joined by "
                                         "x, such as 1x3x224x224")
    return name, tuple(int(p) for p in parts)


def is_onnx(spec: str) -> bool:
    """Whether the graph argument ``spec`` names an ONNX model file (by its ``.onnx`` suffix)."""
    return spec.lower().endswith(".onnx")


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
def resolve_graph(spec: str, batch: int | None = None, seq_len: int | None = None,
                  input_shapes: "list[tuple[str, tuple[int, ...]]] | None" = None):
    """A built-in model name (with ``batch``/``seq_len``), a ``numamem-graph/1`` file or an ONNX
    model (a path ending in ``.onnx``, with ``batch``/``input_shapes``).

    Returns
    -------
    numamem.planner.Graph

    Raises
    ------
    ValueError
        For an option that does not apply to ``spec``, or (an
        :class:`~numamem.planner.onnx.OnnxImportError`) an ONNX model the importer refuses.
    """
    import numamem.models as models
    from numamem.planner.graph import load_graph

    if is_onnx(spec):
        graph = import_onnx(spec, batch, seq_len, input_shapes)
        _check_size(graph, spec)
        return graph
    if input_shapes:
        raise ValueError(f"--input-shape applies to ONNX models (.onnx files), not {spec!r}")
    key = spec.strip().lower().replace("-", "_")
    if key in models.names():
        kwargs: dict[str, Any] = {}
        if seq_len is not None:
            if key != "bert_base":
                raise ValueError("--seq-len applies to bert_base only")
            kwargs["seq_len"] = seq_len
        graph = models.get(key, batch=1 if batch is None else batch, **kwargs)
        given = " ".join(f"{o} {v}" for o, v in (("--batch", batch), ("--seq-len", seq_len)) if v is not None)
        _check_size(graph, f"{spec} with {given}" if given else spec)
        return graph
    if not os.path.exists(spec):
        raise ValueError(f"{spec!r} is neither a built-in model ({', '.join(models.names())}) nor a file")
    if batch is not None or seq_len is not None:
        raise ValueError("--batch and --seq-len apply to built-in models and ONNX models; a graph file fixes its shapes")
    graph = load_graph(spec)
    _check_size(graph, spec)
    return graph


def onnx_shapes(input_shapes: "list[tuple[str, tuple[int, ...]]] | None") -> dict[str, tuple[int, ...]] | None:
    """``--input-shape`` values as the importer's ``input_shapes`` (an input named twice is refused)."""
    if not input_shapes:
        return None
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in input_shapes:
        if name in out:
            raise ValueError(f"--input-shape: input {name!r} is given twice")
        out[name] = shape
    return out


def import_onnx(spec: str, batch: int | None, seq_len: int | None,
                input_shapes: "list[tuple[str, tuple[int, ...]]] | None"):
    """:func:`numamem.planner.from_onnx` of the file ``spec``, with the command's options.

    A missing file is an ``OSError`` naming it; the importer's refusals are ``ValueError`` exceptions
    (:class:`~numamem.planner.onnx.OnnxImportError`) that name the input, dimension, node or op.
    """
    if seq_len is not None:
        raise ValueError("--seq-len applies to the built-in bert_base; give an ONNX model's shapes with "
                         "--input-shape NAME=AxBxC or --batch")
    if not os.path.isfile(spec):
        raise ValueError(f"{spec!r}: no such ONNX file")
    try:
        from numamem.planner import from_onnx

        return from_onnx(spec, input_shapes=onnx_shapes(input_shapes), batch=batch)
    except ImportError as exc:  # the onnx package is an extra: say so in one line
        raise CommandError(f"{spec}: importing an ONNX model needs the onnx package ({exc})") from None


#: Bytes that sizes and offsets of plans and packings can count (int64).
MAX_BYTES = 2**63 - 1


def _check_size(graph, what: str) -> None:
    """Refuse a graph whose tensors take more bytes than 64-bit sizes count.

    Such a graph is data the planner could describe, but every size and offset it would compute
    is an int64; past that the packer would fail deep inside, with a message about dtypes.
    """
    total = sum(graph.nbytes(n) for n in graph.tensors)
    if total > MAX_BYTES:
        biggest = max(graph.tensors, key=graph.nbytes)
        raise ValueError(f"{what}: the tensors take {total} bytes in all ({biggest!r} alone {graph.nbytes(biggest)}), "
                         f"more than the {MAX_BYTES} bytes 64-bit sizes count")


# ----------------------------------------------------------------------------- files
def read_json(path: str, what: str) -> Any:
    """Parse the JSON file ``path``; every way it can be unreadable is one ``ValueError`` naming it.

    ``OSError`` (no such file, no permission) propagates as it is: it names the file already.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {exc.start}): expected JSON {what}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: bad JSON: {exc}") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to be {what}") from None


def check_writable(path: str | None, option: str) -> None:
    """Refuse now, before any work, an output path that cannot be written.

    The file is opened for appending (so an existing file is left as it is) and removed again if
    this check created it.
    """
    if path is None:
        return
    if os.path.isdir(path):
        raise CommandError(f"{option} {path}: is a directory")
    existed = os.path.lexists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise CommandError(f"{option} {path}: cannot write there: {exc.strerror or exc}") from None
    if not existed:
        os.unlink(path)


# ----------------------------------------------------------------------------- matrix files
@dataclass(frozen=True)
class NodeMatrix:
    """A node-pair matrix read and checked by :func:`read_matrix`.

    Attributes
    ----------
    path : str
        The file it came from.
    values : dict
        ``{a: {b: value}}`` by node id, over the nodes asked for, every value a positive float.
    threads : dict or None
        Threads per reader node ``{a: count}`` when the file is ``numamem bench`` output.
    """

    path: str
    values: dict[int, dict[int, float]]
    threads: dict[int, float] | None = None

    def bench_result(self) -> dict[str, Any]:
        """The matrix as :func:`numamem.runtime.runner.run_graph` takes a ``numamem bench`` result."""
        out: dict[str, Any] = {"bandwidth": {str(a): {str(b): v for b, v in row.items()}
                                             for a, row in self.values.items()}}
        if self.threads is not None:
            out["threads"] = {str(a): t for a, t in self.threads.items()}
        return out


def _node_id(key: Any, path: str, where: str) -> int:
    if isinstance(key, str) and key.isdigit():
        return int(key)
    raise ValueError(f"{path}: {where}: {key!r} is not a node id")


def _number(value: Any, path: str, where: str) -> float:
    # bool is an int to Python but never a bandwidth or a distance in a file
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: {where} is not a number: {json.dumps(value)}")
    value = float(value)
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{path}: {where} must be positive and finite, got {value}")
    return value


def read_matrix(path: str, key: str, nodes: list[int], *, hint: str = "") -> NodeMatrix:
    """Read and check a node-pair matrix (``key``: ``"distances"`` or ``"bandwidth"``) for ``nodes``.

    The one reader of ``--distances`` and ``--bandwidth`` files. It takes

    * a mapping ``{"a": {"b": value}}`` by node id;
    * a square list, in the order of ``nodes`` (exactly ``len(nodes)`` rows of as many values);
    * an object holding either under ``key``: ``numamem bench --json`` output (``bandwidth``,
      with its ``threads`` per node), ``numamem topology --json`` output (``distances``, a list
      in the order of its ``nodes``), or ``{"distances": ...}`` written by hand.

    Anything it cannot use is refused, never skipped: a value that is not a positive finite
    number (``true`` included), a key that is not a node id, a list of the wrong size, a matrix
    lacking a pair of ``nodes`` (``hint`` is added to that message), another numamem file.

    Raises
    ------
    ValueError
        Naming the file and what is wrong with it.
    OSError
        If the file cannot be read.
    """
    data = read_json(path, f"a {key} matrix")
    order: list[int] | None = list(nodes)   # ids of a list's rows, when it is a list
    threads = None
    if isinstance(data, dict) and key in data:
        doc = data
        data = doc[key]
        listed = doc.get("nodes")
        if isinstance(data, list) and isinstance(listed, list):
            # numamem topology --json: rows in the order of its "nodes" (objects with an "id")
            order = [n.get("id") if isinstance(n, dict) else n for n in listed]
            if not all(isinstance(n, int) and not isinstance(n, bool) for n in order):
                raise ValueError(f"{path}: 'nodes' must list node ids")
        if key == "bandwidth" and "threads" in doc:
            # numamem bench --json: threads per reader node, for the run's estimate
            if not isinstance(doc["threads"], dict):
                raise ValueError(f"{path}: 'threads' must be an object by node id")
            threads = {_node_id(a, path, "threads"): _number(t, path, f"threads of node {a}")
                       for a, t in doc["threads"].items()}
    elif isinstance(data, dict) and "format" in data:
        raise ValueError(f"{path}: a {data['format']} file holds no {key} matrix")
    values: dict[int, dict[int, float]] = {}
    if isinstance(data, list):
        n = len(order)
        if len(data) != n or not all(isinstance(row, list) and len(row) == n for row in data):
            raise ValueError(f"{path}: a {key} list must be {n}x{n}, in the order of nodes {order}")
        for a, row in zip(order, data):
            values[a] = {b: _number(v, path, f"{key} entry for nodes {a} and {b}") for b, v in zip(order, row)}
    elif isinstance(data, dict):
        for ka, row in data.items():
            a = _node_id(ka, path, key)
            if not isinstance(row, dict):
                raise ValueError(f"{path}: {key} row of node {a} must be an object by node id")
            values[a] = {}
            for kb, v in row.items():
                b = _node_id(kb, path, f"{key} row of node {a}")
                values[a][b] = _number(v, path, f"{key} entry for nodes {a} and {b}")
    else:
        raise ValueError(f"{path}: expected a square list or an object of node-pair {key}")
    for a in nodes:
        for b in nodes:
            if b not in values.get(a, {}):
                have = sorted(values)
                raise ValueError(f"{path}: the {key} matrix has no entry for nodes {a} and {b} "
                                 f"(it has nodes {have}){hint}")
    picked = {a: {b: values[a][b] for b in nodes} for a in nodes}
    if threads is not None:
        threads = {a: threads[a] for a in nodes if a in threads}
    return NodeMatrix(path=path, values=picked, threads=threads)
