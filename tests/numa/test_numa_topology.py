"""numamem.topology() against the guest kernel (sysfs, numactl), and the witness itself."""
from __future__ import annotations

import numamem

import kernelcheck as kc


def test_guest_has_the_promised_nodes(expected):
    """The guest is really multi-node: sysfs, numactl and the promise agree on ids and CPUs."""
    hw = kc.numactl_hardware()
    want = [n["id"] for n in expected["nodes"]]
    assert len(want) >= 2
    assert kc.sysfs_nodes() == want
    assert hw.nodes == want
    for n in expected["nodes"]:
        assert hw.cpus[n["id"]] == tuple(n["cpus"])
        # The firmware gives each node the memory asked for, less what the kernel reserved.
        assert 0.7 * n["mem_mib"] <= hw.size_mb[n["id"]] <= n["mem_mib"]


def test_topology_matches_numactl(expected):
    topo = numamem.topology()
    hw = kc.numactl_hardware()
    assert tuple(topo.node_ids) == tuple(hw.nodes)
    for nid in hw.nodes:
        node = topo.node(nid)
        assert node.id == nid
        assert tuple(node.cpus) == hw.cpus[nid]
        assert node.has_cpus == bool(hw.cpus[nid])
        assert node.has_memory == (hw.size_mb[nid] > 0)
        # numactl prints MemTotal >> 20; allow one MiB of rounding.
        assert abs(node.mem_total / 2**20 - hw.size_mb[nid]) <= 1
        assert 0 <= node.mem_free <= node.mem_total
        assert (node.mem_free > 0) == node.has_memory
        for other in hw.nodes:
            assert topo.distance(nid, other) == hw.distances[(nid, other)]
    # The kernel's own answer: this process's cpuset (Mems_allowed holds only nodes with memory).
    status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines()
                  if ":\t" in line)
    mems_allowed = set(kc.cpulist(status["Mems_allowed_list"]))
    assert set(topo.allowed_nodes) == mems_allowed
    assert mems_allowed == {nid for nid in hw.nodes if hw.size_mb[nid] > 0}


def test_topology_distances_and_cpuless_node_match_promise(expected):
    topo = numamem.topology()
    for a in expected["nodes"]:
        for b in expected["nodes"]:
            assert topo.distance(a["id"], b["id"]) == expected["distances"][a["id"]][b["id"]]
        assert topo.node(a["id"]).has_cpus == bool(a["cpus"])
        assert topo.node(a["id"]).has_memory == (a["mem_mib"] > 0)
    cpuless = [n["id"] for n in expected["nodes"] if not n["cpus"]]
    assert [n.id for n in topo.nodes if not n.has_cpus] == cpuless
    d = topo.to_dict()
    assert isinstance(d, dict) and d  # serialisable summary exists; its format is the CLI's


def test_topology_free_memory_tracks_the_kernel():
    """mem_free is read fresh from the node's meminfo, not cached from import time."""
    for nid in kc.sysfs_nodes():
        kernel_free = kc.sysfs_meminfo(nid)["MemFree"]
        ours = numamem.topology().node(nid).mem_free
        # Other allocations can happen between the two reads; 32 MiB is far above that noise.
        assert abs(ours - kernel_free) < 32 * 2**20


def test_witness_sees_memory_placed_by_libnuma_itself(node):
    """The checker tells nodes apart: memory from libnuma's numa_alloc_onnode (not numamem),
    touched, is reported on that node by both move_pages and get_mempolicy."""
    import ctypes

    import numpy as np

    lib = ctypes.CDLL("libnuma.so.1")
    lib.numa_alloc_onnode.restype = ctypes.c_void_p
    lib.numa_alloc_onnode.argtypes = [ctypes.c_size_t, ctypes.c_int]
    lib.numa_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = 64 * kc.PAGE
    address = lib.numa_alloc_onnode(size, node)
    assert address
    try:
        ctypes.memset(address, 1, size)
        status = kc.move_pages_status(kc.page_addresses(address, address + size))
        assert kc.histogram(status) == {node: 64}
        assert kc.node_of_address(address) == node
        assert set(np.unique(status).tolist()) == {node}
    finally:
        lib.numa_free(address, size)
