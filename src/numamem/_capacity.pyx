# cython: boundscheck=False, wraparound=False, cdivision=True
"""The one capacity rule, for arrays (:mod:`numamem._placement`) and the pools' kernel chunk source.

Why a module of its own: the rule is one job (is there room for a request before it is mapped?)
with its own state (the table of files to read) and its own callers; the placement routine
(:mod:`numamem._place`) never runs it. It is C so that the pools' chunk source can run it without
the GIL, inside NumPy's allocation calls.

A request that will be faulted in now is refused before anything is mapped when it exceeds

* the headroom of the process's memory cgroup (limit - usage, the tightest over the cgroup and its
  ancestors), under every policy, from ``CGROUP_CHECK_BYTES`` (a pool chunk) up: populating past
  it calls the memory cgroup's OOM killer, whatever the NUMA policy; or
* for a strict (bind) request of ``CAPACITY_CHECK_BYTES`` or more, the node's available memory,
  ``MemFree`` plus ``Inactive(file)`` from its sysfs ``meminfo`` (:c:func:`node_available`);
  smaller ones are left to populate under ``preferred`` and verification.

Which cgroup files to read is resolved once (:mod:`numamem._cgroup`, at import or
:func:`use_limits`) into a table of paths, so a check is two small file reads per limiting cgroup
and no Python (none when no cgroup sets a limit); below the thresholds nothing is read, and a
pool's blocks carved from mapped chunks never get here. A forked child inherits its parent's
cgroup: the table stays valid. A shortfall is reported in a :c:type:`PlaceResult` with
``STEP_CAPACITY``, which :func:`numamem.errors.from_place_result` turns into the exception.
"""
import os

from libc.errno cimport ENOMEM
from libc.stdint cimport uintptr_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, strtoll
from libc.string cimport memcpy, memset, strlen, strncpy, strstr
from posix.fcntl cimport O_CLOEXEC, O_RDONLY, open
from posix.unistd cimport close, read

from numamem._libnuma cimport numa_node_size64
from numamem._place cimport LIMIT_CGROUP, LIMIT_NODE, STEP_CAPACITY, PlaceResult, result_object

CAPACITY_CHECK = CAPACITY_CHECK_BYTES
CGROUP_CHECK = CGROUP_CHECK_BYTES

DEF LIMIT_PATH = 512
DEF LIMIT_DIRS = 16


cdef struct LimitFiles:
    char node_dir[LIMIT_PATH]           # .../devices/system/node
    int version                         # 1 or 2 (0: no cgroup sets a limit)
    int count
    char dirs[LIMIT_DIRS][LIMIT_PATH]
    char limit_file[LIMIT_DIRS][LIMIT_PATH]
    char usage_file[LIMIT_DIRS][LIMIT_PATH]


# Swapped whole by use_limits() while checks may read the old table without a lock: old tables are
# kept (a few tens of KiB per call; it is called at import and by tests).
cdef LimitFiles *LIMITS = NULL
_OLD_LIMITS = []
_LIMIT_ROOTS = None
# v1 reports "no limit" as PAGE_COUNTER_MAX pages (0x7ffffffffffff000 with 4 KiB pages).
cdef long long V1_UNLIMITED = 1LL << 62


cdef Py_ssize_t _read_text(const char *path, char *buffer, size_t size) noexcept nogil:
    """Read up to ``size - 1`` bytes of ``path`` into ``buffer`` (NUL-terminated); length, or -1."""
    cdef int fd = open(path, O_RDONLY | O_CLOEXEC)
    cdef Py_ssize_t total = 0, got
    if fd < 0:
        return -1
    while <size_t>total < size - 1:
        got = read(fd, buffer + total, size - 1 - total)
        if got <= 0:
            break
        total += got
    close(fd)
    buffer[total] = 0
    return total


