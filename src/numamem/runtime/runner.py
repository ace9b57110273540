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
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from numamem import _topology
from numamem.planner.graph import Graph
from numamem.planner.plans import Plan, plan as make_plan
from numamem.runtime import kernels as K
from numamem._jsonfile import dump_json
from numamem.runtime.executor import MODES, BaselineExecutor, make_executor

__all__ = ["FORMAT", "PUBLISHED_MACHINE", "RTOL", "estimate_nodes", "estimate_speedup", "float64_reference", "format_report",
           "load_npz", "plan_traffic", "random_tensors", "run_graph"]

FORMAT = "numamem-run/1"
#: Largest relative error ``||y - ref|| / ||ref||`` accepted for every output of every mode.
RTOL = 1e-4
#: Graphs up to this many flops are checked against the independent reference ops
#: (:mod:`numamem.runtime.reference`, explicit loops: slow); bigger ones against the kernels run
#: whole-tensor in float64.
INDEPENDENT_REFERENCE_FLOPS = 2e10

#: Published figures used for the speed-up estimate when no measured matrix is given: a 2-socket
#: Intel Xeon Gold 6140 (Skylake-SP) read bandwidth per node and idle latency, local vs remote.
PUBLISHED_MACHINE = {
    "name": "2-socket Intel Xeon Gold 6140 (published figures)",
    "local_bandwidth": 105e9, "remote_bandwidth": 34e9,
    "local_latency_ns": 90.0, "remote_latency_ns": 144.0,
    "cores_per_node": 18,
}


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
        raise ValueError(f"{path}: {extra[0]!r} is not a {what} of graph {graph.name!r} "
                         f"(its {what}s: {', '.join(names)})")
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
        shape = K.output_shape(layer.op, [x.shape for x in ins], layer.attrs)
        out = np.empty(shape, np.float64)
        K.run(layer.op, ins, out, layer.attrs)
        env[layer.outputs[0]] = out
        for n in last.get(step, ()):
            if n not in graph.outputs:
                env.pop(n, None)
    return {n: env[n] for n in graph.outputs}, "the block kernels run whole-tensor in float64"


def _rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(np.asarray(y, np.float64) - ref) / max(np.linalg.norm(ref), 1e-300))


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
    blocks = {}
    for b in plan.blocks:
        blocks.setdefault(b.tensor, []).append(b)
    out = []
    for layer, lp in zip(graph.layers, plan.layers):
        shapes = [graph.tensors[n].shape for n in layer.inputs]
        d: dict[tuple[int, int], int] = {}
        for ob in blocks[layer.outputs[0]]:
            n = ob.node
            if lp.axis is None or ob.slice is None:
                regions = [tuple((0, s) for s in sh) for sh in shapes]
            else:
                regions = K.input_regions(layer.op, shapes, layer.attrs,
                                          K.Block(ob.slice.axis, ob.slice.start, ob.slice.stop))
            for name, region in zip(layer.inputs, regions):
                if region is None:
                    continue
                item = graph.itemsize(name)
                h = holder(name) if holder is not None else None
                got: dict[int, int] = {}
                vol = math.prod(b - a for a, b in region)
                if h is not None:
                    got[h] = vol
                elif blocks[name][0].slice is None:
                    src = n if any(b.node == n for b in blocks[name]) else blocks[name][0].node
                    got[src] = vol
                else:
                    for b in blocks[name]:
                        br = tuple((b.slice.start, b.slice.stop) if k == b.slice.axis else (0, s)
                                   for k, s in enumerate(graph.tensors[name].shape))
                        e = 1
                        for (a0, a1), (b0, b1) in zip(region, br):
                            e *= max(0, min(a1, b1) - max(a0, b0))
                        if e:
                            got[b.node] = got.get(b.node, 0) + e
                for m, e in got.items():
                    d[m, n] = d.get((m, n), 0) + e * item
        out.append(d)
    return out


def _shares(plan: Plan, graph: Graph) -> list[dict[int, float]]:
    """Per layer, the fraction of the output each node computes."""
    out = []
    for layer in graph.layers:
        bl = plan.blocks_of(layer.outputs[0])
        total = sum(b.size for b in bl if b.slice is not None) or 1
        out.append({b.node: (1.0 if b.slice is None else b.size / total) for b in bl})
    return out


