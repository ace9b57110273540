"""The estimate of ``numamem run``: planned vs first-touch time on a multi-socket machine.

On a machine where every read is local, a multi-socket speed-up can only be estimated from the
per-layer traffic of each mode and a bandwidth matrix (measured by ``numamem bench``, or the
published figures of :data:`PUBLISHED_MACHINE`); :func:`estimate_speedup` labels the result
with its basis.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from numamem.planner.graph import Graph
from numamem.planner.plan import Plan

__all__ = ["PUBLISHED_MACHINE", "estimate_speedup", "shares_by_node"]

#: Published figures used for the speed-up estimate when no measured matrix is given: a 2-socket
#: Intel Xeon Gold 6140 (Skylake-SP) read bandwidth per node and idle latency, local vs remote.
PUBLISHED_MACHINE = {
    "name": "2-socket Intel Xeon Gold 6140 (published figures)",
    "local_bandwidth": 105e9, "remote_bandwidth": 34e9,
    "local_latency_ns": 90.0, "remote_latency_ns": 144.0,
    "cores_per_node": 18,
}


def shares_by_node(plan: Plan, graph: Graph) -> list[dict[int, float]]:
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
