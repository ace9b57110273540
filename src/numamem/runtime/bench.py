"""``numamem bench``: this machine's per node-pair read bandwidth and latency, and allocation costs.

For every pair (CPU node *a*, memory node *b*), like ``numademo`` or Intel MLC:

* **bandwidth**: threads bound to *a* (one per allowed CPU of *a*) each stream over their part of
  a buffer placed on *b* (:func:`numamem.runtime._chase.read_sum`, a C loop with the GIL
  released); bytes read / wall time, median of several runs.
* **latency**: one thread bound to *a* follows a dependent pointer chase over a random cyclic
  permutation of 64-byte slots in a buffer on *b* bigger than the last-level cache
  (:func:`numamem.runtime._chase.chase`), so every load misses the caches and waits for the one
  before; time per load, median of several runs.

And the cost of ``numamem.empty`` (mapped, bound, pre-faulted and verified) against ``np.empty``
alone and ``np.empty`` followed by touching every page, at a few sizes.

The ``bandwidth`` matrix of the result is what :func:`numamem.planner.plan` takes as
``bandwidth=`` (``numamem plan --bandwidth FILE`` reads the JSON directly); rows of memory-only
nodes, which cannot run a thread, repeat the row of the nearest CPU node (listed under
``derived_rows``).
"""
from __future__ import annotations

import glob
import threading
import time
from typing import Any, Callable

import numpy as np

from numamem import _topology
from numamem.arrays import empty as nm_empty
from numamem.threads import WorkerTeam

__all__ = ["FORMAT", "format_table", "llc_bytes", "measure"]

FORMAT = "numamem-bench/1"


def llc_bytes() -> int:
    """Size of the largest CPU cache this machine reports (sysfs), or 32 MiB if unknown."""
    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu*/cache/index*/size"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return best or 32 << 20


def _timed(team: WorkerTeam, fn: Callable[[int], Any]) -> float:
    """Run ``fn(worker)`` on every worker of ``team`` (one group), released together; return the
    wall time from the release to the last one finishing."""
    count = team.sizes[0]
    release = threading.Barrier(count)
    starts, ends = [0.0] * count, [0.0] * count

    def job(group: int, worker: int) -> None:
        release.wait()
        starts[worker] = time.perf_counter()
        fn(worker)
        ends[worker] = time.perf_counter()

    team.run(job)
    return max(ends) - min(starts)


