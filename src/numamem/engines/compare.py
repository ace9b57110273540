"""``default`` against ``per-node``: one engine, the same weights and inputs, a ``numamem-run/1`` report.

:func:`compare` is the library side of ``numamem run MODEL --engine onnxruntime|torch``. Mode ``default`` is
the engine as it runs out of the box: one ONNX Runtime session (or the PyTorch module as given)
built and loaded by the calling thread, with the engine's own thread count. Mode ``per-node`` is
one session or module copy per node (:class:`~numamem.engines.onnxruntime.NodeSessions`,
:class:`~numamem.engines.torch.NodeReplicas`). Iterations go round-robin over the modes, so a
change in the machine's load hits them alike; outputs are compared with the first mode's.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from numamem import _topology
from numamem.engines._nodes import anon_bytes_per_node, delta, require, resolve_nodes
from numamem.runtime.runner import FORMAT, RTOL, estimate_speedup

__all__ = ["MODES", "ENGINES", "compare", "format_report"]

MODES = ("default", "per-node")
ENGINES = ("onnxruntime", "torch")


@dataclass
class _Mode:
    """One way of running the model: how to run it, and what it reports about its memory."""

    run: Callable[[], list[np.ndarray]]
    close: Callable[[], None]
    weights_per_node: dict[int, int]
    weights_basis: str
    threads: dict[str, int]
    sessions: list[dict] = field(default_factory=list)
    build_bytes: dict[int, int] = field(default_factory=dict)


@dataclass
class _Prepared:
    """The modes of one model, ready to run, and what the report needs to know about the model."""

    modes: dict[str, _Mode]
    name: str
    feeds: Any
    batch: int
    weight_bytes: int
    output_names: list[str]


def _engine_of(model) -> str:
    if isinstance(model, (str, os.PathLike, bytes, bytearray)):
        return "onnxruntime"
    if type(model).__module__.startswith("onnx"):
        return "onnxruntime"
    return "torch"


def _rel_err(y, ref) -> float:
    y = np.asarray(y, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def _proportional(total: int, where: Mapping[int, int]) -> dict[int, int]:
    """Spread ``total`` bytes over nodes in proportion to the positive values of ``where``."""
    pos = {n: b for n, b in where.items() if b > 0}
    s = sum(pos.values())
    return {n: int(round(total * b / s)) for n, b in pos.items()} if s else {}


# ------------------------------------------------------------------------------ ONNX Runtime
def _ort_modes(model, modes, nodes, threads_per_node, feeds, batch, seed, prepack):
    from numamem.engines import onnxruntime as eo

    proto = eo.load_model(model)
    out: dict[str, _Mode] = {}
    weight_bytes = sum(a.nbytes for a in eo._weights(proto, eo.MIN_INITIALIZER_BYTES).values())
    name = proto.graph.name or "model"
    try:
        for mode in modes:
            if mode == "default":
                before = anon_bytes_per_node()
                sess = eo.default_session(proto)
                built = delta(anon_bytes_per_node(), before)
                fixed = eo.batch_unit(sess)
                if feeds is None:
                    feeds = eo.random_feeds(sess, batch, seed)
                rows = next(iter(feeds.values())).shape[0]
                out[mode] = _Mode(
                    run=lambda s=sess, f=fixed, x=feeds, n=rows: eo.join_rows(eo.run_rows(s, None, x, 0, n, f)),
                    close=lambda: None,
                    weights_per_node=_proportional(weight_bytes, built),
                    weights_basis=("ONNX Runtime deserialized the weights itself: placed in proportion to the "
                                   "process's anonymous memory that building the session added per node (numa_maps)"),
                    threads={"all": sess.get_session_options().intra_op_num_threads or len(os.sched_getaffinity(0))},
                    build_bytes=built)
            else:
                ns = eo.NodeSessions(proto, nodes, threads_per_node, prepack=prepack)
                if feeds is None:
                    feeds = eo.random_feeds(ns.sessions[0], batch, seed)
                ns.warm_up(feeds)
                out[mode] = _per_node_mode(ns, lambda ns=ns, x=feeds: ns.run(None, x),
                                           "the placed initializers of every session (move_pages)")
    except BaseException:
        for m in out.values():
            m.close()
        raise
    return _Prepared(out, name, feeds, int(next(iter(feeds.values())).shape[0]), weight_bytes,
                     [o.name for o in proto.graph.output])


# ------------------------------------------------------------------------------ PyTorch
def _as_module(model, feeds, seed, weights=None):
    """``(module, name, input tensors, output names)`` for an ``nn.Module`` or a numamem ``Graph``."""
    torch = require("torch", "torch")
    from numamem.planner import Graph

    if isinstance(model, Graph):
        from numamem.engines.graph_torch import graph_module
        from numamem.runtime.runner import random_tensors

        ws, xs = random_tensors(model, seed)
        module = graph_module(model, ws if weights is None else weights)
        if feeds is None:
            feeds = xs
        if isinstance(feeds, Mapping):
            feeds = [feeds[n] for n in model.inputs]
        name, outputs = model.name, list(model.outputs)
    elif weights is not None:
        raise ValueError("weights: only a numamem Graph takes weights; a module and an ONNX model carry their own")
    elif isinstance(model, torch.nn.Module):
        module = model.eval()
        if feeds is None:
            raise ValueError("feeds: give the module's input tensors (batch on axis 0)")
        if isinstance(feeds, Mapping):
            feeds = list(feeds.values())
        name, outputs = type(model).__name__, None
    else:
        raise TypeError(f"model must be an ONNX model, a torch.nn.Module or a numamem Graph, "
                        f"not {type(model).__name__}")
    if not isinstance(feeds, (list, tuple)):
        feeds = [feeds]
    tensors = [x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x)) for x in feeds]
    return module, name, tensors, outputs


def _torch_outputs(y) -> list[np.ndarray]:
    if isinstance(y, (tuple, list)):
        return [t.detach().numpy() for t in y]
    return [y.detach().numpy()]


def _torch_modes(model, modes, nodes, threads_per_node, feeds, seed, weights):
    torch = require("torch", "torch")
    from numamem.engines import torch as et

    module, name, xs, output_names = _as_module(model, feeds, seed, weights)
    weight_bytes = sum(t.numel() * t.element_size() for t, _ in et._module_tensors(module))
    out: dict[str, _Mode] = {}

    def run_default():
        with torch.inference_mode():
            return _torch_outputs(module(*xs))

    try:
        for mode in modes:
            if mode == "default":
                out[mode] = _Mode(run=run_default, close=lambda: None,
                                  weights_per_node=et.module_placement(module),
                                  weights_basis="the module's parameters and buffers where they are (move_pages)",
                                  threads={"all": torch.get_num_threads()})
            else:
                nr = et.NodeReplicas(module, nodes, threads_per_node)
                nr.warm_up(*xs)
                out[mode] = _per_node_mode(nr, lambda nr=nr: _torch_outputs(nr(*xs)),
                                           "the placed parameters and buffers of every replica (move_pages)")
    except BaseException:
        for m in out.values():
            m.close()
        raise
    if output_names is None:  # a module's outputs have no names: number them
        with torch.inference_mode():
            output_names = [f"output{i}" for i in range(len(_torch_outputs(module(*xs))))]
    return _Prepared(out, name, xs, int(xs[0].shape[0]), weight_bytes, output_names)


def _per_node_mode(runner, run, weights_basis: str) -> _Mode:
    """The ``per-node`` mode of either engine: ``runner`` is a NodeSessions or a NodeReplicas,
    whose ``placement()`` reports the same fields for both."""
    pl = runner.placement()
    return _Mode(run=run, close=runner.close,
                 weights_per_node=_sum_nodes(s["weights_bytes_per_node"] for s in pl["sessions"]),
                 weights_basis=weights_basis,
                 threads={str(s["node"]): s["threads"] for s in pl["sessions"]},
                 sessions=pl["sessions"], build_bytes=delta(pl["process"]["built"], pl["process"]["before"]))


def _sum_nodes(dicts) -> dict[int, int]:
    total: dict[int, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


# ------------------------------------------------------------------------------ traffic
def _pairs(mode: str, m: _Mode, readers: Sequence[int], weight_bytes: int) -> dict[tuple[int, int], int]:
    """Weight bytes read per iteration as ``{(source node, reader node): bytes}``.

    ``per-node``: each session reads its own weights from where the kernel says they are.
    ``default``: one engine whose threads span ``readers``, each node's threads reading the
    whole weights once, from where they are.
    """
    pairs: dict[tuple[int, int], int] = {}
    if mode == "per-node":
        for s in m.sessions:
            for src, b in s["weights_bytes_per_node"].items():
                pairs[(src, s["node"])] = pairs.get((src, s["node"]), 0) + b
    else:
        where = m.weights_per_node or {readers[0]: weight_bytes}
        for r in readers:
            for src, b in where.items():
                pairs[(src, r)] = pairs.get((src, r), 0) + b
    return pairs


def _estimate(report, modes_built, nodes, weight_bytes, bandwidth) -> dict | None:
    if not {"default", "per-node"} <= set(report["modes"]):
        return None
    per = report["modes"]["per-node"]
    cores_here = sum(per["threads"].values())
    if len(nodes) >= 2:
        target = list(nodes)
        traffic = {"planned": [_pairs("per-node", modes_built["per-node"], target, weight_bytes)],
                   "first-touch": [_pairs("default", modes_built["default"], target, weight_bytes)]}
        basis = f"weight reads measured from page placement in this run on nodes {target}"
    else:
        target = [0, 1]
        traffic = {"planned": [{(n, n): weight_bytes for n in target}],
                   "first-touch": [{(target[0], n): weight_bytes for n in target}]}
        basis = (f"weight reads modelled for nodes {target}: per-node reads a local replica, default "
                 f"reads one copy on the loading thread's node {target[0]}")
    shares = [{n: 1.0 / len(target) for n in target}]
    est = estimate_speedup(None, [per["median_s"]], traffic, shares, target, bandwidth,
                           basis + "; activations assumed local in both modes", cores_here)
    return {
        "basis": est["basis"].replace("planned layer time", "per-node iteration time"),
        "per_node_vs_default": est["planned_vs_first_touch"],
        "no_overlap": est["no_overlap"],
        "memory_bound_limit": est["memory_bound_limit"],
        "seconds": {"per-node": est["seconds"]["planned"], "default": est["seconds"]["first-touch"]},
        "target_nodes": est["target_nodes"],
        "traffic": {("per-node" if k == "planned" else "default"): {
            "local_bytes": sum(b for (s, r), b in t[0].items() if s == r),
            "remote_bytes": sum(b for (s, r), b in t[0].items() if s != r)} for k, t in traffic.items()},
    }


# ------------------------------------------------------------------------------ the comparison
def compare(model, *, engine: str | None = None, modes: Sequence[str] = MODES, nodes: Sequence[int] | None = None,
            iters: int = 5, warmup: int = 1, feeds: Any = None, batch: int | None = None, seed: int = 0,
            threads_per_node: Any = None, prepack: bool = True, bandwidth: Any = None, rtol: float = RTOL,
            weights: Mapping[str, np.ndarray] | None = None, keep_outputs: bool = False) -> dict[str, Any]:
    """Run ``model`` in each of ``modes`` on the same inputs; return a ``numamem-run/1`` report.

    Parameters
    ----------
    model : path, bytes, onnx.ModelProto, torch.nn.Module or numamem Graph
        An ONNX model runs under ONNX Runtime; a module or a layer graph (a built-in model:
        ``numamem.models.get(name)``, with seeded random weights) under PyTorch.
    engine : {"onnxruntime", "torch"}, optional
        Checked against the model when given.
    modes : sequence of {"default", "per-node"}
    nodes : sequence of int, optional
        Nodes of the ``per-node`` mode (default: every node with CPUs and memory).
    iters, warmup : int
        Timed iterations per mode after ``warmup`` untimed ones, round-robin over the modes.
    feeds : optional
        ONNX: ``{input name: array}`` (default: seeded random inputs of the model's shapes, the
        batch ``batch`` long). PyTorch: a tensor or a sequence of them (required for a module;
        default for a graph: its seeded random inputs).
    batch : int, optional
        Batch of the random ONNX inputs (default: the model's fixed batch, else 1).
    threads_per_node : int or mapping, optional
    prepack : bool
        ONNX Runtime's weight pre-packing in the ``per-node`` sessions.
    bandwidth : mapping, optional
        A ``numamem bench`` result (or its matrix) for the estimate; default published figures.
    weights : mapping, optional
        A layer graph's weights by tensor name (default: seeded random ones); only for a graph.
    rtol : float
        Largest relative error (2-norm) of a mode's outputs against the first mode's.
    keep_outputs : bool
        Put each mode's outputs under ``report["_outputs"][mode]`` as ``{output name: array}``
        (not JSON; what ``--outputs Y.npz`` writes).

    Returns
    -------
    dict
        ``format``, ``engine``, ``graph``, ``nodes``, ``iters``, ``warmup``, ``batch``;
        ``modes[mode]``: ``median_s``, ``seconds``, ``throughput_per_s``, ``threads``, ``pages``
        (weights: label -> {node: pages}, from the kernel), ``weights_bytes_per_node``,
        ``anon_build_bytes_per_node``, ``sessions`` (per-node placement), ``local_bytes`` /
        ``remote_bytes`` (weight bytes read per iteration), ``rel_err`` and ``ok``;
        ``estimate`` (per-node vs default on a multi-socket machine, labelled an estimate) and
        ``ok``.
    """
    modes = list(modes)
    for m in modes:
        if m not in MODES:
            raise ValueError(f"modes: unknown mode {m!r} (known: {', '.join(MODES)})")
    if not modes or len(set(modes)) != len(modes):
        raise ValueError(f"modes must name each mode once, got {modes}")
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0 (got {iters}, {warmup})")
    found = _engine_of(model)
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if engine is not None and engine != found:
        raise ValueError(f"engine={engine!r} but the model is for {found}")
    shares = resolve_nodes(nodes, threads_per_node)
    node_ids = [s.node for s in shares]
    if found == "onnxruntime":
        if weights is not None:
            raise ValueError("weights: an ONNX model carries its own weights")
        prep = _ort_modes(model, modes, node_ids, threads_per_node, feeds, batch, seed, prepack)
    else:
        prep = _torch_modes(model, modes, node_ids, threads_per_node, feeds, seed, weights)
    built, name, batch_size, weight_bytes = prep.modes, prep.name, prep.batch, prep.weight_bytes
    page = _topology.topology(refresh=False).base_page_size
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    outputs: dict[str, list[np.ndarray]] = {}
    try:
        for m in modes:
            for _ in range(warmup):
                built[m].run()
        for i in range(iters):
            for j in range(len(modes)):
                m = modes[(i + j) % len(modes)]
                t0 = time.perf_counter()
                outs = built[m].run()
                seconds[m].append(time.perf_counter() - t0)
                outputs[m] = outs
        report: dict[str, Any] = {"format": FORMAT, "engine": found, "graph": name, "nodes": node_ids,
                                  "iters": iters, "warmup": warmup, "seed": seed, "batch": batch_size,
                                  "weight_bytes": weight_bytes, "modes": {}}
        ref = outputs[modes[0]]
        ok = True
        for m in modes:
            b = built[m]
            errs = [_rel_err(y, r) for y, r in zip(outputs[m], ref)]
            label_pages = ({str(s["node"]): {str(n): -(-v // page) for n, v in s["weights_bytes_per_node"].items()}
                            for s in b.sessions} if b.sessions else
                           {"weights": {str(n): -(-v // page) for n, v in b.weights_per_node.items()}})
            pairs = _pairs(m, b, node_ids, weight_bytes)
            median = float(np.median(seconds[m]))
            entry = {
                "median_s": median, "seconds": seconds[m],
                "throughput_per_s": batch_size / median if median else float("nan"),
                "threads": b.threads, "pages": label_pages,
                "weights_bytes_per_node": {str(k): v for k, v in b.weights_per_node.items()},
                "weights_basis": b.weights_basis,
                "anon_build_bytes_per_node": {str(k): v for k, v in b.build_bytes.items()},
                "sessions": b.sessions,
                "local_bytes": sum(v for (s, r), v in pairs.items() if s == r),
                "remote_bytes": sum(v for (s, r), v in pairs.items() if s != r),
                "traffic_basis": "weight bytes read per iteration, from where the kernel says they are",
                "rel_err": max(errs) if errs else 0.0,
                "max_abs_diff": max((float(np.max(np.abs(np.asarray(y, np.float64) - r))) if np.size(r) else 0.0
                                     for y, r in zip(outputs[m], ref)), default=0.0),
            }
            entry["ok"] = entry["rel_err"] <= rtol
            ok = ok and entry["ok"]
            report["modes"][m] = entry
        report["outputs"] = {"compared_with": modes[0], "rtol": rtol, "names": prep.output_names}
        report["ok"] = ok
        if "default" in report["modes"] and "per-node" in report["modes"]:
            d, p = report["modes"]["default"], report["modes"]["per-node"]
            p["speedup_vs_default"] = d["median_s"] / p["median_s"] if p["median_s"] else float("nan")
        report["estimate"] = _estimate(report, built, node_ids, weight_bytes, bandwidth)
    finally:
        for b in built.values():
            b.close()
    if keep_outputs:
        report["_outputs"] = {m: dict(zip(prep.output_names, outs)) for m, outs in outputs.items()}
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """The human-readable summary of a :func:`compare` report (for the command line)."""
    lines = [f"numamem run: {report['graph']!r} under {report['engine']} on nodes {report['nodes']}, "
             f"batch {report['batch']}; median of {report['iters']} iterations after {report['warmup']} warm-up"]
    lines.append(f"{'mode':<10} {'median ms':>10} {'per s':>9} {'vs default':>11} {'local MiB':>10} "
                 f"{'remote MiB':>11} {'rel err':>9}  threads")
    for m, e in report["modes"].items():
        sp = e.get("speedup_vs_default")
        lines.append(f"{m:<10} {e['median_s'] * 1e3:>10.2f} {e['throughput_per_s']:>9.1f} "
                     f"{(f'{sp:.3f}x' if sp is not None else '-'):>11} {e['local_bytes'] / 2**20:>10.2f} "
                     f"{e['remote_bytes'] / 2**20:>11.2f} {e['rel_err']:>9.1e}  {e['threads']}")
    lines.append("weights (where the kernel says their pages are, node: pages):")
    for m, e in report["modes"].items():
        lines.append(f"  {m:<10} " + "; ".join(f"{k}: {h}" for k, h in e["pages"].items()))
        lines.append(f"  {'':<10} ({e['weights_basis']})")
        if e["anon_build_bytes_per_node"]:
            lines.append(f"  {'':<10} anonymous memory added while building, per node (numa_maps): "
                         f"{e['anon_build_bytes_per_node']}")
    est = report.get("estimate")
    if est:
        lines.append(f"estimate: per-node vs default {est['per_node_vs_default']:.2f}x (transfers overlapping "
                     f"compute) to {est['no_overlap']:.2f}x (not overlapping); memory-bound limit "
                     f"{est['memory_bound_limit']:.2f}x")
        lines.append(f"  basis: {est['basis']}")
    ref = report["outputs"]
    lines.append(("outputs: every mode within " if report["ok"] else "outputs: FAILED, not every mode within ")
                 + f"{ref['rtol']:g} of {ref['compared_with']}")
    return "\n".join(lines)
