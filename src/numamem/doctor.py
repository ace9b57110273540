"""Can placement be trusted here? The data behind ``numamem doctor``.

:func:`diagnose` gathers, for this process on this machine, what a user needs before relying on
numamem's placement: the topology, the process's cpuset, transparent huge pages, hugetlb pools per
node, automatic NUMA balancing, whether each memory-policy call is permitted (a container's seccomp
profile or missing ``CAP_SYS_NICE`` refuses them with ``EPERM``), the capability and seccomp state,
and a test page placed and verified on every node. It prints nothing: ``numamem doctor``
(:mod:`numamem.cli.doctor`) renders it.

Every probe runs in this process and leaves it as it was: ``mbind`` on a scratch page only probes
use, ``set_mempolicy`` in a throwaway thread (a thread's policy is its own), ``move_pages`` on a
scratch page (a query, and a move to the node the page is already on).
"""
from __future__ import annotations

import errno as _errno
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from numamem import _kernel, _region, _topology
from numamem.arrays import empty
from numamem.errors import POLICY_FIX, PolicyPermissionError
from numamem.inspect import histogram, page_nodes

__all__ = ["CallProbe", "TestPage", "Diagnosis", "diagnose", "format_list", "CAP_SYS_NICE"]

#: Bit of CAP_SYS_NICE in the capability sets of /proc/self/status.
CAP_SYS_NICE = 23
SECCOMP_MODES = {0: "disabled", 1: "strict", 2: "filter"}
NUMA_BALANCING = {"0": "off", "1": "on (normal)", "2": "memory tiering", "3": "on, with memory tiering"}
PROC_STATUS = "/proc/self/status"
NUMA_BALANCING_FILE = "/proc/sys/kernel/numa_balancing"


@dataclass(frozen=True)
class CallProbe:
    """Whether one memory-policy call is permitted to this process.

    Attributes
    ----------
    call : str
        ``"mbind"``, ``"set_mempolicy"``, ``"get_mempolicy"``, ``"move_pages (query)"`` or
        ``"move_pages (move)"``.
    permitted : bool
    errno : int
        0 when permitted, else the errno the call failed with (``EPERM``: refused).
    error : str
        The failure's text ('' when permitted).
    """

    call: str
    permitted: bool
    errno: int = 0
    error: str = ""


@dataclass(frozen=True)
class TestPage:
    """A page placed with ``numamem.empty(..., node=k)`` and where the kernel says it is.

    Attributes
    ----------
    node : int
    verified : bool
        The page was placed and ``move_pages`` found it on ``node``.
    pages : dict or None
        Node -> page count from ``move_pages``; None when it could not be asked.
    error : str
        Why the page could not be placed or checked ('' when verified).
    """

    node: int
    verified: bool
    pages: dict | None = None
    error: str = ""


@dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose` found; ``trusted`` and ``reason`` are the verdict."""

    topology: _topology.Topology
    cpus_allowed: tuple[int, ...]
    mems_allowed: tuple[int, ...]
    thp: str
    thp_size: int
    numa_balancing: str | None
    calls: tuple[CallProbe, ...]
    cap_eff: int | None
    seccomp: int | None
    seccomp_filters: int | None
    test_pages: tuple[TestPage, ...]
    trusted: bool
    reason: str
    notes: tuple[str, ...] = field(default=())

    @property
    def sys_nice(self) -> bool | None:
        """Whether CAP_SYS_NICE is in the effective set (None when it could not be read)."""
        return None if self.cap_eff is None else bool(self.cap_eff >> CAP_SYS_NICE & 1)

    @property
    def refused(self) -> tuple[str, ...]:
        """The calls that were refused."""
        return tuple(probe.call for probe in self.calls if not probe.permitted)

    def to_dict(self) -> dict:
        """A JSON-ready dictionary (what ``numamem doctor --json`` prints)."""
        return {
            "format": "numamem-doctor/1",
            "trusted": self.trusted,
            "reason": self.reason,
            "topology": self.topology.to_dict(),
            "cpuset": {"cpus_allowed": list(self.cpus_allowed), "mems_allowed": list(self.mems_allowed)},
            "thp": {"mode": self.thp, "size": self.thp_size},
            "hugetlb": {str(node.id): {str(size): {"total": pool.total, "free": pool.free}
                                       for size, pool in sorted(node.hugepages.items())}
                        for node in self.topology.nodes},
            "numa_balancing": self.numa_balancing,
            "calls": [asdict(probe) for probe in self.calls],
            "capabilities": {"cap_eff": None if self.cap_eff is None else f"{self.cap_eff:016x}",
                             "sys_nice": self.sys_nice},
            "seccomp": {"mode": self.seccomp, "name": SECCOMP_MODES.get(self.seccomp),
                        "filters": self.seccomp_filters},
            "test_pages": [dict(asdict(page), pages=None if page.pages is None else
                                {str(k): v for k, v in page.pages.items()}) for page in self.test_pages],
            "notes": list(self.notes),
        }


def format_list(values) -> str:
    """``(0, 1, 2, 5)`` -> ``"0-2,5"`` (the kernel's list syntax); ``"(none)"`` for an empty list."""
    values = sorted(set(values))
    if not values:
        return "(none)"
    parts, start, prev = [], values[0], values[0]
    for value in values[1:] + [None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ",".join(parts)


def _status_fields(path: str) -> dict[str, str]:
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, _, value in
            (line.partition(":") for line in text.splitlines()) if key}


def _int_or_none(text: str | None, base: int = 10) -> int | None:
    try:
        return None if text is None else int(text, base)
    except ValueError:
        return None


def errno_name(err) -> str:
    """``1`` -> ``"EPERM"`` (the number itself when it has no name)."""
    return _errno.errorcode.get(err, str(err))


def _probe(call: str, fn) -> CallProbe:
    try:
        fn()
    except OSError as exc:
        return CallProbe(call, False, exc.errno or 0, str(exc))
    return CallProbe(call, True)


def _in_thread(fn):
    """Run ``fn`` in a throwaway thread (its memory policy dies with it); re-raise its error."""
    outcome: list = []

    def body():
        try:
            fn()
        except BaseException as exc:  # handed back to the caller below
            outcome.append(exc)

    thread = threading.Thread(target=body, name="numamem-doctor-probe")
    thread.start()
    thread.join()
    if outcome:
        raise outcome[0]


def probe_calls(node: int) -> tuple[CallProbe, ...]:
    """Whether each memory-policy call is permitted, probed on ``node`` without changing anything.

    Returns
    -------
    tuple of CallProbe
        ``mbind``, ``set_mempolicy``, ``get_mempolicy``, ``move_pages (query)``,
        ``move_pages (move)``.
    """
    def mbind():
        err = _kernel.mbind_errno(node)
        if err:
            raise OSError(err, f"mbind(MPOL_PREFERRED, node {node}) on a scratch page: {os.strerror(err)}")

    scratch = _region.Region(4096, 4096, 0)
    try:
        scratch.populate()
        address = np.array([scratch.address], dtype=np.uint64)
        where: list = []
        probes = [
            _probe("mbind", mbind),
            _probe("set_mempolicy", lambda: _in_thread(lambda: _kernel.set_thread_policy("preferred", (node,)))),
            _probe("get_mempolicy", _kernel.thread_policy),
            _probe("move_pages (query)", lambda: where.append(int(_kernel.page_status(address)[0]))),
        ]
        # Moving the page to the node it is on moves nothing; only the permission is asked.
        target = where[0] if where and where[0] >= 0 else node
        probes.append(_probe("move_pages (move)", lambda: _kernel.page_status(address, target)))
    finally:
        scratch.close()
    return tuple(probes)


def _test_page(node: int, page_size: int) -> TestPage:
    try:
        array = empty(page_size, np.uint8, node=node, pages="4k")
    except PolicyPermissionError as exc:
        return TestPage(node, False, None, f"{exc.call} was refused (EPERM)")
    except (OSError, MemoryError, ValueError) as exc:
        return TestPage(node, False, None, f"{type(exc).__name__}: {exc}")
    try:
        pages = histogram(page_nodes(array))
    except OSError as exc:
        return TestPage(node, False, None, f"placed, but move_pages cannot check it "
                                           f"({errno_name(exc.errno)})")
    if pages != {node: 1}:
        return TestPage(node, False, pages, f"the page is on {pages}, not on node {node}")
    return TestPage(node, True, pages)


def _verdict(calls, test_pages, tested: bool) -> tuple[bool, str]:
    refused = [probe for probe in calls if not probe.permitted]
    if refused:
        names = ", ".join(dict.fromkeys(probe.call.split(" ")[0] for probe in refused))
        eperm = all(probe.errno == _errno.EPERM for probe in refused)
        why = "refused (EPERM)" if eperm else "failing"
        return False, (f"{names} {'is' if ',' not in names else 'are'} {why}: strict placement raises "
                       f"PolicyPermissionError here; {POLICY_FIX}")
    if not tested:
        return True, "every policy call is permitted (no test page was placed)"
    if not test_pages:
        return False, "no node with memory is allowed to this process (Mems_allowed)"
    for page in test_pages:
        if not page.verified:
            return False, f"the test page on node {page.node} was not verified: {page.error}"
    return True, f"every policy call is permitted and a test page was verified on node(s) " \
                 f"{format_list(page.node for page in test_pages)}"


def _notes(topo, balancing, seccomp, sys_nice) -> tuple[str, ...]:
    notes = []
    if balancing not in (None, "0"):
        notes.append("automatic NUMA balancing is on: pages placed by first touch or 'preferred' may be "
                     "migrated later; strictly bound ones ('bind', the default) stay")
    if seccomp == 2:
        notes.append("a seccomp filter is active (a container's profile); the probes above say what it refuses")
    if sys_nice is False:
        notes.append("CAP_SYS_NICE is not effective: moving other processes' pages (MPOL_MF_MOVE_ALL) is refused")
    if topo.thp == "never":
        notes.append("transparent huge pages are off: pages='thp' is refused; 'auto' uses base pages")
    return tuple(notes)


def diagnose(test_pages: bool = True) -> Diagnosis:
    """Find out whether numamem's placement can be trusted in this process on this machine.

    Parameters
    ----------
    test_pages : bool
        Place and verify a test page on every allowed node with memory (``numamem.empty(...,
        node=k)``); False skips it (the verdict then rests on the probes alone).

    Returns
    -------
    Diagnosis
        ``trusted`` is True when every memory-policy call is permitted and every test page was found
        on its node; ``reason`` says why not in one line (or what was checked).
    """
    topo = _topology.topology()
    status = _status_fields(PROC_STATUS)
    cpus = _topology.parse_cpulist(status["Cpus_allowed_list"]) if "Cpus_allowed_list" in status \
        else tuple(sorted(topo.allowed_cpus))
    mems = _topology.parse_cpulist(status["Mems_allowed_list"]) if "Mems_allowed_list" in status \
        else tuple(sorted(topo.allowed_nodes))
    try:
        balancing = Path(NUMA_BALANCING_FILE).read_text().strip()
    except OSError:
        balancing = None
    memory_nodes = [n for n in topo.memory_nodes() if n in topo.allowed_nodes]
    calls = probe_calls(memory_nodes[0] if memory_nodes else 0)
    pages = tuple(_test_page(n, topo.base_page_size) for n in memory_nodes) if test_pages else ()
    trusted, reason = _verdict(calls, pages, test_pages)
    cap_eff = _int_or_none(status.get("CapEff"), 16)
    seccomp = _int_or_none(status.get("Seccomp"))
    sys_nice = None if cap_eff is None else bool(cap_eff >> CAP_SYS_NICE & 1)
    return Diagnosis(
        topology=topo, cpus_allowed=cpus, mems_allowed=mems, thp=topo.thp, thp_size=topo.thp_size,
        numa_balancing=None if balancing is None else NUMA_BALANCING.get(balancing, balancing),
        calls=calls, cap_eff=cap_eff, seccomp=seccomp,
        seccomp_filters=_int_or_none(status.get("Seccomp_filters")), test_pages=pages,
        trusted=trusted, reason=reason, notes=_notes(topo, balancing, seccomp, sys_nice),
    )
