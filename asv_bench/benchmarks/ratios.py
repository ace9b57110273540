"""Print the headline ratios of docs/performance.md from a stored asv result file.

Not a benchmark (asv imports it while discovering the suite and finds nothing to run). After a
measuring run with results kept, e.g.::

    cd asv_bench
    ../.venv/bin/asv run --python=same --set-commit-hash $(git rev-parse HEAD) -a rounds=5 \\
        --bench 'memory\\.Bandwidth|allocation\\.AllocateFill|pools\\.|planner\\.'
    ../.venv/bin/python -m benchmarks.ratios            # newest result file of this machine
    ../.venv/bin/python -m benchmarks.ratios results/<machine>/<file>.json
    ../.venv/bin/python -m benchmarks.ratios run1.json run2.json run3.json   # separate runs

it prints Markdown tables: every timing is asv's median over all samples of all rounds, every ratio
is numamem's median over the NumPy (or default) median of the same run.
"""
import ast
import itertools
import json
import os
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


class Results:
    """One asv result file: medians and sample counts by benchmark name and parameter values.

    Parameters
    ----------
    path : str or Path
        A ``results/<machine>/<commit>-<env>.json`` file written by ``asv run``.
    """

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path) as f:
            data = json.load(f)
        self.meta = data
        columns = data["result_columns"]
        self.rows = {name: dict(zip(columns, row)) for name, row in data["results"].items()}

    def _index(self, name, params):
        row = self.rows.get(name)
        if row is None or row.get("result") is None:
            return None, None
        grid = row.get("params") or []
        combos = list(itertools.product(*grid)) if grid else [()]
        want = tuple(repr(p) for p in params)
        for i, combo in enumerate(combos):
            if tuple(repr(ast.literal_eval(c)) for c in combo) == want:
                return row, i
        return None, None

    def value(self, name, *params):
        """Median (asv's ``result``) of benchmark ``name`` at ``params``; None if absent or skipped.

        Parameters
        ----------
        name : str
            Full benchmark name, e.g. ``"memory.Bandwidth.time_copy"``.
        *params
            Parameter values in ``param_names`` order.

        Returns
        -------
        float or None
        """
        row, i = self._index(name, params)
        if row is None:
            return None
        value = row["result"][i]
        return None if value is None or value != value else float(value)

    def samples(self, name, *params):
        """Number of timed samples behind the median (0 when not recorded).

        Parameters
        ----------
        name : str
            Full benchmark name.
        *params
            Parameter values in ``param_names`` order.

        Returns
        -------
        int
        """
        row, i = self._index(name, params)
        if row is None or not row.get("samples") or row["samples"][i] is None:
            return 0
        return len(row["samples"][i])


def newest_result(machine=None):
    """Newest result file for ``machine`` (default: this host name) under ``asv_bench/results``.

    Parameters
    ----------
    machine : str, optional
        asv machine name.

    Returns
    -------
    Path
    """
    folder = HERE / "results" / (machine or socket.gethostname())
    files = [p for p in folder.glob("*.json") if p.name != "machine.json"]
    if not files:
        raise SystemExit(f"no asv results in {folder}: run asv with --set-commit-hash first")
    return max(files, key=os.path.getmtime)


def _fmt_time(seconds):
    if seconds is None:
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def _ratio(a, b):
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.3f}"


