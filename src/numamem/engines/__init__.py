"""Other engines on placed memory: ONNX Runtime sessions and PyTorch modules, one per node.

- :class:`numamem.engines.onnxruntime.NodeSessions`: one ``InferenceSession`` per node, built on
  a thread bound to it, its initializers handed over from numamem arrays on the node
  (``pip install numamem[onnxruntime]``).
- :mod:`numamem.engines.torch`: ``place_module``, ``replicas`` and ``NodeReplicas`` for PyTorch
  modules (``pip install numamem[torch]``); :func:`numamem.engines.graph_torch.graph_module`
  runs the built-in layer graphs under PyTorch.
- :func:`compare`: ``default`` against ``per-node`` for either engine, as a ``numamem-run/1``
  report (the library side of ``numamem run MODEL --engine onnxruntime|torch``).

Importing this package imports neither engine; each is imported when first used, and a missing
one is an ``ImportError`` naming the extra that installs it.
"""
from numamem.engines._nodes import PlacementWarning, split_counts
from numamem.engines.compare import ENGINES, MODES, compare, format_report

__all__ = ["compare", "format_report", "MODES", "ENGINES", "PlacementWarning", "split_counts"]
