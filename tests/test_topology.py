"""Topology parsing against this machine and against fabricated sysfs trees."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

import numamem
from numamem import _topology
from numamem._topology import parse_cpulist, read_topology


def test_parse_cpulist():
    assert parse_cpulist("0-3,8,10-11\n") == (0, 1, 2, 3, 8, 10, 11)
    assert parse_cpulist("") == ()
    assert parse_cpulist("0-6:2") == (0, 2, 4, 6)


def test_real_topology_is_consistent(topo):
    assert topo.nodes and topo.node_ids == tuple(sorted(topo.node_ids))
    for node in topo.nodes:
        assert topo.distance(node.id, node.id) == 10 or not topo.numa
        assert node.mem_total >= node.mem_free >= 0
    all_cpus = [c for n in topo.nodes for c in n.cpus]
    assert len(all_cpus) == len(set(all_cpus))
    assert set(os.sched_getaffinity(0)) <= set(all_cpus) | set(topo.allowed_cpus)
    assert topo.allowed_nodes <= set(topo.node_ids)
    with pytest.raises(ValueError, match="does not exist"):
        topo.node(max(topo.node_ids) + 1)
    json.dumps(topo.to_dict())


def _fake_tree(tmp_path, thp="always [madvise] never"):
    """A three-node machine with sparse ids 0, 2, 5: node 5 has memory but no CPU."""
    root = tmp_path / "sys"
    nodes = root / "devices/system/node"
    layout = {0: ("0-1", 4096, 1024), 2: ("2-3", 2048, 2000), 5: ("", 512, 500)}
    distances = {0: "10 21 31", 2: "21 10 41", 5: "31 41 10"}
    (nodes).mkdir(parents=True)
    (nodes / "online").write_text("0,2,5\n")
    for node, (cpus, total_mib, free_mib) in layout.items():
        d = nodes / f"node{node}"
        d.mkdir()
        (d / "cpulist").write_text(cpus + "\n")
        (d / "meminfo").write_text(
            f"Node {node} MemTotal:       {total_mib * 1024} kB\nNode {node} MemFree:        {free_mib * 1024} kB\n"
            f"Node {node} MemUsed:        1 kB\n")
        (d / "distance").write_text(distances[node] + "\n")
        hp = d / "hugepages/hugepages-2048kB"
        hp.mkdir(parents=True)
        (hp / "nr_hugepages").write_text("4\n" if node == 2 else "0\n")
        (hp / "free_hugepages").write_text("3\n" if node == 2 else "0\n")
    mm = root / "kernel/mm/transparent_hugepage"
    mm.mkdir(parents=True)
    (mm / "enabled").write_text(thp + "\n")
    (mm / "hpage_pmd_size").write_text("2097152\n")
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCpus_allowed_list:\t0-3\nMems_allowed_list:\t0,2\n")
    return str(root), str(status)


def test_fabricated_sparse_machine(tmp_path):
    root, status = _fake_tree(tmp_path)
    topo = read_topology(root, status)
    assert topo.node_ids == (0, 2, 5)
    assert topo.node(5).cpus == () and not topo.node(5).has_cpus and topo.node(5).has_memory
    assert topo.node(2).cpus == (2, 3) and topo.node(2).mem_free == 2000 * 2**20
    assert topo.distance(0, 5) == 31 and topo.distance(5, 2) == 41 and topo.distance(2, 0) == 21
    assert topo.node(2).hugepages[2 << 20].free == 3 and topo.node(2).hugepages[2 << 20].free_bytes == 6 << 20
    assert topo.allowed_nodes == {0, 2} and topo.allowed_cpus == {0, 1, 2, 3}
    assert topo.thp == "madvise" and topo.thp_size == 2 << 20
    assert topo.hugepage_sizes() == (2 << 20,)
    data = topo.to_dict()
    assert data["distances"] == [[10, 21, 31], [21, 10, 41], [31, 41, 10]]
    assert [n["id"] for n in data["nodes"]] == [0, 2, 5]


def test_fabricated_thp_never_and_no_numa(tmp_path):
    root, status = _fake_tree(tmp_path, thp="always madvise [never]")
    assert read_topology(root, status).thp == "never"
    empty = tmp_path / "bare"
    empty.mkdir()
    topo = read_topology(str(empty), status)
    assert not topo.numa and topo.node_ids == (0,) and topo.thp == "unsupported"


def test_agrees_with_numactl(topo):
    try:
        out = subprocess.run(["numactl", "--hardware"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("numactl is not installed")
    for node in topo.nodes:
        line = next(l for l in out.splitlines() if l.startswith(f"node {node.id} cpus:"))
        assert tuple(int(c) for c in line.split(":")[1].split()) == node.cpus
        size = next(l for l in out.splitlines() if l.startswith(f"node {node.id} size:"))
        assert abs(int(size.split()[3]) * 2**20 - node.mem_total) < 2**20


def test_cli_topology_json(capsys):
    from numamem.cli import main
    assert main(["topology", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [n["id"] for n in data["nodes"]] == list(numamem.topology().node_ids)
    assert main(["topology"]) == 0
    assert "distances" in capsys.readouterr().out


def test_node_checks_on_a_sparse_machine(tmp_path):
    """One rule for "may place memory here" and one for "may run a thread here", naming the argument."""
    topo = read_topology(*_fake_tree(tmp_path))  # nodes 0, 2, 5; node 5 CPU-less; Mems_allowed 0,2
    assert topo.memory_nodes() == [0, 2]
    assert topo.check_memory_node(2).id == 2
    with pytest.raises(ValueError, match=r"^--nodes=3: no such node; nodes are \[0, 2, 5\]"):
        topo.check_memory_node(3, "--nodes")
    with pytest.raises(ValueError, match=r"^node=5: node 5 is not allowed by this process's cpuset"):
        topo.check_memory_node(5)
    assert topo.check_cpu_node(2) == {2, 3}
    with pytest.raises(ValueError, match=r"^node=5: node 5 has no CPUs"):
        topo.check_cpu_node(5)
    with pytest.raises(ValueError, match=r"^node=1: no such node"):
        topo.check_cpu_node(1)


@pytest.mark.parametrize("refresh", ["no", 1, None])
def test_refresh_must_be_a_bool(refresh, monkeypatch):
    # 'no' once meant a refresh (issue 12, item 13's class); without a snapshot None and 1 are
    # refused too instead of being read as False/True.
    monkeypatch.setattr(_topology, "_cached", None)
    with pytest.raises(TypeError, match="refresh"):
        _topology.topology(refresh=refresh)
