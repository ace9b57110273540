"""``numamem topology``: this machine's nodes, CPUs, memory, distances and hugepage pools."""
from __future__ import annotations

import json


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


def format_topology(topo) -> str:
    """Render a :class:`numamem.Topology` as the human-readable table ``numamem topology`` prints."""
    lines = []
    kind = "NUMA" if topo.numa else "no NUMA support in the kernel (the machine is one node)"
    lines.append(f"{len(topo.nodes)} node(s), {kind}; base page {topo.base_page_size} B; "
                 f"transparent huge pages: {topo.thp} ({topo.thp_size // 1024} KiB)")
    lines.append(f"allowed nodes: {sorted(topo.allowed_nodes)}   allowed CPUs: {len(topo.allowed_cpus)}")
    lines.append("")
    lines.append(f"{'node':>4}  {'cpus':<16} {'total':>12} {'free':>12}  hugepages (free/total)")
    for node in topo.nodes:
        cpus = ",".join(map(str, node.cpus)) if node.cpus else "(none)"
        if len(cpus) > 16:
            cpus = f"{len(node.cpus)} cpus"
        pools = "  ".join(f"{size // 2**20 if size >= 2**20 else size // 1024}{'M' if size >= 2**20 else 'K'}: "
                          f"{pool.free}/{pool.total}" for size, pool in sorted(node.hugepages.items())) or "-"
        lines.append(f"{node.id:>4}  {cpus:<16} {_mib(node.mem_total):>12} {_mib(node.mem_free):>12}  {pools}")
    lines.append("")
    lines.append("distances:")
    ids = topo.node_ids
    lines.append("      " + "".join(f"{b:>5}" for b in ids))
    for a in ids:
        lines.append(f"{a:>5} " + "".join(f"{topo.distances.get((a, b), '-'):>5}" for b in ids))
    return "\n".join(lines)


def run_topology(args) -> int:
    """Print the topology (``--json``: as JSON)."""
    from numamem._topology import topology

    topo = topology()
    if args.json:
        print(json.dumps(topo.to_dict(), indent=2))
    else:
        print(format_topology(topo))
    return 0


def add_command(subparsers) -> None:
    """Register ``numamem topology``."""
    parser = subparsers.add_parser("topology", help="show NUMA nodes, CPUs, memory, distances, hugepages")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run_topology)
