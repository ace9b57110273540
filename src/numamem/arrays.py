"""NumPy arrays on chosen NUMA nodes, with verified placement, alignment and page sizes.

Every creator here returns a plain :class:`numpy.ndarray` whose memory has a numamem owner
(:func:`numamem.owner`): ``arr.base`` is an export (:class:`~numamem._ndarray.Export`) of a
:class:`~numamem._region.Region` (a mapping of its own) or of a :class:`~numamem._pool.PoolAllocation`
(a block of a node's pool, for small arrays). This module is the thin public layer; the work is done
below it:

- :mod:`numamem._fast` serves the common call of ``empty``/``zeros`` (a small array, a request met
  before) in one Cython call, and hands every other call to the functions here;

- :mod:`numamem._request` checks every argument before anything is mapped (``Request``);
- :mod:`numamem._placement` chooses the page kind, checks capacity and runs the strict sequence
  (map, prefer, populate, verify, bind) that keeps a full node an exception, never an OOM kill;
- :mod:`numamem._blocksplit` splits an array over nodes (``nodes=[...]``, ``axis=``);
- :mod:`numamem.inspect` says where the pages are (``page_nodes``, ``placement``) and moves them.
"""
from __future__ import annotations

import numpy as np

from numamem._fast import fast_path
from numamem._placement import allocate
from numamem._request import DEFAULT_ALIGN, Request, check_dtype, check_order, check_shape, request
from numamem.inspect import owner, request_of

__all__ = [
    "empty", "zeros", "ones", "full", "empty_like", "zeros_like", "ones_like", "full_like", "asarray",
]


@fast_path(zero=False)
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
        Its ``.base`` is an export (``.base.obj``) of the owning :class:`~numamem._region.Region`
        or :class:`~numamem._pool.PoolAllocation` (:func:`numamem.owner`).

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
    # The common call (a small array of a request met before) never gets here: @fast_path
    # serves it in one Cython call (numamem._fast). This is the general path.
    return _create(shape, dtype, order, node, nodes, axis, policy, align, pages, populate, zero=False)


def _create(shape, dtype, order, node, nodes, axis, policy, align, pages, populate, zero):
    shape = check_shape(shape)
    dtype = check_dtype(dtype)
    order = check_order(order)
    req = request(node, nodes, axis, policy, align, pages, populate)
    return allocate(shape, dtype, order, req, zero)


@fast_path(zero=True)
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
    order = check_order(order, allow_keep=True)
    if order in ("A", "K"):
        order = "F" if prototype.flags.f_contiguous and not prototype.flags.c_contiguous else "C"
    shape = prototype.shape if shape is None else shape
    if not any(key in placement_kw for key in ("node", "nodes", "policy")):
        # Without placement keywords, a numamem prototype lends its own placement.
        own = owner(prototype)
        req = request_of(own)
        if req is None:
            what = "not numamem memory" if own is None else f"a {type(own).__name__} no numamem creator placed"
            raise ValueError(f"{type(prototype).__name__} is {what}: give node= (or nodes=/policy=)")
        lent = dict(node=req.node, nodes=req.nodes or None, policy=req.policy, pages=req.pages,
                    align=req.align, populate=req.populate)
        if req.axis is not None and req.nodes:
            lent["axis"] = _lent_axis(own, req, check_shape(shape), order)
        placement_kw = {**lent, **placement_kw}
    return shape, dtype, order, placement_kw


def _lent_axis(own, req: Request, shape: tuple[int, ...], order: str) -> int:
    """The split axis a block-split prototype lends to a new array of ``shape`` and ``order``.

    Its own axis while the geometry is the created array's; for any other shape or layout (a
    transpose, a reshape, ``shape=``) the outermost axis of the new layout, the one axis along
    which blocks are always contiguous, rather than an axis the caller never gave.
    """
    if shape == own.info.get("shape") and order == own.info.get("order"):
        return req.axis
    return 0 if order == "C" else len(shape) - 1


def empty_like(prototype, dtype=None, order="K", *, shape=None, **placement_kw) -> np.ndarray:
    """Return an uninitialised array like ``prototype`` (shape, dtype, order), placed as asked.

    Without ``node``/``nodes``/``policy``, a numamem prototype's placement is reused (keywords
    given, such as ``pages=``, override it). A block-split prototype lends its nodes, and its split
    axis while the new array has the prototype's shape and layout; otherwise (a transpose, a new
    ``shape``) the new array is split along the outermost axis of its own layout, the axis along
    which blocks are always contiguous. An array made inside :func:`numamem.on_node` lends the
    scope's node and policy.
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
    ``a`` was (a list, a NumPy array on another node, a numamem array); :func:`numamem.migrate` moves an
    existing numamem array's pages instead.
    """
    source = np.asarray(a, dtype=dtype)
    shape, dtype, order, placement_kw = _like(source, dtype, order, None, placement_kw)
    array = empty(shape, dtype, order, **placement_kw)
    np.copyto(array, source, casting="unsafe")
    return array
