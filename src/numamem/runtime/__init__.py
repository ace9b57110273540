"""The numamem runtime: block kernels of the graph ops and a float64 reference.

:mod:`numamem.runtime.kernels` computes one per-node block of a layer into caller-provided
(planned) memory; :mod:`numamem.runtime.reference` is the independent whole-tensor float64
reference the kernels and the executor are checked against.
"""
from numamem.runtime.kernels import KERNELS, Block, bind, input_regions, output_shape, run, scratch_bytes
from numamem.runtime.reference import reference_forward

__all__ = ["KERNELS", "Block", "bind", "input_regions", "output_shape", "reference_forward", "run", "scratch_bytes"]
