"""ONNX Runtime on placed memory: one ``InferenceSession`` per node, weights on its node.

``NodeSessions(model)`` builds, for every node, a session on a thread bound to that node, so that
what ONNX Runtime allocates while building it (graph, kernels, pre-packed weights, its memory
arena) is first-touched there and its intra-op threads, created by that thread, inherit the
node's CPUs and memory policy. The model's initializers are copied once into a
:class:`~numamem.engines._nodes.WeightArena` on each node and handed to that node's session with
``SessionOptions.add_initializer`` (an ``OrtValue`` over the placed array, no copy); the arrays
live as long as the session. ``run`` has ``InferenceSession.run``'s signature: the batch (axis 0
of every feed) is split over the nodes in proportion to their threads and the parts run at once.

Needs the ``onnxruntime`` extra (``pip install numamem[onnxruntime]``, which brings ``onnx``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from numamem.engines._nodes import (
    NodeShare, NodeWorker, WeightArena, anon_bytes_per_node, delta, place_weights, require,
    resolve_nodes, run_on_all, split_counts,
)

__all__ = ["NodeSessions", "load_model", "default_session", "batch_unit", "random_feeds", "run_rows", "join_rows"]

#: Initializers smaller than this stay in the model: shapes and scalars that graph optimisation
#: folds away; placing them would buy nothing.
MIN_INITIALIZER_BYTES = 128


def _ort():
    return require("onnxruntime", "onnxruntime")


def load_model(model):
    """Return ``model`` as an ``onnx.ModelProto``: a path, serialized bytes, or a ModelProto."""
    onnx = require("onnx", "onnxruntime")
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    raise TypeError(f"model must be a path, bytes or onnx.ModelProto, not {type(model).__name__}")


def _weights(proto, min_bytes: int) -> dict[str, np.ndarray]:
    """The main graph's initializers of at least ``min_bytes`` bytes, as NumPy arrays."""
    from onnx import numpy_helper

    out = {}
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.nbytes >= min_bytes and arr.dtype != object:
            out[init.name] = arr
    return out


def _drop_model_bytes(session) -> None:
    """Let go of the serialized model an ``InferenceSession`` keeps (initializers and all).

    ONNX Runtime's Python class holds the bytes it was built from only to rebuild itself in
    ``set_providers`` or a provider fallback ("TODO: This is bad as we're holding the memory
    indefinitely", its source says). A per-node session runs on the CPU provider only, and its
    initializers come from placed arrays, so the bytes are a second full copy of the weights that
    nothing reads. Without the attribute (another ONNX Runtime version) nothing is done.
    """
    if getattr(session, "_model_bytes", None) is not None:
        session._model_bytes = None


def _session_options(ort, options: Mapping[str, Any]):
    """``SessionOptions`` with ``options`` set as attributes (``TypeError`` naming an unknown one)."""
    so = ort.SessionOptions()
    for key, value in options.items():
        if not hasattr(so, key) or key.startswith("_") or callable(getattr(so, key)):
            raise TypeError(f"{key!r} is not a SessionOptions attribute")
        setattr(so, key, value)
    return so


def _options(ort, threads: int, cpus: Sequence[int] | None, options: Mapping[str, Any],
             config: Mapping[str, str]):
    so = _session_options(ort, options)
    so.intra_op_num_threads = threads
    if cpus is not None and threads > 1:
        # One entry per pool thread (the calling thread is the threads-th); ONNX Runtime numbers
        # logical processors from 1. Each thread may run on any of the node's CPUs.
        mask = ",".join(str(c + 1) for c in cpus)
        so.add_session_config_entry("session.intra_op_thread_affinities", ";".join([mask] * (threads - 1)))
    for key, value in config.items():
        so.add_session_config_entry(key, str(value))
    return so


