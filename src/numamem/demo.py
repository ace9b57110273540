"""The main job until the runtime lands: this machine's topology and a placement demonstration.

Run with ``python -m numamem.demo``. Every claim printed comes from the kernel (``move_pages``,
``get_mempolicy``, ``/proc/self/smaps``), not from numamem's own bookkeeping.
"""
from __future__ import annotations

import sys

import numpy as np

import numamem
from numamem._cli_topology import format_topology


def main() -> int:
    """Print the topology, place arrays on every usable node and show where their pages are."""
    topo = numamem.topology()
    print(format_topology(topo))
    print()
    usable = [n.id for n in topo.nodes if n.has_memory and n.id in topo.allowed_nodes]
    for node in usable:
        array = numamem.zeros((4096, 1024), np.float32, node=node)
        info = numamem.placement(array)
        print(f"16 MiB float32 array bound to node {node}: bytes per node {info.bytes_per_node}, "
              f"pages {info.pages} ({info.thp_bytes // 2**20} MiB THP), policy {info.policy}{list(info.policy_nodes)}, "
              f"aligned to {info.alignment} B")
    split = numamem.empty((len(usable) * 300, 1000), np.float64, nodes=usable, axis=0)
    split[...] = 1.0
    print(f"block-split array {split.shape} over nodes {usable}:")
    for block in numamem.blocks(split):
        where = np.unique(numamem.page_nodes(block.array), return_counts=True)
        print(f"  block {block.index}: rows [{block.start}, {block.stop}) -> node {block.node}; "
              f"kernel reports pages on {dict(zip(where[0].tolist(), where[1].tolist()))}")
    try:
        numamem.empty(10, node=max(topo.node_ids) + 7)
    except ValueError as exc:
        print(f"a node that does not exist is refused before mapping: {exc}")
    huge = max(n.mem_total for n in topo.nodes) * 2
    try:
        numamem.empty(huge, np.uint8, node=usable[0])
    except numamem.NodeMemoryError as exc:
        print(f"a request larger than the node is an exception, not an OOM kill: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
