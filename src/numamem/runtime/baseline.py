"""The first-touch and interleave baselines: the planned blocks, with memory as a framework gets it.

:class:`BaselineExecutor` runs the same blocks on the same worker teams as the planned
:class:`~numamem.runtime.executor.Executor`, so the difference measured is where memory is (and
the planned mode's static reuse), not how the work is cut:

``first-touch``
    Weights are copied into plain NumPy arrays by the loading (calling) thread, so the kernel
    places them on that thread's node; every layer allocates its output with ``np.empty`` and drops
    tensors after their last reader; kernels allocate their own temporaries.
``interleave``
    The same, with weights, inputs and every layer output in memory interleaved over the nodes
    (``numamem.empty(..., policy="interleave", nodes=...)``), as ``numactl --interleave`` would.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from numamem.arrays import empty as _nm_empty
from numamem.planner.graph import Graph, Layer
from numamem.planner.plan import Plan
from numamem.runtime.base import ExecutorBase, ModeReport, box_index, check_tensors
from numamem.runtime.locality import TrafficLedger, page_histogram
from numamem.runtime.program import layer_work
from numamem.threads import blas_single_thread

__all__ = ["BASELINE_MODES", "BaselineExecutor"]

#: The baseline modes, in report order.
BASELINE_MODES = ("first-touch", "interleave")


class BaselineExecutor(ExecutorBase):
    """The same blocks on the same worker teams, with memory the way a framework gets it.

    Parameters
    ----------
    plan : Plan
        Only its split of the work (which node computes which block) is used.
    mode : {"first-touch", "interleave"}
    graph : Graph, optional
    node_map, workers
        As for :class:`Executor`.

    Notes
    -----
    Layers run one after another with a join of every worker in between (op-by-op, as a
    framework's intra-op thread pool does). Tensors are dropped after their last reader. Kernels
    get no scratch, so they allocate their own temporaries.
    """

    def __init__(self, plan: Plan, mode: str = "first-touch", graph: Graph | None = None, *,
                 node_map: Mapping[int, int] | None = None, workers: Any = None):
        if mode not in BASELINE_MODES:
            raise ValueError(f"baseline mode must be 'first-touch' or 'interleave', not {mode!r}")
        super().__init__(plan, graph, node_map, workers)
        self.mode = mode
        self._mem_nodes = sorted({g.mem_node for g in self.groups})
        self._work = layer_work(self.plan, self.graph, self.groups)
        self._last: dict[int, list[str]] = {}
        keep = set(self.graph.weights) | set(self.graph.outputs)
        for name, (_, last) in self.graph.lifetimes().items():
            if name not in keep:
                self._last.setdefault(last, []).append(name)
        self._weights: dict[str, np.ndarray] = {}
        self._outputs: dict[str, np.ndarray] = {}
        self.peak_tensor_bytes = 0
        self._traffic: TrafficLedger | None = None
        self._pages: dict[str, dict[int, int]] = {}
        # Workers: the nodes' CPUs, with the default (local, first-touch) memory policy.
        self._start_team("local")

    def _alloc(self, shape, dtype) -> np.ndarray:
        if self.mode == "first-touch":
            return np.empty(shape, dtype)
        return _nm_empty(shape, dtype, policy="interleave", nodes=self._mem_nodes)

    def _copy_in(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copies of ``tensors`` in the mode's memory, made by the calling thread (it touches every
        page first)."""
        out = {}
        for name, a in tensors.items():
            out[name] = self._alloc(a.shape, a.dtype)
            np.copyto(out[name], a)
        return out

    def load_weights(self, weights: Mapping[str, Any]) -> None:
        """Copy the weights in from the calling (loading) thread: first-touch or interleaved memory."""
        self._weights = self._copy_in(check_tensors(self.graph, weights, self.graph.weights, "weight"))
        self._weights_done()

    def set_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Give the graph inputs (copied once into the mode's memory by the calling thread)."""
        self._inputs = self._copy_in(check_tensors(self.graph, inputs, self.graph.inputs, "input"))

    def step(self, account: bool = False) -> float:
        """Run the graph once; with ``account`` also measure traffic and pages (slower, untimed use).

        Returns
        -------
        float
            Wall time in seconds (the CPU seconds of the workers and the calling thread are left
            in :attr:`cpu_seconds`, the per-layer wall times in :attr:`layer_seconds`).

        Raises
        ------
        ValueError
            Before :meth:`set_inputs` or :meth:`load_weights`.
        """
        self._check_runnable()
        env = dict(self._weights)
        env.update(self._inputs)
        if account:
            self._traffic = TrafficLedger(len(self.graph.layers))
            self._pages = {}
            self.peak_tensor_bytes = 0
        layer_t = []
        cpu = 0.0
        with blas_single_thread():
            t_start = time.perf_counter()
            c0 = time.thread_time()
            for step, layer in enumerate(self.graph.layers):
                t0 = time.perf_counter()
                cpu += self._run_layer(step, layer, env, account)
                for name in self._last.get(step, ()):
                    env.pop(name, None)
                layer_t.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - t_start
            self.cpu_seconds = cpu + time.thread_time() - c0
        self.layer_seconds = layer_t
        self._outputs = {n: env[n] for n in self.graph.outputs}
        self._step_done()
        return elapsed

    def _run_layer(self, step: int, layer: Layer, env: dict[str, np.ndarray], account: bool) -> float:
        """Compute layer ``step`` into a fresh output in ``env``; return the workers' CPU seconds."""
        out_name = layer.outputs[0]
        out = self._alloc(self.graph.tensors[out_name].shape, self.graph.tensor_dtype(out_name))
        ins = [env[n] for n in layer.inputs]
        per = self._work[step]
        if account:
            for g, work in per.items():
                for a, region in zip(ins, work.regions):
                    if region is not None:
                        self._traffic.add_view(step, self.groups[g].cpu_node, a[box_index(region)])

        def compute(g: int, w: int) -> None:
            work = per.get(g)
            if work is None:
                return
            block = out[work.index]
            for call in work.calls[w]:
                call.kernel(ins, block[call.cut], None)

        cpu = self._team.run(compute, groups=per.keys())
        env[out_name] = out
        if account:
            # the most tensor memory held at once (weights, inputs, live activations and this
            # output; not the kernels' temporaries)
            self.peak_tensor_bytes = max(self.peak_tensor_bytes, sum(a.nbytes for a in env.values()))
            for g, work in per.items():
                hist = self._pages.setdefault(str(self.groups[g].cpu_node), {})
                for n, count in page_histogram([out[work.index]]).items():
                    hist[n] = hist.get(n, 0) + count
        return cpu

    def outputs(self) -> dict[str, np.ndarray]:
        """The graph outputs of the last step (copies); ValueError before a step has run to its end."""
        self._check_outputs()
        return {n: np.array(a) for n, a in self._outputs.items()}

    def traffic(self) -> dict[str, Any]:
        """Bytes read per layer by each node's workers, by memory node (from a ``step(account=True)``)."""
        if self._traffic is None:
            raise ValueError("no accounting yet: run step(account=True) first")
        return self._traffic.summary()

    def pages(self) -> dict[str, dict[str, int]]:
        """Pages of the output blocks each node's workers wrote, by the node they are on.

        Counted over every layer of the accounting step (``{writer node: {node: pages}}``), with
        the weights and inputs under ``"weights"`` and ``"inputs"``.
        """
        out = {k: {str(n): c for n, c in v.items()} for k, v in self._pages.items()}
        out["weights"] = {str(n): c for n, c in page_histogram(self._weights.values()).items()}
        out["inputs"] = {str(n): c for n, c in page_histogram((self._inputs or {}).values()).items()}
        return out

    def report(self) -> ModeReport:
        """The baseline's part of a run report: traffic and pages measured by ``step(account=True)``."""
        traffic = self.traffic()
        return ModeReport(pages=self.pages(), local_bytes=traffic["local_bytes"],
                          remote_bytes=traffic["remote_bytes"],
                          traffic_basis="measured from where the pages are (numamem.page_nodes)",
                          peak_tensor_bytes=self.peak_tensor_bytes, traffic=traffic)

    def close(self) -> None:
        """Stop the workers and drop the arrays (idempotent)."""
        super().close()
        self._weights, self._inputs, self._outputs = {}, None, {}
