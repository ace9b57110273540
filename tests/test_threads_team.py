"""Worker teams: node-bound threads that run one job on every worker and report its errors."""
from __future__ import annotations

import os
import threading

import pytest

from numamem.threads import WorkerAborted, WorkerTeam, blas_single_thread


def test_every_worker_runs_the_job_once_on_its_node(node0, topo):
    team = WorkerTeam([node0, node0], [2, 1], policy="local")
    try:
        seen = []
        lock = threading.Lock()

        def job(group, worker):
            with lock:
                seen.append((group, worker, frozenset(os.sched_getaffinity(0))))

        cpu = team.run(job)
        assert sorted((g, w) for g, w, _ in seen) == [(0, 0), (0, 1), (1, 0)]
        assert all(cpus <= set(topo.node(node0).cpus) for _, _, cpus in seen)
        assert cpu >= 0.0
        seen.clear()
        team.run(job, groups=[1])
        assert [(g, w) for g, w, _ in seen] == [(1, 0)]
    finally:
        team.close()
    team.close()  # idempotent
    assert not any(t.is_alive() for members in team.workers for t in members)


def test_the_cause_is_reported_not_the_workers_it_stopped(node0):
    team = WorkerTeam([node0], [3], policy="local")
    try:
        def job(group, worker):
            if worker == 1:
                raise KeyError("cause")
            raise WorkerAborted()

        with pytest.raises(KeyError, match="cause"):
            team.run(job)
        # the team still works after a failed job
        assert team.run(lambda group, worker: None) >= 0.0
    finally:
        team.close()


def test_a_node_that_cannot_run_threads_is_refused_and_no_thread_is_left(topo):
    before = threading.active_count()
    with pytest.raises(ValueError):
        WorkerTeam([max(topo.node_ids) + 1], [2])
    assert threading.active_count() == before


def test_blas_single_thread_limits_blas_to_one_thread():
    import threadpoolctl  # the threads extra, installed by the test command
    import numpy as np

    np.dot(np.ones((2, 2)), np.ones((2, 2)))  # BLAS loaded
    with blas_single_thread() as limited:
        assert limited is True
        blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)
