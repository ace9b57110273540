"""Containers and least privilege: numamem under a real seccomp filter that refuses policy calls.

Docker's default seccomp profile and pods without CAP_SYS_NICE answer ``mbind``, ``set_mempolicy``
and ``move_pages`` with EPERM. Each test runs its code in a child process under such a filter
(``tests/seccompchild.py``, libseccomp through pyseccomp) and checks what numamem did: strict
placement raises ``PolicyPermissionError`` naming the call, the node and the fix (never
``NodeMemoryError`` "errno 1"); ``policy="preferred"``, ``on_node`` and the preferred pools fall back
to first touch from the node's CPUs with a ``PlacementWarning`` and never fail for the refusal.
"""
from __future__ import annotations

import errno
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from seccompchild import run_refused  # noqa: E402

import numamem  # noqa: E402
from numamem import _chunksource, _kernel, _region, pools  # noqa: E402
from numamem.errors import PlacementWarning, PolicyPermissionError, oserror  # noqa: E402

MiB = 1 << 20

# Child prelude: numamem imported after the filter, every warning recorded as text.
_RECORD = """
import json, warnings
import numpy as np
import numamem
warnings.simplefilter("always")
caught = []
warnings.showwarning = lambda message, category, *rest: caught.append(f"{category.__name__}: {message}")

def attempt(fn):
    try:
        value = fn()
        return {"ok": True, "value": value}
    except Exception as exc:
        return {"ok": False, "type": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__],
                "text": str(exc), "call": getattr(exc, "call", None), "node": getattr(exc, "node", None)}
"""


def _child(code, **kwargs):
    proc = run_refused(_RECORD + code, **kwargs)
    assert proc.returncode == 0 and proc.result is not None, proc.stderr[-3000:]
    return proc.result


def _assert_refused(outcome, call):
    assert not outcome["ok"], outcome
    assert outcome["type"] == "PolicyPermissionError" and "PermissionError" in outcome["mro"], outcome
    assert "MemoryError" not in outcome["mro"] and "errno 1" not in outcome["text"]
    assert call in outcome["call"] and call in outcome["text"]
    assert "SYS_NICE" in outcome["text"] and "seccomp" in outcome["text"]


def test_the_filter_refuses_the_policy_calls_and_nothing_else():
    # The harness itself: mbind is refused in the child, and an unrelated call is not.
    result = _child("""
import os
print(json.dumps({"mbind": numamem._kernel.mbind_errno(0), "pid": os.getpid() > 0}))
""")
    assert result == {"mbind": errno.EPERM, "pid": True}
    assert _kernel.mbind_errno(0) == 0  # this process is not filtered


@pytest.mark.parametrize("nbytes", [MiB, 8 * MiB], ids=["pooled", "mapped"])
def test_strict_placement_raises_policy_permission_error_naming_call_node_and_fix(nbytes):
    result = _child(f"""
out = attempt(lambda: numamem.empty({nbytes}, np.uint8, node=0).nbytes)
print(json.dumps(out))
""")
    _assert_refused(result, "mbind")
    assert result["node"] == 0 and "node 0" in result["text"]


def test_kernel_wrappers_raise_policy_permission_error_through_the_one_translator():
    result = _child("""
from numamem import _kernel, _region
r = _region.Region(4096, 4096, 0)
r.populate()
addresses = np.array([r.address], dtype=np.uint64)
print(json.dumps({
    "bind_range": attempt(lambda: _kernel.bind_range(r.address, 4096, "bind", [0])),
    "set_thread_policy": attempt(lambda: _kernel.set_thread_policy("preferred", [0])),
    "page_status": attempt(lambda: _kernel.page_status(addresses).tolist()),
    "move": attempt(lambda: _kernel.page_status(addresses, 0).tolist()),
    "interleave": attempt(lambda: numamem.empty(8 << 20, np.uint8, nodes=[0], policy="interleave").nbytes),
}))
""")
    _assert_refused(result["bind_range"], "mbind")
    assert result["bind_range"]["node"] == [0]
    _assert_refused(result["set_thread_policy"], "set_mempolicy")
    _assert_refused(result["page_status"], "move_pages")
    _assert_refused(result["move"], "move_pages")
    assert result["move"]["node"] == 0
    _assert_refused(result["interleave"], "mbind")


