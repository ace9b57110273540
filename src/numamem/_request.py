"""Placement requests: every argument check of the creators, made before anything is mapped.

A :class:`Request` is the validated, hashable form of the placement keywords (``node``, ``nodes``,
``axis``, ``policy``, ``align``, ``pages``, ``populate``). Validation is pure given a topology
snapshot, so :func:`request` memoises it: the creators' hot path then costs one dict lookup.
:mod:`numamem.pools` and :mod:`numamem.threads` use the same node-id rule (:func:`node_id`).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import numpy as np

from numamem import _topology
from numamem._pool import BLOCK_ALIGN, get_pool

__all__ = [
    "POLICIES", "PAGE_KINDS", "HUGETLB_SIZES", "POOL_MAX_BYTES", "POOL_ALIGN", "DEFAULT_ALIGN",
    "Request", "request", "validate_request", "check_shape", "check_dtype", "nbytes_of", "check_order",
    "page_kinds", "resolve_align", "node_id",
]

POLICIES = ("bind", "preferred", "interleave", "local")
PAGE_KINDS = ("auto", "4k", "thp", "2M", "1G")
HUGETLB_SIZES = {"2M": 2 * 2**20, "1G": 2**30}
# Arrays up to this size come from the node's pool (see pools.py) when nothing about the request
# needs a mapping of its own: no block split, default page kind, alignment the pool guarantees.
POOL_MAX_BYTES = 1 << 20
POOL_ALIGN = BLOCK_ALIGN
DEFAULT_ALIGN = 64


def check_shape(shape) -> tuple[int, ...]:
    """Return ``shape`` as a tuple of non-negative ints, or raise naming it."""
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


def check_dtype(dtype) -> np.dtype:
    """Return the NumPy dtype numamem will place, refusing dtypes holding Python objects."""
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


def nbytes_of(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype``; ``ValueError`` beyond the address space."""
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > _MAX_BYTES:
        raise ValueError(f"shape {shape} of {dtype} needs {nbytes} bytes, more than this platform can address")
    return nbytes


def check_order(order: str, allow_keep: bool = False) -> str:
    """Return ``order`` upper-cased: ``C``/``F`` (and ``A``/``K`` with ``allow_keep``)."""
    allowed = ("C", "F", "A", "K") if allow_keep else ("C", "F")
    if not isinstance(order, str) or order.upper() not in allowed:
        raise ValueError(f"order must be one of {', '.join(map(repr, allowed))}, not {order!r}")
    return order.upper()


def page_kinds(pages) -> tuple[str, ...]:
    """Return the page kinds to try, in order, from ``pages`` (a kind or a sequence of kinds)."""
    if isinstance(pages, str):
        kinds = (pages,)
    else:
        try:
            kinds = tuple(pages)
        except TypeError:
            raise TypeError(f"pages must be one of {PAGE_KINDS} or a sequence of them, not {pages!r}") from None
    if not kinds:
        raise ValueError("pages must name at least one page kind")
    for kind in kinds:
        if kind not in PAGE_KINDS:
            raise ValueError(f"pages must be one of {PAGE_KINDS} (or a sequence of them to try in order), not {kind!r}")
    return kinds


def resolve_align(align, page_size: int, thp_size: int) -> int:
    """Return the alignment in bytes that ``align`` means for pages of ``page_size``."""
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


