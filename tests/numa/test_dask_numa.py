"""numamem.dask on a multi-node guest: preloaded workers on their own nodes, placed chunks, and
reductions computed where the chunks are. Every placement is read back with ``move_pages``
(kernelcheck), never from numamem.

One small cluster per guest (two one-thread worker processes with the automatic preload) serves
the whole module: the guest is emulated, and starting Python with distributed there takes long,
so timeouts are generous.
"""
from __future__ import annotations

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster, get_task_stream, wait

import numamem
import numamem.dask as nd
from numamem import _workerbind

import kernelcheck as kc

SLOW = {"distributed.comm.timeouts.connect": "600s", "distributed.comm.timeouts.tcp": "900s",
        "distributed.scheduler.worker-ttl": "30 minutes"}


def _bindable(expected) -> list[int]:
    return [n["id"] for n in expected["nodes"] if n["cpus"] and n["mem_mib"]]


def _loopback_works() -> str | None:
    """Dask's scheduler and workers talk over TCP on 127.0.0.1: is the guest's loopback up?"""
    import socket

    try:
        with socket.create_server(("127.0.0.1", 0)) as server, \
                socket.create_connection(server.getsockname(), timeout=30):
            return None
    except OSError as exc:
        return f"TCP on 127.0.0.1 fails in this guest ({exc}); the guest must bring up 'lo'"


@pytest.fixture(scope="module")
def client(expected, tmp_path_factory):
    problem = _loopback_works()
    if problem:
        pytest.fail(problem, pytrace=False)
    claims = tmp_path_factory.mktemp("claims")
    with dask.config.set(SLOW), pytest.MonkeyPatch.context() as mp:
        mp.setenv("NUMAMEM_WORKER_CLAIMS", str(claims))
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=0,
                          dashboard_address=None, preload=["numamem.dask"]) as cluster, \
                Client(cluster, timeout=600) as c:
            c.wait_for_workers(2, timeout=600)
            with c.as_current():
                yield c


def _worker_nodes(client) -> dict[str, int]:
    return {address: b.node for address, b in client.run(nd.worker_binding).items()}


@pytest.mark.requires("two_cpu_nodes")
def test_two_preloaded_workers_each_allocate_on_their_own_node(client, expected):
    nodes = _worker_nodes(client)
    assert sorted(nodes.values()) == _bindable(expected)[:2], "workers were not spread over the nodes"

    def task_view():
        import os

        import kernelcheck as kc  # the worker process has the test's sys.path

        fresh = np.ones(40 * 2**20 // 8)  # NumPy memory a task makes (the on_node pool)
        return {"node": nd.worker_node(), "cpus": sorted(os.sched_getaffinity(0)),
                "numpy": kc.histogram(kc.nodes_of(fresh)),
                "first_touch": kc.histogram(kc.first_touch_nodes())}  # the thread's own policy

    for address, node in nodes.items():
        seen = client.submit(task_view, workers=[address], pure=False).result(timeout=600)
        assert seen["node"] == node
        assert seen["cpus"] == expected["nodes"][node]["cpus"]
        assert list(seen["numpy"]) == [node], seen
        assert list(seen["first_touch"]) == [node], seen


@pytest.mark.requires("two_cpu_nodes")
def test_report_matches_the_kernel(client):
    nodes = _worker_nodes(client)
    for r in nd.report(client):
        assert r.node == nodes[r.address]
        assert list(r.task_pages) == [r.node] and r.allocator == f"numamem_node{r.node}_bind"


def _placed(client):
    x = nd.persist(nd.placed_array((64, 4096), np.float64, chunks=(16, 4096), fill="random"))
    wait(x)
    return x


@pytest.mark.requires("two_cpu_nodes")
def test_placed_chunks_are_on_their_nodes_and_held_by_workers_of_those_nodes(client):
    x = _placed(client)
    chosen = nd.chunk_nodes(x.chunks[0], sorted(set(_worker_nodes(client).values())))
    assert len(set(chosen)) == 2
    name = x.name

    def held(dask_worker):
        import kernelcheck as kc

        return {str(key): (nd.worker_node(dask_worker), kc.histogram(kc.nodes_of(value)))
                for key, value in dask_worker.data.items() if isinstance(key, tuple) and key[0] == name}

    found = {}
    for per_worker in client.run(held).values():
        found.update(per_worker)
    assert len(found) == 4
    for i, node in enumerate(chosen):
        worker_node, pages = found[str((x.name, i, 0))]
        assert list(pages) == [node], (i, pages)
        assert worker_node == node, f"chunk {i} of node {node} is held by a worker of node {worker_node}"


@pytest.mark.requires("two_cpu_nodes")
def test_a_reduction_runs_on_workers_of_each_chunks_node(client):
    x = _placed(client)
    nodes = _worker_nodes(client)
    localized, = nd.localize(np.sqrt(x).sum(axis=1))
    want = nd.task_nodes(localized)
    with get_task_stream(client) as stream:
        total = client.compute(localized, optimize_graph=False).result(timeout=600)
    ran = {t["key"]: nodes[t["worker"]] for t in stream.data if t["key"] in want}
    assert set(ran.values()) == set(nodes.values()), "both nodes' workers should have worked"
    for key, node in ran.items():
        assert node == want[key], f"task {key} of node {want[key]} ran on a worker of node {node}"
    np.testing.assert_allclose(total, np.sqrt(x.compute()).sum(axis=1))


@pytest.mark.requires("memless")
def test_automatic_choice_skips_nodes_without_cpus_or_memory(expected):
    """On ``memless`` only node 0 has both: workers stay plain, and explicit nodes without
    memory or CPUs are refused by name."""
    candidates, why = _workerbind.candidate_nodes(None)
    assert candidates == [] and "1 NUMA node" in why
    for n in expected["nodes"]:
        if not (n["cpus"] and n["mem_mib"]):
            with pytest.raises(ValueError, match=f"--numamem-nodes={n['id']}"):
                _workerbind.candidate_nodes([n["id"]], "--numamem-nodes")


def test_plugin_moves_the_arrays_a_worker_holds_onto_its_node(memory_nodes):
    """What NumaWorkerPlugin does to a running worker's data, on a stand-in worker (no cluster):
    numamem arrays move in place, other arrays are copied; both end on the worker's node."""
    from types import SimpleNamespace

    from numamem.dask._worker import _move_data

    source, target = memory_nodes[0], memory_nodes[-1]
    placed = numamem.full((256, 1024), 3.0, node=source)
    with numamem.on_node(source):
        pooled = np.arange(64 * 1024, dtype=np.float64)  # a pool block: copied, not moved
    worker = SimpleNamespace(data={"placed": placed, "pooled": pooled, "text": "not an array",
                                   "already": numamem.zeros(4096, node=target)})
    moved = _move_data(worker, target)
    assert moved == placed.nbytes + pooled.nbytes
    assert worker.data["placed"] is placed  # in place
    for key in ("placed", "pooled", "already"):
        pages = kc.histogram(kc.nodes_of(worker.data[key]))
        assert list(pages) == [target], (key, pages)
    assert float(worker.data["placed"].sum()) == 3.0 * placed.size
    assert np.array_equal(worker.data["pooled"], np.arange(64 * 1024, dtype=np.float64))
