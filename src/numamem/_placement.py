"""Placing a request: page-kind choice, capacity check, staggering and the strict sequence.

For a strict placement (``policy="bind"``, the default) this is what keeps a process alive when a
node is short of memory (ARCHITECTURE.md, invariant 4):

1. compare the request with the node's available memory (or free huge pages) and the
   process's cgroup memory limit -> ``NodeMemoryError``;
2. map, apply ``MPOL_PREFERRED`` for the node and pre-fault (``MADV_POPULATE_WRITE``). Under
   ``preferred`` a shortfall spills to other nodes instead of invoking the OOM killer, which is what
   ``MPOL_BIND`` does (seen in a guest: populate past a bound node's capacity was an OOM kill);
3. ask the kernel (``move_pages``) where every page is; any page elsewhere -> unmap and raise;
4. switch the range to ``MPOL_BIND`` (strict), so later faults (after swap, migration) stay.

Steps 2-4 are the one placement routine, ``numamem._place.place_on_node`` (through
``Region.place``), which the pools' kernel chunk source runs too; this module keeps the decisions:
page kind, spans, capacity check, staggering.

Arrays small enough for a node's pool skip all of this here: the pool's chunks were placed by the
same sequence when they were mapped.

Where the kernel refuses memory policies (``EPERM``: a container without ``CAP_SYS_NICE``, a
seccomp profile), a strict request raises :class:`~numamem.errors.PolicyPermissionError`, while
``policy="preferred"`` -- a wish, not a guarantee -- falls back to first touch from a thread bound to
the node's CPUs, reports where ``move_pages`` (if allowed) says the pages went, and warns
(:class:`~numamem.errors.PlacementWarning`); it never fails for the refusal.
"""
from __future__ import annotations

import itertools

import numpy as np

from numamem import _chunksource, _kernel, _topology
from numamem._blocksplit import BlockSpan, split_blocks
from numamem._capacity import CAPACITY_CHECK, capacity as _capacity_shortfall
from numamem._region import Region
from numamem._request import HUGETLB_SIZES, POOL_ALIGN, POOL_MAX_BYTES, Request, nbytes_of, resolve_align
from numamem.errors import (
    POLICY_FIX, HugePageError, NodeMemoryError, PageSizeError, PolicyPermissionError, from_place_result,
    warn_placement,
)
from numamem.pools import warn_pool_fallback

__all__ = ["allocate", "map_one_kind", "check_capacity"]

STAGGER_MIN_BYTES = 1 << 20
STAGGER_SLOTS = 16
_stagger_slots = itertools.count()
# Below this size a strict request is not compared with the node's free memory up front: reading
# the node's meminfo costs more than placing a small array, and safety does not depend on the
# check (pages are populated under MPOL_PREFERRED and verified, so a full node is an exception,
# never an OOM kill). Above it the check fails fast instead of spilling, then unmapping, a lot.
# The cgroup's headroom is compared from CGROUP_CHECK (2 MiB) up. One rule, in numamem._capacity,
# for arrays and the pools' chunk source.
CAPACITY_CHECK_BYTES = CAPACITY_CHECK


