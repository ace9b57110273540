"""Static NUMA planner: layer graphs, per-node partitioning, per-node arenas with memory reuse.

The planner is pure Python over NumPy (its packing hot loop is Cython) and never calls libnuma: a
plan is data and may name nodes this machine lacks.

Examples
--------
>>> from numamem.planner import GraphBuilder, plan
>>> g = GraphBuilder("tiny", dtype="float32")
>>> x = g.input("x", (8, 64))
>>> h = g.dense(x, g.weight("w1", (64, 128)), activation="relu")
>>> y = g.output(g.dense(h, g.weight("w2", (128, 10))))
>>> p = plan(g.build(), nodes=[0, 1])
>>> [(b.tensor, b.node, b.slice) for b in p.blocks_of("x")]
[('x', 0, Slice(axis=0, start=0, stop=4)), ('x', 1, Slice(axis=0, start=4, stop=8))]
"""
from numamem.planner.builder import GraphBuilder
from numamem.planner.graph import Graph, GraphError, Layer, Tensor, load_graph
from numamem.planner.ops import OPS, ShapeError, infer_shape
from numamem.planner import ops_onnx as _ops_onnx  # registers the ONNX-semantics ops into OPS
from numamem.planner.onnx import from_onnx, onnx_weights
from numamem.planner.partition import CostModel
from numamem.planner.plans import Arena, Block, LayerPlan, Plan, PlanError, Slice, TensorInfo, plan

__all__ = [
    "Arena", "Block", "CostModel", "Graph", "GraphBuilder", "GraphError", "Layer", "LayerPlan", "OPS",
    "Plan", "PlanError", "ShapeError", "Slice", "Tensor", "TensorInfo", "from_onnx", "infer_shape", "load_graph",
    "onnx_weights", "plan",
]
