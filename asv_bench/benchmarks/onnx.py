"""ONNX models: numamem's planned runtime against ONNX Runtime on the same model.

* :class:`PlannedVsOnnxRuntime` -- an ONNX model of the light model zoo that ships with the
  ``onnx`` package (weights are ``ConstantOfShape`` placeholders, given random values of a
  sensible scale by :func:`numamem.planner.onnx.placeholder_values`) imported with
  :func:`numamem.planner.from_onnx` at batch 1 and run by :func:`numamem.runtime.runner.run_graph`
  in mode ``planned`` with ONNX Runtime as its baseline (the same weights, inputs and number of
  threads; iterations alternating in one process). ``track_planned_vs_onnxruntime`` = median ONNX
  Runtime time / median planned time: ``> 1`` is numamem faster.

Models: light squeezenet and light resnet50; smoke mode (``NUMAMEM_ASV_SMOKE=1``) runs
squeezenet only, 2 rounds. A missing ``onnx`` or ``onnxruntime`` skips (``NotImplementedError``).
"""
import gc
import os

from .common import first_node, smoke_or

MODELS = smoke_or(["squeezenet", "resnet50"], ["squeezenet"])
#: Alternating iterations per engine (the ratio is of medians over these).
ROUNDS = smoke_or(7, 2)


def light_model(name):
    """Path of ``light_<name>.onnx`` in the installed onnx package's backend test data."""
    try:
        import onnx
    except ImportError:
        raise NotImplementedError("onnx is not installed (pip install numamem[onnx])") from None
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"light_{name}.onnx")
    if not os.path.isfile(path):
        raise NotImplementedError(f"{path}: not shipped by this onnx package")
    return path


class PlannedVsOnnxRuntime:
    """Planned numamem against ONNX Runtime in one process, iterations alternating (ratio of medians)."""

    params = (MODELS,)
    param_names = ["model"]
    number = 1
    repeat = 1
    timeout = 1200

    def setup(self, model):
        path = light_model(model)
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise NotImplementedError("onnxruntime is not installed (pip install numamem[onnxruntime])") from None
        from numamem.engines.ort_baseline import OnnxRuntimeBaseline
        from numamem.planner import from_onnx, onnx_weights
        from numamem.planner.onnx import placeholder_values
        from numamem.runtime.runner import run_graph

        values = placeholder_values(path, 0) or None
        graph = from_onnx(path, batch=1)
        weights = onnx_weights(path, batch=1, values=values)
        self.report = run_graph(graph, [first_node()], ["planned"], iters=ROUNDS, weights=weights,
                                baseline=OnnxRuntimeBaseline(path, values))
        if not (self.report["ok"] and self.report["onnxruntime"]["ok"]):
            raise AssertionError(f"outputs differ from the reference: planned {self.report['modes']['planned']['max_rel_err']}"
                                 f", onnxruntime {self.report['onnxruntime']['max_rel_err']}")
        gc.collect()

    def track_planned_vs_onnxruntime(self, model):
        return self.report["onnxruntime"]["planned_vs_onnxruntime"]

    track_planned_vs_onnxruntime.unit = "x (onnxruntime / planned)"

    def track_planned_ms(self, model):
        return self.report["modes"]["planned"]["median_s"] * 1e3

    track_planned_ms.unit = "ms"

    def track_onnxruntime_ms(self, model):
        return self.report["onnxruntime"]["median_s"] * 1e3

    track_onnxruntime_ms.unit = "ms"
