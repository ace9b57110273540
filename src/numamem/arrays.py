"""NumPy arrays on chosen NUMA nodes, with verified placement, alignment and page sizes.

Every function here returns a plain :class:`numpy.ndarray` whose memory is a
:class:`~numamem._region.Region`: ``arr.base`` is a ``memoryview`` of that region (see
:func:`owner`). The sequence for a strict placement (``policy="bind"``, the default) is what keeps a
process alive when a node is short of memory (ARCHITECTURE.md, invariant 4):

1. validate every argument and the node against the topology — nothing is mapped yet;
2. compare the request with the node's free memory (or free huge pages) -> ``NodeMemoryError``;
3. map, apply ``MPOL_PREFERRED`` for the node and pre-fault (``MADV_POPULATE_WRITE``). Under
   ``preferred`` a shortfall spills to other nodes instead of invoking the OOM killer, which is what
   ``MPOL_BIND`` does (seen in a guest: populate past a bound node's capacity was an OOM kill);
4. ask the kernel (``move_pages``) where every page is; any page elsewhere -> unmap and raise;
5. switch the range to ``MPOL_BIND`` (strict), so later faults (after swap, migration) stay.
"""
from __future__ import annotations

import errno
import itertools
import math
import operator
import re
from dataclasses import dataclass, field

import numpy as np

from numamem import _kernel, _topology
from numamem._pool import PoolAllocation, get_pool
from numamem._region import Region
from numamem.errors import HugePageError, NodeMemoryError, PageSizeError, PlacementError

__all__ = [
    "empty", "zeros", "ones", "full", "empty_like", "zeros_like", "ones_like", "full_like",
    "asarray", "owner", "page_nodes", "placement", "migrate", "blocks", "ArrayBlock", "Placement",
]

POLICIES = ("bind", "preferred", "interleave", "local")
PAGE_KINDS = ("auto", "4k", "thp", "2M", "1G")
HUGETLB_SIZES = {"2M": 2 * 2**20, "1G": 2**30}
# Arrays up to this size come from the node's pool (see pools.py) when nothing about the request
# needs a mapping of its own: no block split, default page kind, alignment the pool guarantees.
POOL_MAX_BYTES = 1 << 20
POOL_ALIGN = 64
STAGGER_MIN_BYTES = 1 << 20
STAGGER_SLOTS = 16
_stagger_slots = itertools.count()
# Below this size a strict request is not compared with the node's free memory up front: reading
# the node's meminfo costs more than placing a small array, and safety does not depend on the
# check (pages are populated under MPOL_PREFERRED and verified, so a full node is an exception,
# never an OOM kill). Above it the check fails fast instead of spilling, then unmapping, a lot.
CAPACITY_CHECK_BYTES = 4 * 2**20
DEFAULT_ALIGN = 64
_NO_NODE = object()


# --------------------------------------------------------------------------------------------
# Argument validation: every check runs before anything is mapped.
# --------------------------------------------------------------------------------------------
def _shape(shape) -> tuple[int, ...]:
    if type(shape) is int and shape >= 0:
        return (shape,)
    if isinstance(shape, (bool, np.bool_)):
        raise TypeError(f"shape must be an int or a sequence of ints, not {shape!r}")
    try:
        dims = (operator.index(shape),)
    except TypeError:
        try:
            dims = tuple(operator.index(extent) for extent in shape)
        except TypeError:
            raise TypeError(f"shape must be an int or a sequence of ints, not {shape!r}") from None
    for extent in dims:
        if extent < 0:
            raise ValueError(f"shape {dims} has a negative dimension")
    return dims


def _dtype(dtype) -> np.dtype:
    try:
        descr = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype {dtype!r} is not a NumPy dtype: {exc}") from None
    if descr.hasobject:
        # Python object references in node-bound memory would be invisible to the garbage
        # collector's ownership rules; NumPy needs its own allocator for them.
        raise TypeError(f"dtype {descr} holds Python objects; numamem places plain data only")
    if descr.itemsize == 0 and descr.kind in "SU":
        # As NumPy's creators do: an unsized string dtype means one character.
        descr = np.dtype(f"{descr.byteorder if descr.kind == 'U' else '|'}{descr.kind}1")
    return descr


