"""Helpers shared by the benchmark modules: nodes, smoke mode, page sizes and skipping.

Smoke mode (``NUMAMEM_ASV_SMOKE=1``, set by ``tools/asv-smoke``) shrinks the large parameter
values so that every benchmark runs once in a few minutes on a small machine; the code paths are
the same, only sizes and counts are smaller. Results of a smoke run are never meant to be kept.

A case that is meaningless on this machine raises ``NotImplementedError`` in ``setup``, which asv
reports as skipped (``n/a``) rather than failed: a second node on a one-node machine, hugetlbfs
pages when the node's pool has none free, transparent huge pages when they are disabled.
"""
import functools
import os

import numamem

#: True in smoke mode: big sizes and counts are replaced by small ones.
SMOKE = os.environ.get("NUMAMEM_ASV_SMOKE", "") not in ("", "0")

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def smoke_or(full, smoke):
    """Return ``smoke`` in smoke mode, ``full`` otherwise (for parameter lists and sizes).

    Parameters
    ----------
    full, smoke : object
        The values for a measuring run and for a smoke run.

    Returns
    -------
    object
        One of the two.
    """
    return smoke if SMOKE else full


def usable_nodes():
    """Nodes with memory that this process may use, in id order.

    Returns
    -------
    list of int
    """
    topo = numamem.topology()
    return [n.id for n in topo.nodes if n.has_memory and n.id in topo.allowed_nodes]


def cpu_nodes():
    """Usable nodes that also have CPUs this process may run on (threads can be bound there).

    Returns
    -------
    list of int
    """
    topo = numamem.topology()
    allowed = set(topo.allowed_cpus)
    return [n for n in usable_nodes() if allowed.intersection(topo.node(n).cpus)]


def first_node():
    """The first usable node (every benchmark runs at least there).

    Returns
    -------
    int
    """
    return usable_nodes()[0]


@functools.lru_cache(maxsize=None)
def node0():
    """:func:`first_node`, looked up once per process.

    For timed code and for setups that asv re-runs before every timed call: a topology read
    (sysfs) there would cost time and evict the caches the measurement relies on.

    Returns
    -------
    int
    """
    return first_node()


def second_node():
    """A usable node other than :func:`first_node`.

    Returns
    -------
    int

    Raises
    ------
    NotImplementedError
        On a machine with one usable node: asv then skips the case.
    """
    nodes = usable_nodes()
    if len(nodes) < 2:
        raise NotImplementedError("needs a second NUMA node")
    return nodes[1]


@functools.lru_cache(maxsize=None)
def require_pages(pages, nbytes, node):
    """Skip (``NotImplementedError``) when page kind ``pages`` cannot back ``nbytes`` on ``node``.

    Parameters
    ----------
    pages : str
        A numamem page kind: ``"auto"``, ``"4k"``, ``"thp"``, ``"2M"`` or ``"1G"``.
    nbytes : int
        Size of the allocation.
    node : int
        Node the allocation is bound to.

    Raises
    ------
    NotImplementedError
        THP asked while disabled, or hugetlbfs pages asked while the node's pool has too few free.

    Notes
    -----
    Checked once per process and arguments (cached), so that re-run setups stay cheap.
    """
    topo = numamem.topology(refresh=True)
    if pages == "thp" and topo.thp == "never":
        raise NotImplementedError("transparent huge pages are disabled")
    sizes = {"2M": 2 * MiB, "1G": GiB}
    if pages in sizes:
        size = sizes[pages]
        pool = topo.node(node).hugepages.get(size)
        needed = -(-nbytes // size)
        if pool is None or pool.free < needed:
            raise NotImplementedError(f"node {node} has fewer than {needed} free {pages} hugetlbfs pages")


def thp_fraction(array):
    """Fraction of ``array``'s bytes that the kernel backs with transparent huge pages.

    Read from ``/proc/self/smaps`` (``AnonHugePages`` of the mappings the array spans), so it works
    for NumPy's own arrays as well as numamem's. Only whole huge pages inside a mapping count: a
    mapping that begins or ends off a 2 MiB boundary has its ends on 4 KiB pages.

    The kernel merges adjacent anonymous mappings with the same flags and policy into one, and
    smaps reports huge pages per mapping, not per address range: each mapping's count is clipped
    to the bytes it shares with the array, so the result is exact for an array alone in its
    mapping and an upper bound otherwise.

    Parameters
    ----------
    array : numpy.ndarray
        A C-contiguous array.

    Returns
    -------
    float
        Between 0 and 1.
    """
    start = array.__array_interface__["data"][0]
    stop = start + array.nbytes
    total = 0
    overlap = 0
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            field = line.split(None, 1)[0]
            if "-" in field and not field.endswith(":"):
                low, high = (int(x, 16) for x in field.split("-"))
                overlap = max(0, min(high, stop) - max(low, start))
            elif overlap and field == "AnonHugePages:":
                total += min(int(line.split()[1]) * 1024, overlap)
    return min(total / array.nbytes, 1.0) if array.nbytes else 0.0
