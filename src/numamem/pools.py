"""Per-node pools and the scoped NumPy allocator ``on_node``.

``with numamem.on_node(k):`` installs a NEP 49 memory handler whose allocations come from node
``k``'s pool, so NumPy's own temporaries (ufunc outputs, ``np.dot`` results, sort buffers) land on
``k`` too. NumPy keeps the handler in a context variable: the choice is per thread and per asyncio
task, a new thread starts with NumPy's default, and leaving the block restores exactly the handler
that was active before. An array remembers the handler that allocated it, so it may be freed
anywhere, any time later, by any thread.

Where the kernel refuses memory policies (``EPERM`` from ``mbind``: a container without
``CAP_SYS_NICE``, a seccomp profile), ``on_node`` does not make every NumPy allocation fail: it
allocates from the node's *preferred* pool, whose kernel chunk source then places chunks by first
touch from a thread bound to the node's CPUs (``numamem._chunksource``), warns once per pool
(:class:`~numamem.errors.PlacementWarning`), and ``pool_stats()`` counts those chunks as unverified.
"""
from __future__ import annotations

import contextlib
import errno

from numamem import _chunksource, _kernel, _pool, _topology
from numamem._pool import Pool, PoolAllocation, get_pool
from numamem._request import node_id
from numamem.errors import POLICY_FIX, warn_placement

__all__ = ["on_node", "pool_stats", "release_pools", "Pool", "PoolAllocation", "get_pool", "handler_name",
           "warn_pool_fallback"]

POOL_POLICIES = ("bind", "preferred")
# Pools (node, policy) whose first-touch fallback has been warned about: once per pool.
_WARNED: set = set()


def _fallback_text(node: int, record: dict | None) -> str:
    if record is None:
        return (f"its pool's chunks are placed by first touch from a thread bound to node {node}'s CPUs, "
                "not by a policy")
    if record["unverified"]:
        checked = (f"move_pages is refused too (errno {record['query_errno']}), so "
                   f"{record['unverified']} chunk(s) are unverified")
    else:
        checked = (f"move_pages found {record['pages_elsewhere']} of {record['pages_checked']} page(s) "
                   f"off node {node}")
    return f"{record['chunks']} pool chunk(s) were placed by first touch from {record['touched_by']}; {checked}"


def warn_pool_fallback(pool: Pool, context: str = "") -> None:
    """Warn, once per pool, that the node's preferred pool placed chunks by first touch.

    Does nothing when it has not (the kernel permitted ``mbind``) or was warned about already.
    """
    key = (pool.node, pool.policy)
    if key in _WARNED or pool.source != "kernel":
        return
    record = _chunksource.fallback_stats(pool.node)
    if record is None and not context:
        return
    _WARNED.add(key)
    lead = context or f"the {pool.policy} pool of node {pool.node}"
    warn_placement(f"{lead}: the kernel refused mbind (EPERM); {_fallback_text(pool.node, record)} "
                   f"(numamem.pool_stats() counts them). To place pages by policy, {POLICY_FIX}")


def _checked_pool(node, policy: str) -> Pool:
    if policy not in POOL_POLICIES:
        raise ValueError(f"policy must be one of {POOL_POLICIES}, not {policy!r}")
    node = node_id(node, "node")
    _topology.topology(refresh=False).check_memory_node(node, "node")
    return get_pool(node, policy)


@contextlib.contextmanager
def on_node(node: int, policy: str = "bind"):
    """Place every NumPy allocation made in this block (this thread or task) on ``node``.

    Parameters
    ----------
    node : int
        A node with memory that this process may use.
    policy : {"bind", "preferred"}
        ``bind``: pool chunks are verified on the node; when the node is full an allocation fails
        with ``MemoryError`` (NumPy's, since it owns the failing call). ``preferred``: chunks go
        to the node while it has room. Where the kernel refuses ``mbind`` (a container without
        ``CAP_SYS_NICE``), either policy allocates from the preferred pool, whose chunks are then
        placed by first touch from the node's CPUs, with a :class:`~numamem.errors.PlacementWarning`.

    Yields
    ------
    Pool
        The node's pool (for its ``stats()``).

    Notes
    -----
    The scope lives in a context variable, so it follows the code's context, not the block's
    text: a generator (or coroutine) suspended inside ``with on_node(k):`` hands control back
    with the scope still installed, and its caller allocates on ``k`` until the generator resumes
    and leaves the block. Enter the scope inside each step when a generator must not lend it.
    Arrays allocated inside are numamem arrays: ``numamem.owner(a)`` is the pool.

    Examples
    --------
    >>> import numpy as np, numamem
    >>> with numamem.on_node(0):
    ...     y = np.arange(1000.0) * 2          # y and the temporary both come from node 0
    >>> numamem.pools.handler_name(y)
    'numamem_node0_bind'
    """
    pool = _checked_pool(node, policy)
    if _kernel.mbind_errno(pool.node) == errno.EPERM:
        # A container refuses memory policies: the preferred pool falls back to first touch from
        # the node's CPUs, where the bind pool could only fail every allocation of the block.
        pool = get_pool(pool.node, "preferred")
        warn_pool_fallback(pool, f"on_node({pool.node}, policy={policy!r})")
    previous = _pool.set_handler(pool.handler)
    try:
        yield pool
    finally:
        _pool.set_handler(previous)


def handler_name(array=None) -> str:
    """Name of the NEP 49 handler that allocated ``array`` (or of the current one if None)."""
    from numpy._core.multiarray import get_handler_name

    return get_handler_name() if array is None else get_handler_name(array)


def pool_stats() -> dict:
    """Per pool: bytes in use, mapped, cached, live allocations, chunks and direct mappings.

    Returns
    -------
    dict
        ``{(node, policy): {"in_use": ..., "mapped": ..., "cached": ..., ...}}``, with
        ``first_touch_chunks`` (chunks placed by first touch because the kernel refused ``mbind``;
        always 0 for ``bind`` pools, which never fall back) and ``unverified_chunks`` (of those,
        chunks whose pages ``move_pages`` could not check).
    """
    stats = {}
    for (node, policy), pool in sorted(_pool.pools().items()):
        record = _chunksource.fallback_stats(node) if policy == "preferred" else None
        stats[(node, policy)] = dict(pool.stats(), first_touch_chunks=record["chunks"] if record else 0,
                                     unverified_chunks=record["unverified"] if record else 0)
    return stats


def release_pools() -> int:
    """Return every pool chunk with nothing live in it to the kernel; return the bytes released."""
    return sum(pool.release() for pool in _pool.pools().values())
