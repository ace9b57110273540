"""Fixtures of the multi-node tier; these tests run only inside a guest booted by tools/numa-vm.

tools/numa-vm writes the topology it promised the guest to a JSON file and passes its path in
``NUMAMEM_VM_TOPOLOGY``. Without it (e.g. ``pytest tests/numa`` on the one-node host) the tier
refuses to run: an error, not a skip, so a mis-wired CI cannot turn the tier green by skipping.
Tests are parametrised from that file (every node, every node with CPUs, ...), so nothing needs
skipping inside the guest either.
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

import kernelcheck as kc


def _load_expected() -> dict:
    path = os.environ.get("NUMAMEM_VM_TOPOLOGY")
    if not path:
        raise pytest.UsageError(
            "tests/numa is the multi-node tier: it runs inside a NUMA guest, started with "
            "tools/numa-vm (NUMAMEM_VM_TOPOLOGY is not set)")
    return json.loads(Path(path).read_text())


def pytest_configure(config):
    config.numa_expected = _load_expected()
    config.addinivalue_line(
        "markers", "requires(feature): only for topologies with that feature "
        "('memless': a node with CPUs and no memory; 'two_cpu_nodes': two nodes with CPUs and "
        "memory); deselected elsewhere, never skipped")


def topology_features(expected) -> set[str]:
    features = set()
    if any(n["mem_mib"] == 0 for n in expected["nodes"]):
        features.add("memless")
    if len(_node_ids(expected, _bindable)) >= 2:
        features.add("two_cpu_nodes")
    return features


#: Guest tests of the optional engines (Dask clusters, ONNX Runtime sessions, PyTorch replicas).
#: Under TCG emulation importing those packages and starting worker processes is slow even with
#: Python read from the guest's disk image (tools/numa-vm): about five minutes for both modules.
#: So they run in one topology, ``two`` (the two-node guest their issues ask for), where they are
#: part of the required tier; ``--frameworks`` runs them in the other topologies too. Elsewhere
#: they are not collected at all (so not even imported), which is neither a skip nor a pass.
FRAMEWORK_MODULES = frozenset({"test_dask_numa.py", "test_engines_numa.py"})
FRAMEWORK_TOPOLOGY = "two"


def pytest_ignore_collect(collection_path, config):
    if collection_path.name not in FRAMEWORK_MODULES:
        return None
    if config.numa_expected.get("name") == FRAMEWORK_TOPOLOGY or config.getoption("--frameworks"):
        return None
    return True


def pytest_collection_modifyitems(config, items):
    """Deselect (not skip) tests whose topology feature this guest lacks.

    A skip would make tools/numa-vm fail the tier, as it should for a test that could not run;
    a test that does not apply to this topology is simply not part of its run.
    """
    features = topology_features(config.numa_expected)
    keep, drop = [], []
    for item in items:
        needs = {m.args[0] for m in item.iter_markers("requires")}
        (keep if needs <= features else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _expected_of(request) -> dict:
    return request.config.numa_expected


def _node_ids(expected, predicate=lambda n: True):
    return [n["id"] for n in expected["nodes"] if predicate(n)]


def _has_memory(n) -> bool:
    return n["mem_mib"] > 0


def _bindable(n) -> bool:
    """A node a thread can be bound to with its memory: CPUs and memory."""
    return bool(n["cpus"]) and n["mem_mib"] > 0


def memory_node_ids(expected) -> list[int]:
    """Nodes that can hold memory (every node except memory-less ones)."""
    return _node_ids(expected, _has_memory)


def pytest_generate_tests(metafunc):
    """Parametrise by the promised topology.

    ``node``: every node with memory (the CPU-less one included); ``cpu_node``: nodes with CPUs
    and memory; ``memless_node``: nodes with CPUs and no memory (use with
    ``@pytest.mark.requires("memless")``); ``interleave_nodes``: every set of two or more
    memory nodes.
    """
    expected = metafunc.config.numa_expected
    if "node" in metafunc.fixturenames:
        metafunc.parametrize("node", _node_ids(expected, _has_memory), ids=lambda n: f"node{n}")
    if "cpu_node" in metafunc.fixturenames:
        metafunc.parametrize("cpu_node", _node_ids(expected, _bindable), ids=lambda n: f"node{n}")
    if "memless_node" in metafunc.fixturenames:
        memless = _node_ids(expected, lambda n: not _has_memory(n))
        # An empty list would be a skip; such a test carries requires("memless") and is
        # deselected, so give it a value that can never be used.
        metafunc.parametrize("memless_node", memless or [None], ids=lambda n: f"node{n}")
    if "interleave_nodes" in metafunc.fixturenames:
        ids = _node_ids(expected, _has_memory)
        combos = [list(c) for r in range(2, len(ids) + 1) for c in itertools.combinations(ids, r)]
        metafunc.parametrize("interleave_nodes", combos,
                             ids=lambda c: "nodes" + "-".join(map(str, c)))


@pytest.fixture(scope="session")
def memory_nodes(request) -> list[int]:
    """Ids of the nodes that have memory, in id order."""
    return memory_node_ids(_expected_of(request))


@pytest.fixture(scope="session")
def expected(request):
    """The topology tools/numa-vm promised (contents of expected.json)."""
    return _expected_of(request)


@pytest.fixture(scope="session", autouse=True)
def no_numa_balancing():
    """Automatic NUMA balancing off in the guest while the tier runs (put back afterwards).

    The Debian kernel turns it on for NUMA machines. Its scanner marks the PTEs of memory under
    the default policy as NUMA hints, and on this 6.1 kernel ``move_pages`` then reports such
    pages as absent (-ENOENT) until they are touched again; it may also migrate them. Strictly
    bound memory is not scanned, but first-touch memory (the preferred fallback's) is, which made
    its guest tests see pages vanish or move between the touch and the witness's look. Tests of
    where first touch puts pages need the kernel not to move them; ``numamem doctor`` tells users
    when balancing is on.
    """
    path = "/proc/sys/kernel/numa_balancing"
    try:
        with open(path) as f:
            saved = f.read().strip()
        with open(path, "w") as f:
            f.write("0")
    except OSError:  # no such knob (kernel without NUMA balancing): nothing to turn off
        yield
        return
    yield
    with open(path, "w") as f:
        f.write(saved)


@pytest.fixture(scope="session", autouse=True)
def guest(request):
    """Fail every test unless this really is the multi-node guest that was promised.

    Reads ``/sys/devices/system/node`` (not numamem): the node ids, each node's CPUs and the
    distance matrix must be exactly those of expected.json. A guest that booted with fewer nodes
    (e.g. a vng that ignored ``--numa``) would otherwise make every placement test trivially pass.
    """
    exp = request.config.numa_expected
    want = _node_ids(exp)
    have = kc.sysfs_nodes()
    if have != want:
        pytest.fail(f"guest shows NUMA nodes {have} in {kc.SYSFS_NODES}, topology "
                    f"{exp['name']!r} promised {want}", pytrace=False)
    for n in exp["nodes"]:
        cpus = kc.sysfs_cpus(n["id"])
        if cpus != tuple(n["cpus"]):
            pytest.fail(f"node {n['id']} has CPUs {cpus}, expected {n['cpus']}", pytrace=False)
        dist = kc.sysfs_distances(n["id"])
        if dist != exp["distances"][n["id"]]:
            pytest.fail(f"node {n['id']} distances {dist}, expected {exp['distances'][n['id']]}",
                        pytrace=False)
    return exp