def test_oserror_maps_eperm_of_policy_calls_only():
    # The rule, in-process: EPERM from a policy call names call, node and fix; from another call
    # it stays the plain PermissionError the errno means.
    error = oserror(errno.EPERM, "set_mempolicy(bind, nodes=[1])", node=[1])
    assert isinstance(error, PolicyPermissionError) and error.node == [1]
    assert "node 1 was refused" in str(error) and "--cap-add SYS_NICE" in str(error)
    other = oserror(errno.EPERM, "mmap(4096 bytes)")
    assert type(other) is PermissionError and not isinstance(other, PolicyPermissionError)
    assert type(oserror(errno.EINVAL, "mbind(bind)")) is OSError


_PREFERRED = """
big = attempt(lambda: (lambda a: (a.fill(7), int(a.sum()), numamem.owner(a).info.get("fallback")))(
    numamem.empty(8 << 20, np.uint8, node=0, policy="preferred"))[1:])
small = attempt(lambda: int(numamem.empty(4096, np.uint8, node=0, policy="preferred").fill(1) or 0))
again = attempt(lambda: int(numamem.empty(4096, np.uint8, node=0, policy="preferred").size))
stats = {f"{k[0]}/{k[1]}": v for k, v in numamem.pools.pool_stats().items()}
print(json.dumps({"big": big, "small": small, "again": again, "warnings": caught, "stats": stats}))
"""