_MAX_BYTES = np.iinfo(np.intp).max


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > _MAX_BYTES:
        raise ValueError(f"shape {shape} of {dtype} needs {nbytes} bytes, more than this platform can address")
    return nbytes


def _order(order: str, allow_keep: bool = False) -> str:
    allowed = ("C", "F", "A", "K") if allow_keep else ("C", "F")
    if not isinstance(order, str) or order.upper() not in allowed:
        raise ValueError(f"order must be one of {', '.join(map(repr, allowed))}, not {order!r}")
    return order.upper()


def _page_kinds(pages) -> tuple[str, ...]:
    kinds = (pages,) if isinstance(pages, str) else tuple(pages)
    if not kinds:
        raise ValueError("pages must name at least one page kind")
    for kind in kinds:
        if kind not in PAGE_KINDS:
            raise ValueError(f"pages must be one of {PAGE_KINDS} (or a sequence of them to try in order), not {kind!r}")
    return kinds


def _align(align, page_size: int, thp_size: int) -> int:
    if align == "page":
        return page_size
    if align == "hugepage":
        return max(thp_size, 2 * 2**20, page_size)
    if isinstance(align, (bool, np.bool_)) or not isinstance(align, (int, np.integer)):
        raise TypeError(f"align must be a power of two in bytes, 'page' or 'hugepage', not {align!r}")
    align = int(align)
    if align < 1 or align & (align - 1):
        raise ValueError(f"align must be a power of two in bytes, not {align}")
    if align > 2**30:
        raise ValueError(f"align {align} is larger than the largest page (1 GiB)")
    return align


def _node_id(value, argname: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argname} must be an int node id, not {value!r}")
    return int(value)


def _check_node(topo, node: int, argname: str = "node", need_memory: bool = True) -> None:
    if node not in topo.node_ids:
        raise ValueError(f"{argname}={node}: no such node; nodes are {list(topo.node_ids)}")
    if need_memory and not topo.node(node).has_memory:
        raise ValueError(f"{argname}={node}: node {node} has no memory")
    if node not in topo.allowed_nodes:
        raise ValueError(
            f"{argname}={node}: node {node} is not allowed by this process's cpuset "
            f"(Mems_allowed: {sorted(topo.allowed_nodes)})")


@dataclass(frozen=True)
class _Request:
    """A validated placement request (kept in ``Region.info['request']``)."""

    policy: str
    node: int | None
    nodes: tuple[int, ...]
    axis: int | None
    align: object
    pages: tuple[str, ...]
    populate: bool
    #: The node pool serving arrays of this request up to POOL_MAX_BYTES, or None when the request
    #: needs a mapping of its own (block split, a page kind, a large alignment, lazy bind).
    pool: object = field(default=None, compare=False, repr=False)


_REQUEST_CACHE: dict = {}


def _request(node, nodes, axis, policy, align, pages, populate) -> _Request:
    """Validate a placement request, memoised per topology snapshot (validation is pure)."""
    topo = _topology.topology(refresh=False)
    try:
        key = (node, None if nodes is None else tuple(nodes), axis, policy, align,
               pages if isinstance(pages, str) else tuple(pages), populate)
        cached = _REQUEST_CACHE.get(key)
    except TypeError:  # unhashable or non-iterable arguments: validate to name the problem
        key = cached = None
    if cached is not None and cached[0] is topo:
        return cached[1]
    req = _validate_request(node, nodes, axis, policy, align, pages, populate)
    if key is not None:
        if len(_REQUEST_CACHE) > 256:
            _REQUEST_CACHE.clear()
        _REQUEST_CACHE[key] = (topo, req)
    return req


