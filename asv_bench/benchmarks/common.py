"""Helpers shared by the benchmark modules: which nodes exist, and skipping meaningless cases."""
import numamem


def usable_nodes():
    """Nodes with memory this process may use."""
    topo = numamem.topology()
    return [n.id for n in topo.nodes if n.has_memory and n.id in topo.allowed_nodes]


def first_node():
    """The first usable node (every benchmark runs at least there)."""
    return usable_nodes()[0]
