"""The capacity check against the node's available memory and the cgroup memory limit (issue 12 item 14).

Before: only the node's MemFree was read, only for ``bind``: inside a memory-limited container a
large populated array went past the cgroup's limit, and the memory cgroup's OOM killer, not an
exception, ended the process; ``preferred``/``interleave``/``local`` with populate were never
checked. The cgroup and meminfo readers are driven here with fabricated trees.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numamem
from numamem import _capacity, _cgroup
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


@pytest.fixture
def limits():
    """Point the capacity check (``numamem._capacity.use_limits``) at fabricated trees; restored after."""
    previous = []

    def use(**roots):
        before = _capacity.use_limits(**roots)
        if not previous:
            previous.append(before)

    yield use
    if previous:
        _capacity.use_limits(*previous[0])


@pytest.fixture
def limited(tmp_path, limits):
    """The process in a fabricated cgroup leaving 8 MiB of headroom."""
    proc, fs = _v2(tmp_path, limits={"box": (108 * MiB, 100 * MiB)}, own="/box")
    limits(proc_self_cgroup=proc, cgroup_fs=fs)
    return fs / "box"


def _node_meminfo(root, node, free_kib, inactive_file_kib=0):
    d = root / "devices/system/node" / f"node{node}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "meminfo").write_text(f"Node {node} MemTotal:  99999999 kB\nNode {node} MemFree:  {free_kib} kB\n"
                               f"Node {node} Inactive(file):  {inactive_file_kib} kB\n")


def test_node_available_counts_free_and_inactive_file_pages_only(tmp_path, limits, node0):
    # MemFree 3 MiB + Inactive(file) 2 MiB = 5 MiB; active file pages and reclaimable slab do not count.
    d = tmp_path / "devices/system/node" / f"node{node0}"
    d.mkdir(parents=True)
    (d / "meminfo").write_text(
        f"Node {node0} MemTotal:  99999999 kB\nNode {node0} MemFree:  3072 kB\n"
        f"Node {node0} Active(file):  409600 kB\nNode {node0} Inactive(file):  2048 kB\n"
        f"Node {node0} SReclaimable:  409600 kB\n")
    limits(sysfs=tmp_path)  # the system's cgroup (no limit here), the fabricated node
    assert _capacity.capacity(5 * MiB, node0) is None
    short = _capacity.capacity(5 * MiB + 4096, node0)
    assert (short.step, short.limit, short.available) == ("capacity", "node", 5 * MiB)


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


def test_bind_is_checked_against_the_nodes_available_memory(tmp_path, limits, node0, mapping_counter):
    _node_meminfo(tmp_path, node0, 3 * 1024, 2 * 1024)  # 5 MiB available
    limits(sysfs=tmp_path)
    with pytest.raises(NodeMemoryError, match="MemFree plus inactive file pages") as info:
        numamem.empty(8 * MiB, np.uint8, node=node0)
    assert info.value.node == node0 and info.value.free == 5 * MiB
    assert mapping_counter() == (0, 0)
    # preferred spills to other nodes by definition: the node's memory is no limit for it
    assert numamem.empty(8 * MiB, np.uint8, node=node0, policy="preferred", populate=True).nbytes == 8 * MiB


# ---- the pools' kernel chunk source: the same rule, in C (item 14: "pool chunks are never checked")
@pytest.mark.parametrize("policy", ["bind", "preferred"])
def test_a_pool_mapping_beyond_the_cgroup_headroom_is_refused_before_mapping(limited, node0, policy):
    pool = numamem.pools.get_pool(node0, policy)
    pool.release()
    mapped = pool.stats()["mapped"]
    with pytest.raises(NodeMemoryError, match=r"the cgroup memory limit leaves 8388608 bytes \(memory.max") as info:
        pool.malloc(16 * MiB)
    assert str(limited) in str(info.value) and "checked before mapping" in str(info.value)
    assert info.value.free == 8 * MiB and info.value.node == node0 and info.value.requested == 16 * MiB
    assert pool.stats()["mapped"] == mapped
    pool.free(pool.malloc(6 * MiB))  # within the headroom


@pytest.mark.parametrize("policy", ["bind", "preferred"])
def test_an_array_beyond_the_cgroup_headroom_inside_on_node_raises(limited, node0, policy):
    pool = numamem.pools.get_pool(node0, policy)
    pool.release()
    mapped = pool.stats()["mapped"]
    with numamem.on_node(node0, policy):
        with pytest.raises(MemoryError):  # NumPy's: it owns the failing call
            np.ones(16 * MiB, np.uint8)
        assert pool.stats()["mapped"] == mapped  # refused before mapping
        a = np.ones(6 * MiB, np.uint8)  # within the headroom
    assert a.sum() == 6 * MiB


def test_a_bind_pool_mapping_beyond_the_nodes_available_memory_is_refused(tmp_path, limits, node0):
    _node_meminfo(tmp_path, node0, 3 * 1024, 2 * 1024)  # 5 MiB available
    limits(sysfs=tmp_path)
    pool = numamem.pools.get_pool(node0)
    with pytest.raises(NodeMemoryError, match="MemFree plus inactive file pages; checked before mapping") as info:
        pool.malloc(8 * MiB)
    assert info.value.free == 5 * MiB and info.value.node == node0
    # preferred spills to other nodes by definition: the node's memory is no limit for it
    preferred = numamem.pools.get_pool(node0, "preferred")
    preferred.free(preferred.malloc(8 * MiB))


def test_thresholds_and_the_pools_fast_path(tmp_path, limits, node0):
    # The cgroup's headroom is compared from 2 MiB (a pool chunk) up, the node's memory from
    # CAPACITY_CHECK up; blocks carved from chunks already mapped read no limit at all.
    pool = numamem.pools.get_pool(node0)
    kept = pool.malloc(64)  # the pool has a chunk mapped
    proc, fs = _v2(tmp_path, limits={"box": (100 * MiB, 100 * MiB)}, own="/box")  # no headroom
    _node_meminfo(tmp_path, node0, 1024)  # 1 MiB available
    limits(sysfs=tmp_path, proc_self_cgroup=proc, cgroup_fs=fs)
    assert _capacity.CGROUP_CHECK == 2 * MiB and _capacity.CAPACITY_CHECK == 4 * MiB
    assert _capacity.capacity(_capacity.CGROUP_CHECK - 1, node0) is None
    assert _capacity.capacity(_capacity.CGROUP_CHECK).limit == "cgroup"
    pool.free(pool.malloc(1000))  # carved from the mapped chunk: no check
    with pytest.raises(NodeMemoryError, match="the cgroup memory limit leaves 0 bytes"):
        pool.malloc(3 * MiB)  # a direct mapping
    limits(sysfs=tmp_path)  # the system's cgroup (no limit here), the fabricated node
    assert _capacity.capacity(_capacity.CAPACITY_CHECK - 4096, node0) is None
    assert _capacity.capacity(_capacity.CAPACITY_CHECK, node0).limit == "node"
    pool.free(kept)


# ---- a real memory cgroup: an exception, not the memory cgroup's OOM killer --------------------
CHILD = """
import sys
import numpy as np
import numamem

