"""Static NUMA planner: layer graphs, per-node partitioning, per-node arenas with memory reuse.

The planner is pure Python over NumPy (its packing hot loop is Cython) and never calls libnuma: a
plan is data and may name nodes this machine lacks.

Modules, lowest first: :mod:`~numamem.planner.boxes` (index geometry), :mod:`~numamem.planner.ops`
(the op table), :mod:`~numamem.planner.graph` and :mod:`~numamem.planner.builder` (the layer
graph), :mod:`~numamem.planner.traffic` (who reads what from where),
:mod:`~numamem.planner.partition` (split choice and layouts), :mod:`~numamem.planner.packing`
(offsets with reuse), :mod:`~numamem.planner.check` (the independent checker),
:mod:`~numamem.planner.report` (text tables), :mod:`~numamem.planner.plan` (the plan model),
:mod:`~numamem.planner.planfile` (the ``numamem-plan/1`` format) and
:mod:`~numamem.planner.planner` (:func:`plan`). ONNX models come in through
:mod:`~numamem.planner.onnx` (:func:`from_onnx`), with the ops of ONNX semantics in
:mod:`~numamem.planner.ops_onnx`.

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
from numamem.planner.plan import Arena, Block, LayerPlan, Plan, PlanError, Slice, TensorInfo
# Last, on purpose: binding the function ``plan`` here hides the submodule of the same name
# (numamem.planner.plan) as an attribute; import the model with ``from numamem.planner.plan import Plan``.
from numamem.planner.planner import plan

__all__ = [
    "Arena", "Block", "CostModel", "Graph", "GraphBuilder", "GraphError", "Layer", "LayerPlan", "OPS",
    "Plan", "PlanError", "ShapeError", "Slice", "Tensor", "TensorInfo", "from_onnx", "infer_shape", "load_graph",
    "onnx_weights", "plan",
]
