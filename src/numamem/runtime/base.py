"""What every executor shares: node groups, tensor checks, the mode report and the base class.

:func:`resolve_groups` decides, per plan node, the physical node holding its memory, the node
whose CPUs compute its blocks and its number of workers (with the one node rule of
:class:`~numamem._topology.Topology`). :class:`ExecutorBase` owns what the planned executor and
the baselines share; :class:`ModeReport` is what each mode contributes to a run report.
"""
from __future__ import annotations

import abc
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from numamem import _topology
from numamem.planner.boxes import Box
from numamem.planner.graph import Graph
from numamem.planner.plan import Plan
from numamem.runtime.program import Group
from numamem.threads import WorkerTeam

__all__ = ["ExecutorBase", "ModeReport", "box_index", "check_tensors", "resolve_groups"]


def _cpu_node_for(topo: _topology.Topology, mem_node: int) -> int:
    """The node whose CPUs compute the blocks held on ``mem_node``: itself, or for a memory-only
    node (CXL-like) the nearest node with CPUs this process may use."""
    if topo.usable_cpus(mem_node):
        return mem_node
    candidates = [n.id for n in topo.nodes if topo.usable_cpus(n.id)]
    if not candidates:
        raise ValueError("no node with CPUs this process may use")
    return min(candidates, key=lambda n: (topo.distance(mem_node, n), n))


