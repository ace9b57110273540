"""numamem: NUMA-aware memory for NumPy, and a NUMA-aware DNN planner and runtime.

Arrays on a chosen node with proof of where their pages are::

    >>> import numamem, numpy as np
    >>> a = numamem.zeros((1024, 1024), np.float32, node=0)
    >>> numamem.placement(a).bytes_per_node
    {0: 4194304}
"""
from numamem._version import __version__
from numamem._blocksplit import ArrayBlock, blocks
from numamem.arrays import (
    asarray, empty, empty_like, full, full_like, ones, ones_like, zeros, zeros_like,
)
from numamem.inspect import Placement, migrate, owner, page_nodes, placement
from numamem.npyio import fromfile, load
from numamem.errors import (
    HugePageError, NodeMemoryError, NumaUnavailableError, PageSizeError, PlacementError,
    PolicyPermissionError,
)
from numamem.planner import Graph, GraphBuilder, GraphError, Plan, PlanError, load_graph, plan
from numamem.pools import on_node, pool_stats, release_pools
from numamem.threads import ProcessBinding, ThreadBinding, bind_process, bind_thread
from numamem._topology import HugePagePool, Node, Topology, topology

__all__ = [
    "__version__", "on_node", "pool_stats", "release_pools", "ArrayBlock", "Placement", "asarray",
    "blocks", "load", "fromfile", "empty", "empty_like", "full", "full_like", "migrate", "ones",
    "ones_like", "owner", "page_nodes", "placement", "zeros", "zeros_like", "HugePageError",
    "NodeMemoryError", "NumaUnavailableError", "PageSizeError", "PlacementError",
    "PolicyPermissionError", "Graph", "GraphBuilder", "GraphError", "Plan", "PlanError",
    "load_graph", "plan", "ThreadBinding", "bind_thread", "ProcessBinding", "bind_process",
    "HugePagePool", "Node", "Topology", "topology",
]

from numamem import models  # noqa: E402  (built-in layer graphs: numamem.models.get)
from numamem.runtime import BaselineExecutor, Executor, run_graph  # noqa: E402

run = run_graph  # numamem.run(graph, ...): the Python form of `numamem run`
__all__ += ["models", "BaselineExecutor", "Executor", "run_graph", "run"]
