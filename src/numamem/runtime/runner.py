"""``numamem run``: every mode on the same inputs, checked against float64, timed and accounted.

:func:`run_graph` plans a graph on this machine's nodes, runs it planned (:class:`Executor`) and
with the first-touch and interleave baselines (:class:`BaselineExecutor`) on the same weights and
inputs, checks every mode's outputs against a float64 reference, and returns a ``numamem-run/1``
report: per mode the median time per iteration and per layer, the bytes each node's workers read
locally and remotely, where the pages really are, and peak memory; plus an *estimate* of the
planned-vs-first-touch speed-up on a multi-socket machine (:func:`estimate_speedup`), labelled
with its basis.
"""
from __future__ import annotations

import gc
import math
import os
import zipfile
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from numamem import _topology, planner
from numamem.planner.graph import Graph
from numamem.planner.plan import Plan
from numamem.planner.traffic import block_layouts, layer_reads
from numamem.runtime import kernels
from numamem._jsonfile import dump_json
from numamem.runtime.estimate import PUBLISHED_MACHINE, estimate_speedup, shares_by_node
from numamem.runtime.executor import MODES, make_executor

__all__ = ["FORMAT", "PUBLISHED_MACHINE", "RTOL", "estimate_nodes", "estimate_speedup", "float64_reference", "format_report",
           "load_npz", "plan_traffic", "random_tensors", "run_graph", "softmax_logits", "with_outputs"]

FORMAT = "numamem-run/1"
#: Largest relative error ``||y - ref|| / ||ref||`` accepted for every output of every mode.
RTOL = 1e-4
#: Graphs up to this many flops are checked against the independent reference ops
#: (:mod:`numamem.runtime.reference`, explicit loops: slow); bigger ones against the kernels run
#: whole-tensor in float64.
INDEPENDENT_REFERENCE_FLOPS = 2e10