def resolve_groups(plan: Plan, node_map: Mapping[int, int] | None, workers: Any) -> list[Group]:
    """Per plan node, the physical memory node, the CPU node computing its blocks and its workers.

    Raises
    ------
    ValueError
        If ``node_map`` misses a plan node, maps one onto a node that cannot hold memory here, or
        a worker count is below 1.
    """
    topo = _topology.topology(refresh=False)
    mapping = {n: n for n in plan.nodes} if node_map is None else {int(k): int(v) for k, v in node_map.items()}
    for p in plan.nodes:
        if p not in mapping:
            raise ValueError(f"node_map does not say where plan node {p} goes")
        topo.check_memory_node(mapping[p], "plan.nodes" if node_map is None else f"node_map[{p}]")
    cpu_of = {p: _cpu_node_for(topo, mapping[p]) for p in plan.nodes}
    sharing = Counter(cpu_of.values())  # plan nodes computing on each CPU node
    groups = []
    for p in plan.nodes:
        if workers is None:  # the CPUs of each node shared evenly by the groups computing on it
            count = max(1, len(topo.check_cpu_node(cpu_of[p], "cpu node")) // sharing[cpu_of[p]])
        elif isinstance(workers, Mapping):
            count = int(workers.get(p, 1))
        else:
            count = int(workers)
        if count < 1:
            raise ValueError(f"workers must be >= 1, got {count} for node {p}")
        groups.append(Group(p, mapping[p], cpu_of[p], count))
    return groups


def check_tensors(graph: Graph, given: Mapping[str, Any], names: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """Every tensor of ``names`` from ``given``, with its shape checked and cast to its dtype."""
    out = {}
    for n in names:
        if n not in given:
            raise ValueError(f"{what} {n!r} is missing")
        a = np.asarray(given[n])
        shape = tuple(graph.tensors[n].shape)
        if a.shape != shape:
            raise ValueError(f"{what} {n!r} has shape {list(a.shape)}, the graph needs {list(shape)}")
        dt = np.dtype(graph.tensor_dtype(n))
        if a.dtype != dt:
            if dt.kind in "iu" and a.dtype.kind not in "iu":
                raise ValueError(f"{what} {n!r} has dtype {a.dtype}, the graph needs {dt}")
            a = a.astype(dt)
        out[n] = a
    return out


def box_index(box: Box) -> tuple[slice, ...]:
    """The NumPy index selecting ``box`` of a whole tensor."""
    return tuple(slice(lo, hi) for lo, hi in box)


@dataclass(frozen=True)
class ModeReport:
    """What one mode's run contributes to a ``numamem-run/1`` report (see ``docs/runtime.md``).

    Attributes
    ----------
    pages : dict
        Where the mode's memory is (``{label: {node: pages}}``).
    local_bytes, remote_bytes : int
        The traffic the mode is judged by.
    traffic_basis : str
        How those bytes were obtained.
    peak_tensor_bytes : int
        Tensor memory the mode needs at once.
    traffic : dict
        The measured traffic (:meth:`~numamem.runtime.locality.TrafficLedger.summary`).
    details : dict
        Mode-specific entries of the report.
    """

    pages: dict[str, dict[str, int]]
    local_bytes: int
    remote_bytes: int
    traffic_basis: str
    peak_tensor_bytes: int
    traffic: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    def entry(self) -> dict[str, Any]:
        """The mode's keys of the report, in report order."""
        return {"pages": self.pages, "local_bytes": self.local_bytes, "remote_bytes": self.remote_bytes,
                "traffic_basis": self.traffic_basis, **self.details, "peak_tensor_bytes": self.peak_tensor_bytes,
                "per_node": self.traffic["per_node"],
                "layer_traffic": [[t["local_bytes"], t["remote_bytes"]] for t in self.traffic["layers"]]}


class ExecutorBase(abc.ABC):
    """What every mode's executor shares: the graph, the groups and their worker team, step
    guards, timing counters, one step per call of :meth:`run`, :meth:`report`, and use as a
    context manager. Subclasses provide ``load_weights``, ``set_inputs``, ``step``, ``outputs``,
    ``traffic``, ``pages`` and ``report``; ``load_weights`` calls :meth:`_weights_done` once the
    weights are in, ``step`` starts with :meth:`_check_runnable` and ends with :meth:`_step_done`,
    and ``outputs`` starts with :meth:`_check_outputs`."""

    mode: str

    def __init__(self, plan: Plan, graph: Graph | None, node_map: Mapping[int, int] | None, workers: Any):
        self._team: WorkerTeam | None = None
        self._closed = False
        graph = graph if graph is not None else plan.source
        if graph is None:
            raise ValueError("the executor needs the plan's graph (pass graph=)")
        self.plan, self.graph = plan, graph
        self.groups = resolve_groups(plan, node_map, workers)
        self._inputs: dict[str, np.ndarray] | None = None
        # Until load_weights succeeds, the planned arena holds whatever the memory held (zeros,
        # from fresh pages) and the baselines hold no weights: running then is refused.
        self._weights_loaded = not graph.weights
        self._stepped = False  # outputs exist (a step ran to its end since the last one began)
        self.layer_seconds: list[float] = [0.0] * len(graph.layers)
        self.cpu_seconds = 0.0

    def _start_team(self, policy: str) -> None:
        self._team = WorkerTeam([g.cpu_node for g in self.groups], [g.workers for g in self.groups], policy=policy)
        weakref.finalize(self, self._team.close)  # an executor dropped without close() stops its threads

    def _weights_done(self) -> None:
        """Record that every weight is in the mode's memory (steps may run)."""
        self._weights_loaded = True

    def _check_runnable(self) -> None:
        if self._closed:
            raise ValueError("executor is closed")
        if self._inputs is None:
            raise ValueError("no inputs: call set_inputs() first")
        if not self._weights_loaded:
            raise ValueError(f"weights are not loaded: call load_weights() first (graph {self.graph.name!r} has "
                             f"{len(self.graph.weights)} weights)")
        self._stepped = False  # a step begins: the last one's outputs are being overwritten

    def _step_done(self) -> None:
        """Record that a step ran to its end (its outputs may be read)."""
        self._stepped = True

    def _check_outputs(self) -> None:
        if self._closed:
            raise ValueError("executor is closed")
        if not self._stepped:
            raise ValueError("no outputs: call step() or run() first (a step that failed leaves none)")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Set the inputs, run one step and return the graph outputs (fresh arrays)."""
        self.set_inputs(inputs)
        self.step()
        return self.outputs()

    @abc.abstractmethod
    def set_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Give the graph inputs of the next steps."""

    @abc.abstractmethod
    def step(self, account: bool = False) -> float:
        """Run the graph once; return the wall time in seconds."""

    @abc.abstractmethod
    def outputs(self) -> dict[str, np.ndarray]:
        """The graph outputs of the last step."""

    @abc.abstractmethod
    def report(self) -> ModeReport:
        """The mode's part of a run report, after at least one ``step(account=True)``."""

    def close(self) -> None:
        """Stop the workers and drop the executor's memory references (idempotent)."""
        self._closed = True
        if self._team is not None:
            self._team.close()
            self._team = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
