"""The memory limit of the process's cgroup: what a container lets it fault in before the OOM killer.

A node with gigabytes free is no help inside a container limited to less: pre-faulting past the
cgroup's limit calls the memory cgroup's OOM killer, whatever the NUMA policy. The capacity check
(:func:`numamem._placement.check_capacity`) therefore compares a request with the tighter of the
node's available memory and :func:`cgroup_memory`'s headroom.

The process's cgroup comes from ``/proc/self/cgroup``: ``0::/path`` for cgroup v2, a line naming
the ``memory`` controller for v1 (which wins on a hybrid host, where v1 holds the controller). The
limit is read at that cgroup and every ancestor up to the mount point, since any of them may be the
tighter one: v2 ``memory.max`` (``max`` is none) and ``memory.current``; v1
``memory.limit_in_bytes`` (about 2**63 is none) and ``memory.usage_in_bytes``. The usage counts the
cgroup's page cache, which it would reclaim before an OOM kill: the headroom is a lower estimate.

The roots are parameters so tests can fabricate a tree (as :func:`numamem._topology.read_topology`
takes a sysfs root).

The capacity check itself is C (``numamem._capacity.check_capacity``, run by arrays and the pools'
chunk source alike, without Python): :func:`limit_files` resolves once which files it reads, and
``numamem._capacity.use_limits`` hands them to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupMemory", "cgroup_memory", "limit_files"]

PROC_SELF_CGROUP = "/proc/self/cgroup"
CGROUP_FS = "/sys/fs/cgroup"
#: v1 reports "no limit" as PAGE_COUNTER_MAX pages (0x7ffffffffffff000 with 4 KiB pages).
_V1_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class CgroupMemory:
    """The tightest memory limit over the process's cgroup and its ancestors.

    Attributes
    ----------
    path : str
        Directory of the cgroup whose limit leaves the least headroom.
    limit, usage : int
        Its limit and current usage in bytes.
    version : int
        1 or 2.
    """

    path: str
    limit: int
    usage: int
    version: int

    @property
    def headroom(self) -> int:
        """Bytes the cgroup may still charge before it reclaims or kills."""
        return max(0, self.limit - self.usage)

    def describe(self) -> str:
        """The limit in words, naming the files it came from."""
        names = ("memory.max", "memory.current") if self.version == 2 else (
            "memory.limit_in_bytes", "memory.usage_in_bytes")
        return (f"the cgroup memory limit leaves {self.headroom} bytes ({names[0]} {self.limit} - "
                f"{names[1]} {self.usage} in {self.path})")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _own_cgroup(proc_self_cgroup: Path) -> tuple[int, str] | None:
    """(version, path) of the cgroup holding the process's memory controller, or None."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None
    v2 = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "memory" in controllers.split(","):
            return 1, path
        if controllers == "":
            v2 = path
    return (2, v2) if v2 is not None else None


def _limited_dirs(proc_self_cgroup: Path, cgroup_fs: Path) -> tuple[int, list[str]]:
    """(version, directories from the process's cgroup up to the mount that set a finite limit)."""
    own = _own_cgroup(proc_self_cgroup)
    if own is None:
        return 0, []
    version, path = own
    mount = cgroup_fs / "memory" if version == 1 else cgroup_fs
    limit_file = "memory.limit_in_bytes" if version == 1 else "memory.max"
    here = mount / path.lstrip("/")
    if not here.is_dir():
        # Inside a cgroup namespace (a container) the mount is the process's own cgroup.
        here = mount
    found = []
    for directory in [here, *[d for d in here.parents if d == mount or mount in d.parents]]:
        limit = _read_int(directory / limit_file)
        if limit is not None and (version == 2 or limit < _V1_UNLIMITED):
            found.append(str(directory))
    return version, found


def _file_names(version: int) -> tuple[str, str]:
    return ("memory.limit_in_bytes", "memory.usage_in_bytes") if version == 1 else ("memory.max", "memory.current")


def limit_files(proc_self_cgroup: str | Path | None = None,
                cgroup_fs: str | Path | None = None) -> tuple[int, list[tuple[str, str, str]]]:
    """The cgroups whose limit can stop this process, innermost first, and the files to read.

    Returns
    -------
    version : int
        1 or 2 (0 when the process's cgroup is unknown).
    files : list of (directory, limit file, usage file)
        Only cgroups that set a finite limit now (a limit set later is seen after the next call).
    """
    version, directories = _limited_dirs(Path(proc_self_cgroup or PROC_SELF_CGROUP), Path(cgroup_fs or CGROUP_FS))
    limit_name, usage_name = _file_names(version)
    return version, [(d, str(Path(d, limit_name)), str(Path(d, usage_name))) for d in directories]


# Which cgroups limit the process is resolved once per (roots): a walk over the cgroup tree costs
# about 0.2 ms, more than a 4 MiB allocation can afford; usage (and the limits found) are read
# at every check. A limit set on a cgroup after the first check is seen after ``refresh=True``.
_resolved: dict[tuple[str, str], tuple[int, list[str]]] = {}


def cgroup_memory(proc_self_cgroup: str | Path | None = None, cgroup_fs: str | Path | None = None, *,
                  refresh: bool = False) -> CgroupMemory | None:
    """The memory limit leaving the least headroom for this process, or None when there is none.

    Parameters
    ----------
    proc_self_cgroup : path, optional
        The process's cgroup list (default ``/proc/self/cgroup``).
    cgroup_fs : path, optional
        Where the cgroup file systems are mounted (default ``/sys/fs/cgroup``; v1's memory
        controller under ``memory/``).
    refresh : bool
        Walk the cgroup tree again for the cgroups that set a limit (see the module doc).
    """
    key = (str(proc_self_cgroup or PROC_SELF_CGROUP), str(cgroup_fs or CGROUP_FS))
    chain = _resolved.get(key)
    if chain is None or refresh:
        chain = _resolved[key] = _limited_dirs(Path(key[0]), Path(key[1]))
    version, directories = chain
    files = _file_names(version)
    tightest = None
    for directory in directories:
        limit, usage = _read_int(Path(directory, files[0])), _read_int(Path(directory, files[1]))
        if limit is None or usage is None or (version == 1 and limit >= _V1_UNLIMITED):
            continue
        found = CgroupMemory(directory, limit, usage, version)
        if tightest is None or found.headroom < tightest.headroom:
            tightest = found
    return tightest