def report(res, out=sys.stdout):
    """Write the Markdown tables of docs/performance.md for result file ``res``.

    Parameters
    ----------
    res : Results
        Loaded result file.
    out : file, optional
        Where to write.
    """
    from .common import MiB
    from .memory import BIG
    from .pools import INNER, INNER_LARGE

    p = lambda *a: print(*a, file=out)  # noqa: E731
    meta = res.meta
    p(f"Result file `{res.path.name}`, commit {meta.get('commit_hash', '?')[:12]}, "
      f"python {meta.get('python')}, environment {meta.get('env_name')}.\n")

    p(f"**Bandwidth** ({BIG // MiB} MiB float64 arrays, pre-touched, thread bound to the first node)\n")
    p("| kernel | NumPy | numamem (local, THP) | numamem / NumPy time | samples |")
    p("|---|---|---|---|---|")
    for kernel, moved in (("copy", 2), ("triad", 5)):
        name = f"memory.Bandwidth.time_{kernel}"
        t_np, t_nm = res.value(name, "numpy"), res.value(name, "numamem-local")
        gbs = lambda t: "n/a" if t is None else f"{moved * BIG / t / 1e9:.1f} GB/s"  # noqa: E731
        p(f"| {kernel} | {_fmt_time(t_np)} ({gbs(t_np)}) | {_fmt_time(t_nm)} ({gbs(t_nm)}) "
          f"| {_ratio(t_nm, t_np)} | {res.samples(name, 'numpy')} / {res.samples(name, 'numamem-local')} |")
    thp_np = res.value("memory.Bandwidth.track_thp_fraction", "numpy")
    thp_nm = res.value("memory.Bandwidth.track_thp_fraction", "numamem-local")
    if thp_np is not None or thp_nm is not None:
        p(f"\nShare on transparent huge pages (smallest of the three arrays): NumPy {thp_np}, numamem {thp_nm}.")

    p("\n**Allocation plus a full write** (`time_allocate_fill`; default policy bind, pages auto)\n")
    p("| bytes | np.empty | numamem.empty | ratio | np.zeros | numamem.zeros | ratio |")
    p("|---|---|---|---|---|---|---|")
    name = "allocation.AllocateFill.time_allocate_fill"
    row = res.rows.get(name)
    sizes = [ast.literal_eval(s) for s in row["params"][1]] if row else []
    for n in sizes:
        e_np, e_nm = res.value(name, "np.empty", n), res.value(name, "numamem.empty", n)
        z_np, z_nm = res.value(name, "np.zeros", n), res.value(name, "numamem.zeros", n)
        p(f"| {n:,} | {_fmt_time(e_np)} | {_fmt_time(e_nm)} | {_ratio(e_nm, e_np)} "
          f"| {_fmt_time(z_np)} | {_fmt_time(z_nm)} | {_ratio(z_nm, z_np)} |")

    p(f"\n**Small allocations** (per allocation: a loop of {INNER} divided by {INNER}, loop included)\n")
    p("| bytes | np.empty | np.empty in on_node | ratio | numamem.empty | ratio |")
    p("|---|---|---|---|---|---|")
    name = "pools.SmallAllocation.time_allocate"
    for n in (64, 1024, 16384, 65536):
        t_np = res.value(name, "np.empty", n)
        t_on = res.value(name, "np.empty-in-on_node", n)
        t_nm = res.value(name, "numamem.empty", n)
        per = lambda t: None if t is None else t / INNER  # noqa: E731
        p(f"| {n:,} | {_fmt_time(per(t_np))} | {_fmt_time(per(t_on))} | {_ratio(t_on, t_np)} "
          f"| {_fmt_time(per(t_nm))} | {_ratio(t_nm, t_np)} |")
    p(f"\n**Large blocks** (per allocate-and-free cycle: a loop of {INNER_LARGE} divided by {INNER_LARGE}; "
      "the pool reuses its cached mapping)\n")
    p("| bytes | np.empty | np.empty in on_node | ratio | same-process ratio | mappings made per loop |")
    p("|---|---|---|---|---|---|")
    name = "pools.LargeBlockReuse.time_allocate"
    for n in (3 << 19, 2 << 20, 8 << 20, 32 << 20):
        t_np, t_on = res.value(name, "np.empty", n), res.value(name, "np.empty-in-on_node", n)
        same = res.value("pools.LargeBlockReuseRatio.track_on_node_over_np_empty", n)
        maps = res.value("pools.LargeBlockReuse.track_maps", "np.empty-in-on_node", n)
        per = lambda t: None if t is None else t / INNER_LARGE  # noqa: E731
        p(f"| {n:,} | {_fmt_time(per(t_np))} | {_fmt_time(per(t_on))} | {_ratio(t_on, t_np)} "
          f"| {'n/a' if same is None else f'{same:.3f}'} | {'n/a' if maps is None else f'{maps:g}'} |")
    t_np = res.value("pools.TemporariesChain.time_chain", "numpy")
    t_on = res.value("pools.TemporariesChain.time_chain", "on_node")
    p(f"\n**Elementwise chain on 1 MiB arrays**: default {_fmt_time(t_np)}, inside on_node "
      f"{_fmt_time(t_on)}, ratio {_ratio(t_on, t_np)} (target ≤ 1.05).")
    t = res.value("pools.ScopeOverhead.time_enter_exit", "local")
    p(f"Entering and leaving `on_node` once: {_fmt_time(None if t is None else t / INNER)}.")

    p("\n**Packing synthetic lifetime sets** (`pack`, default time limit, align 64)\n")
    p("| buffers | time | peak / lower bound | time limit hit |")
    p("|---|---|---|---|")
    row = res.rows.get("planner.PackSynthetic.time_pack")
    counts = [ast.literal_eval(s) for s in row["params"][0]] if row else []
    for n in counts:
        timed_out = res.value("planner.PackSynthetic.track_timed_out", n)
        p(f"| {n:,} | {_fmt_time(res.value('planner.PackSynthetic.time_pack', n))} "
          f"| {res.value('planner.PackSynthetic.track_ratio', n)} "
          f"| {'n/a' if timed_out is None else bool(timed_out)} |")

    p("\n**Planning the built-in models onto nodes [0, 1]**\n")
    p("| model | batch | plan time | arenas (MiB) | max peak / lower bound | max size / lower bound |")
    p("|---|---|---|---|---|---|")
    row = res.rows.get("planner.PlanModels.time_plan")
    grid = [[ast.literal_eval(s) for s in axis] for axis in row["params"]] if row else [[], []]
    for model, batch in itertools.product(*grid):
        mib = res.value("planner.PlanModels.track_arena_mib", model, batch)
        peak = res.value("planner.PlanModels.track_peak_over_lower_bound", model, batch)
        size = res.value("planner.PlanModels.track_size_over_lower_bound", model, batch)
        p(f"| {model} | {batch} | {_fmt_time(res.value('planner.PlanModels.time_plan', model, batch))} "
          f"| {'n/a' if mib is None else f'{mib:.1f}'} | {peak} "
          f"| {'n/a' if size is None else f'{size:.6f}'} |")


