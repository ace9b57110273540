"""The one place where numamem's failures become Python exceptions.

Low-level code never builds exception messages itself: it calls :func:`oserror` for a failed
system call (errno -> the matching ``OSError`` subclass, e.g. ``PermissionError``), and
:func:`from_place_result` for a failed placement (the one routine in ``numamem._place``, used by
regions and pools alike), which picks :class:`NodeMemoryError` / :class:`HugePageError` for
capacity (with where the pages went), :class:`PolicyPermissionError` for a refused policy call, or
the failing call's ``OSError``; :class:`PlacementError` when the kernel put pages somewhere else than
asked by a move; and ``ValueError``/``TypeError`` for bad arguments (those name the argument).

A refused memory-policy call (``EPERM`` from ``mbind``, ``set_mempolicy``, ``get_mempolicy`` or
``move_pages``: a container without ``CAP_SYS_NICE``, a seccomp filter) is always a
:class:`PolicyPermissionError`, whichever layer made the call: :func:`oserror` decides it from the
call's name, and :func:`from_place_result` goes through :func:`oserror`. Where numamem degrades
instead of raising (``policy="preferred"``, ``on_node``), it says so with a
:class:`PlacementWarning`.
"""
from __future__ import annotations

import errno as _errno
import os
import sys
import warnings

