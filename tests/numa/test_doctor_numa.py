"""``numamem doctor`` in the guest, and the first-touch fallback's bound thread, against the kernel."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from numamem import _chunksource, _region

import kernelcheck as kc


def test_doctor_json_verifies_a_test_page_on_every_node(expected, memory_nodes):
    proc = subprocess.run([sys.executable, "-m", "numamem.cli", "doctor", "--json"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["trusted"] is True and data["format"] == "numamem-doctor/1"
    assert [n["id"] for n in data["topology"]["nodes"]] == [n["id"] for n in expected["nodes"]]
    assert all(call["permitted"] for call in data["calls"]), data["calls"]
    assert [page["node"] for page in data["test_pages"]] == memory_nodes
    for page in data["test_pages"]:
        assert page["verified"] and page["pages"] == {str(page["node"]): 1}, page
    assert data["cpuset"]["mems_allowed"] == memory_nodes


def test_doctor_screen_lists_every_node(expected):
    proc = subprocess.run([sys.executable, "-m", "numamem.cli", "doctor"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("numamem doctor: placement can be trusted")
    for n in expected["nodes"]:
        assert any(f"node {n['id']}: cpus" in line for line in lines)


@pytest.mark.requires("two_cpu_nodes")
def test_first_touch_fallback_places_from_a_thread_bound_to_the_target_node(expected, cpu_node):
    # The calling thread is bound to another node: the fallback must touch from cpu_node's CPUs.
    other = next(n for n in expected["nodes"] if n["cpus"] and n["mem_mib"] and n["id"] != cpu_node)
    # Under the default policy a page goes to the toucher's node only while that node is above
    # its low watermark; below it the kernel spills to the next node before reclaiming
    # (zone_reclaim_mode=0). The guest's node 0 fills with page cache (the host's files read over
    # 9p), so free it first: what is tested is where the toucher runs, not memory pressure.
    _drop_page_cache()
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, other["cpus"])
    try:
        region = _region.Region(2 << 20, 4096, 0)
        touched_by, where, query_errno = _chunksource.touch_range_on_node(region.address, 2 << 20, cpu_node, 4096)
    finally:
        os.sched_setaffinity(0, saved)
    assert touched_by == "a thread bound to the node's CPUs" and query_errno == 0
    # The witness asks the kernel itself.
    status = kc.move_pages_status(kc.page_addresses(region.address, region.address + (2 << 20)))
    assert where == kc.histogram(status), "the fallback must report where the kernel put the pages"
    # What first touch can promise: the target node gets pages, and the report says where every
    # page is. It does not put all of them there in these guests: with node 0 >1 GiB free and the
    # touching thread bound to node 0's CPU, 35-80% of the 512 pages landed on node 0 in four runs
    # (the rest on the caller's node 1); the cause is not found yet (see the issue 15 note), so the
    # fallback is documented as "reported, not guaranteed" and strict placement never uses it.
    assert where.get(cpu_node, 0) > 0 and sum(where.values()) == 512, (where, _free_mib(cpu_node))
    region.close()


def test_first_touch_fallback_on_each_memory_node(expected, node):
    spec = next(n for n in expected["nodes"] if n["id"] == node)
    region = _region.Region(1 << 20, 4096, 0)
    touched_by, where, _ = _chunksource.touch_range_on_node(region.address, 1 << 20, node, 4096)
    status = kc.move_pages_status(kc.page_addresses(region.address, region.address + (1 << 20)))
    assert kc.histogram(status) == where
    if spec["cpus"]:
        assert where == {node: 256}
    else:
        # A CPU-less node cannot be reached by first touch: the caller touches, and says so.
        assert touched_by == "the calling thread (no thread could be bound to the node's CPUs)"
    assert np.asarray(status).size == 256
    region.close()


def _drop_page_cache() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:  # the guest runs the tier as root
        f.write("3")


def _free_mib(node: int) -> int:
    text = open(f"/sys/devices/system/node/node{node}/meminfo").read()
    return int(text.split("MemFree:")[1].split()[0]) // 1024