def _validate_request(node, nodes, axis, policy, align, pages, populate) -> _Request:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    topo = _topology.topology(refresh=False)
    kinds = _page_kinds(pages)
    if node is not None:
        node = _node_id(node, "node")
    if nodes is not None:
        if isinstance(nodes, (int, np.integer)):
            raise TypeError("nodes must be a sequence of node ids, e.g. nodes=[0, 1]")
        nodes = tuple(_node_id(n, "nodes") for n in nodes)
        if not nodes:
            raise ValueError("nodes must not be empty")
        if len(set(nodes)) != len(nodes) and policy == "interleave":
            raise ValueError(f"nodes {list(nodes)} lists a node twice")
    if axis is not None and nodes is None:
        raise ValueError("axis= splits an array over nodes= and needs a nodes list")

    if policy == "local":
        if node is not None or nodes is not None:
            raise ValueError("policy='local' places memory on the node of the touching CPU; give no node or nodes")
        chosen = ()
    elif policy == "interleave":
        if node is not None:
            raise ValueError("policy='interleave' takes nodes=[...], not node=")
        if nodes is None:
            raise ValueError("policy='interleave' needs nodes=[...]")
        if axis is not None:
            raise ValueError("axis= (a block split) and policy='interleave' exclude each other")
        chosen = nodes
    else:  # bind, preferred
        if node is not None and nodes is not None:
            raise ValueError("give node= (one node) or nodes= (a block split), not both")
        if node is None and nodes is None:
            raise ValueError(f"policy={policy!r} needs node= (or nodes=[...] with axis= for a block split)")
        if nodes is not None and axis is None:
            axis = 0
        chosen = (node,) if node is not None else nodes
    for n in chosen:
        _check_node(topo, n, "node" if node is not None else "nodes")
    if populate is None:
        # Strict placements and hugetlb pages are pre-faulted: a shortfall is then an exception now,
        # not an OOM kill or a SIGBUS at first touch.
        populate = policy == "bind" or any(kind in HUGETLB_SIZES for kind in kinds)
    _align(align, topo.base_page_size, topo.thp_size)  # validate before mapping
    pool = None
    if (policy in ("bind", "preferred") and node is not None and kinds == ("auto",)
            and isinstance(align, (int, np.integer)) and align <= POOL_ALIGN and (populate or policy == "preferred")):
        pool = get_pool(node, policy)
    return _Request(policy, node, tuple(nodes) if nodes is not None else (), axis, align, kinds, bool(populate), pool)


# --------------------------------------------------------------------------------------------
# Block split geometry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _BlockSpan:
    index: int
    node: int
    start: int  # along the split axis
    stop: int
    offset: int  # bytes from the region start
    nbytes: int


def _split_blocks(shape, dtype, order, axis, nodes, page_size) -> tuple[_BlockSpan, ...]:
    ndim = len(shape)
    if ndim == 0:
        raise ValueError("a 0-d array cannot be split over nodes")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for shape {shape}")
    axis %= ndim
    # A block along `axis` is one contiguous byte range only if every axis that varies slower
    # than it has extent 1 (C order: the axes before it; F order: the axes after it).
    outer = shape[:axis] if order == "C" else shape[axis + 1:]
    inner = shape[axis + 1:] if order == "C" else shape[:axis]
    if any(extent != 1 for extent in outer) and math.prod(shape) != 0:
        raise ValueError(
            f"blocks along axis {axis} of a {order}-order array of shape {shape} are not contiguous; "
            f"split along the {'first' if order == 'C' else 'last'} axis whose slower axes have extent 1")
    row_bytes = math.prod(inner) * dtype.itemsize
    extent = shape[axis]
    count = len(nodes)
    # Split points must fall on page boundaries: a multiple of `granule` rows.
    granule = page_size // math.gcd(page_size, row_bytes) if row_bytes else 1
    bounds = [0]
    for i in range(1, count):
        ideal = extent * i / count
        snapped = int(round(ideal / granule)) * granule
        bounds.append(min(max(snapped, bounds[-1]), extent))
    bounds.append(extent)
    return tuple(
        _BlockSpan(i, nodes[i], bounds[i], bounds[i + 1], bounds[i] * row_bytes,
                   (bounds[i + 1] - bounds[i]) * row_bytes)
        for i in range(count)
    )


