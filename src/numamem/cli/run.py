"""``numamem run``: run a graph planned and with the baselines, check and report (a thin
wrapper over :mod:`numamem.runtime.runner`), or, with ``--engine onnxruntime|torch``, run a model
under that engine as it comes and one replica per node (over :func:`numamem.engines.compare`)."""
from __future__ import annotations

import argparse
import os
import sys
import zipfile
from typing import Any, Sequence

import numpy as np

from numamem.cli._args import (
    CommandError, add_graph_args, add_nodes_arg, check_writable, is_onnx, onnx_shapes, parse_nodes, positive_int,
    read_matrix, resolve_graph, resolve_nodes,
)
from numamem.cli._progress import Progress


#: Worker threads per node --workers may ask for: a bound far above any node's CPUs, so that a
#: typo is refused here rather than failing half-way through starting threads.
MAX_WORKERS = 1024

#: What ``--engine`` takes: numamem's own planned runtime, or another engine on placed memory.
ENGINES = ("numamem", "onnxruntime", "torch")

#: The modes ``--mode`` runs when it is not given, per engine.
DEFAULT_MODES = {"numamem": "planned,first-touch,interleave", "onnxruntime": "default,per-node",
                 "torch": "default,per-node"}

#: The numamem extra that installs each engine (and what ``--engine`` must import up front).
EXTRAS = {"onnxruntime": ("onnxruntime", "onnx"), "torch": ("torch",)}


def workers_per_node(text: str) -> int:
    """argparse type of ``--workers``: 1 to :data:`MAX_WORKERS`."""
    value = positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"at most {MAX_WORKERS} worker threads per node, got {text!r}")
    return value