#: Issue 15: pooled ``numamem.empty``/``zeros`` of 64 B to 64 KiB at most this times NumPy's, as
#: a same-process ratio.
SMALL_TARGET = 1.5

HEADLINE = [
    # (label, benchmark, numamem params, baseline params, target)
    ("copy, numamem / NumPy time", "memory.Bandwidth.time_copy", ("numamem-local",), ("numpy",), 1.05),
    ("triad, numamem / NumPy time", "memory.Bandwidth.time_triad", ("numamem-local",), ("numpy",), None),
    ("triad, staggered numamem / NumPy time", "memory.Bandwidth.time_triad",
     ("numamem-local-staggered",), ("numpy",), None),
    ("256 MiB empty + fill, numamem / NumPy", "allocation.AllocateFill.time_allocate_fill",
     ("numamem.empty", 256 << 20), ("np.empty", 256 << 20), 1.1),
    ("1 GiB empty + fill, numamem / NumPy", "allocation.AllocateFill.time_allocate_fill",
     ("numamem.empty", 1 << 30), ("np.empty", 1 << 30), None),
] + [
    (f"{n} B: np.empty in on_node / np.empty", "pools.SmallAllocation.time_allocate",
     ("np.empty-in-on_node", n), ("np.empty", n), None) for n in (64, 1024, 16384, 65536)
] + [
    (f"{n} B: numamem.empty / np.empty", "pools.SmallAllocation.time_allocate",
     ("numamem.empty", n), ("np.empty", n), None) for n in (64, 1024, 16384, 65536)
] + [
    ("1 MiB elementwise chain, on_node / default", "pools.TemporariesChain.time_chain",
     ("on_node",), ("numpy",), 1.05),
] + [
    # Same-process ratios (track_*: the value is the ratio itself, base None).
    (f"{n} B: np.empty in on_node / np.empty, same process", "pools.SmallAllocationRatio.track_on_node_over_np_empty",
     (n,), None, None) for n in (64, 1024, 16384, 65536)
] + [
    (f"{n} B: numamem.empty / np.empty, same process",
     "pools.SmallAllocationRatio.track_numamem_empty_over_np_empty", (n,), None, SMALL_TARGET)
    for n in (64, 1024, 16384, 65536)
] + [
    (f"{n} B: numamem.zeros / np.zeros, same process",
     "pools.SmallAllocationRatio.track_numamem_zeros_over_np_zeros", (n,), None, SMALL_TARGET)
    for n in (64, 1024, 16384, 65536)
] + [
    # Freed direct mappings are cached and reused: no map or placement per large temporary.
    (f"{n / 2**20:g} MiB: np.empty in on_node / np.empty, same process",
     "pools.LargeBlockReuseRatio.track_on_node_over_np_empty", (n,), None, None)
    for n in (3 << 19, 2 << 20, 8 << 20, 32 << 20)
] + [
    ("1 MiB elementwise chain, on_node / default, same process",
     "pools.TemporariesChainRatio.track_on_node_over_default", (), None, 1.05),
]


def headline(runs, out=sys.stdout):
    """Write one table of the headline ratios: one column per run, then their median.

    Parameters
    ----------
    runs : list of Results
        Result files of separate measuring runs (same benchmarks).
    out : file, optional
        Where to write.
    """
    import statistics

    p = lambda *a: print(*a, file=out)  # noqa: E731
    p("| ratio | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median | target |")
    p("|---|" + "---|" * (len(runs) + 2))
    for label, name, mine, base, target in HEADLINE:
        values = []
        for res in runs:
            a = res.value(name, *mine)
            b = 1.0 if base is None else res.value(name, *base)
            values.append(None if a is None or b is None or b == 0 else a / b)
        known = [v for v in values if v is not None]
        med = statistics.median(known) if known else None
        verdict = "" if target is None or med is None else (
            f"≤ {target}: {'met' if med <= target else 'MISSED'}")
        cells = " | ".join("n/a" if v is None else f"{v:.3f}" for v in values)
        p(f"| {label} | {cells} | {'n/a' if med is None else f'{med:.3f}'} | {verdict} |")


def main(argv=None):
    """Command line: ``python -m benchmarks.ratios [RESULT.json ...]``.

    With several result files (separate runs), first a table of the headline ratios per run and
    their median, then the full report of the last file.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    argv = sys.argv[1:] if argv is None else argv
    paths = [Path(a) for a in argv] or [newest_result()]
    runs = [Results(path) for path in paths]
    if len(runs) > 1:
        headline(runs)
        print()
    report(runs[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