def check_capacity(req: Request, spans, page_size: int, hugetlb: int) -> None:
    """Refuse a request the node(s) or the process's cgroup cannot hold, before mapping anything.

    Pages that will be pre-faulted (``populate``) are compared with the tighter of two limits by
    the one capacity check (``numamem._capacity.capacity``, which the pools' chunk source runs too):
    from :data:`CAPACITY_CHECK_BYTES` up, the node's available memory (``MemFree`` plus inactive
    file pages) under ``bind``; from 2 MiB up and under every policy, the headroom the process's
    cgroup memory limit leaves (:mod:`numamem._cgroup`), since populating past it calls the
    cgroup's OOM killer whatever the NUMA policy. hugetlbfs pages are compared with the node's free
    huge pages.
    """
    if not req.populate and not hugetlb:
        return  # lazy placement: nothing is faulted in now
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
    total = sum(-(-span.nbytes // page_size) * page_size for span in spans)
    # The rule is the C check's (numamem._capacity.check_capacity), the pools' chunk source's too:
    # the whole request against the cgroup's headroom, each node's share under bind against it.
    where = req.node if req.node is not None else (list(req.nodes) or None)
    outcome, requested = _capacity_shortfall(total), total
    if outcome is None and req.policy == "bind":
        for node, nbytes in need.items():
            outcome, where, requested = _capacity_shortfall(nbytes, node), node, nbytes
            if outcome is not None:
                break
    if outcome is not None:
        raise from_place_result(outcome, where, requested, page_size)


def _populate(region: Region, req: Request, hugetlb: int, offset: int = 0, length: int | None = None):
    try:
        return region.populate(offset, length)
    except OSError as exc:
        node = req.node if req.node is not None else list(req.nodes) or None
        requested = region.mapped_bytes if length is None else length
        if hugetlb:
            raise HugePageError(node, requested, None, hugetlb, f"pre-faulting failed: {exc.strerror}") from None
        free = _topology.node_free_memory(req.node) if req.node is not None else None
        raise NodeMemoryError(node, requested, free, f"pre-faulting failed: {exc.strerror}") from None


def _place(region: Region, req: Request, spans, hugetlb: int) -> None:
    """Apply the policy to the region, pre-fault and verify as the request says.

    One-node policies go through the one placement routine (``Region.place``, numamem._place),
    block by block; its failures arrive as ``NodeMemoryError``/``HugePageError`` (with where the
    pages went), ``PolicyPermissionError`` or the failing call's ``OSError``.
    """
    if req.policy in ("interleave", "local"):
        _kernel.bind_range(region.address, region.mapped_bytes, req.policy, req.nodes)
        if req.populate:
            _populate(region, req, hugetlb)
        return
    for i, span in enumerate(spans):
        start = span.offset
        # The last block also owns the tail of the final page (and the page of a size-0 region).
        stop = region.mapped_bytes if i == len(spans) - 1 else span.offset + span.nbytes
        if stop <= start:
            continue
        try:
            region.place(span.node, req.policy, req.populate, start, stop - start)
        except PolicyPermissionError as refused:
            if req.policy != "preferred":
                raise
            _first_touch_fallback(region, span.node, start, stop - start, refused)


def _where_text(where: dict | None, node: int, query_errno: int) -> str:
    if where is None:
        return (f"move_pages is refused too (errno {query_errno}), so where the pages are is not "
                "verified")
    on_node = where.get(node, 0)
    total = sum(where.values())
    return f"move_pages reports {on_node} of {total} page(s) on node {node}: {where}"


def _first_touch_fallback(region: Region, node: int, offset: int, length: int,
                          refused: PolicyPermissionError) -> None:
    """Place a preferred block whose ``mbind`` was refused by first touch from the node's CPUs.

    Records what happened in ``region.info["fallback"]`` (a list, one entry per block) and warns.
    """
    # Without a policy to carry the wish, a lazy range would go wherever the caller's thread
    # first touches it: it is faulted in now, from the node's CPUs, even when populate was off.
    touched_by, where, query_errno = _chunksource.touch_range_on_node(
        region.address + offset, length, node, region.page_size)
    entry = {"node": node, "refused": refused.call, "offset": offset, "length": length,
             "touched_by": touched_by, "pages": where}
    what = f"pages were placed by first touch from {touched_by}; {_where_text(where, node, query_errno)}"
    region.info.setdefault("fallback", []).append(entry)
    warn_placement(f"policy='preferred' for node {node}: the kernel refused {refused.call} (EPERM); "
                   f"{what}. To place pages by policy, {POLICY_FIX}")


def map_one_kind(nbytes, kind, req, shape, dtype, order, topo) -> Region:
    """Map, place and verify a region for ``req`` on pages of ``kind``; raise if it cannot be had."""
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
    align = resolve_align(req.align, page_size, topo.thp_size)
    use_thp = (kind == "thp" or (kind == "auto" and topo.thp in ("always", "madvise"))) and \
        nbytes >= topo.thp_size > 0
    # Huge pages can back only 2 MiB-aligned ranges: align the mapping so they can be used.
    map_align = max(align, page_size, topo.thp_size if use_thp else 0)
    if req.nodes and req.axis is not None:
        spans = split_blocks(shape, dtype, order, req.axis, req.nodes, page_size)
    else:
        node = req.node if req.node is not None else (req.nodes[0] if req.nodes else -1)
        spans = (BlockSpan(0, node, 0, shape[0] if shape else 1, 0, nbytes),)
    check_capacity(req, spans, page_size, hugetlb)
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
        description=req.describe(kind),
    )
    return region


def allocate(shape, dtype, order, req: Request, zero: bool = False) -> np.ndarray:
    """Return a new array for a validated request: a pool block when it fits, else a mapping."""
    nbytes = nbytes_of(shape, dtype)
    if req.pool is not None and nbytes <= POOL_MAX_BYTES:
        allocation = req.pool.allocation(nbytes, zero)
        if req.policy == "preferred":
            warn_pool_fallback(req.pool)
        allocation.info = {"request": req, "pages": "auto", "alignment": POOL_ALIGN, "shape": shape}
        return allocation.ndarray(shape, dtype, order)
    topo = _topology.topology(refresh=False)
    errors = []
    for kind in req.pages:
        try:
            region = map_one_kind(nbytes, kind, req, shape, dtype, order, topo)
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
