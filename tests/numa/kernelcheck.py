"""An independent witness of page placement for the multi-node tier.

Everything here asks the kernel directly (``move_pages``/``get_mempolicy`` from ``libnuma.so.1``
through ctypes, ``/proc/self/numa_maps``, ``/sys/devices/system/node``, ``numactl --hardware``)
and never numamem: a test that checked numamem against numamem's own bookkeeping would pass
however wrong the placement was.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE")
SYSFS_NODES = Path("/sys/devices/system/node")
NUMACTL = "/usr/bin/numactl"  # absolute: the guest's PATH is not the host's

_libnuma = ctypes.CDLL("libnuma.so.1", use_errno=True)
_libnuma.move_pages.restype = ctypes.c_long
_libnuma.move_pages.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.POINTER(ctypes.c_void_p),
                                ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int),
                                ctypes.c_int]
_libnuma.get_mempolicy.restype = ctypes.c_long
_libnuma.get_mempolicy.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_ulong),
                                   ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong]

MPOL_F_NODE = 1
MPOL_F_ADDR = 2
MPOL_NAMES = {0: "default", 1: "preferred", 2: "bind", 3: "interleave", 4: "local",
              5: "preferred_many"}


def span(array) -> tuple[int, int]:
    """First and one-past-last byte address of a C- or F-contiguous array's data."""
    arr = np.asarray(array)
    assert arr.flags.c_contiguous or arr.flags.f_contiguous, "checker needs a contiguous array"
    start = arr.__array_interface__["data"][0]
    return start, start + arr.nbytes


def page_addresses(start: int, stop: int, page_size: int = PAGE) -> np.ndarray:
    """Addresses of every ``page_size`` page that the byte range ``[start, stop)`` touches."""
    first = start - start % page_size
    return np.arange(first, max(stop, start + 1), page_size, dtype=np.uint64)


def move_pages_status(addresses) -> np.ndarray:
    """Node of each page (``move_pages`` query mode: nodes=NULL); ``-errno`` where it has none."""
    addresses = np.ascontiguousarray(addresses, dtype=np.uint64)
    count = len(addresses)
    status = np.full(count, -12345, dtype=np.intc)
    if count == 0:
        return status
    pages = addresses.ctypes.data_as(ctypes.POINTER(ctypes.c_void_p))
    rc = _libnuma.move_pages(0, count, pages, None,
                             status.ctypes.data_as(ctypes.POINTER(ctypes.c_int)), 0)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"move_pages(query, {count} pages): {os.strerror(err)}")
    assert not np.any(status == -12345), "move_pages left a status unwritten"
    return status


def nodes_of(array, page_size: int = PAGE) -> np.ndarray:
    """Node of every ``page_size`` page the array's bytes touch, from ``move_pages``."""
    start, stop = span(array)
    return move_pages_status(page_addresses(start, stop, page_size))


def histogram(status) -> dict[int, int]:
    values, counts = np.unique(np.asarray(status), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def node_of_address(address: int) -> int:
    """``get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)``: the node holding the page at ``address``.

    The kernel faults the page in to answer, so ask only about pages already touched.
    """
    mode = ctypes.c_int(-1)
    rc = _libnuma.get_mempolicy(ctypes.byref(mode), None, 0, ctypes.c_void_p(address),
                                MPOL_F_NODE | MPOL_F_ADDR)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"get_mempolicy(MPOL_F_NODE|MPOL_F_ADDR, {address:#x}): {os.strerror(err)}")
    return mode.value