def _alloc_costs(node: int, sizes, repeats: int) -> list[dict[str, float]]:
    page = _topology.topology(refresh=False).base_page_size
    out = []
    for size in sizes:
        rows = {"np_empty_us": [], "np_empty_touch_us": [], "numamem_empty_us": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            a = np.empty(size, np.uint8)
            rows["np_empty_us"].append(time.perf_counter() - t0)
            del a
            t0 = time.perf_counter()
            a = np.empty(size, np.uint8)
            a[::page] = 0  # fault in every page, as first use would
            rows["np_empty_touch_us"].append(time.perf_counter() - t0)
            del a
            t0 = time.perf_counter()
            a = nm_empty(size, np.uint8, node=node)
            rows["numamem_empty_us"].append(time.perf_counter() - t0)
            del a
        med = {k: float(np.median(v)) * 1e6 for k, v in rows.items()}
        med["bytes"] = int(size)
        med["numamem_vs_np_touch"] = med["numamem_empty_us"] / max(med["np_empty_touch_us"], 1e-9)
        out.append(med)
    return out


def measure(quick: bool = False, progress: Callable[[str], None] | None = None, *,
            buffer_bytes: int | None = None, chase_steps: int | None = None, repeats: int | None = None,
            nodes: list[int] | None = None) -> dict[str, Any]:
    """Measure bandwidth and latency between every CPU node and memory node, and allocation costs.

    Parameters
    ----------
    quick : bool
        Smaller buffers and fewer repeats (a few seconds; the latency buffer still exceeds the
        last-level cache).
    progress : callable, optional
        Called with a status line per node pair.
    buffer_bytes : int, optional
        Size of each buffer (default: 4x the last-level cache, at least 64 MiB; quick: 2x).
    chase_steps : int, optional
        Dependent loads per latency run (default 2**21; quick 2**19).
    repeats : int, optional
        Runs per measurement, the median is kept (default 5; quick 3).
    nodes : list of int, optional
        Memory nodes to measure (default: every allowed node with memory).

    Returns
    -------
    dict
        ``numamem-bench/1``: ``bandwidth`` and ``latency_ns`` as ``{reader: {memory node: value}}``
        (bytes/s and ns), ``threads`` per reader, ``allocation`` costs, and the method.
    """
    from numamem.runtime._chase import chase, read_sum

    say = progress or (lambda msg: None)
    topo = _topology.topology(refresh=False)
    mem_nodes = nodes if nodes is not None else topo.memory_nodes()
    cpu_nodes = [n.id for n in topo.nodes if topo.usable_cpus(n.id)]
    if not cpu_nodes:
        raise ValueError("no node with CPUs this process may use")
    llc = llc_bytes()
    size = buffer_bytes or max((2 if quick else 4) * llc, 64 << 20)
    size -= size % 4096
    steps = chase_steps or (1 << 19 if quick else 1 << 21)
    reps = repeats or (3 if quick else 5)
    rng = np.random.default_rng(12345)
    bandwidth: dict[str, dict[str, float]] = {}
    latency: dict[str, dict[str, float]] = {}
    threads = {str(a): len(topo.usable_cpus(a)) for a in cpu_nodes}
    t_start = time.perf_counter()
    # Threads bound to each CPU node for the whole measurement: one per allowed CPU streaming,
    # one following the chase.
    streams: dict[int, WorkerTeam] = {}
    chasers: dict[int, WorkerTeam] = {}
    try:
        for a in cpu_nodes:
            streams[a] = WorkerTeam([a], [threads[str(a)]], policy="local")
            chasers[a] = WorkerTeam([a], [1], policy="local")
        for b in mem_nodes:
            data = nm_empty(size // 8, np.uint64, node=b)
            data[:] = 1
            slots = size // 64
            links = nm_empty(slots * 8, np.int64, node=b)
            perm = rng.permutation(slots)
            links[perm * 8] = np.roll(perm, -1)  # one cycle through every slot, in random order
            for a in cpu_nodes:
                say(f"memory node {b}, CPU node {a}")
                parts = np.array_split(data, threads[str(a)])
                bw_runs = []
                read_sum(parts[0][: 1 << 16])
                for _ in range(reps):
                    sec = _timed(streams[a], lambda i: read_sum(parts[i]))
                    bw_runs.append(data.nbytes / sec)
                lat_runs = []
                for _ in range(reps):
                    box = {}

                    def run_chase(i: int) -> None:
                        p = chase(links, int(perm[0]), steps // 8)  # warm the TLB and the walk
                        t0 = time.perf_counter()
                        box["p"] = chase(links, p, steps)
                        box["s"] = time.perf_counter() - t0

                    _timed(chasers[a], run_chase)
                    lat_runs.append(box["s"] / steps * 1e9)
                bandwidth.setdefault(str(a), {})[str(b)] = float(np.median(bw_runs))
                latency.setdefault(str(a), {})[str(b)] = float(np.median(lat_runs))
            del data, links
    finally:
        for team in list(streams.values()) + list(chasers.values()):
            team.close()
    derived = []
    for m in mem_nodes:
        if str(m) in bandwidth:
            continue
        near = min(cpu_nodes, key=lambda c: (topo.distance(m, c), c))
        bandwidth[str(m)] = dict(bandwidth[str(near)])
        latency[str(m)] = dict(latency[str(near)])
        derived.append({"node": m, "from": near})
    say("allocation costs")
    alloc = _alloc_costs(mem_nodes[0], [4 << 10, 1 << 20, 64 << 20], 3 if quick else 7)
    return {
        "format": FORMAT,
        "nodes": list(mem_nodes), "cpu_nodes": cpu_nodes,
        "bandwidth": bandwidth, "latency_ns": latency, "threads": threads, "derived_rows": derived,
        "buffer_bytes": size, "llc_bytes": llc, "chase_steps": steps, "repeats": reps,
        "allocation": alloc,
        "seconds": time.perf_counter() - t_start,
        "method": ("bandwidth: threads bound to the reader node (one per allowed CPU) stream over their "
                   "share of a buffer on the memory node (C loop, GIL released), bytes/wall time, median; "
                   "latency: one bound thread follows a dependent chase over a random cyclic permutation "
                   "of 64-byte slots in a buffer larger than the last-level cache, time per load, median; "
                   "allocation: median wall time of one call (numamem.empty maps, binds, pre-faults and "
                   "verifies; np.empty alone is lazy, so np.empty + touching every page is the comparable "
                   "figure)"),
    }


def format_table(result: dict[str, Any]) -> str:
    """The result of :func:`measure` as text tables."""
    nodes = [str(n) for n in result["nodes"]]
    lines = [f"read bandwidth GB/s (rows: CPU node and its threads; columns: memory node; buffer "
             f"{result['buffer_bytes'] >> 20} MiB, median of {result['repeats']})"]
    lines.append(f"{'cpu':>5} {'thr':>4} " + " ".join(f"{'mem ' + n:>9}" for n in nodes))
    derived = {str(d["node"]): d["from"] for d in result.get("derived_rows", [])}
    for a, row in result["bandwidth"].items():
        label = f"({a})" if a in derived else a
        thr = result["threads"].get(a, "-")
        lines.append(f"{label:>5} {thr!s:>4} " + " ".join(f"{row[n] / 1e9:>9.2f}" for n in nodes))
    lines.append(f"latency ns (dependent loads, {result['chase_steps']} per run, buffer > LLC of "
                 f"{result['llc_bytes'] >> 20} MiB)")
    lines.append(f"{'cpu':>5} {'':>4} " + " ".join(f"{'mem ' + n:>9}" for n in nodes))
    for a, row in result["latency_ns"].items():
        label = f"({a})" if a in derived else a
        lines.append(f"{label:>5} {'':>4} " + " ".join(f"{row[n]:>9.1f}" for n in nodes))
    if derived:
        lines.append("(rows in parentheses: memory-only nodes, copied from the nearest CPU node)")
    lines.append("allocation (median microseconds per call)")
    lines.append(f"{'bytes':>10} {'np.empty':>10} {'np+touch':>10} {'numamem':>10} {'numamem/np+touch':>17}")
    for r in result["allocation"]:
        lines.append(f"{r['bytes']:>10} {r['np_empty_us']:>10.1f} {r['np_empty_touch_us']:>10.1f} "
                     f"{r['numamem_empty_us']:>10.1f} {r['numamem_vs_np_touch']:>17.2f}")
    lines.append(f"measured in {result['seconds']:.1f} s")
    return "\n".join(lines)
