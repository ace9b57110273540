"""The capacity check against the node's available memory and the cgroup memory limit (issue 12 item 14).

Before: only the node's MemFree was read, only for ``bind``: inside a memory-limited container a
large populated array went past the cgroup's limit, and the memory cgroup's OOM killer, not an
exception, ended the process; ``preferred``/``interleave``/``local`` with populate were never
checked. The cgroup and meminfo readers are driven here with fabricated trees.
"""
import numpy as np
import pytest

import numamem
from numamem import _cgroup, _topology
from numamem.errors import NodeMemoryError

MiB = 1 << 20


def _v2(tmp_path, own="/a/b", limits=None):
    proc = tmp_path / "cgroup"
    proc.write_text(f"0::{own}\n")
    fs = tmp_path / "fs"
    for rel, (limit, usage) in (limits or {}).items():
        d = fs / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.max").write_text(f"{limit}\n")
        (d / "memory.current").write_text(f"{usage}\n")
    (fs / own.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return proc, fs


def test_v2_limit_is_the_tightest_over_the_ancestors(tmp_path):
    proc, fs = _v2(tmp_path, limits={"a": (100 * MiB, 90 * MiB), "a/b": ("max", 5 * MiB)})
    got = _cgroup.cgroup_memory(proc, fs)
    assert (got.path, got.limit, got.usage, got.version, got.headroom) == (
        str(fs / "a"), 100 * MiB, 90 * MiB, 2, 10 * MiB)
    assert "memory.max 104857600 - memory.current 94371840" in got.describe()


def test_v2_without_any_limit_is_none(tmp_path):
    proc, fs = _v2(tmp_path, limits={"a": ("max", MiB), "a/b": ("max", MiB)})
    assert _cgroup.cgroup_memory(proc, fs) is None


def test_v2_inside_a_cgroup_namespace_reads_the_mount(tmp_path):
    proc, fs = _v2(tmp_path, own="/", limits={".": (64 * MiB, 60 * MiB)})
    assert _cgroup.cgroup_memory(proc, fs).headroom == 4 * MiB


def test_v1_memory_controller_wins_on_a_hybrid_host(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("5:cpu,cpuacct:/\n4:memory:/docker/abc\n0::/\n")
    fs = tmp_path / "fs"
    d = fs / "memory/docker/abc"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text(str(256 * MiB))
    (d / "memory.usage_in_bytes").write_text(str(200 * MiB))
    (fs / "memory/memory.limit_in_bytes").write_text("9223372036854771712")  # the root: no limit
    (fs / "memory/memory.usage_in_bytes").write_text(str(900 * MiB))
    got = _cgroup.cgroup_memory(proc, fs)
    assert (got.version, got.headroom, got.path) == (1, 56 * MiB, str(d))
    assert "memory.limit_in_bytes" in got.describe()


def test_no_cgroup_file_means_no_limit(tmp_path):
    assert _cgroup.cgroup_memory(tmp_path / "missing", tmp_path) is None


def test_node_available_memory_counts_free_and_inactive_file_pages(tmp_path):
    d = tmp_path / "devices/system/node/node3"
    d.mkdir(parents=True)
    (d / "meminfo").write_text(
        "Node 3 MemTotal:       1000 kB\nNode 3 MemFree:         100 kB\nNode 3 Active(file):     400 kB\n"
        "Node 3 Inactive(file):   200 kB\nNode 3 SReclaimable:     50 kB\n")
    assert _topology.node_available_memory(3, tmp_path) == 300 * 1024


@pytest.fixture
def limited(tmp_path, monkeypatch):
    """The process in a fabricated cgroup leaving 8 MiB of headroom."""
    proc, fs = _v2(tmp_path, limits={"box": (108 * MiB, 100 * MiB)}, own="/box")
    monkeypatch.setattr(_cgroup, "PROC_SELF_CGROUP", str(proc))
    monkeypatch.setattr(_cgroup, "CGROUP_FS", str(fs))
    return fs / "box"


@pytest.mark.parametrize("kw", [dict(), dict(policy="preferred", populate=True),
                                dict(policy="interleave", populate=True, nodes="all"),
                                dict(policy="local", populate=True)])
def test_a_cgroup_limit_below_the_request_is_a_node_memory_error(limited, node0, topo, mapping_counter, kw):
    if kw.get("nodes") == "all":
        kw = dict(kw, nodes=[n.id for n in topo.nodes if n.has_memory and n.id in topo.allowed_nodes])
    elif kw.get("policy") != "local":
        kw = dict(kw, node=node0)
    with pytest.raises(NodeMemoryError, match=r"the cgroup memory limit leaves 8388608 bytes \(memory.max") as info:
        numamem.empty(16 * MiB, np.uint8, **kw)
    assert str(limited) in str(info.value) and info.value.free == 8 * MiB
    assert mapping_counter() == (0, 0)
    a = numamem.empty(6 * MiB, np.uint8, **kw)  # within the headroom
    assert a.nbytes == 6 * MiB


def test_lazy_placement_is_not_checked(limited, node0):
    a = numamem.empty(16 * MiB, np.uint8, node=node0, populate=False)
    assert a.nbytes == 16 * MiB


def test_bind_is_checked_against_the_nodes_available_memory(monkeypatch, node0, mapping_counter):
    monkeypatch.setattr(_topology, "node_available_memory", lambda node, sysfs_root=None: 5 * MiB)
    with pytest.raises(NodeMemoryError, match="MemFree plus inactive file pages") as info:
        numamem.empty(8 * MiB, np.uint8, node=node0)
    assert info.value.node == node0 and info.value.free == 5 * MiB
    assert mapping_counter() == (0, 0)
    # preferred spills to other nodes by definition: the node's memory is no limit for it
    assert numamem.empty(8 * MiB, np.uint8, node=node0, policy="preferred", populate=True).nbytes == 8 * MiB
