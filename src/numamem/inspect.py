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

from numamem import _kernel, _topology
from numamem._pool import PoolAllocation
from numamem._region import Region
from numamem._request import Request, node_id
from numamem.errors import HugePageError, NodeMemoryError, PlacementError

__all__ = [
    "owner", "page_nodes", "placement", "Placement", "migrate", "page_addresses", "histogram", "Region",
    "PoolAllocation",
]


def owner(array) -> Region | PoolAllocation | None:
    """Return the numamem owner of ``array``'s memory, or None for other memory.

    The owner is a :class:`Region` (a mapping of its own) or a :class:`PoolAllocation` (a
    block of a node's pool). Follows the ``.base`` chain
    (ndarray views, then the memoryview export of the owner).
    """
    obj = array
    while obj is not None:
        if isinstance(obj, (Region, PoolAllocation)):
            return obj
        if isinstance(obj, memoryview):
            obj = obj.obj
        else:
            obj = getattr(obj, "base", None)
    return None


def page_addresses(start: int, stop: int, page_size: int) -> np.ndarray:
    """Addresses of the ``page_size`` pages holding bytes ``[start, stop)``, as ``uint64``."""
    first = start - start % page_size
    return np.arange(first, stop, page_size, dtype=np.uint64)


def histogram(status: np.ndarray) -> dict[int, int]:
    """Count ``move_pages`` results: node id (or negative errno) -> pages, in ascending order.

    Counted with ``bincount``, never a sort: NumPy's argsort (behind ``np.unique``) returned
    wrong orders inside the QEMU-emulated guests (see ``_pack.pyx:dense_ranks``), and these
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
    """Return the node of every page ``array`` spans, as the kernel reports it (``move_pages``).

    Parameters
    ----------
    array : array_like
        Any array with a buffer; numamem memory is read at its own page size (hugetlbfs pages
        count once each), other memory at the base page size.

    Returns
    -------
    numpy.ndarray of int32
        One entry per page from the array's first to last byte: the node id, or a negative
        errno where the kernel has no node for the page: ``-2`` (ENOENT) or, on some kernels
        (seen on Debian's 6.1), ``-14`` (EFAULT) for a page not faulted in yet; ``-14`` also for
        an address not mapped at all.
    """
    array = np.asarray(array)
    if array.size == 0 or array.itemsize == 0:  # no byte, hence no page (V0 has elements but no bytes)
        return np.empty(0, dtype=np.int32)
    region = owner(array)
    page = region.page_size if region is not None else _topology.topology(refresh=False).base_page_size
    low, high = _span(array)
    return _kernel.page_status(page_addresses(low, high, page))


@dataclass(frozen=True)
class Placement:
    """Where an array's memory is, from the kernel's own accounting.

    Attributes
    ----------
    bytes_per_node : dict
        Node -> bytes of the array on pages of that node (only the array's own bytes count).
    unplaced_bytes : int
        Bytes on pages not faulted in yet.
    page_size : int
        The kernel's page size for the mapping (``KernelPageSize``: 4 KiB or a hugetlbfs size).
    pages : str
        The page kind obtained: ``"4k"``, ``"thp"`` (some transparent huge pages back the
        mapping), ``"2M"`` or ``"1G"``.
    thp_bytes : int
        Bytes of transparent huge pages (``AnonHugePages``) in the mapping(s) containing the array.
    policy : str
        The memory policy the kernel has for the array's first page.
    policy_nodes : tuple of int
    alignment : int
        Largest power of two dividing the first element's address (capped at 1 GiB).
    requested : dict or None
        What the caller asked numamem for (None for foreign memory).
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


def _smaps(low: int, high: int) -> tuple[int, int]:
    """(KernelPageSize, AnonHugePages bytes) of the mappings overlapping ``[low, high)``.

    The kernel merges adjacent mappings with identical flags and policy, so a mapping may hold
    other arrays too: each mapping's huge-page bytes are capped at its overlap with the array.
    """
    page_size, thp = 0, 0
    overlap = 0
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            header = _SMAPS_HEADER.match(line)
            if header:
                start, stop = int(header.group(1), 16), int(header.group(2), 16)
                overlap = max(0, min(stop, high) - max(start, low))
                continue
            if not overlap:
                continue
            if line.startswith("KernelPageSize:"):
                page_size = max(page_size, int(line.split()[1]) * 1024)
            elif line.startswith("AnonHugePages:"):
                thp += min(int(line.split()[1]) * 1024, overlap)
    return page_size, thp


def placement(array) -> Placement:
    """Summarise where ``array``'s memory is and how it is paged, from the kernel.

    Examples
    --------
    >>> import numamem
    >>> a = numamem.zeros(1 << 20, node=0)
    >>> numamem.placement(a).bytes_per_node
    {0: 8388608}
    """
    array = np.asarray(array)
    region = owner(array)
    requested = None
    blocks_info = ()
    if region is not None:
        req: Request = region.info.get("request")
        requested = None if req is None else {
            "policy": req.policy, "node": req.node, "nodes": list(req.nodes), "axis": req.axis,
            "align": req.align, "pages": list(req.pages), "populate": req.populate,
            "pages_obtained": region.info.get("pages"),
        }
        if region.info.get("fallback_from"):
            requested["fallback_from"] = region.info["fallback_from"]
        blocks_info = tuple(region.info.get("blocks", ()))
    if array.size == 0:
        address = array.ctypes.data
        return Placement({}, 0, 0, "4k", 0, "default", (), _alignment(address), requested, blocks_info)
    low, high = _span(array)
    page = region.page_size if region is not None else _topology.topology(refresh=False).base_page_size
    addresses = page_addresses(low, high, page)
    status = _kernel.page_status(addresses)
    starts = addresses.astype(np.int64)
    overlap = np.minimum(starts + page, high) - np.maximum(starts, low)
    per_node: dict[int, int] = {}
    unplaced = 0
    for node_or_err, nbytes in zip(status.tolist(), overlap.tolist()):
        if node_or_err >= 0:
            per_node[node_or_err] = per_node.get(node_or_err, 0) + nbytes
        else:
            unplaced += nbytes
    kernel_page, thp = _smaps(low, high)
    kernel_page = kernel_page or page
    if kernel_page >= 2**30:
        kind = "1G"
    elif kernel_page >= 2 * 2**20:
        kind = "2M"
    else:
        kind = "thp" if thp else "4k"
    policy, policy_nodes = _kernel.range_policy(low - low % page)
    return Placement(dict(sorted(per_node.items())), unplaced, kernel_page, kind, thp, policy, policy_nodes,
                     _alignment(low), requested, blocks_info)


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

    Raises
    ------
    TypeError
        If ``array`` is not numamem memory (copy it with :func:`asarray` instead).
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
    if isinstance(region, PoolAllocation):
        # A pool block shares its pages with other blocks of its node: it cannot move alone. Where
        # it already is on `node` there is nothing to do (a bind pool's chunks were verified there).
        status = _kernel.page_status(page_addresses(region.address, region.address + max(region.nbytes, 1),
                                                    region.page_size))
        if region.pool.node == node and bool(np.all(status == node)):
            return array
        raise TypeError(
            f"this array is a block of node {region.pool.node}'s pool, whose pages it shares with other arrays "
            f"of that node: it cannot move alone. Copy it with numamem.asarray(a, node={node}), or allocate it "
            "with populate/pages/align options that give it a mapping of its own")
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
