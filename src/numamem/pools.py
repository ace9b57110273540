"""Per-node pools and the scoped NumPy allocator ``on_node``.

``with numamem.on_node(k):`` installs a NEP 49 memory handler whose allocations come from node
``k``'s pool, so NumPy's own temporaries (ufunc outputs, ``np.dot`` results, sort buffers) land on
``k`` too. NumPy keeps the handler in a context variable: the choice is per thread and per asyncio
task, a new thread starts with NumPy's default, and leaving the block restores exactly the handler
that was active before. An array remembers the handler that allocated it, so it may be freed
anywhere, any time later, by any thread.
"""
from __future__ import annotations

import contextlib

from numamem import _pool, _topology
from numamem._pool import Pool, PoolAllocation, get_pool
from numamem._request import node_id

__all__ = ["on_node", "pool_stats", "release_pools", "Pool", "PoolAllocation", "get_pool", "handler_name"]

POOL_POLICIES = ("bind", "preferred")


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
        to the node while it has room.

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
        ``{(node, policy): {"in_use": ..., "mapped": ..., "cached": ..., ...}}``
    """
    return {key: pool.stats() for key, pool in sorted(_pool.pools().items())}


def release_pools() -> int:
    """Return every pool chunk with nothing live in it to the kernel; return the bytes released."""
    return sum(pool.release() for pool in _pool.pools().values())