cdef long long _read_number(const char *path) noexcept nogil:
    """The integer in ``path``; -1 when it is ``max`` (no limit), unreadable or not a number."""
    cdef char buffer[64]
    cdef char *end
    cdef long long value
    if _read_text(path, buffer, sizeof(buffer)) <= 0 or buffer[0] < 48 or buffer[0] > 57:
        return -1
    value = strtoll(buffer, &end, 10)
    return value if end != buffer else -1


cdef long long _meminfo_kib(const char *text, const char *key) noexcept nogil:
    cdef const char *at = strstr(text, key)
    if at == NULL:
        return -1
    return strtoll(at + strlen(key), NULL, 10)


cdef long long node_available(int node) noexcept nogil:
    """Bytes ``node`` can give a new allocation now: ``MemFree`` plus ``Inactive(file)``; -1 if unknown.

    From the node's sysfs ``meminfo``, else libnuma's ``MemFree``. Clean file pages at the inactive
    end of the LRU are what reclaim takes first, usually without I/O, so a node full of page cache
    is not full. Left out: active file pages (the kernel protects them, and reclaiming them
    thrashes the working set), reclaimable slab (only part of it can be freed, and the node gives
    no estimate of which), and anonymous memory (swap). Erring low refuses a request that might
    have fit; erring high is caught later anyway (populating under ``MPOL_PREFERRED``, then
    verification), so the low side is the safe one.
    """
    cdef char path[LIMIT_PATH + 32]
    cdef char text[8192]
    cdef long long free_kib, inactive_kib, free_bytes = -1
    cdef LimitFiles *files = LIMITS
    if files != NULL and node >= 0:
        snprintf(path, sizeof(path), "%s/node%d/meminfo", files.node_dir, node)
        if _read_text(path, text, sizeof(text)) > 0:
            free_kib = _meminfo_kib(text, "MemFree:")
            inactive_kib = _meminfo_kib(text, "Inactive(file):")
            if free_kib >= 0:
                return (free_kib + (inactive_kib if inactive_kib > 0 else 0)) * 1024
    if numa_node_size64(node, &free_bytes) < 0:
        return -1
    return free_bytes


cdef long long cgroup_headroom(PlaceResult *out) noexcept nogil:
    """Bytes the process's memory cgroup may still charge (the tightest over its ancestors); -1: no limit.

    The usage counts the cgroup's page cache, which it would reclaim first: a lower estimate.
    Fills ``out.cg_limit``, ``cg_usage``, ``cg_dir`` and ``cg_version`` for the tightest cgroup.
    """
    cdef LimitFiles *files = LIMITS
    cdef long long best = -1, limit, usage, room
    cdef int i
    if files == NULL:
        return -1
    for i in range(files.count):
        limit = _read_number(files.limit_file[i])
        usage = _read_number(files.usage_file[i])
        if limit < 0 or usage < 0 or (files.version == 1 and limit >= V1_UNLIMITED):
            continue
        room = limit - usage if limit > usage else 0
        if best < 0 or room < best:
            best = room
            out.cg_limit = limit
            out.cg_usage = usage
            out.cg_dir = files.dirs[i]
            out.cg_version = files.version
    return best


cdef int check_capacity(size_t length, int node, PlaceResult *out) noexcept nogil:
    """0 if a request of ``length`` bytes fits (or is below the checks), else -1 with STEP_CAPACITY.

    ``node >= 0``: a strict request, compared with the cgroup's headroom and the node's available
    memory; ``node < 0``: a request that may spill to other nodes, compared with the cgroup's
    headroom only (the thresholds are in the module's docstring). On -1, ``out.limit`` says which limit
    was short and ``out.available`` what it left.
    """
    cdef PlaceResult found
    cdef long long room
    if length < CGROUP_CHECK_BYTES:
        return 0
    memset(&found, 0, sizeof(PlaceResult))
    room = cgroup_headroom(&found)
    if room >= 0 and <unsigned long long>length > <unsigned long long>room:
        found.limit = LIMIT_CGROUP
    elif node >= 0 and length >= CAPACITY_CHECK_BYTES:
        room = node_available(node)
        if room < 0 or <unsigned long long>length <= <unsigned long long>room:
            return 0  # unknown: populate under `preferred` and the verification still guard
        found.limit = LIMIT_NODE
    else:
        return 0
    found.step = STEP_CAPACITY
    found.err = ENOMEM
    found.available = room
    memcpy(out, &found, sizeof(PlaceResult))
    return -1