# --------------------------------------------------------------------------------------------
# Mapping, placing and verifying
# --------------------------------------------------------------------------------------------
def _page_addresses(start: int, stop: int, page_size: int) -> np.ndarray:
    first = start - start % page_size
    return np.arange(first, stop, page_size, dtype=np.uint64)


def _histogram(status: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(status, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def _check_capacity(req: _Request, spans, page_size: int, hugetlb: int) -> None:
    """Refuse a request the node(s) cannot hold, before mapping anything."""
    if req.policy not in ("bind", "preferred") or not req.populate:
        if not hugetlb:
            return
    need: dict[int, int] = {}
    if req.policy in ("bind", "preferred"):
        for span in spans:
            if span.nbytes:
                need[span.node] = need.get(span.node, 0) + -(-span.nbytes // page_size) * page_size
    if hugetlb:
        if req.policy == "interleave":
            free = sum(_topology.node_hugepages(n, hugetlb).free_bytes for n in req.nodes)
            total = sum(need.values()) or spans[-1].nbytes
            if total > free:
                raise HugePageError(list(req.nodes), total, free, hugetlb)
            return
        if req.policy == "local":
            return  # the touching CPU's node is unknown here; populate reports EFAULT/ENOMEM
        for node, nbytes in need.items():
            free = _topology.node_hugepages(node, hugetlb).free_bytes
            if nbytes > free:
                raise HugePageError(node, nbytes, free, hugetlb)
        return
    if req.policy == "bind":
        for node, nbytes in need.items():
            if nbytes < CAPACITY_CHECK_BYTES:
                continue
            free = _topology.node_free_memory(node)
            if nbytes > free:
                raise NodeMemoryError(node, nbytes, free)


def _populate(region: Region, req: _Request, hugetlb: int, offset: int = 0, length: int | None = None):
    try:
        return region.populate(offset, length)
    except OSError as exc:
        node = req.node if req.node is not None else list(req.nodes) or None
        requested = region.mapped_bytes if length is None else length
        if hugetlb:
            raise HugePageError(node, requested, None, hugetlb, f"pre-faulting failed: {exc.strerror}") from None
        free = _topology.node_free_memory(req.node) if req.node is not None else None
        raise NodeMemoryError(node, requested, free, f"pre-faulting failed: {exc.strerror}") from None


def _place(region: Region, req: _Request, spans, hugetlb: int) -> None:
    """Apply the policy to the region, pre-fault and verify as the request says."""
    base = region.address
    if req.policy in ("interleave", "local"):
        _kernel.bind_range(base, region.mapped_bytes, req.policy, req.nodes)
        if req.populate:
            _populate(region, req, hugetlb)
        return
    for i, span in enumerate(spans):
        start = span.offset
        # The last block also owns the tail of the final page (and the page of a size-0 region).
        stop = region.mapped_bytes if i == len(spans) - 1 else span.offset + span.nbytes
        if stop <= start:
            continue
        if req.policy == "preferred" or not req.populate:
            _kernel.bind_range(base + start, stop - start, req.policy, (span.node,))
            if req.populate:
                _populate(region, req, hugetlb, start, stop - start)
            continue
        # Strict and pre-faulted: populate under `preferred` so a shortfall spills instead of
        # OOM-killing, verify, then bind.
        _kernel.bind_range(base + start, stop - start, "preferred", (span.node,))
        _populate(region, req, hugetlb, start, stop - start)
        _verify_and_bind(region, span.node, start, stop, hugetlb)


# Ranges up to this size are verified page by page with move_pages (at most 512 queries); larger
# ones rely on the kernel's own walk (mbind with MPOL_MF_STRICT, which fails with EIO when a page
# is off the nodemask and handles transparent huge pages at the PMD level) plus a sample of one
# page per 2 MiB, because a full move_pages query costs ~130 ns per 4 KiB page (8.6 ms for 256 MiB,
# more than a fifth of writing the array once).
FULL_VERIFY_BYTES = 2 * 2**20
SAMPLE_STRIDE = 2 * 2**20


def _verify_and_bind(region: Region, node: int, start: int, stop: int, hugetlb: int) -> None:
    base = region.address
    page = region.page_size
    if hugetlb or stop - start <= FULL_VERIFY_BYTES:
        addresses = _page_addresses(base + start, base + stop, page)
    else:
        # Sample from the range's own first page: rounding down to a 2 MiB boundary would ask
        # about an address before the mapping (EFAULT) whenever the range is not 2 MiB-aligned.
        addresses = np.append(np.arange(base + start, base + stop, SAMPLE_STRIDE, dtype=np.uint64),
                              np.uint64(base + stop - page))
    status = _kernel.page_status(addresses)
    misplaced = bool(np.any(status != node))
    if not misplaced:
        try:
            _kernel.bind_range(base + start, stop - start, "bind", (node,), _kernel.MF_STRICT)
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
    # Some page is elsewhere: the node ran out while populating. Report what the kernel says.
    found = _histogram(_kernel.page_status(_page_addresses(base + start, base + stop, page)))
    elsewhere = sum(count for where, count in found.items() if where != node)
    detail = f"{elsewhere} page(s) landed elsewhere: {found}"
    if hugetlb:
        raise HugePageError(node, stop - start, _topology.node_hugepages(node, hugetlb).free_bytes, hugetlb, detail)
    raise NodeMemoryError(node, stop - start, _topology.node_free_memory(node), detail)


def _map_one_kind(nbytes, kind, req, shape, dtype, order, topo) -> Region:
    base_page = topo.base_page_size
    hugetlb = HUGETLB_SIZES.get(kind, 0)
    if hugetlb and hugetlb not in topo.hugepage_sizes():
        raise HugePageError(req.node if req.node is not None else list(req.nodes), nbytes, 0, hugetlb,
                            f"the kernel offers no {kind} hugetlbfs pages")
    if kind == "thp" and topo.thp not in ("always", "madvise"):
        raise PageSizeError(
            f"pages='thp' but transparent huge pages are {topo.thp!r} "
            "(/sys/kernel/mm/transparent_hugepage/enabled); use pages='auto' or '4k'")
    page_size = hugetlb or base_page
    align = _align(req.align, page_size, topo.thp_size)
    use_thp = (kind == "thp" or (kind == "auto" and topo.thp in ("always", "madvise"))) and \
        nbytes >= topo.thp_size > 0
    # Huge pages can back only 2 MiB-aligned ranges: align the mapping so they can be used.
    map_align = max(align, page_size, topo.thp_size if use_thp else 0)
    if req.nodes and req.axis is not None:
        spans = _split_blocks(shape, dtype, order, req.axis, req.nodes, page_size)
    else:
        node = req.node if req.node is not None else (req.nodes[0] if req.nodes else -1)
        spans = (_BlockSpan(0, node, 0, shape[0] if shape else 1, 0, nbytes),)
    _check_capacity(req, spans, page_size, hugetlb)
    # Equal-sized large arrays that all start on a 2 MiB boundary share every address bit below
    # their size, so a stream over several of them (a triad) keeps hitting the same cache sets
    # and 4 KiB-aliases in the load/store buffers: triad on three 256 MiB arrays measured 1.32x
    # NumPy's time, 0.98x once staggered. One-node arrays therefore start at a rotating multiple
    # of the base page inside their mapping (malloc's mmap'd chunks end up staggered similarly).
    stagger = 0
    if not hugetlb and not (req.nodes and req.axis is not None) and align <= base_page \
            and nbytes >= STAGGER_MIN_BYTES:
        stagger = next(_stagger_slots) % STAGGER_SLOTS * base_page
    region = Region(nbytes + stagger, map_align, hugetlb)
    try:
        if use_thp:
            region.advise("hugepage")
        elif kind == "4k" and topo.thp in ("always", "madvise"):
            region.advise("nohugepage")
        _place(region, req, spans, hugetlb)
    except BaseException:
        region.close()
        raise
    region.info.update(
        request=req, pages=kind, alignment=align, shape=shape, dtype=dtype, order=order, offset=stagger,
        blocks=spans if (req.nodes and req.axis is not None) else (),
        description=_describe(req, kind),
    )
    return region


def _describe(req: _Request, kind: str) -> str:
    if req.policy == "local":
        where = "local"
    elif req.axis is not None and req.nodes:
        where = f"split over nodes {list(req.nodes)} along axis {req.axis}"
    elif req.policy == "interleave":
        where = f"interleaved over {list(req.nodes)}"
    else:
        where = f"{req.policy} node {req.node}"
    return f"{where}, pages={kind}"




def _allocate(shape, dtype, order, req: _Request, zero: bool = False) -> np.ndarray:
    nbytes = _nbytes(shape, dtype)
    if req.pool is not None and nbytes <= POOL_MAX_BYTES:
        allocation = req.pool.allocation(nbytes, zero)
        allocation.info = {"request": req, "pages": "auto", "alignment": POOL_ALIGN, "shape": shape}
        return allocation.ndarray(shape, dtype, order)
    topo = _topology.topology(refresh=False)
    errors = []
    for kind in req.pages:
        try:
            region = _map_one_kind(nbytes, kind, req, shape, dtype, order, topo)
        except (HugePageError, PageSizeError) as exc:
            # A page kind that cannot be had here falls through to the next one the caller listed.
            if len(req.pages) == 1:
                raise
            errors.append(exc)
            continue
        if errors:
            region.info["fallback_from"] = [str(e) for e in errors]
        return region.ndarray(shape, dtype, order, region.info["offset"])
    raise errors[-1]


# --------------------------------------------------------------------------------------------
# Public creators
# --------------------------------------------------------------------------------------------
def empty(shape, dtype=float, order="C", *, node=None, nodes=None, axis=None, policy="bind",
          align=DEFAULT_ALIGN, pages="auto", populate=None) -> np.ndarray:
    """Return a new array, without initialising entries, in memory placed as asked.

    Parameters
    ----------
    shape : int or tuple of int
    dtype : data-type, default float
        Any NumPy dtype without Python objects (structured dtypes included).
    order : {"C", "F"}
    node : int, optional
        The node for ``policy="bind"`` (default) or ``"preferred"``.
    nodes : sequence of int, optional
        With ``axis``: a block-split array whose i-th block along ``axis`` is placed on
        ``nodes[i]``, split points on page boundaries, blocks as even as pages allow.
        With ``policy="interleave"``: the nodes to interleave pages over.
    axis : int, optional
        Split axis for ``nodes`` (default 0). Blocks must be contiguous in memory: every axis
        varying slower than ``axis`` must have extent 1.
    policy : {"bind", "preferred", "interleave", "local"}
        ``bind``: every page on the node, verified, or an exception. ``preferred``: the node while
        it has room, elsewhere after. ``interleave``: pages round-robin over ``nodes``. ``local``:
        the node of the CPU that first touches each page.
    align : int or {"page", "hugepage"}, default 64
        Alignment in bytes of the first element (a power of two up to 1 GiB).
    pages : {"auto", "4k", "thp", "2M", "1G"} or sequence of them
        ``auto``: transparent huge pages where the kernel allows and the array is large enough;
        ``4k``: base pages only; ``thp``: transparent huge pages (error if disabled); ``2M``/``1G``:
        hugetlbfs pages (error if too few are free on the node). A sequence is tried in order; the
        kind obtained is reported by :func:`placement`.
    populate : bool, optional
        Pre-fault every page now. Default: on for ``bind`` and hugetlbfs pages (so a shortfall is
        an exception now, never an OOM kill or SIGBUS later), off otherwise. ``populate=False``
        with ``bind`` is lazy placement: the node's capacity is then not checked.

    Returns
    -------
    numpy.ndarray
        Its ``.base`` is a memoryview of the owning :class:`numamem.Region` (:func:`owner`).

    Raises
    ------
    ValueError, TypeError
        For a bad argument (named in the message), before anything is mapped.
    NodeMemoryError
        If the node cannot hold the array (``HugePageError`` for hugetlbfs pages).

    Examples
    --------
    >>> import numamem, numpy as np
    >>> a = numamem.empty((1024, 1024), np.float32, node=0)
    >>> set(numamem.page_nodes(a)) == {0}
    True
    """
    return _create(shape, dtype, order, node, nodes, axis, policy, align, pages, populate, zero=False)


def _create(shape, dtype, order, node, nodes, axis, policy, align, pages, populate, zero):
    shape = _shape(shape)
    dtype = _dtype(dtype)
    order = _order(order)
    req = _request(node, nodes, axis, policy, align, pages, populate)
    return _allocate(shape, dtype, order, req, zero)


def zeros(shape, dtype=float, order="C", *, node=None, nodes=None, axis=None, policy="bind",
          align=DEFAULT_ALIGN, pages="auto", populate=None) -> np.ndarray:
    """Return a new array of zeros placed as asked (see :func:`empty` for the keywords).

    Fresh mappings are zero-filled by the kernel, so no extra pass is made over them; memory
    recycled by a pool is cleared explicitly (invariant 5).
    """
    return _create(shape, dtype, order, node, nodes, axis, policy, align, pages, populate, zero=True)


def ones(shape, dtype=float, order="C", **placement_kw) -> np.ndarray:
    """Return a new array of ones placed as asked (see :func:`empty` for the keywords)."""
    return full(shape, 1, dtype, order, **placement_kw)


def full(shape, fill_value, dtype=None, order="C", **placement_kw) -> np.ndarray:
    """Return a new array filled with ``fill_value`` placed as asked (see :func:`empty`).

    ``dtype`` defaults to the dtype NumPy infers for ``fill_value``.
    """
    if dtype is None:
        dtype = np.asarray(fill_value).dtype
    array = empty(shape, dtype, order, **placement_kw)
    array[...] = fill_value
    return array


def _like(prototype, dtype, order, shape, placement_kw):
    prototype = np.asanyarray(prototype)
    dtype = prototype.dtype if dtype is None else dtype
    order = _order(order, allow_keep=True)
    if order in ("A", "K"):
        order = "F" if prototype.flags.f_contiguous and not prototype.flags.c_contiguous else "C"
    shape = prototype.shape if shape is None else shape
    if not any(key in placement_kw for key in ("node", "nodes", "policy")):
        # Without placement keywords, a numamem prototype lends its own placement.
        region = owner(prototype)
        if region is None:
            raise ValueError(f"{type(prototype).__name__} is not numamem memory: give node= (or nodes=/policy=)")
        req: _Request = region.info["request"]
        placement_kw = dict(node=req.node, nodes=req.nodes or None, policy=req.policy, pages=req.pages,
                            align=req.align, populate=req.populate, **placement_kw)
        if req.axis is not None and req.nodes:
            placement_kw["axis"] = req.axis
    return shape, dtype, order, placement_kw


def empty_like(prototype, dtype=None, order="K", *, shape=None, **placement_kw) -> np.ndarray:
    """Return an uninitialised array like ``prototype`` (shape, dtype, order), placed as asked.

    Without ``node``/``nodes``/``policy``, a numamem prototype's placement is reused.
    """
    shape, dtype, order, placement_kw = _like(prototype, dtype, order, shape, placement_kw)
    return empty(shape, dtype, order, **placement_kw)


def zeros_like(prototype, dtype=None, order="K", *, shape=None, **placement_kw) -> np.ndarray:
    """Return an array of zeros like ``prototype``, placed as asked (see :func:`empty_like`)."""
    shape, dtype, order, placement_kw = _like(prototype, dtype, order, shape, placement_kw)
    return zeros(shape, dtype, order, **placement_kw)


def ones_like(prototype, dtype=None, order="K", *, shape=None, **placement_kw) -> np.ndarray:
    """Return an array of ones like ``prototype``, placed as asked (see :func:`empty_like`)."""
    shape, dtype, order, placement_kw = _like(prototype, dtype, order, shape, placement_kw)
    return ones(shape, dtype, order, **placement_kw)


def full_like(prototype, fill_value, dtype=None, order="K", *, shape=None, **placement_kw) -> np.ndarray:
    """Return an array like ``prototype`` filled with ``fill_value`` (see :func:`empty_like`)."""
    shape, dtype, order, placement_kw = _like(prototype, dtype, order, shape, placement_kw)
    return full(shape, fill_value, dtype, order, **placement_kw)


def asarray(a, dtype=None, order="K", **placement_kw) -> np.ndarray:
    """Copy ``a`` into new memory placed as asked (see :func:`empty` for the keywords).

    The copy is always made, so the result's pages are exactly where the keywords say, whatever
    ``a`` was (a list, a NumPy array on another node, a numamem array); :func:`migrate` moves an
    existing numamem array's pages instead.
    """
    source = np.asarray(a, dtype=dtype)
    shape, dtype, order, placement_kw = _like(source, dtype, order, None, placement_kw)
    array = empty(shape, dtype, order, **placement_kw)
    np.copyto(array, source, casting="unsafe")
    return array


# --------------------------------------------------------------------------------------------
# Inspecting and moving
# --------------------------------------------------------------------------------------------
def owner(array) -> Region | PoolAllocation | None:
    """Return the numamem owner of ``array``'s memory, or None for other memory.

    The owner is a :class:`numamem.Region` (a mapping of its own) or a
    :class:`numamem.PoolAllocation` (a block of a node's pool). Follows the ``.base`` chain
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
    if array.size == 0:
        return np.empty(0, dtype=np.int32)
    region = owner(array)
    page = region.page_size if region is not None else _topology.topology(refresh=False).base_page_size
    low, high = _span(array)
    return _kernel.page_status(_page_addresses(low, high, page))


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
        req: _Request = region.info.get("request")
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
    addresses = _page_addresses(low, high, page)
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
    if isinstance(region, PoolAllocation):
        raise TypeError(
            "this array is a block of a node pool, whose pages it shares with other arrays of that node; "
            "copy it with numamem.asarray(a, node=...) or allocate it with populate/pages/align options "
            "that give it a mapping of its own")
    node = _node_id(node, "node")
    topo = _topology.topology(refresh=False)
    _check_node(topo, node)
    page = region.page_size
    hugetlb = page if page != topo.base_page_size else 0
    addresses = _page_addresses(region.address, region.address + region.mapped_bytes, page)
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
        raise PlacementError((node,), _histogram(after), f"mbind(MPOL_MF_MOVE) failed: {exc.strerror}") from None
    after = _kernel.page_status(addresses)
    present = after[after >= 0]
    if np.any(present != node):
        raise PlacementError((node,), _histogram(after), "some pages did not move")
    old: _Request = region.info["request"]
    region.info["request"] = _Request("bind", node, (), None, old.align, old.pages, old.populate)
    region.info["blocks"] = ()
    region.info["description"] = _describe(region.info["request"], region.info.get("pages", "auto"))
    return array


@dataclass(frozen=True)
class ArrayBlock:
    """One block of a block-split array: ``array`` is the view of rows ``[start, stop)`` of ``axis``."""

    index: int
    node: int
    axis: int
    start: int
    stop: int
    offset: int
    nbytes: int
    array: np.ndarray


def blocks(array) -> list[ArrayBlock]:
    """Return the per-node blocks of a block-split array (one block for other numamem arrays).

    Parameters
    ----------
    array : numpy.ndarray
        An array as returned by a numamem creator (not a view of one: block bounds are stated
        in the created array's indices).
    """
    region = owner(array)
    if region is None:
        raise TypeError("blocks() describes numamem arrays; this array's memory is not numamem's")
    info = region.info
    array = np.asarray(array)
    if array.shape != info["shape"] or array.ctypes.data != region.address + info.get("offset", 0):
        raise ValueError("blocks() takes the array numamem created, not a view of it")
    req: _Request = info["request"]
    spans = info.get("blocks") or ()
    if not spans:
        extent = array.shape[0] if array.ndim else 1
        node = req.node if req.node is not None else -1
        return [ArrayBlock(0, node, 0, 0, extent, 0, array.nbytes, array)]
    axis = req.axis % array.ndim
    result = []
    for span in spans:
        index = [slice(None)] * array.ndim
        index[axis] = slice(span.start, span.stop)
        result.append(ArrayBlock(span.index, span.node, axis, span.start, span.stop, span.offset, span.nbytes,
                                 array[tuple(index)]))
    return result
