"""``numamem doctor``: can placement be trusted here? One screen, or JSON with ``--json``.

The data is :func:`numamem.doctor.diagnose`'s; this module only renders it. Exit status 0 when
placement can be trusted (every memory-policy call permitted, a test page verified on every
allowed node), 1 otherwise, with the one-line reason last (on stderr).
"""
from __future__ import annotations

import errno
import json
import sys


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


def _size(size: int) -> str:
    return f"{size // 2**30}G" if size >= 2**30 else (f"{size // 2**20}M" if size >= 2**20 else f"{size // 1024}K")


def format_diagnosis(diag) -> str:
    """Render a :class:`numamem.doctor.Diagnosis` as the screen ``numamem doctor`` prints."""
    from numamem.doctor import SECCOMP_MODES, format_list

    topo = diag.topology
    lines = [f"{'topology':<14}{len(topo.nodes)} node(s){'' if topo.numa else ' (no NUMA in the kernel)'}, "
             f"base page {topo.base_page_size} B"]
    for node in topo.nodes:
        lines.append(f"{'':<14}node {node.id}: cpus {format_list(node.cpus)}, {_mib(node.mem_total)} "
                     f"({_mib(node.mem_free)} free)")
    lines.append(f"{'cpuset':<14}Cpus_allowed {format_list(diag.cpus_allowed)}; "
                 f"Mems_allowed {format_list(diag.mems_allowed)}")
    lines.append(f"{'THP':<14}{diag.thp}" + (f" ({diag.thp_size // 1024} KiB pages)" if diag.thp_size else ""))
    for node in topo.nodes:
        pools = ", ".join(f"{_size(size)} {pool.free}/{pool.total} free" for size, pool in
                          sorted(node.hugepages.items())) or "none"
        lines.append(f"{'hugetlb' if node is topo.nodes[0] else '':<14}node {node.id}: {pools}")
    lines.append(f"{'balancing':<14}numa_balancing: {diag.numa_balancing or 'not available'}")
    for i, probe in enumerate(diag.calls):
        state = "permitted" if probe.permitted else \
            f"REFUSED ({errno.errorcode.get(probe.errno, probe.errno)})"
        lines.append(f"{'policy calls' if i == 0 else '':<14}{probe.call:<20}{state}")
    nice = {True: "yes", False: "NO", None: "unknown"}[diag.sys_nice]
    caps = "" if diag.cap_eff is None else f" (CapEff {diag.cap_eff:016x})"
    lines.append(f"{'caps':<14}CAP_SYS_NICE {nice}{caps}")
    seccomp = "unknown" if diag.seccomp is None else f"{SECCOMP_MODES.get(diag.seccomp, diag.seccomp)}"
    if diag.seccomp_filters:
        seccomp += f" ({diag.seccomp_filters} filter(s))"
    lines.append(f"{'seccomp':<14}{seccomp}")
    if not diag.test_pages:
        lines.append(f"{'test pages':<14}none placed")
    for i, page in enumerate(diag.test_pages):
        state = f"verified ({page.pages})" if page.verified else f"NOT VERIFIED: {page.error}"
        lines.append(f"{'test pages' if i == 0 else '':<14}node {page.node}: {state}")
    for note in diag.notes:
        lines.append(f"{'note':<14}{note}")
    return "\n".join(lines)


def run_doctor(args) -> int:
    """Print the diagnosis; return 0 when placement can be trusted, else 1 (reason on stderr)."""
    from numamem.doctor import diagnose

    diag = diagnose()
    if args.json:
        print(json.dumps(diag.to_dict(), indent=2))
    else:
        print(format_diagnosis(diag))
    if diag.trusted:
        if not args.json:
            print(f"numamem doctor: placement can be trusted: {diag.reason}")
        return 0
    print(f"numamem doctor: placement cannot be trusted: {diag.reason}", file=sys.stderr)
    return 1


def add_command(subparsers) -> None:
    """Register ``numamem doctor``."""
    parser = subparsers.add_parser(
        "doctor", help="can placement be trusted here: topology, cpuset, THP, hugetlb, policy calls, test pages")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a screen")
    parser.set_defaults(func=run_doctor)
