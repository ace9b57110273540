"""The one place where numamem's failures become Python exceptions.

Low-level code never builds exception messages itself: it calls :func:`oserror` for a failed
system call (errno -> the matching ``OSError`` subclass, e.g. ``PermissionError``), raises
:class:`NodeMemoryError` / :class:`HugePageError` for capacity, :class:`PlacementError` when the
kernel put pages somewhere else than asked, and ``ValueError``/``TypeError`` for bad arguments
(those name the argument).
"""
from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "NodeMemoryError",
    "HugePageError",
    "PlacementError",
    "PageSizeError",
    "NumaUnavailableError",
    "oserror",
]


def _mib(nbytes: int | None) -> str:
    if nbytes is None:
        return "unknown"
    return f"{nbytes / 2**20:.1f} MiB"


class NodeMemoryError(MemoryError):
    """A node lacks the memory for a request.

    Attributes
    ----------
    node : int or None
        The node that could not hold the request.
    requested : int
        Bytes asked for (rounded to whole pages).
    free : int or None
        Bytes the kernel reported free on that node when the request was checked.
    """

    def __init__(self, node, requested, free, detail=""):
        self.node = node
        self.requested = int(requested)
        self.free = None if free is None else int(free)
        message = (
            f"node {node} cannot hold {_mib(self.requested)} ({self.requested} bytes): "
            f"{_mib(self.free)} free"
        )
        if detail:
            message += f"; {detail}"
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.node, self.requested, self.free))


class HugePageError(NodeMemoryError):
    """A hugetlbfs request found too few free huge pages of that size on the node.

    ``requested`` and ``free`` are in bytes; ``page_size`` is the huge page size in bytes.
    """

    def __init__(self, node, requested, free, page_size, detail=""):
        self.page_size = int(page_size)
        pages_free = None if free is None else int(free) // self.page_size
        extra = (
            f"{pages_free} free {self.page_size // 2**20} MiB huge pages; reserve more with "
            f"/sys/devices/system/node/node{node}/hugepages/hugepages-{self.page_size // 1024}kB/nr_hugepages"
        )
        super().__init__(node, requested, free, extra + (f"; {detail}" if detail else ""))

    def __reduce__(self):
        return (type(self), (self.node, self.requested, self.free, self.page_size))


class PlacementError(RuntimeError):
    """The kernel placed pages on other nodes than the ones asked for.

    Attributes
    ----------
    expected : tuple of int
        The node(s) the pages had to be on.
    found : dict
        Page count per node actually observed (negative keys are errno values of
        pages the kernel reported without a node).
    """

    def __init__(self, expected, found, detail=""):
        self.expected = tuple(expected)
        self.found = dict(found)
        message = f"pages expected on node(s) {list(self.expected)} but found {self.found}"
        if detail:
            message += f": {detail}"
        super().__init__(message)


class PageSizeError(ValueError):
    """The page kind asked for cannot be had on this kernel (e.g. ``pages="thp"`` with THP off)."""


class NumaUnavailableError(OSError):
    """The kernel offers no NUMA memory policy interface (``get_mempolicy`` fails with ENOSYS)."""


def oserror(err: int, call: str, detail: str = "") -> OSError:
    """Return the ``OSError`` (subclass chosen by errno) for a failed system call.

    Parameters
    ----------
    err : int
        The ``errno`` value the call left.
    call : str
        The call and its main arguments, e.g. ``"mbind(node=3)"``.
    detail : str, optional
        What numamem was doing, appended to the message.
    """
    text = f"{call}: {os.strerror(err)}"
    if detail:
        text += f" ({detail})"
    if err == _errno.ENOSYS:
        return NumaUnavailableError(err, text)
    return OSError(err, text)
