"""Engines on placed memory: ONNX Runtime and PyTorch, ``per-node`` against ``default``.

* :class:`Run` -- one inference of the batch in each mode (``time_run``), each in its own process.
* :class:`PerNodeVsDefault` -- the figure that matters: both modes alive in one process,
  iterations alternating (:func:`numamem.engines.compare`), ``track_speedup`` = median default
  time / median per-node time (same run, same load). ``> 1``: per-node is faster. On a one-node
  machine both modes use the same node and CPUs: parity (about 1) is expected.
* :class:`SmallBatch` -- the same ratio at batches 1, 2 and 4 of a small block (width 64, 12
  tokens: tens of microseconds per call), where any fixed cost of the per-node path (splitting,
  handing a part to a node's thread, joining) shows. Parity is expected on one node, where the
  calling thread runs the part itself.

Models: a transformer-style block (MatMul, Add, Relu, LayerNormalization, Softmax) of width 512
at batch 16 x 64 tokens, built with ``onnx.helper`` for ONNX Runtime and as ``torch.nn`` layers
for PyTorch (the same shapes). Smoke mode (``NUMAMEM_ASV_SMOKE=1``) uses width 64, batch 4.
A missing engine skips its cases (``NotImplementedError``).
"""
import gc

import numpy as np

from .common import cpu_nodes, smoke_or

WIDTH, TOKENS, BATCH = smoke_or((512, 64, 16), (64, 8, 4))
#: The small block of SmallBatch (width, tokens) and its batches.
SMALL_WIDTH, SMALL_TOKENS = 64, 12
SMALL_BATCHES = smoke_or([1, 2, 4], [1])
#: Alternating iterations per mode in PerNodeVsDefault (the ratio is of medians over these).
ROUNDS = smoke_or(21, 3)
ENGINES = ["onnxruntime", "torch"]


def _require(engine):
    try:
        return __import__(engine)
    except ImportError:
        raise NotImplementedError(f"{engine} is not installed (pip install numamem[{engine}])") from None


def onnx_block(width=WIDTH, tokens=TOKENS, seed=0):
    """Self-attention (one head) and a feed-forward of 4 x width, residuals and layer norms."""
    _require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def w(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    d, f = width, 4 * width
    inits = [w(n, (d, d), d ** -0.5) for n in ("wq", "wk", "wv", "wo")]
    inits += [w("w1", (d, f), d ** -0.5), w("w2", (f, d), f ** -0.5),
              numpy_helper.from_array(np.array(d ** -0.5, np.float32), "scale"),
              numpy_helper.from_array(np.ones(d, np.float32), "g"),
              numpy_helper.from_array(np.zeros(d, np.float32), "b")]
    mk = helper.make_node
    nodes = [mk("MatMul", ["x", "wq"], ["q"]), mk("MatMul", ["x", "wk"], ["k"]), mk("MatMul", ["x", "wv"], ["v"]),
             mk("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), mk("MatMul", ["q", "kt"], ["s0"]),
             mk("Mul", ["s0", "scale"], ["s"]), mk("Softmax", ["s"], ["a"], axis=-1),
             mk("MatMul", ["a", "v"], ["c"]), mk("MatMul", ["c", "wo"], ["o"]), mk("Add", ["x", "o"], ["h0"]),
             mk("LayerNormalization", ["h0", "g", "b"], ["h"], axis=-1),
             mk("MatMul", ["h", "w1"], ["f0"]), mk("Relu", ["f0"], ["f1"]), mk("MatMul", ["f1", "w2"], ["f2"]),
             mk("Add", ["h", "f2"], ["y0"]), mk("LayerNormalization", ["y0", "g", "b"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", tokens, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", tokens, d])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def torch_block(width=WIDTH, seed=0):
    """``nn.TransformerEncoderLayer`` of the same width (4 heads, feed-forward 4 x width)."""
    torch = _require("torch")
    torch.manual_seed(seed)
    return torch.nn.TransformerEncoderLayer(width, 4, 4 * width, batch_first=True).eval()


def _inputs(engine, batch=BATCH, tokens=TOKENS, width=WIDTH):
    x = np.random.default_rng(1).standard_normal((batch, tokens, width)).astype(np.float32)
    if engine == "onnxruntime":
        return onnx_block(width, tokens), {"x": x}
    torch = _require("torch")
    return torch_block(width), torch.from_numpy(x)


class Run:
    """One inference of the batch per mode."""

    params = (ENGINES, ["default", "per-node"])
    param_names = ["engine", "mode"]
    number = 1
    repeat = (5, 15, 60.0)
    timeout = 600

    def setup(self, engine, mode):
        _require(engine)
        model, feeds = _inputs(engine)
        if engine == "onnxruntime":
            from numamem.engines.onnxruntime import NodeSessions, default_session

            if mode == "default":
                sess = default_session(model)
                self.run = lambda: sess.run(None, feeds)
            else:
                self.closer = NodeSessions(model, nodes=cpu_nodes())
                self.run = lambda: self.closer.run(None, feeds)
        else:
            torch = _require("torch")
            from numamem.engines.torch import NodeReplicas

            if mode == "default":
                def run():
                    with torch.inference_mode():
                        return model(feeds)
                self.run = run
            else:
                self.closer = NodeReplicas(model, nodes=cpu_nodes())
                self.run = lambda: self.closer(feeds)
        self.run()  # warm: engine arenas, first faults

    def teardown(self, engine, mode):
        closer = getattr(self, "closer", None)
        if closer is not None:
            closer.close()
        self.run = self.closer = None
        gc.collect()

    def time_run(self, engine, mode):
        self.run()


class PerNodeVsDefault:
    """``per-node`` against ``default`` in one process, iterations alternating (ratio of medians)."""

    params = (ENGINES,)
    param_names = ["engine"]
    number = 1
    repeat = 1
    timeout = 900

    def setup(self, engine):
        _require(engine)
        from numamem.engines import compare

        model, feeds = _inputs(engine)
        self.report = compare(model, feeds=feeds, nodes=cpu_nodes(), iters=ROUNDS)
        if not self.report["ok"]:
            raise AssertionError(f"per-node outputs differ from default: {self.report['modes']}")

    def track_speedup(self, engine):
        return self.report["modes"]["per-node"]["speedup_vs_default"]

    track_speedup.unit = "ratio"

    def track_estimate_two_sockets(self, engine):
        """The modelled per-node vs default ratio on a 2-socket machine (an estimate, not a measurement)."""
        return self.report["estimate"]["per_node_vs_default"]

    track_estimate_two_sockets.unit = "ratio"


class SmallBatch:
    """``per-node`` against ``default`` at small batches of a small block (ratio of medians)."""

    params = (ENGINES, SMALL_BATCHES)
    param_names = ["engine", "batch"]
    number = 1
    repeat = 1
    timeout = 600

    def setup(self, engine, batch):
        _require(engine)
        from numamem.engines import compare

        model, feeds = _inputs(engine, batch, SMALL_TOKENS, SMALL_WIDTH)
        self.report = compare(model, feeds=feeds, nodes=cpu_nodes(), iters=smoke_or(201, 3))
        if not self.report["ok"]:
            raise AssertionError(f"per-node outputs differ from default: {self.report['modes']}")

    def track_speedup(self, engine, batch):
        return self.report["modes"]["per-node"]["speedup_vs_default"]

    track_speedup.unit = "ratio"
