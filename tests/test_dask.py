"""numamem.dask on one machine: preloaded LocalCluster workers, the plugin, placed dask arrays.

This machine has one NUMA node, so workers are bound to node 0 explicitly (``--numamem-nodes 0``);
the default (automatic) preload is the single-node path, which must warn and leave plain workers.
Clusters are small (two one-thread workers) and shared per module: the 2-core machine is busy.
"""
from __future__ import annotations


import numpy as np
import pytest

# The test command installs the dask extra: a missing package fails here, never skips.
import distributed  # noqa: E402,F401

import dask  # noqa: E402
import dask.array as da  # noqa: E402
from distributed import (  # noqa: E402
    Client, LocalCluster, Nanny, Scheduler, SpecCluster, get_task_stream, wait,
)

import numamem  # noqa: E402
import numamem.dask as nd  # noqa: E402

TIMEOUT = "120s"  # cluster start and close on a loaded 2-core machine
BOUND = {"preload": ["numamem.dask"], "preload_argv": ["--numamem-nodes", "0"]}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """LocalCluster(processes=True) of two one-thread workers, preloaded and bound to node 0."""
    claims = tmp_path_factory.mktemp("claims")
    with dask.config.set({"distributed.comm.timeouts.connect": TIMEOUT}), \
            pytest.MonkeyPatch.context() as mp:
        mp.setenv("NUMAMEM_WORKER_CLAIMS", str(claims))
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                          **BOUND) as cluster, Client(cluster) as c:
            c.wait_for_workers(2, timeout=120)
            yield c


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One worker bound to node 0 (``bound``, NumPy's allocator under the node's policy) and one
    with the automatic preload (``plain``: this machine has one node, so it warns and stays plain)."""
    claims = tmp_path_factory.mktemp("claims")
    options = {"nthreads": 1, "dashboard_address": None}
    bound = {"preload": BOUND["preload"],
             "preload_argv": BOUND["preload_argv"] + ["--numamem-allocator", "policy"]}
    workers = {"bound": {"cls": Nanny, "options": {**options, **bound}},
               "plain": {"cls": Nanny, "options": {**options, "preload": ["numamem.dask"]}}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NUMAMEM_WORKER_CLAIMS", str(claims))
        scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
        with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as c:
            c.wait_for_workers(2, timeout=120)
            names = {info["name"]: address for address, info in c.scheduler_info()["workers"].items()}
            yield c, names


def _node0_cpus(topo):
    return tuple(sorted(set(topo.node(0).cpus) & topo.allowed_cpus))


# ------------------------------------------------------------------------------- workers
def test_preloaded_workers_are_bound_and_tasks_see_their_node(client, topo):
    bindings = client.run(nd.worker_binding)
    assert len(bindings) == 2
    for binding in bindings.values():
        assert (binding.node, binding.policy, binding.reason) == (0, "bind", "")
        assert binding.cpus == _node0_cpus(topo)
    for address, info in client.scheduler_info()["workers"].items():
        assert info["resources"] == {"numa-0": 1}
    seen = client.gather([client.submit(nd.worker_node, workers=[a], pure=False) for a in bindings])
    assert seen == [0, 0]


def test_report_shows_node_cpus_and_task_memory_from_the_kernel(client, topo):
    reports = nd.report(client)
    assert len(reports) == 2
    for r in reports:
        assert r.node == 0 and r.cpus == _node0_cpus(topo)
        assert r.allocator == "numamem_node0_bind"  # on_node(0) is installed for tasks
        assert set(r.task_pages) == {0} and r.task_pages[0] >= 1024
        assert r.to_dict()["remote_data_bytes"] == 0


def test_policy_allocator_leaves_numpy_its_own_allocator_on_the_node(mixed, topo):
    client, names = mixed
    r = {rep.address: rep for rep in nd.report(client)}[names["bound"]]
    assert r.node == 0 and r.allocator == "default_allocator"
    assert set(r.task_pages) == {0} and r.cpus == _node0_cpus(topo)


def test_worker_node_outside_a_worker_raises():
    with pytest.raises(RuntimeError, match="Dask worker"):
        nd.worker_node()


def test_single_node_preload_warns_and_leaves_a_plain_worker_that_works(mixed, topo):
    client, names = mixed
    if len([n for n in topo.memory_nodes() if topo.usable_cpus(n)]) > 1:
        pytest.skip("describes a one-node machine; the multi-node tier covers the others")
    binding = client.run(nd.worker_binding, workers=[names["plain"]])[names["plain"]]
    assert binding.node is None and "1 NUMA node" in binding.reason
    info = client.scheduler_info()["workers"][names["plain"]]
    assert not any(name.startswith("numa-") for name in info["resources"])
    future = client.submit(lambda: (nd.worker_node(), float(np.arange(10.0).sum())),
                           workers=[names["plain"]], pure=False)
    assert future.result(timeout=60) == (None, 45.0)


# ------------------------------------------------------------------------------- placed arrays
def _reference(x: da.Array) -> np.ndarray:
    """The values placed_array(fill="random") promises, built with NumPy alone."""
    rows = []
    for i, height in enumerate(x.chunks[0]):
        rows.append(np.concatenate(
            [np.random.default_rng([7, i, j]).random((height, width)) for j, width in enumerate(x.chunks[1])],
            axis=1))
    return np.concatenate(rows, axis=0)


def test_placed_array_computes_what_numpy_computes(client):
    with client.as_current():
        _check_values()


def _check_values():
    x = nd.placed_array((96, 40), np.float64, chunks=(24, 20), fill="random", seed=7)
    w = np.linspace(-1, 1, 40 * 8).reshape(40, 8)
    ref = _reference(x)
    assert np.array_equal(x.compute(), ref)
    total, rowsums, chain = nd.compute((x @ da.from_array(w)).sum(), x.sum(axis=1), np.sqrt(x * 2 + 1).mean())
    np.testing.assert_allclose(total, (ref @ w).sum())
    np.testing.assert_allclose(rowsums, ref.sum(axis=1))
    np.testing.assert_allclose(chain, np.sqrt(ref * 2 + 1).mean())
    y = nd.from_array(ref, chunks=(32, 40))
    assert np.array_equal(y.compute(), ref)
    assert np.array_equal(nd.placed_array((5, 3), np.int32, chunks=2, fill=4).compute(), np.full((5, 3), 4))


def test_placed_chunks_are_numamem_memory_on_their_node(client):
    with client.as_current():
        x = nd.persist(nd.placed_array((64, 512), np.float32, chunks=(16, 512), nodes=[0]))
    wait(x)

    def held(dask_worker):
        return [(numamem.placement(v).requested or {}).get("node") for v in dask_worker.data.values()
                if isinstance(v, np.ndarray)]

    nodes = [node for per_worker in client.run(held).values() for node in per_worker]
    assert sorted(nodes) == [0, 0, 0, 0]
    assert sum(r.data_bytes.get(0, 0) for r in nd.report(client)) >= x.nbytes
    del x


def test_chunk_tasks_run_only_on_workers_of_the_chunks_node(mixed):
    """Routing: with a bound and a plain worker, every task of a placed reduction runs on the
    bound one; the same graph without numamem's routing uses both workers."""
    client, names = mixed
    with client.as_current():
        x = nd.placed_array((256, 64), np.float64, chunks=(8, 64), nodes=[0], fill="random")
        with get_task_stream(client) as routed:
            total, = nd.compute(np.exp(x).sum(axis=0) * 2)
        ran = {t["key"]: t["worker"] for t in routed.data}
        assert len(ran) >= 32
        assert set(ran.values()) == {names["bound"]}, {w for w in ran.values()}
        np.testing.assert_allclose(total, np.exp(x.compute()).sum(axis=0) * 2)
        with get_task_stream(client) as free:
            ones = nd.placed_array((256, 64), np.float64, chunks=(8, 64), nodes=[0], fill=1.0)
            np.exp(ones).sum().compute()
    assert {t["worker"] for t in free.data} == set(names.values()), "control: tasks spread when not routed"


