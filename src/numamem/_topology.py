"""The machine's NUMA topology, read from the kernel's own files.

Everything comes from sysfs (``/sys/devices/system/node``, ``/sys/kernel/mm``) and
``/proc/self/status`` — the same sources libnuma reads — so that node ids may be sparse, CPU-less
and memory-less nodes appear as they are, and tests can point ``sysfs_root``/``proc_status`` at a
fabricated tree to describe machines this one is not.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Node", "HugePagePool", "Topology", "topology", "parse_cpulist"]

SYSFS = "/sys"
PROC_STATUS = "/proc/self/status"


def parse_cpulist(text: str) -> tuple[int, ...]:
    """Parse a kernel list such as ``"0-3,8,10-11"`` into a sorted tuple of ints.

    Examples
    --------
    >>> parse_cpulist("0-2,5")
    (0, 1, 2, 5)
    >>> parse_cpulist("")
    ()
    """
    values: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-", 1)
            # Ranges may carry a stride ("0-15:2") in some kernels' cpulists.
            step = 1
            if ":" in high:
                high, stride = high.split(":", 1)
                step = int(stride)
            values.update(range(int(low), int(high) + 1, step))
        else:
            values.add(int(part))
    return tuple(sorted(values))


@dataclass(frozen=True)
class HugePagePool:
    """hugetlbfs pages of one size on one node: ``total`` reserved, ``free`` of them unused."""

    page_size: int
    total: int
    free: int

    @property
    def free_bytes(self) -> int:
        """Bytes available in free pages."""
        return self.free * self.page_size


@dataclass(frozen=True)
class Node:
    """One NUMA node.

    Attributes
    ----------
    id : int
        The kernel's node id (ids may be sparse).
    cpus : tuple of int
        CPUs of the node (empty for a CPU-less memory node, e.g. a CXL expander).
    mem_total, mem_free : int
        Bytes of memory, from the node's ``meminfo`` at the time of reading.
    hugepages : dict
        Page size in bytes -> :class:`HugePagePool`.
    """

    id: int
    cpus: tuple[int, ...]
    mem_total: int
    mem_free: int
    hugepages: dict = field(default_factory=dict)

    @property
    def has_memory(self) -> bool:
        """True if memory can be placed on the node."""
        return self.mem_total > 0

    @property
    def has_cpus(self) -> bool:
        """True if threads can run on the node."""
        return bool(self.cpus)


@dataclass(frozen=True)
class Topology:
    """A snapshot of the NUMA topology.

    Attributes
    ----------
    nodes : tuple of Node
        Online nodes in id order.
    distances : dict
        ``(a, b) -> distance`` as the firmware reports it (10 = local).
    allowed_nodes : frozenset of int
        Nodes this process may place memory on (its cpuset's ``Mems_allowed``).
    allowed_cpus : frozenset of int
        CPUs this process may run on (its cpuset's ``Cpus_allowed``).
    thp : str
        Transparent huge page mode: ``"always"``, ``"madvise"``, ``"never"`` or ``"unsupported"``.
    thp_size : int
        Size of a transparent huge page in bytes (0 where unsupported).
    base_page_size : int
        The base page size.
    numa : bool
        False when the kernel exposes no NUMA nodes (then one node 0 stands for the machine).
    """

    nodes: tuple[Node, ...]
    distances: dict
    allowed_nodes: frozenset
    allowed_cpus: frozenset
    thp: str
    thp_size: int
    base_page_size: int
    numa: bool = True

    @property
    def node_ids(self) -> tuple[int, ...]:
        """Ids of the online nodes, ascending."""
        return tuple(node.id for node in self.nodes)

    def node(self, node_id: int) -> Node:
        """Return the node with this id.

        Raises
        ------
        ValueError
            If there is no such node.
        """
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise ValueError(f"node {node_id} does not exist; nodes are {list(self.node_ids)}")

    def check_memory_node(self, node: int, what: str = "node") -> Node:
        """Return node ``node`` if memory may be placed on it here, else raise ``ValueError``.

        The one rule for "may this process place memory on this node": the node exists, has
        memory, and the cpuset's ``Mems_allowed`` includes it. ``what`` names the argument in
        the message (``"node"``, ``"nodes"``, ``"--nodes"``).
        """
        if node not in self.node_ids:
            raise ValueError(f"{what}={node}: no such node; nodes are {list(self.node_ids)}")
        info = self.node(node)
        if not info.has_memory:
            raise ValueError(f"{what}={node}: node {node} has no memory")
        if node not in self.allowed_nodes:
            raise ValueError(
                f"{what}={node}: node {node} is not allowed by this process's cpuset "
                f"(Mems_allowed: {sorted(self.allowed_nodes)})")
        return info

    def usable_cpus(self, node: int) -> frozenset:
        """CPUs of ``node`` this process may run on (empty for a memory-only node)."""
        return frozenset(self.node(node).cpus) & self.allowed_cpus

    def check_cpu_node(self, node: int, what: str = "node") -> frozenset:
        """Return the CPUs of ``node`` this process may run on, or raise ``ValueError``.

        The one rule for "may a thread run on this node": the node exists, has CPUs, and the
        cpuset's ``Cpus_allowed`` includes at least one of them.
        """
        if node not in self.node_ids:
            raise ValueError(f"{what}={node}: no such node; nodes are {list(self.node_ids)}")
        info = self.node(node)
        if not info.has_cpus:
            raise ValueError(f"{what}={node}: node {node} has no CPUs to run a thread on (a memory-only node)")
        cpus = self.usable_cpus(node)
        if not cpus:
            raise ValueError(f"{what}={node}: none of node {node}'s CPUs {list(info.cpus)} "
                             f"is allowed by this process's cpuset")
        return cpus

    def memory_nodes(self) -> list[int]:
        """Nodes with memory that this process may place memory on, ascending."""
        return [n.id for n in self.nodes if n.has_memory and n.id in self.allowed_nodes]

    def distance(self, a: int, b: int) -> int:
        """Firmware distance between nodes ``a`` and ``b`` (10 = local)."""
        try:
            return self.distances[(a, b)]
        except KeyError:
            self.node(a), self.node(b)  # name the missing node
            raise

    def hugepage_sizes(self) -> tuple[int, ...]:
        """Every hugetlbfs page size the kernel offers, ascending."""
        return tuple(sorted({size for node in self.nodes for size in node.hugepages}))

    def to_dict(self) -> dict:
        """A JSON-ready dictionary (what ``numamem topology --json`` prints)."""
        ids = self.node_ids
        return {
            "numa": self.numa,
            "base_page_size": self.base_page_size,
            "transparent_hugepages": {"mode": self.thp, "size": self.thp_size},
            "allowed_nodes": sorted(self.allowed_nodes),
            "allowed_cpus": sorted(self.allowed_cpus),
            "nodes": [
                {
                    "id": node.id,
                    "cpus": list(node.cpus),
                    "mem_total": node.mem_total,
                    "mem_free": node.mem_free,
                    "hugepages": {
                        str(size): {"total": pool.total, "free": pool.free}
                        for size, pool in sorted(node.hugepages.items())
                    },
                }
                for node in self.nodes
            ],
            "distances": [[self.distances.get((a, b)) for b in ids] for a in ids],
        }


def _read(path: Path, default: str | None = None) -> str:
    try:
        return path.read_text()
    except OSError:
        if default is None:
            raise
        return default


_MEMINFO = re.compile(r"^Node\s+\d+\s+(MemTotal|MemFree):\s+(\d+)\s*kB", re.MULTILINE)


def _node_meminfo(node_dir: Path) -> tuple[int, int]:
    # Lines look like "Node 0 MemTotal:       24512345 kB".
    values = {key: int(kib) * 1024 for key, kib in _MEMINFO.findall(_read(node_dir / "meminfo", ""))}
    return values.get("MemTotal", 0), values.get("MemFree", 0)


def _hugepage_pools(node_dir: Path) -> dict:
    pools = {}
    directory = node_dir / "hugepages"
    if not directory.is_dir():
        return pools
    for entry in sorted(directory.iterdir()):
        match = re.fullmatch(r"hugepages-(\d+)kB", entry.name)
        if not match:
            continue
        size = int(match.group(1)) * 1024
        total = int(_read(entry / "nr_hugepages", "0").strip() or 0)
        free = int(_read(entry / "free_hugepages", "0").strip() or 0)
        pools[size] = HugePagePool(size, total, free)
    return pools


def _status_list(proc_status: str, key: str) -> tuple[int, ...] | None:
    for line in _read(Path(proc_status), "").splitlines():
        if line.startswith(key + ":"):
            return parse_cpulist(line.split(":", 1)[1])
    return None


def _thp(sysfs: Path) -> tuple[str, int]:
    enabled = _read(sysfs / "kernel/mm/transparent_hugepage/enabled", "")
    match = re.search(r"\[(\w+)\]", enabled)
    if not match:
        return "unsupported", 0
    size = int(_read(sysfs / "kernel/mm/transparent_hugepage/hpage_pmd_size", "2097152").strip() or 0)
    return match.group(1), size


def read_topology(sysfs_root: str = SYSFS, proc_status: str = PROC_STATUS) -> Topology:
    """Read the topology now from ``sysfs_root`` and ``proc_status`` (see :func:`topology`)."""
    sysfs = Path(sysfs_root)
    node_root = sysfs / "devices/system/node"
    base_page = os.sysconf("SC_PAGE_SIZE")
    thp_mode, thp_size = _thp(sysfs)
    allowed_cpus = _status_list(proc_status, "Cpus_allowed_list")
    if allowed_cpus is None:
        allowed_cpus = tuple(sorted(os.sched_getaffinity(0)))

    online = _read(node_root / "online", "") if node_root.is_dir() else ""
    if not online.strip():
        # A kernel without NUMA: the whole machine is node 0.
        total = free = 0
        for line in _read(Path("/proc/meminfo"), "").splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
            elif line.startswith("MemFree:"):
                free = int(line.split()[1]) * 1024
        cpus = tuple(range(os.cpu_count() or 1))
        return Topology(
            nodes=(Node(0, cpus, total, free, {}),),
            distances={(0, 0): 10},
            allowed_nodes=frozenset({0}),
            allowed_cpus=frozenset(allowed_cpus),
            thp=thp_mode,
            thp_size=thp_size,
            base_page_size=base_page,
            numa=False,
        )

    ids = parse_cpulist(online)
    nodes = []
    distances = {}
    for node_id in ids:
        node_dir = node_root / f"node{node_id}"
        cpus = parse_cpulist(_read(node_dir / "cpulist", ""))
        total, free = _node_meminfo(node_dir)
        nodes.append(Node(node_id, cpus, total, free, _hugepage_pools(node_dir)))
        # The distance row lists every online node in id order.
        row = [int(value) for value in _read(node_dir / "distance", "").split()]
        for other, value in zip(ids, row):
            distances[(node_id, other)] = value
    allowed_nodes = _status_list(proc_status, "Mems_allowed_list")
    if allowed_nodes is None:
        allowed_nodes = ids
    return Topology(
        nodes=tuple(nodes),
        distances=distances,
        allowed_nodes=frozenset(allowed_nodes) & frozenset(ids),
        allowed_cpus=frozenset(allowed_cpus),
        thp=thp_mode,
        thp_size=thp_size,
        base_page_size=base_page,
        numa=True,
    )


_cache_lock = threading.Lock()
_cached: Topology | None = None


def _reinit_after_fork() -> None:
    # A fork copies only the forking thread: a lock another thread held at that moment (reading
    # sysfs in topology()) stays held forever in the child, whose next topology() then hangs.
    # The child gets a fresh lock; the snapshot stays (it is replaced whole, never half-written).
    global _cache_lock
    _cache_lock = threading.Lock()


os.register_at_fork(after_in_child=_reinit_after_fork)


def topology(refresh: bool = True) -> Topology:
    """Return the NUMA topology of this machine.

    Parameters
    ----------
    refresh : bool, default True
        Read the kernel's files now (free memory and hugepage counts change all the time).
        ``refresh=False`` returns the snapshot from the last read, which numamem uses to validate
        node ids and CPU lists cheaply on every allocation.

    Returns
    -------
    Topology

    Examples
    --------
    >>> import numamem
    >>> topo = numamem.topology()
    >>> 0 in topo.node_ids or not topo.numa
    True
    """
    global _cached
    snapshot = _cached
    if not refresh and snapshot is not None:
        return snapshot  # the hot path of every allocation: no lock for a read of one reference
    if type(refresh) is not bool and type(refresh).__name__ != "bool_":
        raise TypeError(f"refresh must be True or False, not {refresh!r}")
    with _cache_lock:
        if refresh or _cached is None:
            _cached = read_topology()
        return _cached


def node_free_memory(node_id: int) -> int:
    """Bytes free on ``node_id`` right now (the node's ``MemFree``)."""
    node_dir = Path(SYSFS) / "devices/system/node" / f"node{node_id}"
    if not node_dir.is_dir():
        return topology(refresh=True).node(node_id).mem_free
    return _node_meminfo(node_dir)[1]


def node_hugepages(node_id: int, page_size: int) -> HugePagePool:
    """The node's hugetlbfs pool of ``page_size`` pages right now (zero pages if none exist)."""
    pools = _hugepage_pools(Path(SYSFS) / "devices/system/node" / f"node{node_id}")
    return pools.get(page_size, HugePagePool(page_size, 0, 0))