def _modes(text: str, known: Sequence[str], engine: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    for m in modes:
        if m not in known:
            raise ValueError(f"--mode: unknown mode {m!r} for --engine {engine} (known: {', '.join(known)})")
    if not modes:
        raise ValueError("--mode: give at least one mode")
    if len(set(modes)) != len(modes):
        raise ValueError(f"--mode repeats a mode: {text!r}")
    return modes


def _outputs_path(args: argparse.Namespace) -> str | None:
    # np.savez adds .npz to a name without it: check the file it will really write
    return args.outputs if not args.outputs or args.outputs.endswith(".npz") else args.outputs + ".npz"


def _bandwidth(path: str | None, nodes: Sequence[int]) -> dict | None:
    """The ``--bandwidth`` matrix for the estimate of a run on ``nodes`` (read before the run)."""
    if not path:
        return None
    from numamem.runtime import runner

    target = runner.estimate_nodes(nodes)
    hint = ("; the estimate of a run on one node is for a two-node machine, nodes [0, 1]: measure one, "
            "or leave --bandwidth out for the published figures") if len(nodes) < 2 else ""
    return read_matrix(path, "bandwidth", target, hint=hint).bench_result()


def _shapes_of_inputs(args: argparse.Namespace) -> list[tuple[str, tuple[int, ...]]]:
    """``--input-shape`` completed with the shapes of the ``--inputs`` arrays that are inputs of
    the ONNX model, so that a model with symbolic dimensions runs on a file of inputs without
    restating their shapes. An unreadable file or other names are left for
    :func:`numamem.runtime.runner.load_npz` to refuse, in its own words."""
    given = list(args.input_shape or [])
    named = {n for n, _ in given}
    inputs = _onnx_input_names(args.graph)
    try:
        with open(args.inputs, "rb") as fh:
            f = np.load(fh, allow_pickle=False)
            if not isinstance(f, np.lib.npyio.NpzFile):
                return given
            with f:
                shapes = {k: tuple(f[k].shape) for k in f.files if k in inputs and k not in named}
    except (ValueError, EOFError, zipfile.BadZipFile):
        return given
    return given + list(shapes.items())


def _onnx_input_names(path: str) -> set[str]:
    """The names of the graph inputs of the ONNX file ``path`` (empty when it cannot be read)."""
    try:
        from numamem.planner.onnx import load_model

        m, _where = load_model(path, values=False)
    except (ValueError, OSError, ImportError):
        return set()
    return {i.name for i in m.graph.input}


def _ort_baseline(args: argparse.Namespace, values: dict[str, np.ndarray] | None):
    """ONNX Runtime on the same model, weights and inputs, for an ONNX model (else None)."""
    if not is_onnx(args.graph) or args.weights:
        # with --weights the model's own weights are not what numamem runs on
        return None
    from numamem.engines.ort_baseline import OnnxRuntimeBaseline

    return OnnxRuntimeBaseline(args.graph, values)


def _onnx_weights(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """The weights of the ONNX model ``args.graph`` as numamem's graph names them, and the values
    given to its ``ConstantOfShape`` weight placeholders (random from ``--seed``; None without any).

    A model whose weights are placeholders (as ONNX's light model zoo ships) would otherwise run
    on zeros or ones; :func:`~numamem.planner.onnx.placeholder_values` gives values of a sensible
    scale, so that the outputs mean something and the float64 comparison is not vacuous.
    """
    from numamem.planner import onnx_weights
    from numamem.planner.onnx import placeholder_values

    values = placeholder_values(args.graph, args.seed) or None
    weights = onnx_weights(args.graph, input_shapes=onnx_shapes(args.input_shape), batch=args.batch, values=values)
    return weights, values


def cmd_run(args: argparse.Namespace) -> int:
    """Run ``numamem run``."""
    if args.engine != "numamem":
        return _run_engine(args)
    from numamem.runtime import runner
    from numamem.runtime.executor import MODES

    outputs = _outputs_path(args)
    check_writable(args.json, "--json")
    check_writable(outputs, "--outputs")
    check_writable(args.export_graph, "--export-graph")
    if args.inputs and is_onnx(args.graph):
        args.input_shape = _shapes_of_inputs(args)
    graph = resolve_graph(args.graph, args.batch, args.seq_len, args.input_shape)
    if args.export_graph:
        graph.to_json(args.export_graph)
    nodes = resolve_nodes(args)
    if nodes is None:
        from numamem._topology import topology

        nodes = topology().memory_nodes()
    modes = _modes(args.mode or DEFAULT_MODES["numamem"], MODES, "numamem")
    values = None
    if args.weights:
        weights = runner.load_npz(args.weights, graph, graph.weights, "weight")
    elif is_onnx(args.graph):
        weights, values = _onnx_weights(args)
    else:
        weights = None
    inputs = runner.load_npz(args.inputs, graph, graph.inputs, "input") if args.inputs else None
    bandwidth = _bandwidth(args.bandwidth, nodes)
    reference = {"auto": None, "independent": True, "kernels": False}[args.reference or "auto"]
    report = runner.run_graph(
        graph, nodes, modes, iters=args.iters, seed=args.seed, weights=weights, inputs=inputs,
        workers=args.workers, bandwidth=bandwidth, independent_reference=reference,
        progress=Progress("numamem run"), keep_outputs=bool(args.outputs), baseline=_ort_baseline(args, values),
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


# ------------------------------------------------------------------------------ --engine onnxruntime|torch
def _require_engine(engine: str) -> None:
    """Import the engine's packages now, before any work: a missing one is one line naming the extra."""
    from numamem.engines._nodes import require

    for module in EXTRAS[engine]:
        try:
            require(module, engine)
        except ImportError as exc:
            raise CommandError(f"--engine {engine}: {exc}") from None


def _engine_nodes(args: argparse.Namespace) -> list[int]:
    """The nodes of the ``per-node`` mode: ``--nodes`` ids (each with memory and CPUs this process
    may use), or every such node for ``all`` or no ``--nodes``."""
    from numamem._topology import topology

    topo = topology()
    ids = parse_nodes(args.nodes) if args.nodes is not None else None
    if ids is None:
        ids = [n for n in topo.memory_nodes() if topo.usable_cpus(n)]
        if not ids:
            raise CommandError(f"--engine {args.engine}: no node has both memory and CPUs this process may use")
        return ids
    for n in ids:
        topo.check_memory_node(n, "--nodes")
        topo.check_cpu_node(n, "--nodes")
    return ids


def _onnx_model(spec: str):
    """The ONNX model file ``spec`` as an ``onnx.ModelProto`` (refusing a built-in model name and
    anything that does not parse as an ONNX model)."""
    import numamem.models as models
    from google.protobuf.message import DecodeError
    from numamem.engines.onnxruntime import load_model

    if not os.path.isfile(spec):
        if spec.strip().lower().replace("-", "_") in models.names():
            raise ValueError(f"--engine onnxruntime runs an ONNX file; {spec!r} is a built-in model "
                             "(run it with --engine torch or --engine numamem)")
        raise ValueError(f"{spec!r}: no such ONNX file")
    try:
        proto = load_model(spec)
    except DecodeError as exc:
        raise ValueError(f"{spec}: not an ONNX model ({exc})") from None
    if not proto.graph.output:  # protobuf parses many files, an empty one included, as an empty model
        raise ValueError(f"{spec}: not an ONNX model (it has no graph outputs)")
    return proto


def _onnx_inputs(proto) -> dict[str, tuple[np.dtype, list[int | None]]]:
    """The model's inputs that feeds must give (initializers excluded): name -> (dtype, dims, None
    where symbolic); ``ValueError`` for an input that is not a typed tensor (a sequence, a map)."""
    from onnx import helper

    inits = {i.name for i in proto.graph.initializer}
    out = {}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        if not inp.type.HasField("tensor_type") or not inp.type.tensor_type.elem_type:
            raise ValueError(f"input {inp.name!r} of the model is not a typed tensor: the engines feed tensors only")
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[inp.name] = (np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims)
    return out


def _fixed_batch(inputs: dict[str, tuple[np.dtype, list[int | None]]]) -> int | None:
    fixed = {dims[0] for _, dims in inputs.values() if dims and dims[0]}
    return fixed.pop() if len(fixed) == 1 else None


def _onnx_feeds(path: str, spec: str, inputs: dict[str, tuple[np.dtype, list[int | None]]]) -> dict[str, np.ndarray]:
    """Read ``--inputs`` for an ONNX model and check it against the model's inputs.

    Names, ranks, fixed dimensions and kinds of number are checked here, so that a wrong file is
    a one-line error naming it, not an exception from inside ONNX Runtime half-way through a run.
    Every input must have as many rows (axis 0), the batch the modes split.
    """
    from numamem.runtime.runner import read_named_npz

    data = read_named_npz(path, list(inputs), f"an input of {spec} (its inputs")
    rows = set()
    for name, (dtype, dims) in inputs.items():
        if name not in data:
            raise ValueError(f"{path}: input {name!r} is missing")
        x = data[name]
        if x.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims, x.shape)):
            want = ["?" if d is None else d for d in dims]
            raise ValueError(f"{path}: input {name!r} has shape {list(x.shape)}, the model needs {want}")
        # integers stay integers; complex, string or object arrays are refused, not cast
        if x.dtype.kind not in ("b" if dtype.kind == "b" else "iu" if dtype.kind in "iu" else "iuf"):
            raise ValueError(f"{path}: input {name!r} has dtype {x.dtype}, the model needs {dtype}")
        data[name] = x.astype(dtype, copy=False)
        if x.ndim == 0:
            raise ValueError(f"{path}: input {name!r} is a scalar; the engines split inputs on axis 0")
        rows.add(x.shape[0])
    if len(rows) > 1:
        raise ValueError(f"{path}: the inputs have different batch sizes (axis 0) {sorted(rows)}")
    return data


def _run_engine(args: argparse.Namespace) -> int:
    """``numamem run --engine onnxruntime|torch``: modes ``default`` and ``per-node``."""
    engine = args.engine
    for option, given in (("--reference", args.reference), ("--layers", args.layers),
                          ("--input-shape", args.input_shape), ("--export-graph", args.export_graph)):
        if given:
            raise CommandError(f"{option} applies to --engine numamem only (the engines compare each mode's "
                               "outputs with the first mode's)")
    from numamem.engines.compare import MODES

    modes = _modes(args.mode or DEFAULT_MODES[engine], MODES, engine)
    outputs = _outputs_path(args)
    check_writable(args.json, "--json")
    check_writable(outputs, "--outputs")
    _require_engine(engine)
    weights = feeds = None
    batch = None
    if engine == "onnxruntime":
        if args.weights:
            raise CommandError("--weights: an ONNX model carries its own weights")
        if args.seq_len is not None:
            raise CommandError("--seq-len applies to the built-in bert_base; an ONNX model fixes its own shapes")
        model = _onnx_model(args.graph)
        inputs = _onnx_inputs(model)
        fixed = _fixed_batch(inputs)
        if args.inputs:
            feeds = _onnx_feeds(args.inputs, args.graph, inputs)
            rows = next(iter(feeds.values())).shape[0] if feeds else None
            if args.batch is not None and rows != args.batch:
                raise CommandError(f"--batch {args.batch}: the inputs of {args.inputs} have {rows} rows")
        else:
            rows = batch = args.batch
        if fixed and rows is not None and rows % fixed:
            raise CommandError(f"{args.graph} has a fixed batch of {fixed}: the batch ({rows}) must be a "
                               "multiple of it")
    else:
        from numamem.runtime import runner

        if args.graph.lower().endswith(".onnx"):
            raise CommandError(f"--engine torch runs a built-in model or a numamem-graph/1 file; run the ONNX "
                               f"model {args.graph} with --engine onnxruntime")
        model = resolve_graph(args.graph, args.batch, args.seq_len)
        weights = runner.load_npz(args.weights, model, model.weights, "weight") if args.weights else None
        feeds = runner.load_npz(args.inputs, model, model.inputs, "input") if args.inputs else None
    nodes = _engine_nodes(args)
    bandwidth = _bandwidth(args.bandwidth, nodes)
    report = _compare(model, engine=engine, modes=modes, nodes=nodes, iters=args.iters, feeds=feeds,
                      batch=batch, seed=args.seed, threads_per_node=args.workers, weights=weights,
                      bandwidth=bandwidth, keep_outputs=bool(args.outputs))
    return _finish_engine(args, report, modes, outputs)


def _compare(model, **kwargs) -> dict[str, Any]:
    """:func:`numamem.engines.compare`, with ONNX Runtime refusing the model or its inputs as a user error."""
    from numamem.engines import compare

    if kwargs["engine"] != "onnxruntime":
        return compare(model, **kwargs)
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    # ONNX Runtime raises its own exception classes (not ValueError) for a model or inputs it refuses
    refused = tuple(v for v in vars(ort_state).values() if isinstance(v, type) and issubclass(v, Exception))
    try:
        return compare(model, **kwargs)
    except refused as exc:
        raise CommandError(f"ONNX Runtime refused {model.graph.name or 'the model'!r}: "
                           f"{type(exc).__name__}: {exc}") from None


def _finish_engine(args: argparse.Namespace, report: dict[str, Any], modes: list[str], outputs: str | None) -> int:
    from numamem.engines import format_report
    from numamem.runtime.runner import write_json

    if args.outputs:
        np.savez(outputs, **report["_outputs"][modes[0]])
    if args.json:
        write_json(report, args.json)
    if not args.quiet:
        print(format_report(report))
    if not report["ok"]:
        ref = report["outputs"]
        bad = [m for m, e in report["modes"].items() if not e["ok"]]
        print(f"numamem run: error: outputs of {', '.join(bad)} differ from those of {ref['compared_with']} by "
              f"more than {ref['rtol']:g}", file=sys.stderr)
        return 1
    return 0


def add_command(subparsers: Any) -> None:
    """Register ``numamem run``."""
    rp = subparsers.add_parser(
        "run",
        help="run a graph planned and with first-touch / interleave baselines, or a model under ONNX "
        "Runtime or PyTorch as it comes and one replica per node, and report",
        description="Plan GRAPH over NUMA nodes of this machine, run it with every mode on the same "
        "weights and inputs (random from --seed unless given), check each mode's outputs against a "
        "float64 reference (relative error 1e-4), and report median times, bytes read locally and "
        "remotely, where the pages are, peak memory, and an estimated multi-socket speed-up. "
        "With --engine onnxruntime (GRAPH an .onnx file) or --engine torch (a built-in model or "
        "graph file), run the model under that engine in modes default (as the engine runs it out "
        "of the box) and per-node (one session or module copy per node, its weights on the node), "
        "and check per-node's outputs against default's.",
    )
    add_graph_args(rp)
    add_nodes_arg(rp, counts=False, default="all: every node with memory this process may use "
                  "(with --engine onnxruntime|torch: and CPUs)")
    rp.add_argument("--engine", choices=ENGINES, default="numamem",
                    help="numamem's planned runtime (default), or ONNX Runtime or PyTorch on placed memory")
    rp.add_argument("--mode", default=None,
                    help="comma-separated modes: among planned, first-touch, interleave with --engine "
                    "numamem, among default, per-node with the others (default: all of them)")
    rp.add_argument("--iters", type=positive_int, default=5, help="timed iterations per mode (default 5)")
    rp.add_argument("--seed", type=int, default=0, help="seed of random weights and inputs (default 0)")
    rp.add_argument("--weights", metavar="W.npz",
                    help="weights by tensor name (default: random; not with --engine onnxruntime)")
    rp.add_argument("--inputs", metavar="X.npz", help="inputs by tensor name (default: random)")
    rp.add_argument("--outputs", metavar="Y.npz", help="write the first mode's outputs")
    rp.add_argument("--json", metavar="OUT", help="write the report (numamem-run/1)")
    rp.add_argument("--export-graph", metavar="OUT",
                    help="write the graph run (numamem-graph/1), such as an imported ONNX model; --engine numamem only")
    rp.add_argument("--workers", type=workers_per_node, metavar="N",
                    help=f"worker threads per node, at most {MAX_WORKERS} (default: the node's CPUs)")
    rp.add_argument("--bandwidth", metavar="FILE",
                    help="numamem bench --json output: measured matrix for the speed-up estimate")
    rp.add_argument("--reference", choices=("auto", "independent", "kernels"), default=None,
                    help="float64 reference: the independent reference ops, the kernels in float64, or "
                    "auto (independent up to 2e10 flops; the default); --engine numamem only")
    rp.add_argument("--layers", action="store_true",
                    help="also print per-layer median times (--engine numamem only)")
    rp.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    rp.set_defaults(func=cmd_run)