def test_placed_array_on_plain_workers_warns_and_makes_numpy_chunks(mixed):
    client, names = mixed
    with client.as_current(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(nd._arrays, "_worker_nodes", lambda client: {})  # as if no worker were bound
        with pytest.warns(nd.NumaWorkerWarning, match="no worker of this client is bound"):
            x = nd.placed_array((8, 4), np.float32, chunks=(2, 4), fill=1.5)
    assert nd.task_nodes(x) == {}
    assert float(client.compute(x.sum()).result()) == 8 * 4 * 1.5


def test_placed_array_refuses_nodes_without_workers(mixed):
    client, _ = mixed
    missing = r"no worker of this client is bound to node\(s\) \[3\]"
    with client.as_current(), pytest.raises(ValueError, match=missing):
        nd.placed_array((8, 8), chunks=4, nodes=[0, 3])


def test_plugin_binds_a_running_plain_worker(mixed, topo):
    """Last of the ``mixed`` tests: it turns the plain worker into a bound one."""
    client, names = mixed
    held = client.persist(da.ones((64, 64), chunks=(16, 64)), workers=[names["plain"]])
    wait(held)
    client.register_plugin(nd.NumaWorkerPlugin(nodes=[0]))
    bindings = client.run(nd.worker_binding)
    assert bindings[names["plain"]].node == 0 and bindings[names["plain"]].cpus == _node0_cpus(topo)
    assert bindings[names["plain"]].migrated_bytes == 0  # one node: nothing was elsewhere
    assert client.scheduler_info()["workers"][names["plain"]]["resources"] == {"numa-0": 1}
    # New task threads run on node 0's CPUs and first-touch there (the kernel policy).
    r = {rep.address: rep for rep in nd.report(client)}[names["plain"]]
    assert r.node == 0 and r.cpus == _node0_cpus(topo) and set(r.task_pages) == {0}
    assert client.compute(held.sum()).result() == 64 * 64


def test_plugin_rejects_a_bad_policy():
    with pytest.raises(ValueError, match="policy"):
        nd.NumaWorkerPlugin(policy="interleave")


def test_tasks_reading_persisted_chunks_are_routed_to_their_node(client):
    """Tasks over a *persisted* placed array get a node too: each persisted chunk is a Future in the
    graph, which Dask lists as depending on itself; that self-loop once left every task reading
    the chunks without a node (and without a resource annotation)."""
    with client.as_current():
        x = nd.persist(nd.placed_array((64, 512), np.float64, chunks=(16, 512), nodes=[0], fill=1.0))
        wait(x)
        localized, = nd.localize(np.sqrt(x).sum(axis=1))
        want = nd.task_nodes(localized)
        reads = [key for key in want if isinstance(key, tuple) and key[0] != x.name]
        assert len(reads) >= 4, want  # the fused sqrt+sum of each chunk, at least
        assert set(want.values()) == {0}
        with get_task_stream(client) as stream:
            total = client.compute(localized, optimize_graph=False).result(timeout=120)
        assert {t["key"] for t in stream.data} & set(reads)
        np.testing.assert_allclose(total, np.full(64, 512.0))