__all__ = [
    "NodeMemoryError",
    "HugePageError",
    "PlacementError",
    "PageSizeError",
    "NumaUnavailableError",
    "PolicyPermissionError",
    "PlacementWarning",
    "POLICY_CALLS",
    "POLICY_FIX",
    "warn_placement",
    "oserror",
    "from_place_result",
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
    pages : dict or None
        Where the pages went when the kernel placed some elsewhere: node (or a negative errno the
        kernel gave for a page) -> page count; None when no page was placed.
    """

    def __init__(self, node, requested, free, detail="", pages=None):
        self.node = node
        self.requested = int(requested)
        self.free = None if free is None else int(free)
        self.pages = None if pages is None else dict(pages)
        self.detail = detail
        message = (
            f"node {node} cannot hold {_mib(self.requested)} ({self.requested} bytes): "
            f"{_mib(self.free)} free"
        )
        if detail:
            message += f"; {detail}"
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.node, self.requested, self.free, self.detail, self.pages))


class HugePageError(NodeMemoryError):
    """A hugetlbfs request found too few free huge pages of that size on the node.

    ``requested`` and ``free`` are in bytes; ``page_size`` is the huge page size in bytes.
    """

    def __init__(self, node, requested, free, page_size, detail="", pages=None):
        self.page_size = int(page_size)
        pages_free = None if free is None else int(free) // self.page_size
        extra = (
            f"{pages_free} free {self.page_size // 2**20} MiB huge pages; reserve more with "
            f"/sys/devices/system/node/node{node}/hugepages/hugepages-{self.page_size // 1024}kB/nr_hugepages"
        )
        super().__init__(node, requested, free, extra + (f"; {detail}" if detail else ""), pages)
        self.detail = detail

    def __reduce__(self):
        return (type(self), (self.node, self.requested, self.free, self.page_size, self.detail, self.pages))


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


#: The system calls that set or read memory policy: the ones a container may refuse with EPERM.
POLICY_CALLS = ("mbind", "set_mempolicy", "get_mempolicy", "move_pages")

#: What to do about a refused policy call (named by every PolicyPermissionError and the doctor).
POLICY_FIX = (
    "run it with CAP_SYS_NICE (docker run --cap-add SYS_NICE, or the pod's "
    "securityContext.capabilities.add: [SYS_NICE]) or under a seccomp profile that allows mbind, "
    "set_mempolicy, get_mempolicy and move_pages"
)


def _nodes_text(node) -> str:
    if node is None:
        return ""
    if isinstance(node, (list, tuple, set, frozenset)):
        nodes = list(node)
        return f" for node {nodes[0]}" if len(nodes) == 1 else (f" for nodes {nodes}" if nodes else "")
    return f" for node {node}"


class PolicyPermissionError(PermissionError):
    """The kernel refused a memory-policy call (EPERM): placement cannot be enforced here.

    Docker's default seccomp profile and pods without ``CAP_SYS_NICE`` refuse ``mbind``,
    ``set_mempolicy`` and ``move_pages`` for other nodes. The message names the call, the node and
    the fix.

    Attributes
    ----------
    call : str
        The refused call, e.g. ``"mbind(MPOL_PREFERRED)"``.
    node : int, list of int or None
        The node (or nodes) the call was for; None when it was for none (a query).
    """

    def __init__(self, call, node, detail=""):
        self.call = call
        self.node = node
        self.detail = detail
        text = (
            f"{call}{_nodes_text(node)} was refused (EPERM): this process may not set memory "
            f"policies; {POLICY_FIX}"
        )
        if detail:
            text += f" ({detail})"
        super().__init__(_errno.EPERM, text)

    def __reduce__(self):
        return (type(self), (self.call, self.node, self.detail))

    def __str__(self):
        return self.args[1]


class PlacementWarning(UserWarning):
    """Placement went ahead without a memory policy: the kernel refused one (see the message).

    Issued, never raised, where numamem degrades rather than lose the caller's work: an engine's
    thread policy, ``policy="preferred"`` (pages placed by first touch from a thread bound to the
    node's CPUs, where they went reported from ``move_pages`` when it is allowed), and ``on_node``
    and the pools (chunks placed the same way, counted as unverified in ``pool_stats()``).
    """


def warn_placement(message: str) -> None:
    """Issue a :class:`PlacementWarning` attributed to the caller's code, not numamem's.

    The warning points at the first frame outside numamem (and ``contextlib``, for ``with
    numamem.on_node(...)``), however deep inside numamem it is raised.
    """
    level = 2  # warn_placement's caller
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not (module == "numamem" or module.startswith("numamem.") or module == "contextlib"):
            break
        frame = frame.f_back
        level += 1
    warnings.warn(message, PlacementWarning, stacklevel=level)


class PageSizeError(ValueError):
    """The page kind asked for cannot be had on this kernel (e.g. ``pages="thp"`` with THP off)."""


class NumaUnavailableError(OSError):
    """The kernel offers no NUMA memory policy interface (``get_mempolicy`` fails with ENOSYS)."""


def oserror(err: int, call: str, detail: str = "", node=None) -> OSError:
    """Return the ``OSError`` (subclass chosen by errno) for a failed system call.

    Parameters
    ----------
    err : int
        The ``errno`` value the call left.
    call : str
        The call and its main arguments, e.g. ``"mbind(node=3)"``.
    detail : str, optional
        What numamem was doing, appended to the message.
    node : int, list of int or None
        The node(s) a policy call was for, named by a :class:`PolicyPermissionError`.

    Returns
    -------
    OSError
        :class:`PolicyPermissionError` for ``EPERM`` from a policy call (:data:`POLICY_CALLS`),
        :class:`NumaUnavailableError` for ``ENOSYS``, else ``OSError`` (whose constructor picks
        the errno's subclass, e.g. ``PermissionError`` for ``EPERM`` from any other call).
    """
    if err == _errno.EPERM and call.startswith(POLICY_CALLS):
        return PolicyPermissionError(call, node, detail)
    text = f"{call}: {os.strerror(err)}"
    if detail:
        text += f" ({detail})"
    if err == _errno.ENOSYS:
        return NumaUnavailableError(err, text)
    return OSError(err, text)


# The call each step of the placement routine (numamem._place) makes.
_STEP_CALLS = {
    "map": "mmap",
    "prefer": "mbind(MPOL_PREFERRED)",
    "populate": "madvise(MADV_POPULATE_WRITE)",
    "verify": "move_pages",
    "bind": "mbind(MPOL_BIND, MPOL_MF_STRICT)",
    "misplaced": "mbind(MPOL_BIND, MPOL_MF_STRICT)",
    "capacity": "the capacity check",
}
# Errnos of a populate that mean "no memory there": ENOMEM (base pages), EFAULT (hugetlb pool
# empty), EAGAIN (memory could not be reclaimed in time), EHWPOISON-free kernels report EFAULT.
_POPULATE_SHORTAGE = {_errno.ENOMEM, _errno.EFAULT, _errno.EAGAIN}


def _histogram_text(pages: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in pages.items()) + "}"


def from_place_result(result, node, requested, page_size, hugetlb=False, free=None, what=""):
    """The exception for a failed placement (``numamem._place.PlaceOutcome``), or None if it succeeded.

    Parameters
    ----------
    result : PlaceOutcome
        What the placement routine reported: the failing step, its errno, the page histogram.
    node : int
        The node asked for.
    requested : int
        Bytes being placed.
    page_size : int
        The mapping's page size (a hugetlbfs size when ``hugetlb``).
    hugetlb : bool
        The range is hugetlbfs memory: shortages become :class:`HugePageError`.
    free : int, callable or None
        Free bytes on the node (or free huge-page bytes), or a callable returning them, read only
        when the error is a shortage.
    what : str
        What was being placed, appended to the message (e.g. ``"a pool chunk"``).

    Returns
    -------
    Exception or None
        :class:`NodeMemoryError`/:class:`HugePageError` when the node lacked memory (pages were
        found elsewhere, or populate ran out), :class:`PolicyPermissionError` when a policy call was
        refused, :class:`NumaUnavailableError` for ENOSYS, else the ``OSError`` of the failing call.
        A ``move_pages`` failure is never reported as a lack of memory.
    """
    step = result.step
    if step == "none":
        return None
    err = result.errno
    call = _STEP_CALLS.get(step, step)
    suffix = f" ({what})" if what else ""

    def shortage(detail):
        available = result.available if getattr(result, "available", None) is not None else (
            free() if callable(free) else free)
        pages = dict(result.histogram) or None
        if hugetlb:
            return HugePageError(node, requested, available, page_size, detail + suffix, pages)
        return NodeMemoryError(node, requested, available, detail + suffix, pages)

    if step == "capacity":
        # The check names the limit that was short (the node's memory or the cgroup's headroom).
        limit = getattr(result, "capacity_detail", "")
        return shortage(f"{limit}; checked before mapping" if limit else "checked before mapping")
    if step == "misplaced":
        found = dict(result.histogram)
        return shortage(f"{result.misplaced} page(s) landed elsewhere: {_histogram_text(found)}")
    if err == _errno.EPERM and step != "map":
        # Every step after the mapping is part of placing on the node (populate included: it
        # runs under the node's policy), so a refusal there is the policy's refusal.
        return PolicyPermissionError(call, node, what)
    if step == "map" and err == _errno.ENOMEM:
        return shortage(f"{call} failed: {os.strerror(err)}")
    if step == "populate" and err in _POPULATE_SHORTAGE:
        return shortage(f"pre-faulting failed: {os.strerror(err)}")
    return oserror(err, f"{call} for node {node}", what)