# ================================================================================= tensors
def random_tensors(graph: Graph, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Random weights and inputs for ``graph`` from ``seed``, scaled to keep activations tame.

    Convolution filters get He-scaled normal values (``sqrt(2 / fan_in)``, ReLU networks), other
    matrices LeCun-scaled ones (``sqrt(1 / fan_in)``); a dense layer whose output reaches a
    ``matmul`` (through reshapes and transposes: attention's queries and keys) gets a further
    ``K**-0.25`` so that the scores stay of order one, as the folded ``1/sqrt(d)`` attention scale
    keeps them in a trained model (sharp softmaxes would make float32 results chaotic against
    float64). 1-D weights are small values around 0 (biases, shifts) or 1 (scales, layer-norm
    gains); embedding tables standard normal; embedding ids uniform over the table's rows, other
    inputs standard normal.

    Returns
    -------
    (weights, inputs) : tuple of dict
    """
    rng = np.random.default_rng(seed)
    users: dict[str, tuple[str, int]] = {}
    readers: dict[str, list] = {}
    for layer in graph.layers:
        for i, n in enumerate(layer.inputs):
            users.setdefault(n, (layer.op, i))
            readers.setdefault(n, []).append(layer)

    def reaches_matmul(tensor: str, depth: int = 0) -> int | None:
        """Contraction size of a matmul ``tensor`` feeds through reshapes/transposes, if any."""
        for layer in readers.get(tensor, []):
            if layer.op == "matmul":
                a = graph.tensors[layer.inputs[0]].shape
                return int(a[-1])
            if layer.op in ("reshape", "transpose") and depth < 4:
                k = reaches_matmul(layer.outputs[0], depth + 1)
                if k:
                    return k
        return None

    weight_scale: dict[str, float] = {}
    for layer in graph.layers:
        if layer.op == "dense":
            k = reaches_matmul(layer.outputs[0])
            if k:
                for n in layer.inputs[1:]:
                    weight_scale[n] = k ** -0.25
    weights = {}
    for n in graph.weights:
        shape = tuple(graph.tensors[n].shape)
        dt = np.dtype(graph.tensor_dtype(n))
        op, i = users.get(n, ("", 0))
        if op == "embedding":
            a = rng.standard_normal(shape)
        elif len(shape) >= 2:
            if op == "conv2d":
                a = rng.standard_normal(shape) * math.sqrt(2.0 / max(math.prod(shape[1:]), 1))
            else:
                fan = shape[0] if op == "dense" else shape[-2]
                a = rng.standard_normal(shape) * math.sqrt(1.0 / max(fan, 1))
        elif op in ("layernorm", "batchnorm", "mul") and i == 1:
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            a = 0.1 * rng.standard_normal(shape)
        weights[n] = (a * weight_scale.get(n, 1.0)).astype(dt)
    inputs = {}
    for n in graph.inputs:
        shape = tuple(graph.tensors[n].shape)
        dt = np.dtype(graph.tensor_dtype(n))
        if dt.kind in "iu":
            rows = 2
            for layer in graph.layers:
                if layer.op == "embedding" and layer.inputs[0] == n:
                    rows = graph.tensors[layer.inputs[1]].shape[0]
            inputs[n] = rng.integers(0, rows, size=shape).astype(dt)
        else:
            inputs[n] = rng.standard_normal(shape).astype(dt)
    return weights, inputs


def read_named_npz(path: str | os.PathLike, names: Sequence[str], whose: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file by name, refusing a name not in ``names``.

    ``whose`` completes the refusal: ``"'x' is not " + whose + ": a, b)"``. Shapes and dtypes are
    the caller's to check. A ``.npy`` file, a corrupt or truncated archive: ``ValueError`` naming
    ``path``; a file that cannot be opened: ``OSError``.
    """
    try:
        with open(path, "rb") as fh:  # ours to close, also when np.load fails half-way
            loaded = np.load(fh, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy file: one array, no names
                raise ValueError("a .npy file holds one unnamed array; write the tensors by name with numpy.savez")
            with loaded as f:
                data = {k: f[k] for k in f.files}
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
    extra = sorted(set(data) - set(names))
    if extra:
        raise ValueError(f"{path}: {extra[0]!r} is not {whose}: {', '.join(names)})")
    return data


def load_npz(path: str | os.PathLike, graph: Graph, names: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """Read tensors ``names`` from an ``.npz`` file (keys are tensor names) and check them.

    Raises
    ------
    ValueError
        If the file is not an ``.npz`` file, or naming a tensor that is missing, mis-shaped, not
        one of ``names``, of a dtype that is not a real number of the graph's kind, holding
        NaN or infinity, or holding embedding ids outside the table.
    OSError
        If the file cannot be read.
    """
    data = read_named_npz(path, names, f"a {what} of graph {graph.name!r} (its {what}s")
    for n in names:
        if n not in data:
            raise ValueError(f"{path}: {what} {n!r} is missing")
        shape = tuple(graph.tensors[n].shape)
        if tuple(data[n].shape) != shape:
            raise ValueError(f"{path}: {what} {n!r} has shape {list(data[n].shape)}, the graph needs {list(shape)}")
        dt = np.dtype(graph.tensor_dtype(n))
        # Only numbers of the graph's kind convert without losing meaning: integer ids stay
        # integers, and complex, structured, string, bool or object arrays are refused, not cast.
        if data[n].dtype.kind not in ("iu" if dt.kind in "iu" else "iuf"):
            raise ValueError(f"{path}: {what} {n!r} has dtype {data[n].dtype}, the graph needs {dt}")
        with np.errstate(over="ignore", invalid="ignore"):  # values past float32 become inf: refused below
            data[n] = data[n].astype(dt, copy=False)
        if dt.kind == "f" and not np.isfinite(data[n]).all():
            raise ValueError(f"{path}: {what} {n!r} holds NaN or infinite values (as {dt})")
        for layer in graph.layers:  # embedding ids must name rows of the table
            if layer.op == "embedding" and layer.inputs[0] == n and data[n].size:
                rows = graph.tensors[layer.inputs[1]].shape[0]
                low, high = int(data[n].min()), int(data[n].max())
                if low < 0 or high >= rows:
                    raise ValueError(f"{path}: {what} {n!r} holds the id {low if low < 0 else high}, outside "
                                     f"the {rows} rows of {layer.inputs[1]!r} (layer {layer.name!r})")
    return data


def float64_reference(graph: Graph, weights: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
                      independent: bool | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Outputs of ``graph`` computed in float64, and which reference computed them.

    Parameters
    ----------
    independent : bool, optional
        Use the independent reference ops (:func:`numamem.runtime.reference.reference_forward`,
        explicit loops) rather than the block kernels run whole-tensor in float64. Default: the
        independent ones for graphs up to :data:`INDEPENDENT_REFERENCE_FLOPS` flops.

    Returns
    -------
    (outputs, basis) : tuple
    """
    if independent is None:
        independent = graph.flops() <= INDEPENDENT_REFERENCE_FLOPS
    if independent:
        from numamem.runtime.reference import reference_forward

        env = reference_forward(graph, weights, inputs)
        return {n: env[n] for n in graph.outputs}, "independent float64 reference ops (numamem.runtime.reference)"
    env: dict[str, np.ndarray] = {}
    for n, a in list(weights.items()) + list(inputs.items()):
        env[n] = a if a.dtype.kind in "iu" else a.astype(np.float64)
    last = {}
    for name, (_, b) in graph.lifetimes().items():
        last.setdefault(b, []).append(name)
    for step, layer in enumerate(graph.layers):
        ins = [env[n] for n in layer.inputs]
        out = np.empty(graph.tensors[layer.outputs[0]].shape, np.float64)
        kernels.run(layer.op, ins, out, layer.attrs)
        env[layer.outputs[0]] = out
        for n in last.get(step, ()):
            if n not in graph.outputs:
                env.pop(n, None)
    return {n: env[n] for n in graph.outputs}, "the block kernels run whole-tensor in float64"


def _rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(np.asarray(y, np.float64) - ref) / max(np.linalg.norm(ref), 1e-300))


def softmax_logits(graph: Graph) -> dict[str, str]:
    """The logits of every graph output that a final softmax makes: ``{output: logits tensor}``.

    An output made by a ``softmax`` layer, possibly through ``reshape``/``flatten`` layers after
    it (ONNX's Softmax before opset 13 over a 4-D tensor is imported as reshape, softmax,
    reshape), has as logits the softmax's input, when that is computed by a layer (not a graph
    input or weight) and is not itself an output. A softmax over 1000 classes can saturate to
    one-hot, and then every error upstream vanishes from its output: the run compares the logits
    too.
    """
    producer = {l.outputs[0]: l for l in graph.layers}
    out = {}
    for o in graph.outputs:
        layer = producer.get(o)
        while layer is not None and layer.op in ("reshape", "flatten"):
            layer = producer.get(layer.inputs[0])
        if layer is None or layer.op != "softmax":
            continue
        logits = layer.inputs[0]
        if graph.tensors[logits].role is None:
            out[o] = logits
    return out


def with_outputs(graph: Graph, names: Sequence[str]) -> Graph:
    """``graph`` with the activations ``names`` made graph outputs as well."""
    if not names:
        return graph
    keep = set(names)
    tensors = [replace(t, role="output") if t.name in keep else t for t in graph.tensors.values()]
    return Graph(graph.name, graph.dtype, tensors, graph.layers)


# ================================================================================= traffic model
def plan_traffic(plan: Plan, graph: Graph, holder: Callable[[str], int | None] | None = None
                 ) -> list[dict[tuple[int, int], int]]:
    """Bytes each node reads from each node per layer, from the plan's blocks.

    Parameters
    ----------
    plan, graph
    holder : callable, optional
        ``holder(tensor)`` -> a node holding the whole tensor instead of its planned blocks, or
        ``None`` to keep the plan's placement. With the loading node for weights and inputs this
        models first-touch placement (activations land where their block is written).

    Returns
    -------
    list of dict
        Per step ``{(source node, reader node): bytes}``; ``source == reader`` is local. With no
        ``holder`` the totals equal the plan's ``local_bytes``/``remote_bytes``.
    """
    layouts = block_layouts(plan.blocks, {n: t.shape for n, t in graph.tensors.items()})
    out = []
    for step, (layer, lp) in enumerate(zip(graph.layers, plan.layers)):
        layout = layouts[layer.outputs[0]]
        # A replicated output (never planned, but a plan file may say so) is computed whole.
        axis = None if layout.replicated else lp.axis
        d: dict[tuple[int, int], int] = {}
        for (n, _), reads in zip(layout.parts, layer_reads(graph, step, axis, layout.parts, layouts, holder)):
            for r in reads:
                d[r.source, n] = d.get((r.source, n), 0) + r.nbytes
        out.append(d)
    return out


def _pairs_from_layers(layers: Sequence[Mapping[str, Any]]) -> list[dict[tuple[int, int], int]]:
    return [{(int(s), int(r)): int(b) for s, r, b in l["pairs"]} for l in layers]


# ================================================================================= memory
def _proc_status() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _reset_peak() -> bool:
    """Reset the process's peak RSS (``VmHWM``) so the next mode's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ================================================================================= the modes
@dataclass
class _Timings:
    """One mode's timed iterations."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    layer_seconds: list[list[float]] = field(default_factory=list)

    def entry(self) -> dict[str, Any]:
        return {"median_s": float(np.median(self.seconds)), "seconds": self.seconds,
                "median_cpu_s": float(np.median(self.cpu_seconds)), "cpu_seconds": self.cpu_seconds,
                "layer_median_s": [float(x) for x in np.median(np.array(self.layer_seconds), axis=0)]}


def _timed_rounds(executors: Mapping[str, Any], modes: Sequence[str], iters: int,
                  say: Callable[[str], None]) -> dict[str, _Timings]:
    """Time ``iters`` steps of every mode, round-robin over the modes (the starting mode
    rotating), so a change in the machine's load during the run hits every mode alike."""
    timings = {m: _Timings() for m in modes}
    for i in range(iters):
        say(f"iteration {i + 1}/{iters}")
        for j in range(len(modes)):
            mode = modes[(i + j) % len(modes)]
            ex, t = executors[mode], timings[mode]
            t.seconds.append(ex.step())
            t.cpu_seconds.append(ex.cpu_seconds)
            t.layer_seconds.append(list(ex.layer_seconds))
    return timings


def _mode_entry(ex: Any, set_up: Mapping[str, Any], timings: _Timings, outputs: Mapping[str, np.ndarray],
                ref: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The report entry of one mode: set-up, timings, its ``report()``, and its error."""
    mode_report = ex.report()
    entry = dict(set_up)
    entry.update(timings.entry())
    entry.update(mode_report.entry())
    entry["_pairs"] = _pairs_from_layers(mode_report.traffic["layers"])
    errs = {n: _rel_err(outputs[n], ref[n]) for n in outputs}
    entry["rel_err"] = errs
    entry["max_rel_err"] = max(errs.values()) if errs else 0.0
    entry["ok"] = entry["max_rel_err"] <= RTOL
    return entry


def _start_baseline(baseline: Any, executors: dict[str, Any], xs: Mapping[str, np.ndarray],
                    set_up: Mapping[str, Any], warmup: int, report: dict[str, Any],
                    say: Callable[[str], None]) -> bool:
    """Start ``baseline`` with as many threads as the planned mode (else the first) has workers,
    warm it up and add it to ``executors``; False (and a note in the report) if it is missing."""
    first = "planned" if "planned" in set_up else next(iter(set_up))
    threads = sum(set_up[first]["workers"].values())
    say(f"{baseline.name}: setting up")
    try:
        ex = baseline.start(xs, threads)
    except ImportError as exc:
        report[baseline.name] = {"skipped": str(exc)}
        return False
    executors[baseline.name] = ex  # closed with the modes'
    for _ in range(warmup):
        ex.step()
    return True


def _baseline_entry(name: str, ex: Any, timings: _Timings, ref: Mapping[str, np.ndarray],
                    modes: Mapping[str, Any], logits: Mapping[str, str]) -> dict[str, Any]:
    """The report entry of a baseline engine: its median, threads, error (outputs, and the
    ``logits`` of :func:`softmax_logits` when its ``logits()`` gives them) and ratio to planned."""
    outputs = ex.outputs()
    errs = {n: _rel_err(outputs[n], ref[n]) for n in ref if n in outputs}
    # Its logits come by output name (its own tensor names are not the graph's), same values.
    theirs = ex.logits() if hasattr(ex, "logits") else {}
    for o, n in logits.items():
        if o in theirs and n in ref and np.size(theirs[o]) == np.size(ref[n]):
            errs[n] = _rel_err(np.reshape(theirs[o], np.shape(ref[n])), ref[n])
    median = float(np.median(timings.seconds))
    planned = modes.get("planned", {}).get("median_s")
    entry = {"median_s": median, "seconds": timings.seconds, "threads": ex.threads,
             "median_cpu_s": float(np.median(timings.cpu_seconds)), "rel_err": errs,
             "max_rel_err": max(errs.values()) if errs else 0.0,
             f"planned_vs_{name}": median / planned if planned else None}
    entry["ok"] = entry["max_rel_err"] <= RTOL
    return entry


def _estimate(report: Mapping[str, Any], graph: Graph, p: Plan, nodes: Sequence[int], modes: Sequence[str],
              bandwidth: Any, plan_options: Mapping[str, Any]) -> dict[str, Any]:
    """The speed-up estimate: from the run's measured traffic on two or more nodes, else modelled."""
    entries = report["modes"]
    base_mode = "planned" if "planned" in entries else modes[0]
    cores_here = sum(entries[base_mode]["workers"].values())
    layer_s = entries[base_mode]["layer_median_s"]
    if len(nodes) >= 2 and "planned" in entries and "first-touch" in entries:
        traffic = {"planned": entries["planned"]["_pairs"], "first-touch": entries["first-touch"]["_pairs"]}
        basis = f"traffic measured in this run on nodes {nodes}"
        est = estimate_speedup(graph, layer_s, traffic, shares_by_node(p, graph), nodes, bandwidth, basis, cores_here)
    else:
        target = estimate_nodes(nodes)
        tp = planner.plan(graph, nodes=target, **plan_options)
        loader = target[0]
        role = {n: graph.tensors[n].role for n in graph.tensors}
        traffic = {
            "planned": plan_traffic(tp, graph),
            "first-touch": plan_traffic(tp, graph, lambda n: loader if role[n] in ("weight", "input") else None),
        }
        basis = (f"traffic modelled for nodes {target} (planned: the plan's blocks; first-touch: weights and "
                 f"inputs on the loading thread's node {loader}, each activation block on the node writing it)")
        est = estimate_speedup(graph, layer_s, traffic, shares_by_node(tp, graph), target, bandwidth, basis, cores_here)
    est["traffic"] = {m: {"local_bytes": sum(b for d in t for (s, r), b in d.items() if s == r),
                          "remote_bytes": sum(b for d in t for (s, r), b in d.items() if s != r)}
                      for m, t in traffic.items()}
    return est


# ================================================================================= the command
def estimate_nodes(nodes: Sequence[int]) -> list[int]:
    """The nodes the multi-socket estimate of a run on ``nodes`` is for: those, or [0, 1] for one node."""
    return list(nodes) if len(nodes) >= 2 else [0, 1]


def run_graph(graph: Graph, nodes: Sequence[int] | None = None, modes: Sequence[str] = MODES, iters: int = 5,
              seed: int = 0, weights: Mapping[str, np.ndarray] | None = None,
              inputs: Mapping[str, np.ndarray] | None = None, *, warmup: int = 1, workers: Any = None,
              bandwidth: Any = None, independent_reference: bool | None = None,
              progress: Callable[[str], None] | None = None, plan_options: Mapping[str, Any] | None = None,
              keep_outputs: bool = False, baseline: Any = None) -> dict[str, Any]:
    """Run ``graph`` in every mode of ``modes`` on the same inputs; return a ``numamem-run/1`` report.

    Parameters
    ----------
    graph : Graph
    nodes : sequence of int, optional
        Nodes to plan over and run on; they must exist here (default: every allowed node with
        memory).
    modes : sequence of str
        Some of :data:`~numamem.runtime.executor.MODES`.
    iters : int
        Timed iterations per mode, after ``warmup`` untimed ones (the first baseline warm-up also
        measures traffic and pages). Iterations go round-robin over the modes, so the medians
        compare modes under the same machine load.
    seed : int
        Seed of the random weights and inputs not given.
    weights, inputs : mapping, optional
    workers : int or mapping, optional
        Workers per node (default: the node's CPUs).
    bandwidth : mapping, optional
        ``{reader: {source: bytes/s}}`` from ``numamem bench`` for the estimate.
    independent_reference : bool, optional
        See :func:`float64_reference`.
    progress : callable, optional
        Called with a short status line as the run advances.
    plan_options : mapping, optional
        Extra keyword arguments of :func:`numamem.planner.plan`.
    keep_outputs : bool
        Put each mode's outputs under ``report["_outputs"][mode]`` (not JSON; for ``--outputs``).
    baseline : object, optional
        Another engine on the same model, such as
        :class:`numamem.engines.ort_baseline.OnnxRuntimeBaseline`: its ``start(inputs, threads)``
        (given as many threads as the first mode has workers) returns an object whose ``step()``
        is timed in the same round-robin loop as the modes and whose ``outputs()`` are checked
        against the reference (and, if it has ``logits()`` giving ``{output: logits}``, its logits
        of a final softmax too). The report gets ``report[baseline.name]`` with its median, threads
        and ``planned_vs_<name>`` (its median / planned's; > 1 is numamem faster), or
        ``{"skipped": why}`` when ``start`` raises ``ImportError``. It does not change ``ok``.

    Returns
    -------
    dict
        The report (see ``docs/runtime.md``); ``ok`` is False when a mode's outputs, or the
        logits of a final softmax (:func:`softmax_logits`, listed under
        ``report["reference"]["logits"]``), are off the reference by more than :data:`RTOL`.
    """
    say = progress or (lambda msg: None)
    modes = list(modes)
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r} (known: {', '.join(MODES)})")
    if not modes:
        raise ValueError("no mode to run")
    if iters < 1 or warmup < 1:
        raise ValueError("iters and warmup must be >= 1")
    topo = _topology.topology(refresh=False)
    nodes = topo.memory_nodes() if nodes is None else list(nodes)
    for n in nodes:
        topo.check_memory_node(n, "nodes")
    plan_options = dict(plan_options or {})
    # The logits of a final softmax are checked like outputs: the run is of the graph with them
    # as outputs too (they are live to the end anyway when the softmax is the last layer).
    logits = softmax_logits(graph)
    real_outputs = list(graph.outputs)
    graph = with_outputs(graph, list(logits.values()))
    p = planner.plan(graph, nodes=nodes, **plan_options)
    rw, ri = random_tensors(graph, seed)
    ws = dict(rw if weights is None else weights)
    xs = dict(ri if inputs is None else inputs)
    say("computing the float64 reference")
    ref, ref_basis = float64_reference(graph, ws, xs, independent_reference)
    total_tensor_bytes = sum(graph.nbytes(n) for n in graph.tensors)
    report: dict[str, Any] = {
        "format": FORMAT, "graph": graph.name, "nodes": nodes, "iters": iters, "warmup": warmup,
        "seed": seed, "batch": int(graph.tensors[graph.inputs[0]].shape[0]) if graph.inputs else None,
        "modes": {},
        "plan": {"arena_bytes": sum(a.size for a in p.arenas), "lower_bound_bytes": sum(a.lower_bound for a in p.arenas),
                 "arenas": {str(a.node): a.size for a in p.arenas},
                 "local_bytes": p.local_bytes, "remote_bytes": p.remote_bytes,
                 "axes": sorted({str(l.axis) for l in p.layers})},
        "all_tensors_bytes": total_tensor_bytes,
        "reference": {"basis": ref_basis, "rtol": RTOL, "logits": logits},
        "layers": [{"name": l.name, "op": l.op} for l in graph.layers],
    }
    outputs_of: dict[str, dict[str, np.ndarray]] = {}
    executors: dict[str, Any] = {}
    try:
        # Set-up and warm-up one mode at a time, so each mode's peak memory is its own.
        set_up = {}
        for mode in modes:
            say(f"{mode}: setting up")
            gc.collect()
            _reset_peak()
            rss0 = _proc_status().get("VmRSS", 0)
            ex = executors[mode] = make_executor(mode, p, graph, workers=workers)
            ex.load_weights(ws)
            ex.set_inputs(xs)
            for i in range(warmup):
                ex.step(account=(i == 0))  # the first warm-up measures traffic and pages
            set_up[mode] = {"peak_rss_bytes": max(0, _proc_status().get("VmHWM", 0) - rss0),
                            "workers": {str(g.plan_node): g.workers for g in ex.groups}}
        timed = list(modes)
        if baseline is not None and _start_baseline(baseline, executors, xs, set_up, warmup, report, say):
            timed.append(baseline.name)
        timings = _timed_rounds(executors, timed, iters, say)
        for mode in modes:
            outputs_of[mode] = executors[mode].outputs()
            report["modes"][mode] = _mode_entry(executors[mode], set_up[mode], timings[mode],
                                                outputs_of[mode], ref)
        if len(timed) > len(modes):
            report[baseline.name] = _baseline_entry(baseline.name, executors[baseline.name],
                                                    timings[baseline.name], ref, report["modes"], logits)
    finally:
        for ex in executors.values():
            ex.close()
        executors.clear()
        gc.collect()
    report["ok"] = all(entry["ok"] for entry in report["modes"].values())
    if "first-touch" in report["modes"]:
        ft = report["modes"]["first-touch"]["median_s"]
        ft_cpu = report["modes"]["first-touch"]["median_cpu_s"]
        for entry in report["modes"].values():
            entry["speedup_vs_first_touch"] = ft / entry["median_s"] if entry["median_s"] else float("nan")
            entry["cpu_ratio_vs_first_touch"] = ft_cpu / entry["median_cpu_s"] if entry["median_cpu_s"] else float("nan")
    report["estimate"] = _estimate(report, graph, p, nodes, modes, bandwidth, plan_options)
    for entry in report["modes"].values():
        entry.pop("_pairs", None)
    if keep_outputs:
        report["_outputs"] = {m: {n: outs[n] for n in real_outputs} for m, outs in outputs_of.items()}
    return report


# ================================================================================= text
def _mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def format_report(report: Mapping[str, Any], *, layers: bool = False) -> str:
    """The human-readable summary of a :func:`run_graph` report."""
    lines = []
    modes = report["modes"]
    any_mode = next(iter(modes.values()))
    lines.append(f"numamem run: {report['graph']!r} on nodes {report['nodes']}, workers per node "
                 f"{any_mode['workers']}, BLAS 1 thread per worker; median of {report['iters']} iterations "
                 f"after {report['warmup']} warm-up")
    pl = report["plan"]
    lines.append(f"memory: plan arenas {_mib(pl['arena_bytes'])} MiB (lower bound {_mib(pl['lower_bound_bytes'])}) "
                 f"vs {_mib(report['all_tensors_bytes'])} MiB for all tensors without reuse")
    hdr = (f"{'mode':<12} {'median ms':>10} {'speed-up':>9} {'CPU ms':>8} {'CPU ratio':>9} {'local MiB':>10} "
           f"{'remote MiB':>11} {'peak MiB':>9} {'max rel err':>12}")
    lines.append(hdr)
    for m, e in modes.items():
        sp, cr = e.get("speedup_vs_first_touch"), e.get("cpu_ratio_vs_first_touch")
        sp_s = f"{sp:.3f}x" if sp is not None else "-"
        cr_s = f"{cr:.3f}x" if cr is not None else "-"
        lines.append(f"{m:<12} {e['median_s'] * 1e3:>10.2f} {sp_s:>9} {e['median_cpu_s'] * 1e3:>8.1f} {cr_s:>9} "
                     f"{_mib(e['local_bytes']):>10} {_mib(e['remote_bytes']):>11} {_mib(e['peak_tensor_bytes']):>9} "
                     f"{e['max_rel_err']:>12.2e}")
    if "first-touch" in modes:
        lines.append("  (speed-up = first-touch median wall time / the mode's, CPU ratio the same with CPU seconds of "
                     "workers and caller; same run; >1 is faster than first-touch. peak: planned = arenas + scratch + "
                     "staging reserved; baselines = most tensor bytes held at once)")
    if "planned" in modes:
        e = modes["planned"]
        mem = e["memory"]
        lines.append(f"planned: reserved {_mib(mem['arena_bytes'])} MiB arenas + {_mib(mem['scratch_bytes'])} MiB "
                     f"worker scratch + {_mib(mem['staging_bytes'])} MiB staging; measured reads "
                     f"{_mib(e['measured_local_bytes'])} MiB local, {_mib(e['measured_remote_bytes'])} MiB remote")
    lines.append("pages (where the kernel says they are, node: pages):")
    for m, e in modes.items():
        what = "arena on node" if m == "planned" else "written by node"
        parts = []
        for k, h in e["pages"].items():
            label = f"{what} {k}" if k.lstrip("-").isdigit() else k
            parts.append(f"{label}: {{{', '.join(f'{n}: {c}' for n, c in h.items())}}}")
        lines.append(f"  {m:<12} " + "; ".join(parts))
    est = report.get("estimate")
    if est:
        lines.append(f"estimate: planned vs first-touch {est['planned_vs_first_touch']:.2f}x (transfers overlapping "
                     f"compute) to {est['no_overlap']:.2f}x (not overlapping) on a multi-socket machine; "
                     f"memory-bound limit {est['memory_bound_limit']:.2f}x")
        lines.append(f"  basis: {est['basis']}")
    base = report.get("onnxruntime")
    if base:
        if "skipped" in base:
            lines.append(f"onnxruntime: not compared ({base['skipped']})")
        else:
            ratio = base.get("planned_vs_onnxruntime")
            vs = (f"; planned is {ratio:.2f}x ONNX Runtime's speed (its median / planned's, same run, inputs "
                  "and threads)") if ratio else ""
            lines.append(f"onnxruntime: {base['median_s'] * 1e3:.2f} ms per iteration with {base['threads']} "
                         f"intra-op threads{vs}; max rel err {base['max_rel_err']:.2e}")
    ref = report["reference"]
    if ref.get("logits"):
        # The logits' own error, apart: a saturated softmax would hide it in the outputs'.
        worst = {l: max(e["rel_err"].get(l, 0.0) for e in modes.values()) for l in ref["logits"].values()}
        lines.append("checked: the outputs and the logits of the final softmax ("
                     + ", ".join(f"{l!r} for {o!r}, max rel err {worst[l]:.2e}" for o, l in ref["logits"].items())
                     + ")")
    if report["ok"]:
        lines.append(f"correctness: every mode within {ref['rtol']:g} of {ref['basis']}")
    else:
        bad = [m for m, e in modes.items() if not e["ok"]]
        lines.append(f"correctness: FAILED for {', '.join(bad)} (tolerance {ref['rtol']:g}, {ref['basis']})")
    if layers:
        names = [l["name"] for l in report["layers"]]
        lines.append(f"{'step':>5} {'layer':<28} " + " ".join(f"{m + ' ms':>16}" for m in modes))
        for i, n in enumerate(names):
            lines.append(f"{i:>5} {n[:28]:<28} " + " ".join(f"{modes[m]['layer_median_s'][i] * 1e3:>16.3f}" for m in modes))
    return "\n".join(lines)


def write_json(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the report (without private keys) as JSON."""
    def finite(v):
        # JSON has no inf/nan: an undefined ratio (nothing read at all) is written as null.
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        if isinstance(v, (float, np.floating)):
            return float(v) if math.isfinite(v) else None
        if isinstance(v, np.integer):
            return int(v)
        return v

    clean = finite({k: v for k, v in report.items() if not k.startswith("_")})
    dump_json(clean, path, allow_nan=False)