def use_limits(sysfs=None, proc_self_cgroup=None, cgroup_fs=None):
    """Resolve which files the capacity check reads: the nodes' meminfo and the cgroup limits.

    Called at import with the system's paths. Call it again after the process moved to another
    cgroup or a limit was set on one that had none; tests pass fabricated trees.

    Parameters
    ----------
    sysfs : path, optional
        Replaces ``/sys`` for the nodes' ``devices/system/node/node<N>/meminfo``.
    proc_self_cgroup, cgroup_fs : path, optional
        As :func:`numamem._cgroup.cgroup_memory` takes them.

    Returns
    -------
    tuple
        The previous ``(sysfs, proc_self_cgroup, cgroup_fs)``, to restore them.
    """
    global LIMITS, _LIMIT_ROOTS
    from numamem import _cgroup

    cdef LimitFiles *files
    sysfs = str(sysfs or "/sys")
    proc_self_cgroup = str(proc_self_cgroup or _cgroup.PROC_SELF_CGROUP)
    cgroup_fs = str(cgroup_fs or _cgroup.CGROUP_FS)
    version, directories = _cgroup.limit_files(proc_self_cgroup, cgroup_fs)
    node_dir = (sysfs.rstrip("/") + "/devices/system/node").encode()
    if len(node_dir) >= LIMIT_PATH:
        raise ValueError(f"sysfs path too long ({len(node_dir)} bytes): {sysfs!r}")
    found = []
    for directory, limit_file, usage_file in directories:
        encoded = [os.fsencode(p) for p in (directory, limit_file, usage_file)]
        if max(len(e) for e in encoded) >= LIMIT_PATH:
            raise ValueError(f"cgroup path too long for the capacity check: {directory!r}")
        found.append(encoded)
    if len(found) > LIMIT_DIRS:
        found = found[:LIMIT_DIRS]  # the innermost ones (deeper trees than this are not seen)
    files = <LimitFiles *>calloc(1, sizeof(LimitFiles))
    if files == NULL:
        raise MemoryError("cannot allocate the capacity check's file table")
    strncpy(files.node_dir, node_dir, LIMIT_PATH - 1)
    files.version = version
    files.count = len(found)
    for i, (directory, limit_file, usage_file) in enumerate(found):
        strncpy(files.dirs[i], directory, LIMIT_PATH - 1)
        strncpy(files.limit_file[i], limit_file, LIMIT_PATH - 1)
        strncpy(files.usage_file[i], usage_file, LIMIT_PATH - 1)
    if LIMITS != NULL:
        _OLD_LIMITS.append(<uintptr_t>LIMITS)
    LIMITS = files
    previous, _LIMIT_ROOTS = _LIMIT_ROOTS, (sysfs, proc_self_cgroup, cgroup_fs)
    return previous


def capacity(size_t length, int node=-1):
    """Run the capacity check (:c:func:`check_capacity`) for a request of ``length`` bytes.

    Parameters
    ----------
    length : int
        Bytes that will be faulted in now.
    node : int
        The node of a strict (bind) request; -1 for a request that may spill (the cgroup only).

    Returns
    -------
    PlaceOutcome or None
        None when it fits (or is below ``CGROUP_CHECK``, or ``CAPACITY_CHECK`` for the node's
        memory); else an outcome whose ``step`` is
        ``"capacity"``, for :func:`numamem.errors.from_place_result`.
    """
    cdef PlaceResult result
    cdef int rc
    with nogil:
        rc = check_capacity(length, node, &result)
    return None if rc == 0 else result_object(&result, node)


use_limits()
