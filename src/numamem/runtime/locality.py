"""Locality accounting: where the bytes a view reads are, page histograms, per-layer traffic.

Everything here measures from the kernel's page table (``numamem.page_nodes``, i.e.
``move_pages``), never from where memory was asked for. Both executors and ``numamem run`` count
with these functions.

Node lists are found with ``np.bincount``, never ``np.unique`` or a sort: inside the
QEMU-emulated guests of the test tier, NumPy's sorting (behind ``unique``) was seen returning wrong
orders (see ``planner/_greedy.pyx:dense_ranks``).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from numamem import _topology
from numamem.inspect import owner as _owner, span_page_nodes as _page_nodes  # indexed by page offset

__all__ = ["TrafficLedger", "bytes_by_node", "page_histogram"]


def _node_counts(status: np.ndarray) -> np.ndarray:
    """Pages per node as a bincount shifted by one: index 0 counts pages with no node (errno)."""
    return np.bincount(np.maximum(status.astype(np.int64), -1) + 1)


def page_histogram(arrays: Iterable[np.ndarray | None]) -> dict[int, int]:
    """Pages of ``arrays`` on each node, summed: ``{node: pages}`` ascending, ``-1`` for no node.

    ``None`` and empty arrays are skipped.

    Examples
    --------
    >>> import numamem, numpy as np
    >>> page_histogram([numamem.zeros(4096, np.uint8, node=0), None])
    {0: 1}
    """
    hist: dict[int, int] = {}
    for a in arrays:
        if a is None or a.size == 0:
            continue
        counts = _node_counts(_page_nodes(a))
        for v in np.flatnonzero(counts).tolist():
            hist[v - 1] = hist.get(v - 1, 0) + int(counts[v])
    return dict(sorted(hist.items()))


def _page_size_of(a: np.ndarray) -> int:
    reg = _owner(a)
    size = getattr(reg, "page_size", None) if reg is not None else None
    return int(size) if size else _topology.topology(refresh=False).base_page_size


def bytes_by_node(view: np.ndarray) -> dict[int, int]:
    """Bytes of the elements of ``view`` on each NUMA node, from the kernel's page table.

    Only the bytes of the elements count (a strided view is decomposed into contiguous runs), so
    two views of one page count their own parts. Pages not faulted in count under node ``-1``.

    Parameters
    ----------
    view : ndarray
        Any array or view (numamem or NumPy memory).

    Returns
    -------
    dict of int to int

    Examples
    --------
    >>> import numamem, numpy as np
    >>> a = numamem.zeros((64, 1024), np.float32, node=0)
    >>> bytes_by_node(a[:, :16])
    {0: 4096}
    """
    a = np.asarray(view)
    if a.size == 0:
        return {}
    if any(s < 0 for s in a.strides):  # not produced by the executors; normalise by flipping
        a = a[tuple(slice(None, None, -1) if s < 0 else slice(None) for s in a.strides)]
    nodes = _page_nodes(a).astype(np.int64)
    nodes[nodes < 0] = -1
    page = _page_size_of(a)
    low = int(np.lib.array_utils.byte_bounds(a)[0])
    base = low - low % page
    # Runs: the longest C-contiguous suffix of axes is one run per index of the other axes.
    k, run = a.ndim, a.itemsize
    while k > 0 and (a.shape[k - 1] == 1 or a.strides[k - 1] == run):
        run *= a.shape[k - 1]
        k -= 1
    offs = np.zeros(1, dtype=np.int64)
    for ax in range(k):
        offs = (offs[:, None] + np.arange(a.shape[ax], dtype=np.int64) * a.strides[ax]).ravel()
    starts = a.ctypes.data - base + offs
    ends = starts + run
    padded = np.append(nodes, -9)  # an end exactly on the last page boundary indexes past the end
    out: dict[int, int] = {}
    for n in (np.flatnonzero(_node_counts(nodes)) - 1).tolist():
        on = padded == n
        cum = np.concatenate(([0], np.cumsum(on[:-1], dtype=np.int64) * page))

        def upto(x, on=on, cum=cum):
            p = x // page
            return cum[p] + (x - p * page) * on[p]

        total = int((upto(ends) - upto(starts)).sum())
        if total:
            out[int(n)] = total
    return out


class TrafficLedger:
    """Bytes read per layer, as ``{(memory node, reader node): bytes}`` for each step.

    Examples
    --------
    >>> t = TrafficLedger(1)
    >>> t.add(0, reader=1, counts={0: 100, 1: 50})
    >>> t.summary()["remote_bytes"]
    100
    """

    def __init__(self, steps: int):
        self.layers: list[dict[tuple[int, int], int]] = [dict() for _ in range(steps)]

    def add(self, step: int, reader: int, counts: Mapping[int, int]) -> None:
        """Count ``counts`` (``{memory node: bytes}``) as read at ``step`` by CPU node ``reader``."""
        pairs = self.layers[step]
        for src, nbytes in counts.items():
            pairs[src, reader] = pairs.get((src, reader), 0) + nbytes

    def add_view(self, step: int, reader: int, view: np.ndarray) -> None:
        """Count the bytes of ``view`` (where its pages are) as read at ``step`` by ``reader``."""
        self.add(step, reader, bytes_by_node(view))

    def summary(self) -> dict[str, Any]:
        """``local_bytes``, ``remote_bytes``, ``per_node`` (by reader) and per-step ``layers``."""
        local = sum(b for d in self.layers for (s, r), b in d.items() if s == r)
        remote = sum(b for d in self.layers for (s, r), b in d.items() if s != r)
        per_node: dict[str, dict[str, int]] = {}
        for pairs in self.layers:
            for (src, reader), nbytes in pairs.items():
                entry = per_node.setdefault(str(reader), {"local_bytes": 0, "remote_bytes": 0})
                entry["local_bytes" if src == reader else "remote_bytes"] += nbytes
        return {"local_bytes": local, "remote_bytes": remote, "per_node": per_node,
                "layers": [{"local_bytes": sum(b for (s, r), b in d.items() if s == r),
                            "remote_bytes": sum(b for (s, r), b in d.items() if s != r),
                            "pairs": [[s, r, b] for (s, r), b in sorted(d.items())]} for d in self.layers]}