def test_preferred_falls_back_to_first_touch_and_reports_where_pages_went():
    # move_pages may still answer queries (no node list): the fallback reports the histogram.
    result = _child(_PREFERRED, query_allowed=True)
    assert result["big"]["ok"], result["big"]
    total, fallback = result["big"]["value"]
    assert total == 7 * (8 << 20)
    (entry,) = fallback
    assert entry["node"] == 0 and "mbind" in entry["refused"] and "first touch" not in entry["refused"]
    assert entry["pages"] == {"0": (8 << 20) // 4096}  # JSON keys; every page on node 0
    assert result["small"]["ok"] and result["again"]["ok"]
    placement = [w for w in result["warnings"] if "policy='preferred' for node 0" in w]
    assert len(placement) == 1 and placement[0].startswith("PlacementWarning")
    assert "move_pages reports 2048 of 2048 page(s) on node 0" in placement[0]
    pool = [w for w in result["warnings"] if "preferred pool of node 0" in w]
    assert len(pool) == 1, result["warnings"]  # one warning per pool, not per allocation
    assert "found 0 of 512 page(s) off node 0" in pool[0]
    stats = result["stats"]["0/preferred"]
    assert stats["first_touch_chunks"] >= 1 and stats["unverified_chunks"] == 0


def test_preferred_falls_back_when_move_pages_is_refused_too_and_says_unverified():
    result = _child(_PREFERRED)
    assert result["big"]["ok"] and result["small"]["ok"], result
    total, fallback = result["big"]["value"]
    assert total == 7 * (8 << 20) and fallback[0]["pages"] is None
    assert any("not verified" in w for w in result["warnings"]), result["warnings"]
    assert any("unverified" in w and "preferred pool of node 0" in w for w in result["warnings"])
    stats = result["stats"]["0/preferred"]
    assert stats["first_touch_chunks"] >= 1 and stats["unverified_chunks"] == stats["first_touch_chunks"]


def test_on_node_allocations_work_with_one_warning_and_pool_stats_say_unverified():
    result = _child("""
with numamem.on_node(0):
    a = attempt(lambda: float(np.ones(1000).sum()))
    b = attempt(lambda: float((np.arange(100000.0) * 2).sum()))
with numamem.on_node(0):
    c = attempt(lambda: int(np.zeros(300000, np.uint8).sum()))
with numamem.on_node(0, policy="preferred"):
    d = attempt(lambda: int(np.ones(10, np.int64).sum()))
stats = {f"{k[0]}/{k[1]}": v for k, v in numamem.pools.pool_stats().items()}
print(json.dumps({"a": a, "b": b, "c": c, "d": d, "warnings": caught, "stats": stats}))
""")
    assert result["a"] == {"ok": True, "value": 1000.0}
    assert result["b"] == {"ok": True, "value": float(np.arange(100000.0).sum() * 2)}
    assert result["c"] == {"ok": True, "value": 0} and result["d"] == {"ok": True, "value": 10}
    (warning,) = result["warnings"]  # once per pool, whatever the policy asked
    assert warning.startswith("PlacementWarning: on_node(0, policy='bind')") and "SYS_NICE" in warning
    stats = result["stats"]["0/preferred"]
    assert stats["first_touch_chunks"] >= 1 and stats["unverified_chunks"] == stats["first_touch_chunks"]
    assert "0/bind" not in result["stats"] or result["stats"]["0/bind"]["first_touch_chunks"] == 0


def test_without_a_filter_nothing_falls_back(node0, recwarn):
    # In this (unfiltered) process the same calls place by policy and warn nothing.
    with numamem.on_node(node0):
        y = np.ones(1000) * 2
    a = numamem.empty(8 * MiB, np.uint8, node=node0, policy="preferred")
    assert "fallback" not in numamem.owner(a).info
    assert not [w for w in recwarn if issubclass(w.category, PlacementWarning)]
    assert y.sum() == 2000
    stats = pools.pool_stats()[(node0, "bind")]
    assert stats["first_touch_chunks"] == 0 and stats["unverified_chunks"] == 0


def test_touch_range_on_node_populates_and_reports(node0):
    region = _region.Region(4 * MiB, 4096, 0)
    touched_by, where, query_errno = _chunksource.touch_range_on_node(region.address, 4 * MiB, node0, 4096)
    assert query_errno == 0 and where == {node0: 1024}
    assert "thread" in touched_by
    # Already bound: a thread whose CPUs are all the node's touches itself.
    cpus = sorted(numamem.topology().usable_cpus(node0))
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus[:1])
    try:
        other = _region.Region(MiB, 4096, 0)
        touched_by, where, _ = _chunksource.touch_range_on_node(other.address, MiB, node0, 4096)
    finally:
        os.sched_setaffinity(0, saved)
    assert touched_by.startswith("the calling thread (already bound") and where == {node0: 256}


def test_docker_default_profile_refusing_get_mempolicy_too():
    # Docker's default profile gates get_mempolicy with the other two behind CAP_SYS_NICE.
    result = _child("""
with numamem.on_node(0):
    a = attempt(lambda: float(np.ones(1000).sum()))
p = attempt(lambda: int(numamem.empty(8 << 20, np.uint8, node=0, policy="preferred").size))
s = attempt(lambda: numamem.empty(4096, np.uint8, node=0).size)
g = attempt(lambda: numamem._kernel.thread_policy())
print(json.dumps({"a": a, "p": p, "s": s, "g": g, "warnings": len(caught)}))
""", refuse=("mbind", "set_mempolicy", "get_mempolicy", "move_pages"))
    assert result["a"] == {"ok": True, "value": 1000.0} and result["p"] == {"ok": True, "value": 8 << 20}
    _assert_refused(result["s"], "mbind")
    _assert_refused(result["g"], "get_mempolicy")
    assert result["warnings"] == 2


def test_touch_range_on_a_node_without_cpus_touches_from_the_caller():
    # No CPU to bind a thread to (a node id the machine lacks stands in for a CPU-less node): the
    # calling thread touches, says so, and move_pages reports where that put the pages.
    region = _region.Region(MiB, 4096, 0)
    here = numamem.topology().memory_nodes()
    touched_by, where, query_errno = _chunksource.touch_range_on_node(region.address, MiB, 1000, 4096)
    assert touched_by == "the calling thread (no thread could be bound to the node's CPUs)"
    assert query_errno == 0 and sum(where.values()) == 256 and set(where) <= set(here)