def _bandwidth_of(matrix: Any, nodes: Sequence[int]) -> dict[tuple[int, int], float] | None:
    """``{(reader, source): bytes/s}`` over ``nodes`` from a bench matrix, or None if it lacks a pair."""
    if not matrix:
        return None
    try:
        out = {}
        for a in nodes:
            row = matrix[a] if a in matrix else matrix[str(a)]
            for b in nodes:
                out[a, b] = float(row[b] if b in row else row[str(b)])
        return out
    except (KeyError, TypeError, IndexError):
        return None


def estimate_speedup(graph: Graph, layer_seconds: Sequence[float], traffic: Mapping[str, list],
                     shares: Sequence[Mapping[int, float]], nodes: Sequence[int],
                     bandwidth: Any = None, traffic_basis: str = "", cores_here: int = 1) -> dict[str, Any]:
    """Estimate planned vs first-touch time on a multi-socket machine from per-layer traffic.

    Per layer and node: compute time = the measured per-layer time here times the node's share
    of the layer times ``cores_here / cores per target node`` (compute assumed to scale with
    cores: 18 per node for the published machine, the bench's threads per node for a measured
    matrix); memory time = the sum over source nodes of bytes / bandwidth(reader, source). The layer takes
    the slowest node's ``max(compute, memory)`` (a roofline: transfers overlap compute). The
    speed-up is the ratio of the sums over layers; ``memory_bound_limit`` is the same ratio with
    memory times only. Latency does not enter (streaming reads are bandwidth-bound); it is
    recorded with the basis.

    Parameters
    ----------
    graph : Graph
    layer_seconds : sequence of float
        Measured per-layer median time of the planned run here.
    traffic : mapping
        ``{"planned": [...], "first-touch": [...]}``: per layer ``{(source, reader): bytes}``.
    shares : sequence of mapping
        Per layer ``{node: fraction of the output it computes}``.
    nodes : sequence of int
        The target machine's nodes.
    bandwidth : mapping, optional
        A ``numamem bench`` result, or its matrix ``{reader: {source: bytes/s}}``; default: the
        published figures of :data:`PUBLISHED_MACHINE`.
    traffic_basis : str
        How ``traffic`` was obtained (for the label).
    cores_here : int
        Worker threads that computed the measured layer times.

    Returns
    -------
    dict
        ``basis``, ``planned_vs_first_touch``, ``memory_bound_limit``, per-mode seconds, and the
        constants used.
    """
    threads = None
    if isinstance(bandwidth, Mapping) and "bandwidth" in bandwidth:
        threads = bandwidth.get("threads")
        bandwidth = bandwidth["bandwidth"]
    bw = _bandwidth_of(bandwidth, nodes)
    if bw is not None and len(nodes) >= 2:
        cores = {n: float((threads or {}).get(str(n), cores_here)) for n in nodes}
        machine = "measured bandwidth matrix (numamem bench)"
        consts = {"bandwidth": {str(a): {str(b): bw[a, b] for b in nodes} for a in nodes},
                  "cores_per_node": {str(n): c for n, c in cores.items()}}
    else:
        cores = {n: float(PUBLISHED_MACHINE["cores_per_node"]) for n in nodes}
        pm = PUBLISHED_MACHINE
        bw = {(a, b): pm["local_bandwidth"] if a == b else pm["remote_bandwidth"] for a in nodes for b in nodes}
        machine = (f"{pm['name']}: {pm['local_bandwidth'] / 1e9:.0f} GB/s local vs "
                   f"{pm['remote_bandwidth'] / 1e9:.0f} GB/s remote read bandwidth per node, "
                   f"{pm['local_latency_ns']:.0f} vs {pm['remote_latency_ns']:.0f} ns idle latency, "
                   f"{pm['cores_per_node']} cores per node")
        consts = dict(pm)
    totals, mem_totals, add_totals = {}, {}, {}
    for mode in ("planned", "first-touch"):
        t_sum = m_sum = a_sum = 0.0
        for step, d in enumerate(traffic[mode]):
            mem: dict[int, float] = {}
            for (src, reader), nbytes in d.items():
                b = bw.get((reader, src)) or bw.get((reader, reader)) or PUBLISHED_MACHINE["local_bandwidth"]
                mem[reader] = mem.get(reader, 0.0) + nbytes / b
            worst = worst_mem = worst_add = 0.0
            for n in set(mem) | set(shares[step]):
                tc = layer_seconds[step] * shares[step].get(n, 0.0) * cores_here / cores.get(n, cores_here)
                worst = max(worst, tc, mem.get(n, 0.0))
                worst_mem = max(worst_mem, mem.get(n, 0.0))
                worst_add = max(worst_add, tc + mem.get(n, 0.0))
            t_sum += worst
            m_sum += worst_mem
            a_sum += worst_add
        totals[mode], mem_totals[mode], add_totals[mode] = t_sum, m_sum, a_sum
    ratio = totals["first-touch"] / totals["planned"] if totals["planned"] else float("nan")
    limit = mem_totals["first-touch"] / mem_totals["planned"] if mem_totals["planned"] else float("inf")
    no_overlap = add_totals["first-touch"] / add_totals["planned"] if add_totals["planned"] else float("nan")
    return {
        "basis": (f"ESTIMATE, not a measurement: {machine}; {traffic_basis}; per layer and node "
                  f"max(compute = measured planned layer time here x node share x {cores_here} cores here / cores "
                  f"per node, memory = bytes / bandwidth)"),
        "planned_vs_first_touch": ratio,
        "no_overlap": no_overlap,
        "memory_bound_limit": limit,
        "seconds": {"planned": totals["planned"], "first-touch": totals["first-touch"]},
        "memory_seconds": mem_totals,
        "target_nodes": list(nodes),
        "constants": consts,
    }


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