def node_id(value, argname: str) -> int:
    """Return ``value`` as a node id (an int or NumPy integer, not a bool), or raise naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argname} must be an int node id, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class Request:
    """A validated placement request (kept in the owner's ``info['request']``)."""

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

    def describe(self, kind: str) -> str:
        """One line saying where the memory goes and on which page kind (``Region`` repr)."""
        if self.policy == "local":
            where = "local"
        elif self.axis is not None and self.nodes:
            where = f"split over nodes {list(self.nodes)} along axis {self.axis}"
        elif self.policy == "interleave":
            where = f"interleaved over {list(self.nodes)}"
        else:
            where = f"{self.policy} node {self.node}"
        return f"{where}, pages={kind}"


_REQUEST_CACHE: dict = {}
_SIMPLE_CACHE: dict = {}


def request(node, nodes, axis, policy, align, pages, populate) -> Request:
    """Validate a placement request, memoised per topology snapshot (validation is pure).

    The memo keys on each argument's exact type as well as its value: ``False == 0``,
    ``0.0 == 0`` and ``True == 1`` hash alike, and an earlier valid call must not make a refused
    spelling pass. Iterables are read once, here, so a generator given as ``nodes`` or ``pages``
    reaches validation whole.
    """
    topo = _topology.topology(refresh=False)
    if (nodes is None and axis is None and populate is None and type(node) is int and type(align) is int
            and type(pages) is str and type(policy) is str):
        # The common call (empty(n, node=k)): every argument of an exact builtin type, so the
        # values alone are an unambiguous key. Worth its own path on the creators' hot path.
        key = (node, align, pages, policy)
        cached = _SIMPLE_CACHE.get(key)
        if cached is not None and cached[0] is topo:
            return cached[1]
        req = validate_request(node, nodes, axis, policy, align, pages, populate)
        if len(_SIMPLE_CACHE) > 256:
            _SIMPLE_CACHE.clear()  # cleared, never rebound: numamem._fast reads this dict
        # (snapshot, request, pool): the creators' fast path (numamem._fast) takes the pool from here.
        _SIMPLE_CACHE[key] = (topo, req, req.pool)
        return req
    if nodes is not None and not isinstance(nodes, (tuple, int, np.integer)):
        try:
            nodes = tuple(nodes)
        except TypeError:
            pass  # validation names the argument
    if not isinstance(pages, (str, tuple)):
        try:
            pages = tuple(pages)
        except TypeError:
            pass
    try:
        key = (type(node), node, type(axis), axis, type(align), align, type(populate), populate,
               type(policy), policy,
               (str, pages) if isinstance(pages, str) else tuple((type(kind), kind) for kind in pages),
               None if nodes is None else tuple((type(n), n) for n in nodes))
        cached = _REQUEST_CACHE.get(key)
    except TypeError:  # unhashable or non-iterable arguments: validate to name the problem
        key = cached = None
    if cached is not None and cached[0] is topo:
        return cached[1]
    req = validate_request(node, nodes, axis, policy, align, pages, populate)
    if key is not None:
        if len(_REQUEST_CACHE) > 256:
            _REQUEST_CACHE.clear()
        _REQUEST_CACHE[key] = (topo, req)
    return req


def validate_request(node, nodes, axis, policy, align, pages, populate) -> Request:
    """Check every placement keyword against the topology snapshot; return the :class:`Request`."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    topo = _topology.topology(refresh=False)
    kinds = page_kinds(pages)
    if node is not None:
        node = node_id(node, "node")
    if nodes is not None:
        if isinstance(nodes, (int, np.integer, str, bytes)):
            raise TypeError("nodes must be a sequence of node ids, e.g. nodes=[0, 1]")
        try:
            nodes = tuple(nodes)
        except TypeError:
            raise TypeError(f"nodes must be a sequence of node ids, e.g. nodes=[0, 1], not {nodes!r}") from None
        nodes = tuple(node_id(n, "nodes") for n in nodes)
        if not nodes:
            raise ValueError("nodes must not be empty")
        if len(set(nodes)) != len(nodes) and policy == "interleave":
            raise ValueError(f"nodes {list(nodes)} lists a node twice")
    if axis is not None:
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"axis must be an int, not {axis!r}")
        axis = int(axis)
        if nodes is None:
            raise ValueError("axis= splits an array over nodes= and needs a nodes list")
    if populate is not None and not isinstance(populate, (bool, np.bool_)):
        raise TypeError(f"populate must be True, False or None, not {populate!r}")

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
        topo.check_memory_node(n, "node" if node is not None else "nodes")
    if populate is None:
        # Strict placements and hugetlb pages are pre-faulted: a shortfall is then an exception now,
        # not an OOM kill or a SIGBUS at first touch.
        populate = policy == "bind" or any(kind in HUGETLB_SIZES for kind in kinds)
    resolve_align(align, topo.base_page_size, topo.thp_size)  # validate before mapping
    pool = None
    if (policy in ("bind", "preferred") and node is not None and kinds == ("auto",)
            and isinstance(align, (int, np.integer)) and align <= POOL_ALIGN and (populate or policy == "preferred")):
        pool = get_pool(node, policy)
    return Request(policy, node, tuple(nodes) if nodes is not None else (), axis, align, kinds, bool(populate), pool)
