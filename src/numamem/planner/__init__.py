"""Static NUMA planner: layer graphs, per-node partitioning, arenas with memory reuse."""
from numamem.planner.builder import GraphBuilder
from numamem.planner.graph import Graph, GraphError, Layer, Tensor, load_graph