node, want = int(sys.argv[1]), int(sys.argv[2])
try:
    with numamem.on_node(node):
        np.ones(want, np.uint8)
except MemoryError:
    print("on_node: MemoryError")
for policy in ("bind", "preferred"):
    try:
        numamem.pools.get_pool(node, policy).malloc(want)
    except numamem.NodeMemoryError as exc:
        print(f"{policy} pool:", exc)
    try:
        numamem.ones(want, np.uint8, node=node, policy=policy, populate=True)
    except numamem.NodeMemoryError as exc:
        print(f"{policy} array:", exc)
kept = []
try:  # small arrays: each new 2 MiB pool chunk is checked
    with numamem.on_node(node):
        while True:
            kept.append(np.ones(1 << 20, np.uint8))
except MemoryError:
    print("small arrays: MemoryError after", len(kept))
del kept
with numamem.on_node(node):
    small = np.ones(1 << 20, np.uint8)  # the process lives on, and the pools serve it
print("alive", int(small.sum()))
"""


def _child_memory_cgroup(name):
    """Make a child of this process's memory cgroup: (directory, procs file), or a reason it cannot be had.

    cgroup v2 when the memory controller is enabled for this cgroup's children, else v1's memory
    hierarchy (hybrid hosts); either needs root.
    """
    if os.geteuid() != 0:
        return None, "not root"
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError as exc:
        return None, f"/proc/self/cgroup: {exc}"
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            here = Path(_cgroup.CGROUP_FS, path.lstrip("/"))
            try:
                enabled = (here / "cgroup.subtree_control").read_text().split()
            except OSError:
                enabled = []
            if "memory" in enabled:
                candidates.append((here / name, "memory.max"))
        elif "memory" in controllers.split(","):
            candidates.append((Path(_cgroup.CGROUP_FS, "memory", path.lstrip("/"), name), "memory.limit_in_bytes"))
    for directory, limit_file in candidates:
        try:
            directory.mkdir()
        except OSError:
            continue
        return (directory, limit_file), None
    return None, "no memory cgroup can be made here (no v2 delegation of the memory controller, no v1 hierarchy)"


def test_a_real_memory_cgroup_gives_exceptions_not_an_oom_kill(node0):
    made, reason = _child_memory_cgroup(f"numamem-test-{os.getpid()}")
    if made is None:
        pytest.skip(f"a memory-limited cgroup cannot be created: {reason}")
    directory, limit_file = made
    try:
        (directory / limit_file).write_text(str(192 * MiB))
        if (directory / "memory.swap.max").exists():
            (directory / "memory.swap.max").write_text("0")

        def enter():  # in the child, before Python starts: it resolves its cgroup at import
            (directory / "cgroup.procs").write_text(str(os.getpid()))

        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        done = subprocess.run([sys.executable, "-c", CHILD, str(node0), str(256 * MiB)], preexec_fn=enter,
                              env=env, capture_output=True, text=True, timeout=120)
    finally:
        directory.rmdir()
    assert done.returncode == 0, f"child ended with {done.returncode} (-9: the OOM killer)\n{done.stdout}{done.stderr}"
    lines = done.stdout.splitlines()
    assert lines[0] == "on_node: MemoryError" and lines[-1] == f"alive {MiB}", done.stdout
    assert lines[-2].startswith("small arrays: MemoryError after"), done.stdout
    for what in ("bind pool", "preferred pool", "bind array", "preferred array"):
        (line,) = [x for x in lines if x.startswith(what + ":")]
        assert "the cgroup memory limit leaves" in line and str(directory) in line, line
