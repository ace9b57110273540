"""The numamem runtime: block kernels, a float64 reference, the planned executor and baselines.

:mod:`numamem.runtime.kernels` computes one per-node block of a layer into caller-provided
(planned) memory; :mod:`numamem.runtime.reference` is the independent whole-tensor float64
reference the kernels and the executor are checked against. :func:`~numamem.runtime.program.compile_program`
turns a plan into a program of named tasks; :class:`Executor` runs it on node-bound worker threads
in per-node arenas; :class:`BaselineExecutor` runs the same blocks with first-touch or interleaved
memory; :mod:`numamem.runtime.locality` measures where the bytes they read are; :func:`run_graph`
runs every mode and reports (``numamem run``); :mod:`numamem.runtime.bench` measures the machine
(``numamem bench``).
"""
from numamem.runtime.kernels import KERNELS, bind, run
from numamem.runtime.reference import reference_forward
from numamem.runtime.locality import bytes_by_node
from numamem.runtime.program import compile_program
from numamem.runtime.executor import MODES, BaselineExecutor, Executor, make_executor
from numamem.runtime.runner import run_graph

__all__ = ["KERNELS", "MODES", "BaselineExecutor", "Executor", "bind", "bytes_by_node", "compile_program",
           "make_executor", "reference_forward", "run", "run_graph"]
