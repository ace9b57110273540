"""Text tables of a plan: arenas against their lower bounds, padding, and reads per layer.

:func:`plan_report` is what :meth:`numamem.planner.plan.Plan.report` and ``numamem plan`` print.
It reads a plan by attribute and imports nothing else from the planner.

Examples
--------
>>> import numamem.models, numamem.planner
>>> p = numamem.planner.plan(numamem.models.get("mlp", batch=8), nodes=[0, 1])
>>> print(plan_report(p, layers=False).splitlines()[1])
 node    arena MiB  lower bound peak/bound  page pad B  block pad B
"""
from __future__ import annotations

from typing import Any

__all__ = ["plan_report"]

_MIB = 1 << 20


def plan_report(plan: Any, *, layers: bool = True) -> str:
    """Human-readable summary of ``plan``: arenas against their lower bounds, padding, remote bytes per layer.

    Parameters
    ----------
    plan : Plan
    layers : bool, default True
        Add one line per layer (split axis, local and remote bytes read).

    Returns
    -------
    str
        The lines, without a final newline.
    """
    mib = _MIB
    lines = [
        f"plan of {plan.graph!r} on nodes {plan.nodes}: {plan.steps} steps, page {plan.page_size} B, "
        f"{len(plan.blocks)} blocks",
        f"{'node':>5} {'arena MiB':>12} {'lower bound':>12} {'peak/bound':>10} {'page pad B':>11} {'block pad B':>12}",
    ]
    for a in plan.arenas:
        ratio = f"{a.peak / a.lower_bound:.4f}" if a.lower_bound else "-"
        lines.append(f"{a.node:>5} {a.size / mib:>12.4f} {a.lower_bound / mib:>12.4f} {ratio:>10} "
                     f"{a.page_padding:>11} {a.block_padding:>12}")
    total = sum(a.size for a in plan.arenas)
    lines.append(f"total {total / mib:.4f} MiB; reads: {plan.local_bytes / mib:.3f} MiB local, "
                 f"{plan.remote_bytes / mib:.3f} MiB remote")
    if layers:
        lines.append(f"{'step':>5} {'layer':<32} {'op':<14} {'axis':>4} {'local B':>12} {'remote B':>12}")
        for l in plan.layers:
            axis = "-" if l.axis is None else str(l.axis)
            lines.append(f"{l.step:>5} {l.name[:32]:<32} {l.op[:14]:<14} {axis:>4} {l.local_bytes:>12} {l.remote_bytes:>12}")
    return "\n".join(lines)