def policy_of_address(address: int) -> tuple[str, tuple[int, ...]]:
    """``get_mempolicy(MPOL_F_ADDR)``: the memory policy of the mapping holding ``address``."""
    mode = ctypes.c_int(-1)
    mask = (ctypes.c_ulong * 16)()
    rc = _libnuma.get_mempolicy(ctypes.byref(mode), mask, 16 * 64, ctypes.c_void_p(address),
                                MPOL_F_ADDR)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"get_mempolicy(MPOL_F_ADDR, {address:#x}): {os.strerror(err)}")
    nodes = tuple(i for i in range(16 * 64) if mask[i // 64] >> (i % 64) & 1)
    # Mode flags (MPOL_F_STATIC_NODES etc.) sit in the high bits.
    return MPOL_NAMES.get(mode.value & 0xFF, str(mode.value)), nodes


@dataclass
class NumaMapsEntry:
    """One line of /proc/self/numa_maps: start address, policy text, pages per node, page size."""

    start: int
    policy: str
    pages: dict
    kernel_page_kb: int
    huge: bool
    raw: str


def numa_maps(pid: str = "self") -> list[NumaMapsEntry]:
    entries = []
    for line in Path(f"/proc/{pid}/numa_maps").read_text().splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        pages = {}
        kpage = PAGE // 1024
        for f in fields[2:]:
            m = re.fullmatch(r"N(\d+)=(\d+)", f)
            if m:
                pages[int(m.group(1))] = int(m.group(2))
            elif f.startswith("kernelpagesize_kB="):
                kpage = int(f.split("=", 1)[1])
        entries.append(NumaMapsEntry(int(fields[0], 16), fields[1], pages, kpage,
                                     "huge" in fields[2:], line))
    return entries


def mapping_of(address: int) -> tuple[int, int]:
    """``(low, high)`` of the /proc/self/maps line that contains ``address``."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        low, high = (int(x, 16) for x in line.split()[0].split("-"))
        if low <= address < high:
            return low, high
    raise LookupError(f"{address:#x} is in no mapping")


def numa_maps_of(address: int) -> NumaMapsEntry:
    """The numa_maps entry of the mapping containing ``address``."""
    low, _ = mapping_of(address)
    for entry in numa_maps():
        if entry.start == low:
            return entry
    raise LookupError(f"no numa_maps entry starts at {low:#x}")


def mappings() -> list[tuple[int, int]]:
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        low, high = (int(x, 16) for x in line.split()[0].split("-"))
        out.append((low, high))
    return out


# ------------------------------------------------------------------------- topology witnesses

def cpulist(text: str) -> tuple[int, ...]:
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            cpus.update(range(int(a), int(b) + 1))
        else:
            cpus.add(int(part))
    return tuple(sorted(cpus))


def sysfs_nodes() -> list[int]:
    return sorted(int(p.name[4:]) for p in SYSFS_NODES.glob("node[0-9]*"))


def sysfs_cpus(node: int) -> tuple[int, ...]:
    return cpulist((SYSFS_NODES / f"node{node}" / "cpulist").read_text())


def sysfs_distances(node: int) -> list[int]:
    return [int(x) for x in (SYSFS_NODES / f"node{node}" / "distance").read_text().split()]


def sysfs_meminfo(node: int) -> dict[str, int]:
    """``MemTotal``/``MemFree``/``Inactive(file)``/... of a node in bytes (sysfs gives kB)."""
    out = {}
    for line in (SYSFS_NODES / f"node{node}" / "meminfo").read_text().splitlines():
        m = re.match(r"Node \d+ ([\w()]+):\s+(\d+)(?: kB)?", line)
        if m:
            value = int(m.group(2))
            out[m.group(1)] = value * 1024 if line.rstrip().endswith("kB") else value
    return out


@dataclass
class NumactlHardware:
    nodes: list[int]
    cpus: dict
    size_mb: dict
    free_mb: dict
    distances: dict


def numactl_hardware() -> NumactlHardware:
    """Parse ``numactl --hardware``."""
    text = subprocess.run([NUMACTL, "--hardware"], check=True, capture_output=True,
                          text=True).stdout
    nodes: list[int] = []
    cpus, size, free, dist = {}, {}, {}, {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"node (\d+) cpus:(.*)", line)
        if m:
            node = int(m.group(1))
            nodes.append(node)
            cpus[node] = tuple(int(c) for c in m.group(2).split())
        m = re.match(r"node (\d+) size: (\d+) MB", line)
        if m:
            size[int(m.group(1))] = int(m.group(2))
        m = re.match(r"node (\d+) free: (\d+) MB", line)
        if m:
            free[int(m.group(1))] = int(m.group(2))
        if line.startswith("node distances:"):
            header = [int(x) for x in lines[i + 1].split()[1:]]
            for row in lines[i + 2:i + 2 + len(header)]:
                a, *values = row.replace(":", " ").split()
                for b, v in zip(header, values):
                    dist[(int(a), b)] = int(v)
    return NumactlHardware(nodes, cpus, size, free, dist)


# ------------------------------------------------------------------------- first touch

def first_touch_nodes(nbytes: int = 64 * PAGE) -> np.ndarray:
    """Map fresh anonymous memory, write every page from the calling thread, return page nodes.

    A fresh ``mmap`` (not NumPy's heap, which may hand back pages faulted earlier elsewhere)
    makes the default local policy place each page on the node of the CPU that touched it.
    """
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        view = np.frombuffer(buf, dtype=np.uint8)
        view[::PAGE] = 1
        status = move_pages_status(page_addresses(*span(view)))
        del view
        return status
    finally:
        buf.close()


def hugepages_path(node: int, size_kb: int = 2048) -> Path:
    return SYSFS_NODES / f"node{node}" / "hugepages" / f"hugepages-{size_kb}kB"


ENOENT = -errno.ENOENT
# move_pages' status for a page never faulted in: -ENOENT on older kernels, -EFAULT on 6.1
# (follow_page with FOLL_DUMP), both meaning "no page there yet".
NOT_FAULTED = frozenset({-errno.ENOENT, -errno.EFAULT})


# ------------------------------------------------------------------------- forked children

def run_in_child(fn, timeout: float = 600.0) -> str | None:
    """Run ``fn()`` in a forked child; return None if it exited 0, else a description.

    Anything that could kill a process (OOM killer, SIGBUS) is provoked only here, so the test
    run survives and the test can say how the child died. ``fn`` returns None for success or a
    string saying what was wrong; an exception in the child counts as a failure too.
    """
    import signal
    import sys
    import tempfile
    import time
    import traceback

    with tempfile.TemporaryFile(mode="w+") as report:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 0
            try:
                problem = fn()
                if problem:
                    report.write(str(problem))
                    code = 1
            except BaseException:
                report.write(traceback.format_exc())
                code = 2
            finally:
                report.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return f"child still running after {timeout:.0f} s: killed"
            time.sleep(0.05)
        report.seek(0)
        text = report.read()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return (f"child killed by {signal.Signals(sig).name}"
                + (" (the OOM killer?)" if sig == signal.SIGKILL else "") + (f": {text}" if text else ""))
    code = os.WEXITSTATUS(status)
    return None if code == 0 else f"child exited {code}: {text}"


def run_in_thread(fn, timeout: float = 600):
    """Run ``fn`` in a fresh thread (bindings are per thread) and return its result or raise its error."""
    import threading

    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=timeout)
    assert not t.is_alive(), "thread did not finish"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def assert_executor_on_its_nodes(ex, plan) -> None:
    """Every block of a planned ``Executor`` and every arena on its plan node, read from the kernel."""
    checked = 0
    for view in ex.block_views():
        b = view.block
        hist = histogram(nodes_of(view.array))
        assert hist == {b.node: sum(hist.values())}, (b.tensor, b.index, b.node, hist)
        checked += 1
    assert checked == len(plan.blocks)
    for n, arena in zip(plan.nodes, ex.arenas):
        assert histogram(nodes_of(arena)) == {n: arena.nbytes // PAGE}
