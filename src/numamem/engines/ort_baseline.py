"""ONNX Runtime as a baseline of numamem's own planned runtime, on the same ONNX model.

``numamem run MODEL.onnx`` runs the imported graph with numamem's kernels; this module gives
:func:`numamem.runtime.runner.run_graph` an ONNX Runtime session of the *same* model (the same
weights: placeholders replaced by the values numamem runs on, with
:func:`numamem.planner.onnx.with_values`), fed the same inputs and given as many intra-op
threads as numamem has workers, which ``run_graph`` times in the same round-robin loop as its
modes. The comparison is of engines on one machine, not of placements: the session runs as
ONNX Runtime does out of the box (its own allocator, no node binding).

Needs the ``onnxruntime`` extra (``pip install numamem[onnxruntime]``); without it,
:meth:`OnnxRuntimeBaseline.start` raises ``ImportError`` and ``run_graph`` reports the baseline
as skipped.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping

import numpy as np

from numamem.engines._nodes import require

__all__ = ["OnnxRuntimeBaseline", "OrtSession", "softmax_logits"]


class OrtSession:
    """One ``InferenceSession`` over fixed feeds: the timed object :func:`run_graph` steps.

    Attributes
    ----------
    threads : int
        ONNX Runtime's intra-op threads.
    cpu_seconds : float
        Process CPU seconds of the last :meth:`step` (ONNX Runtime's threads are the process's).
    layer_seconds : tuple
        Empty: ONNX Runtime's per-node times are not numamem's layers.

    ``logits`` maps output names to the names of extra session outputs holding the logits of the
    Softmax that makes them (:meth:`logits`).
    """

    layer_seconds: tuple = ()

    def __init__(self, session: Any, feeds: Mapping[str, np.ndarray], threads: int,
                 logits: Mapping[str, str] | None = None):
        self._session = session
        self._feeds = dict(feeds)
        self._names = [o.name for o in session.get_outputs()]
        self._logits = dict(logits or {})
        self._out: list[np.ndarray] = []
        self.threads = threads
        self.cpu_seconds = 0.0

    def step(self) -> float:
        """Run the model once on the feeds; return the wall seconds it took."""
        c0, t0 = time.process_time(), time.perf_counter()
        self._out = self._session.run(None, self._feeds)
        t = time.perf_counter() - t0
        self.cpu_seconds = time.process_time() - c0
        return t

    def outputs(self) -> dict[str, np.ndarray]:
        """The last step's outputs by the model's output names (without the logits)."""
        extra = set(self._logits.values())
        return {n: a for n, a in zip(self._names, self._out) if n not in extra}

    def logits(self) -> dict[str, np.ndarray]:
        """The last step's logits of each output a final Softmax makes, by that output's name."""
        got = dict(zip(self._names, self._out))
        return {o: got[l] for o, l in self._logits.items() if l in got}

    def close(self) -> None:
        """Drop the session (its threads and arena go with it)."""
        self._session = None
        self._out = []


class OnnxRuntimeBaseline:
    """The ONNX model ``model`` under ONNX Runtime, for :func:`numamem.runtime.runner.run_graph`.

    Parameters
    ----------
    model : str or os.PathLike
        The ``.onnx`` file numamem imported.
    values : mapping of str to ndarray, optional
        Values of its ``ConstantOfShape`` weight placeholders (by ONNX name), as numamem's run
        was given them (:func:`numamem.planner.onnx.placeholder_values`); without them the
        model runs as it is.
    """

    #: The key of the report's entry and of ``planned_vs_<name>``.
    name = "onnxruntime"

    def __init__(self, model: str | os.PathLike, values: Mapping[str, np.ndarray] | None = None):
        self.model = os.fspath(model)
        self.values = dict(values) if values else None

    def _model(self) -> tuple[bytes, dict[str, str]]:
        """The serialized model to run (placeholders replaced) and the logits of its final
        Softmaxes (:func:`softmax_logits`), which are made extra outputs so that they are
        compared too. A model with external data runs from its file as it is, without them."""
        from numamem.planner.onnx import load_model, with_values

        if self.values:
            m = with_values(self.model, self.values)
        else:
            m = load_model(self.model, values=False)[0]
            if any(t.data_location == t.EXTERNAL for t in m.graph.initializer):
                # ONNX Runtime finds external data next to the file, not in serialized bytes
                with open(self.model, "rb") as f:
                    return f.read(), {}
        logits = softmax_logits(m)
        listed = {o.name for o in m.graph.output}
        for name in logits.values():
            if name not in listed:
                m.graph.output.append(_empty_value_info(name))
        return m.SerializeToString(), logits

    def start(self, inputs: Mapping[str, np.ndarray], threads: int) -> OrtSession:
        """A session with ``threads`` intra-op threads over ``inputs`` (by the model's input names).

        Spinning is off: ONNX Runtime's idle threads would otherwise busy-wait between its
        iterations and take CPUs from numamem's workers in the alternating loop.

        Raises
        ------
        ImportError
            Naming the extra, if ``onnxruntime`` or ``onnx`` is missing.
        ValueError
            If the model needs an input ``inputs`` lacks.
        """
        ort = require("onnxruntime", "onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        require("onnx", "onnx")
        model, logits = self._model()
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        feeds = {}
        for i in session.get_inputs():
            if i.name not in inputs:
                raise ValueError(f"{self.model}: ONNX Runtime needs input {i.name!r}, which numamem's graph lacks")
            feeds[i.name] = np.ascontiguousarray(inputs[i.name])
        return OrtSession(session, feeds, threads, logits)


#: ONNX ops between a final Softmax and the graph output that keep its values.
_AFTER_SOFTMAX = ("Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze")


def softmax_logits(model: Any) -> dict[str, str]:
    """``{output: logits}`` for every output of the ONNX ``model`` made by a Softmax (through
    Reshape/Flatten/Identity/Squeeze/Unsqueeze): the Softmax's input, unless it is a graph input
    or initializer. The same logits as :func:`numamem.runtime.runner.softmax_logits` finds in
    the imported graph, by the ONNX names."""
    producer = {o: n for n in model.graph.node for o in n.output}
    sources = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    out = {}
    for o in model.graph.output:
        node = producer.get(o.name)
        while node is not None and node.op_type in _AFTER_SOFTMAX:
            node = producer.get(node.input[0])
        if node is not None and node.op_type == "Softmax" and node.input[0] not in sources:
            out[o.name] = node.input[0]
    return out


def _empty_value_info(name: str):
    from onnx import helper

    return helper.make_empty_tensor_value_info(name)