# ================================================================================= the command
def _check_nodes(nodes: Sequence[int] | None) -> list[int]:
    topo = _topology.topology(refresh=False)
    if nodes is None:
        return [n.id for n in topo.nodes if n.has_memory and n.id in topo.allowed_nodes]
    nodes = list(nodes)
    for n in nodes:
        if n not in topo.node_ids:
            raise ValueError(f"node {n} does not exist on this machine (nodes: {', '.join(map(str, topo.node_ids))})")
        if not topo.node(n).has_memory:
            raise ValueError(f"node {n} has no memory")
        if n not in topo.allowed_nodes:
            raise ValueError(f"node {n} is not allowed by this process's cpuset")
    return nodes


def estimate_nodes(nodes: Sequence[int]) -> list[int]:
    """The nodes the multi-socket estimate of a run on ``nodes`` is for: those, or [0, 1] for one node."""
    return list(nodes) if len(nodes) >= 2 else [0, 1]


def run_graph(graph: Graph, nodes: Sequence[int] | None = None, modes: Sequence[str] = MODES, iters: int = 5,
              seed: int = 0, weights: Mapping[str, np.ndarray] | None = None,
              inputs: Mapping[str, np.ndarray] | None = None, *, warmup: int = 1, workers: Any = None,
              bandwidth: Any = None, independent_reference: bool | None = None,
              progress: Callable[[str], None] | None = None, plan_options: Mapping[str, Any] | None = None,
              keep_outputs: bool = False) -> dict[str, Any]:
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

    Returns
    -------
    dict
        The report (see ``docs/runtime.md``); ``ok`` is False when a mode's outputs are off the
        reference by more than :data:`RTOL`.
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
    nodes = _check_nodes(nodes)
    plan_options = dict(plan_options or {})
    p = make_plan(graph, nodes=nodes, **plan_options)
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
        "reference": {"basis": ref_basis, "rtol": RTOL},
        "layers": [{"name": l.name, "op": l.op} for l in graph.layers],
    }
    outputs_of: dict[str, dict[str, np.ndarray]] = {}
    ok = True
    executors: dict[str, Any] = {}
    entries: dict[str, dict[str, Any]] = {}
    try:
        # Set-up and warm-up one mode at a time, so each mode's peak memory is its own.
        for mode in modes:
            say(f"{mode}: setting up")
            gc.collect()
            _reset_peak()
            rss0 = _proc_status().get("VmRSS", 0)
            ex = executors[mode] = make_executor(mode, p, graph, workers=workers)
            ex.load_weights(ws)
            ex.set_inputs(xs)
            for i in range(warmup):
                if isinstance(ex, BaselineExecutor):
                    ex.step(account=(i == 0))  # the traffic and pages of first-touch memory
                else:
                    ex.step()
            entries[mode] = {"peak_rss_bytes": max(0, _proc_status().get("VmHWM", 0) - rss0),
                             "workers": {str(g.plan_node): g.workers for g in ex.groups}}
        # Timed iterations round-robin over the modes (the starting mode rotating), so a change
        # in the machine's load during the run hits every mode alike.
        seconds: dict[str, list[float]] = {m: [] for m in modes}
        cpu_s: dict[str, list[float]] = {m: [] for m in modes}
        per_layer: dict[str, list[list[float]]] = {m: [] for m in modes}
        for i in range(iters):
            say(f"iteration {i + 1}/{iters}")
            for j in range(len(modes)):
                mode = modes[(i + j) % len(modes)]
                ex = executors[mode]
                seconds[mode].append(ex.step())
                cpu_s[mode].append(ex.cpu_seconds)
                per_layer[mode].append(list(ex.layer_seconds))
        for mode in modes:
            ex = executors[mode]
            outs = ex.outputs()
            traffic = ex.traffic()
            entry = entries[mode]
            entry.update({
                "median_s": float(np.median(seconds[mode])), "seconds": seconds[mode],
                "median_cpu_s": float(np.median(cpu_s[mode])), "cpu_seconds": cpu_s[mode],
                "layer_median_s": [float(x) for x in np.median(np.array(per_layer[mode]), axis=0)],
                "pages": ex.pages(),
            })
            if mode == "planned":
                entry["local_bytes"], entry["remote_bytes"] = p.local_bytes, p.remote_bytes
                entry["traffic_basis"] = "the plan's per-layer accounting"
                entry["measured_local_bytes"] = traffic["local_bytes"]
                entry["measured_remote_bytes"] = traffic["remote_bytes"]
                entry["memory"] = ex.memory()
                entry["extra_pages"] = ex.extra_pages()
                mem = entry["memory"]
                entry["peak_tensor_bytes"] = mem["arena_bytes"] + mem["scratch_bytes"] + mem["staging_bytes"]
            else:
                entry["peak_tensor_bytes"] = ex.peak_tensor_bytes
                entry["local_bytes"], entry["remote_bytes"] = traffic["local_bytes"], traffic["remote_bytes"]
                entry["traffic_basis"] = "measured from where the pages are (numamem.page_nodes)"
            entry["per_node"] = traffic["per_node"]
            entry["layer_traffic"] = [[l["local_bytes"], l["remote_bytes"]] for l in traffic["layers"]]
            entry["_pairs"] = _pairs_from_layers(traffic["layers"])
            errs = {n: _rel_err(outs[n], ref[n]) for n in graph.outputs}
            entry["rel_err"] = errs
            entry["max_rel_err"] = max(errs.values()) if errs else 0.0
            entry["ok"] = entry["max_rel_err"] <= RTOL
            ok = ok and entry["ok"]
            outputs_of[mode] = outs
            report["modes"][mode] = entry
    finally:
        for ex in executors.values():
            ex.close()
        executors.clear()
        gc.collect()
    report["ok"] = ok
    if "first-touch" in report["modes"]:
        ft = report["modes"]["first-touch"]["median_s"]
        ft_cpu = report["modes"]["first-touch"]["median_cpu_s"]
        for m, e in report["modes"].items():
            e["speedup_vs_first_touch"] = ft / e["median_s"] if e["median_s"] else float("nan")
            e["cpu_ratio_vs_first_touch"] = ft_cpu / e["median_cpu_s"] if e["median_cpu_s"] else float("nan")
    # The estimate.
    base_mode = "planned" if "planned" in report["modes"] else modes[0]
    cores_here = sum(report["modes"][base_mode]["workers"].values())
    layer_s = report["modes"][base_mode]["layer_median_s"]
    if len(nodes) >= 2 and "planned" in report["modes"] and "first-touch" in report["modes"]:
        traffic = {"planned": report["modes"]["planned"]["_pairs"],
                   "first-touch": report["modes"]["first-touch"]["_pairs"]}
        basis = f"traffic measured in this run on nodes {nodes}"
        est = estimate_speedup(graph, layer_s, traffic, _shares(p, graph), nodes, bandwidth, basis, cores_here)
    else:
        target = estimate_nodes(nodes)
        tp = make_plan(graph, nodes=target, **plan_options)
        loader = target[0]
        role = {n: graph.tensors[n].role for n in graph.tensors}
        traffic = {
            "planned": plan_traffic(tp, graph),
            "first-touch": plan_traffic(tp, graph, lambda n: loader if role[n] in ("weight", "input") else None),
        }
        basis = (f"traffic modelled for nodes {target} (planned: the plan's blocks; first-touch: weights and "
                 f"inputs on the loading thread's node {loader}, each activation block on the node writing it)")
        est = estimate_speedup(graph, layer_s, traffic, _shares(tp, graph), target, bandwidth, basis, cores_here)
    est["traffic"] = {m: {"local_bytes": sum(b for d in t for (s, r), b in d.items() if s == r),
                          "remote_bytes": sum(b for d in t for (s, r), b in d.items() if s != r)}
                      for m, t in traffic.items()}
    report["estimate"] = est
    for e in report["modes"].values():
        e.pop("_pairs", None)
    if keep_outputs:
        report["_outputs"] = outputs_of
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
    ref = report["reference"]
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
