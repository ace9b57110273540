"""PyTorch on placed memory: a module's parameters and buffers in numamem arrays on a node.

:func:`place_module` re-homes a module's tensors into one :class:`~numamem.engines._nodes.WeightArena`
on a node: each tensor's bytes are copied once, straight into the placed memory, and the module
then holds ``torch.from_numpy`` views of it (the arrays live as long as the tensors, through
NumPy's ``.base`` chain). :func:`replicas` makes one placed copy per node without copying any
weight twice, and :class:`NodeReplicas` runs those copies on node-bound threads, each with its
own PyTorch intra-op thread count, splitting the batch as :class:`~numamem.engines.onnxruntime.NodeSessions`
does.

Needs the ``torch`` extra (``pip install numamem[torch]``; the CPU-only build is enough).
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from numamem.engines._nodes import (
    NodeShare, NodeWorker, WeightArena, anon_bytes_per_node, delta, place_weights, require,
    resolve_nodes, run_on_all, split_counts,
)

__all__ = ["place_module", "replicas", "NodeReplicas", "module_placement"]


def _torch():
    # Looked up first where Python keeps imported modules: run() needs torch several times per
    # call, and import_module's machinery cost microseconds each time. A test that hides torch
    # sets sys.modules["torch"] to None, which falls through to require() and its ImportError.
    return sys.modules.get("torch") or require("torch", "torch")


def _module_tensors(module) -> list[tuple[Any, list[tuple[Any, str, str]]]]:
    """Every distinct parameter and buffer of ``module`` with the places that hold it.

    Returns ``[(tensor, [(owner module, "param" or "buffer", attribute name), ...]), ...]``;
    a tensor shared by several modules (tied weights) appears once.
    """
    seen: dict[int, tuple[Any, list]] = {}
    for owner in module.modules():
        for kind, table in (("param", owner._parameters), ("buffer", owner._buffers)):
            for name, t in table.items():
                if t is None:
                    continue
                seen.setdefault(id(t), (t, []))[1].append((owner, kind, name))
    return list(seen.values())


def _byte_views(tensors) -> list:
    """The bytes of each tensor as a flat uint8 NumPy view (a copy only when not contiguous)."""
    torch = _torch()
    out = []
    for t in tensors:
        if t.device.type != "cpu" or t.layout != torch.strided:
            raise ValueError(f"only dense CPU tensors can be placed, not {t.device} {t.layout}")
        out.append(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    return out


def _tensors_over(arena: WeightArena, originals) -> list:
    """Tensors over the arena's arrays with the originals' dtypes and shapes (no copy)."""
    torch = _torch()
    out = []
    for i, t in enumerate(originals):
        new = torch.from_numpy(arena[i]).view(t.dtype).view(t.shape)
        if new.numel() and new.data_ptr() != arena[i].ctypes.data:
            raise AssertionError("torch.from_numpy copied a placed array")
        out.append(new)
    return out


@dataclass
class _Placed:
    """What placing a module made: its arena, kept for placement reports."""

    node: int
    arena: WeightArena
    names: list = field(default_factory=list)


def place_module(module, node: int, policy: str = "bind"):
    """Move ``module``'s parameters and buffers into memory on ``node``, in place.

    Each tensor's bytes are copied once into a numamem arena on ``node`` (``bind``: verified
    there, or an exception); parameters keep their identity (``param.data`` is replaced, so
    optimizers and tied weights still see them), buffers are replaced in their modules.

    Parameters
    ----------
    module : torch.nn.Module
    node : int
    policy : {"bind", "preferred"}

    Returns
    -------
    torch.nn.Module
        ``module`` itself; :func:`module_placement` tells where its tensors are.
    """
    torch = _torch()
    entries = _module_tensors(module)
    tensors = [t for t, _ in entries]
    arena = place_weights(node, _byte_views(tensors), policy)
    with torch.no_grad():
        for (_, places), new in zip(entries, _tensors_over(arena, tensors)):
            for owner, kind, name in places:
                if kind == "param":
                    owner._parameters[name].data = new
                else:
                    owner._buffers[name] = new
    module._numamem_placed = _Placed(node, arena)
    return module


def _placed_copy(module, node: int, policy: str):
    """A deep copy of ``module`` whose tensors are in an arena on ``node``; each copied once."""
    torch = _torch()
    entries = _module_tensors(module)
    tensors = [t for t, _ in entries]
    arena = place_weights(node, _byte_views(tensors), policy)
    memo: dict[int, Any] = {}
    for old, new in zip(tensors, _tensors_over(arena, tensors)):
        # deepcopy consults the memo before copying: the replica gets the placed tensors and
        # the original's data is never copied a second time.
        memo[id(old)] = (torch.nn.Parameter(new, requires_grad=old.requires_grad)
                         if isinstance(old, torch.nn.Parameter) else new)
    rep = copy.deepcopy(module, memo)
    rep._numamem_placed = _Placed(node, arena)
    return rep


def replicas(module, nodes: Sequence[int] | None = None, policy: str = "bind") -> list:
    """One copy of ``module`` per node, each with its parameters and buffers on its node.

    ``module`` itself is left as it is. Each copy is made on a thread bound to its node.
    """
    out = []
    for share in resolve_nodes(nodes):
        worker = NodeWorker(share)
        try:
            out.append(worker.call(_placed_copy, module, share.node, policy))
        finally:
            worker.close()
    return out


def _tensor_bytes_per_node(t) -> dict[int, int]:
    from numamem.inspect import placement

    if not t.numel():
        return {}
    return dict(placement(t.detach().reshape(-1).view(_torch().uint8).numpy()).bytes_per_node)


def module_placement(module) -> dict[int, int]:
    """Node -> bytes of ``module``'s parameters and buffers there, from the kernel.

    Works for any module (placed or not): a module as PyTorch loaded it shows where first touch
    put its weights.
    """
    total: dict[int, int] = {}
    for t, _ in _module_tensors(module):
        if not t.is_contiguous():
            continue  # not a single byte range; placed tensors always are
        for node, nbytes in _tensor_bytes_per_node(t).items():
            total[node] = total.get(node, 0) + nbytes
    return dict(sorted(total.items()))


def _set_threads(n: int) -> None:
    torch = _torch()
    torch.get_num_threads()  # PyTorch sets a thread's OpenMP team size lazily, at its first use
    torch.set_num_threads(n)


def _split_inputs(inputs, bounds):
    return [list(inputs) if (a, b) == (0, len(inputs[0])) else [x[a:b] for x in inputs] for a, b in bounds]


def _join(outs):
    """Concatenate per-node outputs along axis 0 (a tensor, or a tuple/list of tensors).

    One node's outputs are returned as they are (no copy).
    """
    torch = _torch()
    first = outs[0]
    if len(outs) == 1:
        return first
    if isinstance(first, torch.Tensor):
        return torch.cat(outs, dim=0)
    if isinstance(first, (tuple, list)):
        return type(first)(torch.cat([o[i] for o in outs], dim=0) for i in range(len(first)))
    raise TypeError(f"cannot join outputs of type {type(first).__name__}: return tensors "
                    "(or a tuple of tensors) with the batch on axis 0")


class NodeReplicas:
    """Per-node copies of a module, run on node-bound threads; the batch split over them.

    Parameters
    ----------
    module : torch.nn.Module
        Left as it is; each node gets a placed copy (:func:`replicas`).
    nodes : sequence of int, optional
        Default: every node with CPUs and memory this process may use.
    threads_per_node : int or mapping, optional
        PyTorch intra-op threads of each replica's worker (default: the node's CPUs).
    weight_policy : {"bind", "preferred"}
    thread_policy : {"local", "preferred", "bind"}
        Memory policy of each replica's thread (first touch on its node by default).

    Examples
    --------
    >>> with NodeReplicas(model.eval()) as r:            # doctest: +SKIP
    ...     y = r(x)                                     # x: batch on axis 0
    """

    def __init__(self, module, nodes: Sequence[int] | None = None, threads_per_node: Any = None, *,
                 weight_policy: str = "bind", thread_policy: str = "local"):
        torch = _torch()
        shares = resolve_nodes(nodes, threads_per_node)
        self._closed = False
        self._workers: list[NodeWorker] = []
        self.replicas: list = []
        self.build_bytes: list[dict[int, int]] = []
        self.warmup_bytes: list[dict[int, int]] = [{} for _ in shares]
        self.anon_before = anon_bytes_per_node()
        caller_threads = torch.get_num_threads()
        try:
            for share in shares:
                worker = NodeWorker(share, thread_policy)
                self._workers.append(worker)
                before = anon_bytes_per_node()
                worker.call(_set_threads, share.threads)
                self.replicas.append(worker.call(_placed_copy, module, share.node, weight_policy))
                self.build_bytes.append(delta(anon_bytes_per_node(), before))
        except BaseException:
            self.close()
            raise
        finally:
            # set_num_threads also sets the default of threads started later: give it back.
            torch.set_num_threads(caller_threads)
        self.anon_built = anon_bytes_per_node()

    @property
    def shares(self) -> list[NodeShare]:
        return [w.share for w in self._workers]

    @property
    def nodes(self) -> list[int]:
        return [w.share.node for w in self._workers]

    def _live(self) -> list[NodeWorker]:
        if self._closed:
            raise ValueError("NodeReplicas is closed")
        return self._workers

    def split(self, batch: int) -> list[tuple[int, int]]:
        """Row ranges per node, in proportion to their threads."""
        if batch < 1:
            raise ValueError(f"the batch must be >= 1, not {batch}")
        counts = split_counts(batch, [w.share.threads for w in self._live()])
        bounds, start = [], 0
        for c in counts:
            bounds.append((start, start + c))
            start += c
        return bounds

    @staticmethod
    def _runs_here(worker: NodeWorker) -> bool:
        """Whether the calling thread may run ``worker``'s replica itself.

        Only when no thread of the process can work or allocate off the node
        (:func:`~numamem.engines._nodes.process_on_node`): PyTorch runs an operator on the
        calling thread's OpenMP team, which may predate any binding of that thread. And only
        with the replica's intra-op thread count, so that the call computes as on the worker.
        """
        return worker.confined and _torch().get_num_threads() == worker.share.threads

    @staticmethod
    def _forward(rep, args):
        torch = _torch()
        with torch.inference_mode():
            return rep(*args)

    def _batch(self, inputs) -> int:
        if not inputs:
            raise ValueError("give at least one input tensor")
        sizes = {int(x.shape[0]) for x in inputs}
        if len(sizes) != 1:
            raise ValueError(f"every input needs the same batch on axis 0, got {sorted(sizes)}")
        return sizes.pop()

    def run(self, *inputs):
        """``module(*inputs)`` with axis 0 of every input split over the nodes; outputs joined."""
        workers = self._live()
        batch = self._batch(inputs)
        if len(workers) == 1 and batch >= 1:
            # One replica, one call: no split, no join, nothing to wait for.
            w, rep = workers[0], self.replicas[0]
            return self._forward(rep, inputs) if self._runs_here(w) else w.call(self._forward, rep, inputs)
        parts = _split_inputs(inputs, self.split(batch))
        calls = [None if not len(p[0]) else (lambda r=r, p=p: self._forward(r, p))
                 for r, p in zip(self.replicas, parts)]
        return _join([o for o in run_on_all(workers, calls, here=self._runs_here) if o is not None])

    __call__ = run

    def warm_up(self, *inputs) -> None:
        """Run each replica once on its share, one at a time, recording what each allocated."""
        workers = self._live()
        parts = _split_inputs(inputs, self.split(self._batch(inputs)))
        for i, (w, r, p) in enumerate(zip(workers, self.replicas, parts)):
            if len(p[0]):
                before = anon_bytes_per_node()
                w.call(self._forward, r, p)
                self.warmup_bytes[i] = delta(anon_bytes_per_node(), before)

    def placement(self) -> dict:
        """Where the memory is, from the kernel (the same keys as ``NodeSessions.placement``)."""
        workers = self._live()
        return {
            "weight_bytes": sum(r._numamem_placed.arena.data_bytes for r in self.replicas[:1]),
            "sessions": [{
                "node": w.share.node, "threads": w.share.threads, "binding": w.binding,
                "weights_bytes_per_node": r._numamem_placed.arena.bytes_per_node(),
                "build_bytes_per_node": dict(b), "warmup_bytes_per_node": dict(wb),
            } for w, r, b, wb in zip(workers, self.replicas, self.build_bytes, self.warmup_bytes)],
            "process": {"before": dict(self.anon_before), "built": dict(self.anon_built),
                        "now": anon_bytes_per_node()},
        }

    def close(self) -> None:
        """Drop the replicas (their placed weights go with the last tensor) and stop the threads."""
        if self._closed:
            return
        self._closed = True
        self.replicas = []
        for w in self._workers:
            w.close()
        self._workers = []

    def __enter__(self) -> "NodeReplicas":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"nodes={self.nodes}"
        return f"<NodeReplicas {state}>"