def default_session(model, **session_options):
    """One ``InferenceSession`` as ONNX Runtime runs out of the box (the ``default`` mode).

    Built by the calling thread with ONNX Runtime's own thread count and affinity; weights are
    deserialized from the model by that thread, so first touch puts them on its node.
    """
    ort = _ort()
    proto = load_model(model)
    so = _session_options(ort, session_options)
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def batch_unit(session) -> int | None:
    """The fixed leading dimension of the session's inputs, or None when it is symbolic."""
    fixed = {i.shape[0] for i in session.get_inputs() if i.shape and isinstance(i.shape[0], int)}
    if len(fixed) > 1:
        raise ValueError(f"the model's inputs have different fixed batch sizes {sorted(fixed)}")
    return fixed.pop() if fixed else None


def random_feeds(session, batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for ``session``: the model's shapes, the batch axis ``batch`` long.

    Raises
    ------
    ValueError
        When an input has a symbolic dimension other than the first (give ``feeds`` instead).
    """
    rng = np.random.default_rng(seed)
    batch = batch or batch_unit(session) or 1
    feeds = {}
    for inp in session.get_inputs():
        dtype = _ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise ValueError(f"input {inp.name!r} has type {inp.type}: give feeds for it")
        shape = list(inp.shape)
        if shape:
            shape[0] = batch
        for i, d in enumerate(shape[1:], 1):
            if not isinstance(d, int):
                raise ValueError(f"input {inp.name!r} has the symbolic dimension {d!r} at axis {i}: "
                                 "give feeds with concrete shapes")
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def run_rows(session, output_names, feeds: Mapping[str, np.ndarray], start: int, stop: int,
             fixed_batch: int | None, run_options=None) -> list[list[np.ndarray]]:
    """Run ``session`` on rows ``[start, stop)`` of ``feeds``: in one call, or one fixed batch at a time.

    Returns the list of each call's outputs (one call when the batch is symbolic).
    """
    step = fixed_batch or (stop - start)
    if start == 0 and step == stop and all(len(v) == stop for v in feeds.values()):
        return [session.run(output_names, feeds, run_options)]  # the whole feed: no slicing
    return [session.run(output_names, {k: v[lo:lo + step] for k, v in feeds.items()}, run_options)
            for lo in range(start, stop, step)]


def join_rows(chunks: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Concatenate the outputs of several calls along axis 0, output by output.

    One call's outputs are returned as they are (no copy).
    """
    if len(chunks) == 1:
        return list(chunks[0])
    return [np.concatenate([c[i] for c in chunks], axis=0) for i in range(len(chunks[0]))]


@dataclass
class _NodeSession:
    share: NodeShare
    worker: NodeWorker
    arena: WeightArena
    session: Any = None
    values: dict = field(default_factory=dict)
    build_bytes: dict = field(default_factory=dict)
    warmup_bytes: dict = field(default_factory=dict)


class NodeSessions:
    """One ONNX Runtime session per node, each with its weights and working memory on its node.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
    nodes : sequence of int, optional
        Nodes to run on (default: every node with CPUs and memory this process may use).
    threads_per_node : int or mapping, optional
        Intra-op threads per session (default: the node's CPUs).
    weight_policy : {"bind", "preferred"}
        How the weight arenas are placed (``bind``: verified on the node or an exception).
    thread_policy : {"local", "preferred", "bind"}
        Memory policy of the thread that builds and runs each session (see
        :class:`~numamem.engines._nodes.NodeWorker`).
    prepack : bool
        Let ONNX Runtime pre-pack weights (default, as it does out of the box). Its CPU kernels
        (Gemm, MatMul, Conv) then copy the weights they use into their own layout while the
        session is built, on the session's thread, so those copies are first-touched on its node
        too (``build_bytes_per_node`` in :meth:`placement`); the placed arrays are their source.
        ``False`` (``session.disable_prepacking``) makes the kernels read the placed, verified
        arrays themselves.
    config : mapping, optional
        Extra ``add_session_config_entry`` keys and values.
    **session_options
        ``SessionOptions`` attributes (``graph_optimization_level=...``); ``intra_op_num_threads``
        is set from ``threads_per_node``.

    Examples
    --------
    >>> with NodeSessions("model.onnx") as s:            # doctest: +SKIP
    ...     y, = s.run(None, {"x": x})
    ...     s.placement()["sessions"][0]["weights_bytes_per_node"]
    {0: 4993024}
    """

    def __init__(self, model, nodes: Sequence[int] | None = None, threads_per_node: Any = None, *,
                 weight_policy: str = "bind", thread_policy: str = "local", prepack: bool = True,
                 config: Mapping[str, str] | None = None, min_initializer_bytes: int = MIN_INITIALIZER_BYTES,
                 **session_options):
        ort = _ort()
        proto = load_model(model)
        shares = resolve_nodes(nodes, threads_per_node)
        config = dict(config or {})
        if not prepack:
            config["session.disable_prepacking"] = "1"
        self.prepack = bool(prepack)
        weights = _weights(proto, min_initializer_bytes)
        names = list(weights)
        self.weight_bytes = int(sum(w.nbytes for w in weights.values()))
        self._parts: list[_NodeSession] = []
        self._closed = False
        self.anon_before = anon_bytes_per_node()
        try:
            # One session at a time, so each one's share of the process's memory is its own.
            for share in shares:
                worker = NodeWorker(share, thread_policy)
                try:
                    arena = worker.call(place_weights, share.node, [weights[n] for n in names], weight_policy)
                except BaseException:
                    worker.close()
                    raise
                part = _NodeSession(share, worker, arena)
                self._parts.append(part)

                def build(part=part):
                    so = _options(ort, part.share.threads, part.share.cpus, session_options, config)
                    # OrtValues over the placed arrays: no copy on the CPU, and each OrtValue
                    # holds its array, so the session's weights live as long as it does.
                    part.values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in zip(names, part.arena)}
                    for n, v in part.values.items():
                        so.add_initializer(n, v)
                    # Serialized here, on the node's thread: ONNX Runtime's Python session keeps
                    # the bytes it was built from (``_model_bytes``, initializers included) for its
                    # whole life, so a copy made by the caller would hold a copy of the weights on
                    # the caller's node. The bytes are then dropped (below) for the same reason.
                    session = ort.InferenceSession(proto.SerializeToString(), so,
                                                   providers=["CPUExecutionProvider"])
                    _drop_model_bytes(session)
                    return session

                before = anon_bytes_per_node()
                part.session = worker.call(build)
                part.build_bytes = delta(anon_bytes_per_node(), before)
        except BaseException:
            self.close()
            raise
        self.anon_built = anon_bytes_per_node()
        #: The model's fixed batch size (None: symbolic, any batch runs in one call).
        self.fixed_batch = batch_unit(self._parts[0].session)

    # ------------------------------------------------------------------ InferenceSession-like
    @property
    def nodes(self) -> list[int]:
        return [p.share.node for p in self._parts]

    @property
    def sessions(self) -> list:
        """The per-node ``InferenceSession`` objects, in node order."""
        return [p.session for p in self._parts]

    def get_inputs(self):
        return self._live()[0].session.get_inputs()

    def get_outputs(self):
        return self._live()[0].session.get_outputs()

    def _live(self) -> list[_NodeSession]:
        if self._closed:
            raise ValueError("NodeSessions is closed")
        return self._parts

    def split(self, batch: int) -> list[tuple[int, int]]:
        """Row ranges ``(start, stop)`` of a ``batch``-long input, one per node.

        Rows go in whole units of the model's fixed batch size (1 when it is symbolic), in
        proportion to each node's threads; a node may get none.
        """
        unit = self.fixed_batch or 1
        if batch < 1 or batch % unit:
            raise ValueError(f"the batch ({batch}) must be a positive multiple of the model's fixed "
                             f"batch size {unit}")
        counts = split_counts(batch // unit, [p.share.threads for p in self._live()])
        bounds, start = [], 0
        for c in counts:
            bounds.append((start, start + c * unit))
            start += c * unit
        return bounds

    @staticmethod
    def _feeds(input_feed: Mapping[str, np.ndarray]) -> tuple[dict, int]:
        feeds = {k: v if type(v) is np.ndarray else np.asarray(v) for k, v in input_feed.items()}
        if not feeds:
            raise ValueError("input_feed is empty")
        first = next(iter(feeds.values()))
        batch = first.shape[0] if first.ndim else None
        if batch is None or any(not v.ndim or v.shape[0] != batch for v in feeds.values()):
            batches = {k: (v.shape[0] if v.ndim else None) for k, v in feeds.items()}
            raise ValueError(f"every feed needs the same batch on axis 0, got {batches}")
        return feeds, batch

    def run(self, output_names, input_feed: Mapping[str, np.ndarray], run_options=None) -> list[np.ndarray]:
        """Run like ``InferenceSession.run``: the batch split over the nodes, outputs joined.

        Every feed's axis 0 is the batch; every output's axis 0 must be too.
        """
        parts = self._live()
        feeds, batch = self._feeds(input_feed)
        if len(parts) == 1 and batch >= 1 and self.fixed_batch in (None, batch):
            # One session, one call: no split, no join, nothing to wait for. A model of tens of
            # microseconds per call would otherwise lose a visible share to the bookkeeping.
            p = parts[0]
            if p.worker.caller_on_node():
                return p.session.run(output_names, feeds, run_options)
            return p.worker.call(p.session.run, output_names, feeds, run_options)
        calls = [None if b == a else
                 (lambda p=p, a=a, b=b: run_rows(p.session, output_names, feeds, a, b, self.fixed_batch, run_options))
                 for p, (a, b) in zip(parts, self.split(batch))]
        # The calling thread runs a part itself when it already works on that part's node
        # (one-node machines, or a caller bound there): it would otherwise only wait. The
        # session's intra-op threads were made by the node's worker and stay bound to it.
        chunks = [c for r in run_on_all([p.worker for p in parts], calls, here=NodeWorker.caller_on_node)
                  if r for c in r]
        return join_rows(chunks)

    def warm_up(self, input_feed: Mapping[str, np.ndarray]) -> None:
        """Run each session once on its share, one at a time, recording what each allocated.

        ONNX Runtime grows its memory arena on the first run; running the sessions one after the
        other makes each one's growth (per node, from ``numa_maps``) its own.
        """
        parts = self._live()
        feeds, batch = self._feeds(input_feed)
        for part, (a, b) in zip(parts, self.split(batch)):
            if b == a:
                continue
            before = anon_bytes_per_node()
            part.worker.call(run_rows, part.session, None, feeds, a, b, self.fixed_batch)
            part.warmup_bytes = delta(anon_bytes_per_node(), before)

    # ------------------------------------------------------------------ placement
    def placement(self) -> dict:
        """Where the memory is, from the kernel.

        Returns
        -------
        dict
            ``sessions``: per session its ``node``, ``threads``, the thread ``binding`` obtained,
            ``weights_bytes_per_node`` (the placed initializers, ``move_pages``),
            ``build_bytes_per_node`` and ``warmup_bytes_per_node`` (the change of the process's
            anonymous memory per node while that session alone was being built / first run:
            ONNX Runtime's own allocations, shown as they are). ``process``: anonymous memory
            per node ``before`` the sessions, after they were ``built`` and ``now``.
        """
        parts = self._live()
        return {
            "weight_bytes": self.weight_bytes,
            "prepack": self.prepack,
            "sessions": [{
                "node": p.share.node, "threads": p.share.threads, "binding": p.worker.binding,
                "weights_bytes_per_node": p.arena.bytes_per_node(),
                "build_bytes_per_node": dict(p.build_bytes),
                "warmup_bytes_per_node": dict(p.warmup_bytes),
            } for p in parts],
            "process": {"before": dict(self.anon_before), "built": dict(self.anon_built),
                        "now": anon_bytes_per_node()},
        }

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release every session, its thread and its weights (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        for p in self._parts:
            # The session goes first, on its own thread (it allocated there), then the OrtValues
            # that point into the arena, then the arena itself.
            if p.session is not None:
                p.worker.call(lambda p=p: setattr(p, "session", None))
            p.values = {}
            p.worker.close()
            p.arena = None
        self._parts = []

    def __enter__(self) -> "NodeSessions":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"nodes={self.nodes}"
        return f"<NodeSessions {state}>"
