"""Where an array's memory is, from the kernel's own accounting, and moving it.

:func:`owner` finds the numamem owner at the root of an array's ``.base`` chain; :func:`page_nodes`
and :func:`placement` ask the kernel (``move_pages``, ``get_mempolicy``, ``/proc/self/smaps``)
where the pages are and how they are paged; :func:`migrate` moves a numamem array's pages.
The owner types :class:`Region` and :class:`PoolAllocation` are named here for ``isinstance``
checks; the pools themselves are in :mod:`numamem.pools`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from numamem import _kernel, _pool, _topology
from numamem._ndarray import Export
from numamem._pool import Pool, PoolAllocation
from numamem._region import Region
from numamem._request import POOL_ALIGN, Request, node_id
from numamem.errors import HugePageError, NodeMemoryError, PlacementError

__all__ = [
    "owner", "page_nodes", "placement", "Placement", "migrate", "page_addresses", "histogram", "Region",
    "PoolAllocation", "request_of", "span_page_nodes",
]


def owner(array) -> Region | PoolAllocation | Pool | None:
    """Return the numamem owner of ``array``'s memory, or None for other memory.

    The owner is a :class:`Region` (a mapping of its own), a :class:`PoolAllocation` (a block of
    a node's pool, for small arrays of the creators), or the :class:`~numamem.pools.Pool` itself
    for an array NumPy allocated through a pool's handler, inside :func:`numamem.on_node` or any
    pool's (NumPy owns such an array and gives its block back to the pool when it frees it). Follows the ``.base`` chain (ndarray
    views, then the :class:`~numamem._ndarray.Export` or memoryview of the owner).
    """
    obj = array
    while obj is not None:
        if isinstance(obj, (Region, PoolAllocation)):
            return obj
        if isinstance(obj, (Export, memoryview)):
            obj = obj.obj
            continue
        base = getattr(obj, "base", None)
        if base is None and isinstance(obj, np.ndarray):
            return _scope_pool(obj)
        obj = base
    return None


def _scope_pool(array: np.ndarray):
    """The pool whose handler allocated ``array`` (inside ``on_node``, or any pool's handler), or None.

    Asked of the pools' address directory (:func:`numamem._pool.pool_of`), so every pool is
    recognised, whatever its source, shared through ``get_pool`` or made directly.
    """
    if not array.flags.owndata:
        return None
    return _pool.pool_of(array)


def request_of(own) -> Request | None:
    """The :class:`Request` an owner's memory was placed by, or None (memory numamem did not place).

    For an array made inside ``on_node`` it is the scope's: the pool's node and policy, the
    pool's page kind and alignment.
    """
    if isinstance(own, Pool):
        return Request(own.policy, own.node, (), None, POOL_ALIGN, ("auto",), True, own)
    if own is None:
        return None
    return own.info.get("request")


def _page_size(own) -> int:
    size = getattr(own, "page_size", None) if own is not None and not isinstance(own, Pool) else None
    return int(size) if size else _topology.topology(refresh=False).base_page_size


def page_addresses(start: int, stop: int, page_size: int) -> np.ndarray:
    """Addresses of the ``page_size`` pages holding bytes ``[start, stop)``, as ``uint64``."""
    first = start - start % page_size
    return np.arange(first, stop, page_size, dtype=np.uint64)


def histogram(status: np.ndarray) -> dict[int, int]:
    """Count ``move_pages`` results: node id (or negative errno) -> pages, in ascending order.

    Counted with ``bincount``, never a sort: NumPy's argsort (behind ``np.unique``) returned
    wrong orders inside the QEMU-emulated guests (see ``planner/_greedy.pyx:dense_ranks``), and these
    counts are what an error message says about where the pages went.
    """
    status = np.asarray(status, dtype=np.int64).ravel()
    found: dict[int, int] = {}
    for sign, values in ((-1, -status[status < 0]), (1, status[status >= 0])):
        if values.size:
            counts = np.bincount(values)
            for value in np.flatnonzero(counts).tolist():
                found[sign * value] = int(counts[value])
    return dict(sorted(found.items()))


def _span(array: np.ndarray) -> tuple[int, int]:
    low, high = np.lib.array_utils.byte_bounds(array)
    return int(low), int(high)


def page_nodes(array) -> np.ndarray:
    """Return the node of every page holding an element of ``array``, as the kernel reports it.

    Only the pages the array's elements touch are asked about (``move_pages``), so a strided
    view costs in proportion to its pages, not to the bytes between its first and last element.

    Parameters
    ----------
    array : array_like
        Any array with a buffer; numamem memory is read at its own page size (hugetlbfs pages
        count once each), other memory at the base page size.

    Returns
    -------
    numpy.ndarray of numpy.intp
        One entry per page, in address order: the node id, or a negative errno where the kernel
        has no node for the page: ``-2`` (ENOENT) or, on some kernels (seen on Debian's 6.1),
        ``-14`` (EFAULT) for a page not faulted in yet; ``-14`` also for an address not mapped.
    """
    array = np.asarray(array)
    if array.nbytes == 0:  # no element, or elements of no bytes (V0): no page
        return np.empty(0, dtype=np.intp)
    page = _page_size(owner(array))
    pages, _ = _touched_pages(array, page, with_bytes=False)
    return _kernel.page_status(pages).astype(np.intp)


def span_page_nodes(array) -> np.ndarray:
    """The node of every page from ``array``'s first to its last byte (int32, as ``move_pages``).

    For callers that index the result by page offset from the first byte; the work grows with
    the byte span, so prefer :func:`page_nodes` for strided views.
    """
    array = np.asarray(array)
    if array.nbytes == 0:
        return np.empty(0, dtype=np.int32)
    low, high = _span(array)
    return _kernel.page_status(page_addresses(low, high, _page_size(owner(array))))


def _touched_pages(array: np.ndarray, page: int, with_bytes: bool = True):
    """Pages holding the elements of ``array`` (uint64 addresses, ascending) and its bytes in each.

    The elements are described as byte intervals, built one axis at a time from the smallest
    stride up. Two intervals less than a page apart touch no page that their union does not,
    so they are merged: the intervals then stay as few as the pages touched, whatever the
    element count or the span. Within an interval the array's bytes per page are exact for a
    contiguous run and for a comb (a run repeated at a stride below the page size, e.g. a
    column); for denser mixtures they are shared out in proportion to each page's extent.
    """
    itemsize = array.itemsize
    base = array.ctypes.data
    axes = []
    for extent, stride in zip(array.shape, array.strides):
        if extent > 1 and stride != 0:
            if stride < 0:
                base += (extent - 1) * stride
            axes.append((abs(stride), extent))
    axes.sort()
    # Intervals relative to `base`: [lo, hi), bytes of elements in it, and for a comb the run
    # length and period (period 0: a contiguous run, or a mixture shared out by extent).
    lo = np.zeros(1, np.int64)
    hi = np.full(1, itemsize, np.int64)
    total = np.full(1, itemsize, np.int64)
    run = np.full(1, itemsize, np.int64)
    period = np.zeros(1, np.int64)
    for stride, extent in axes:
        span = hi - lo
        dense = (period == 0) & (total == span)
        # Copies less than a page apart touch every page between them: sweep the interval over
        # the axis. A contiguous run swept with gaps is a comb; anything else is a mixture.
        sweep = np.where(dense, stride - span < page, stride <= page)
        comb = sweep & dense & (stride > span)
        grown = sweep & dense & ~comb
        total = np.where(grown, span + (extent - 1) * stride, np.where(sweep, total * extent, total))
        run = np.where(comb, span, run)
        period = np.where(comb, stride, np.where(sweep, 0, period))
        hi = np.where(sweep, hi + (extent - 1) * stride, hi)
        if not sweep.all():
            # Copies a page or more apart: one interval per copy (each touches pages of its own).
            apart = ~sweep
            shifts = np.arange(extent, dtype=np.int64) * stride
            copies = [(v[apart][None, :] + shifts[:, None]).ravel() for v in (lo, hi)]
            copies += [np.tile(v[apart], extent) for v in (total, run, period)]
            lo, hi, total, run, period = (np.concatenate((v[sweep], c))
                                          for v, c in zip((lo, hi, total, run, period), copies))
        lo, hi, total, run, period = _merge(lo, hi, total, run, period, page)
    lo += base
    hi += base
    first = lo // page
    counts = (hi - 1) // page - first + 1
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    owner_index = np.repeat(np.arange(len(lo)), counts)
    page_index = np.repeat(first, counts) + np.arange(int(counts.sum()), dtype=np.int64) - offsets
    starts = page_index * page
    if not with_bytes:
        return starts.astype(np.uint64), None
    i = owner_index
    below_hi = _bytes_below(np.minimum(starts + page, hi[i]), lo[i], hi[i], total[i], run[i], period[i])
    below_lo = _bytes_below(np.maximum(starts, lo[i]), lo[i], hi[i], total[i], run[i], period[i])
    return starts.astype(np.uint64), below_hi - below_lo


def _merge(lo, hi, total, run, period, page):
    """Sort intervals and merge those less than ``page`` bytes apart (a merge is a mixture)."""
    if len(lo) > 1:
        if np.any(lo[1:] < lo[:-1]):
            # Only views whose axes interleave (as_strided) come here out of order. A stable sort
            # (not the SIMD quicksort that the emulated guests were seen to get wrong).
            order = np.argsort(lo, kind="stable")
            lo, hi, total, run, period = lo[order], hi[order], total[order], run[order], period[order]
        reach = np.maximum.accumulate(hi)
        heads = np.flatnonzero(np.concatenate(([True], lo[1:] - reach[:-1] >= page)))
        single = np.diff(np.append(heads, len(lo))) == 1
        lo, hi, total = lo[heads], np.maximum.reduceat(hi, heads), np.add.reduceat(total, heads)
        run, period = np.where(single, run[heads], 0), np.where(single, period[heads], 0)
    # Overlapping elements (an as_strided view over itself) hold no more bytes than their span.
    return lo, hi, np.minimum(total, hi - lo), run, period


def _bytes_below(x, lo, hi, total, run, period):
    """Bytes of elements below address ``x`` in each interval (``lo <= x <= hi``)."""
    t = x - lo
    comb = period > 0
    safe_period = np.where(comb, period, 1)
    k = t // safe_period
    count = np.where(comb, total // np.where(comb, run, 1), 0)
    in_comb = np.minimum(k, count) * run + np.where(k < count, np.minimum(t - k * safe_period, run), 0)
    span = hi - lo
    dense = total == span
    # Mixtures: share the bytes by extent (float: total * t may not fit in 64 bits).
    shared = np.floor(total.astype(np.float64) * (t / np.where(span > 0, span, 1))).astype(np.int64)
    shared = np.where(x >= hi, total, shared)
    return np.where(comb, in_comb, np.where(dense, t, shared))


@dataclass(frozen=True)
class Placement:
    """Where an array's memory is, from the kernel's own accounting.

    Attributes
    ----------
    bytes_per_node : dict
        Node -> bytes of the array's elements on pages of that node (only the array's own bytes
        count: a view counts its elements, not the bytes between them).
    unplaced_bytes : int
        Bytes on pages not faulted in yet.
    page_size : int
        The kernel's page size for the mapping (``KernelPageSize``: 4 KiB or a hugetlbfs size).
    pages : str
        The page kind obtained: ``"4k"``, ``"thp"`` (some transparent huge pages back the
        mapping), ``"2M"`` or ``"1G"``.
    thp_bytes : int
        Bytes of transparent huge pages (``AnonHugePages``) in the mapping(s) containing the array,
        at most the array's own bytes in each mapping.
    policy : str
        The memory policy the kernel has for the array's first page.
    policy_nodes : tuple of int
    alignment : int
        Largest power of two dividing the first element's address (capped at 1 GiB).
    requested : dict or None
        What the caller asked numamem for (None for foreign memory), with ``pages_obtained``:
        the page kind the kernel reports (the same as ``pages``).
    blocks : tuple
        For a block-split array, its :class:`ArrayBlock` descriptions without views.
    """

    bytes_per_node: dict
    unplaced_bytes: int
    page_size: int
    pages: str
    thp_bytes: int
    policy: str
    policy_nodes: tuple
    alignment: int
    requested: dict | None
    blocks: tuple = ()


_SMAPS_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s")


def _smaps(pages: np.ndarray, nbytes: np.ndarray) -> tuple[int, int]:
    """(KernelPageSize, AnonHugePages bytes) of the mappings holding the given pages.

    ``pages`` are the ascending page addresses the array touches and ``nbytes`` its bytes in
    each. The kernel merges adjacent mappings with identical flags and policy, so a mapping may
    hold other arrays too: each mapping's huge-page bytes are capped at the array's bytes in it.
    """
    cumulative = np.concatenate(([0], np.cumsum(nbytes, dtype=np.int64)))
    page_size, thp = 0, 0
    inside = 0
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            header = _SMAPS_HEADER.match(line)
            if header:
                start, stop = int(header.group(1), 16), int(header.group(2), 16)
                first, last = np.searchsorted(pages, [start, stop])
                inside = int(cumulative[last] - cumulative[first])
                continue
            if not inside:
                continue
            if line.startswith("KernelPageSize:"):
                page_size = max(page_size, int(line.split()[1]) * 1024)
            elif line.startswith("AnonHugePages:"):
                thp += min(int(line.split()[1]) * 1024, inside)
    return page_size, thp


def _requested(own, kind: str) -> dict | None:
    req = request_of(own)
    if req is None:
        return None
    requested = {
        "policy": req.policy, "node": req.node, "nodes": list(req.nodes), "axis": req.axis,
        "align": req.align, "pages": list(req.pages), "populate": req.populate, "pages_obtained": kind,
    }
    if isinstance(own, Pool):
        requested["scope"] = "on_node"
    elif own.info.get("fallback_from"):
        requested["fallback_from"] = own.info["fallback_from"]
    return requested


def placement(array) -> Placement:
    """Summarise where ``array``'s memory is and how it is paged, from the kernel.

    Only the pages holding the array's elements are asked about and counted, so a strided view
    costs in proportion to the pages it touches.

    Examples
    --------
    >>> import numamem
    >>> a = numamem.zeros(1 << 20, node=0)
    >>> numamem.placement(a).bytes_per_node
    {0: 8388608}
    """
    array = np.asarray(array)
    own = owner(array)
    blocks_info = () if own is None or isinstance(own, Pool) else tuple(own.info.get("blocks", ()))
    if array.nbytes == 0:
        address = array.ctypes.data
        return Placement({}, 0, 0, "4k", 0, "default", (), _alignment(address), _requested(own, "4k"),
                         blocks_info)
    page = _page_size(own)
    pages, nbytes = _touched_pages(array, page)
    status = _kernel.page_status(pages)
    per_node: dict[int, int] = {}
    unplaced = 0
    for node_or_err, count in zip(status.tolist(), nbytes.tolist()):
        if node_or_err >= 0:
            per_node[node_or_err] = per_node.get(node_or_err, 0) + count
        else:
            unplaced += count
    kernel_page, thp = _smaps(pages, nbytes)
    kernel_page = kernel_page or page
    if kernel_page >= 2**30:
        kind = "1G"
    elif kernel_page >= 2 * 2**20:
        kind = "2M"
    else:
        kind = "thp" if thp else "4k"
    policy, policy_nodes = _kernel.range_policy(int(pages[0]))
    return Placement(dict(sorted(per_node.items())), unplaced, kernel_page, kind, thp, policy, policy_nodes,
                     _alignment(array.ctypes.data), _requested(own, kind), blocks_info)


def _alignment(address: int) -> int:
    if address == 0:
        return 2**30
    return min(address & -address, 2**30)


def migrate(array, node) -> np.ndarray:
    """Move every page of a numamem array's region to ``node``, keeping the content.

    The region's policy becomes ``bind`` to ``node``; a block-split array becomes a one-node array.
    The result is checked with ``move_pages``.

    Returns
    -------
    numpy.ndarray
        ``array`` itself (its memory moved in place).

    A pooled array (a small array of the creators, or one NumPy allocated inside
    :func:`numamem.on_node`) shares its pages with other arrays of its node: it is returned as it is
    when it is already on ``node``, and cannot move alone otherwise. ``numamem.asarray(a, node=k)``
    is the way to have any array's data on node ``k`` (a copy).

    Raises
    ------
    TypeError
        If ``array`` is not numamem memory, or a pooled array on another node (copy it with
        :func:`asarray` instead).
    NodeMemoryError
        If ``node`` lacks the free memory.
    PlacementError
        If some pages could not be moved (e.g. shared with a forked child).
    """
    region = owner(array)
    if region is None:
        raise TypeError("migrate() moves numamem arrays; copy other arrays with numamem.asarray(a, node=...)")
    node = node_id(node, "node")
    topo = _topology.topology(refresh=False)
    topo.check_memory_node(node, "node")
    if isinstance(region, (PoolAllocation, Pool)):
        # A pool block shares its pages with other blocks of its node: it cannot move alone. Where
        # it already is on `node` there is nothing to do (a bind pool's chunks were verified there).
        pool = region if isinstance(region, Pool) else region.pool
        if pool.node == node and bool(np.all(page_nodes(array) == node)):
            return array
        if isinstance(region, Pool):
            what = f"was allocated by NumPy inside numamem.on_node from node {region.node}'s pool"
        else:
            what = f"is a block of node {region.pool.node}'s pool"
        raise TypeError(
            f"this array {what}, whose pages it shares with other arrays of that node: it cannot move "
            f"alone. Copy it with numamem.asarray(a, node={node}), or allocate it with populate/pages/align "
            "options that give it a mapping of its own")
    if request_of(region) is None:
        raise TypeError("migrate() moves arrays of numamem's creators; this array is over a Region built "
                        "directly, with no placement to update: copy it with numamem.asarray(a, node=...)")
    page = region.page_size
    hugetlb = page if page != topo.base_page_size else 0
    addresses = page_addresses(region.address, region.address + region.mapped_bytes, page)
    before = _kernel.page_status(addresses)
    moving = int(np.count_nonzero(before != node)) * page
    if hugetlb:
        free = _topology.node_hugepages(node, hugetlb).free_bytes
        if moving > free:
            raise HugePageError(node, moving, free, hugetlb)
    else:
        free = _topology.node_free_memory(node)
        if moving > free:
            raise NodeMemoryError(node, moving, free)
    try:
        _kernel.bind_range(region.address, region.mapped_bytes, "bind", (node,),
                           _kernel.MF_MOVE | _kernel.MF_STRICT)
    except OSError as exc:
        after = _kernel.page_status(addresses)
        raise PlacementError((node,), histogram(after), f"mbind(MPOL_MF_MOVE) failed: {exc.strerror}") from None
    after = _kernel.page_status(addresses)
    present = after[after >= 0]
    if np.any(present != node):
        raise PlacementError((node,), histogram(after), "some pages did not move")
    old: Request = region.info["request"]
    region.info["request"] = Request("bind", node, (), None, old.align, old.pages, old.populate)
    region.info["blocks"] = ()
    region.info["description"] = region.info["request"].describe(region.info.get("pages", "auto"))
    return array
