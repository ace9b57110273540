"""bind_process: numactl's --cpunodebind/--membind from Python (issue 12, item 22)."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import numamem
from numamem import _kernel

from conftest import run_in_child


def test_bind_process_binds_every_thread_and_restores(node0, topo):
    cpus = sorted(topo.usable_cpus(node0))

    def child():
        os.sched_setaffinity(0, {cpus[-1]})
        seen = {}
        go, checked, leave = threading.Event(), threading.Event(), threading.Event()

        def existing():
            go.wait()
            seen["existing_policy"] = _kernel.thread_policy()
            checked.set()
            leave.wait()

        def started_later():
            seen["later"] = (_kernel.thread_policy(), os.sched_getaffinity(0))
            seen["later_pages"] = set(numamem.page_nodes(np.ones(1 << 16)).tolist())

        runner = threading.Thread(target=existing)
        runner.start()
        before_policy = _kernel.thread_policy()
        with numamem.bind_process(node0) as binding:
            assert isinstance(binding, numamem.ProcessBinding)
            assert _kernel.thread_policy() == ("bind", (node0,))
            assert os.sched_getaffinity(0) == set(cpus)
            assert os.sched_getaffinity(runner.native_id) == set(cpus)
            go.set()
            checked.wait()
            later = threading.Thread(target=started_later)
            later.start()
            later.join()
        assert seen["existing_policy"] == before_policy  # a running thread's policy is its own
        assert seen["later"] == (("bind", (node0,)), set(cpus))
        assert seen["later_pages"] == {node0}
        assert _kernel.thread_policy() == before_policy
        assert os.sched_getaffinity(0) == {cpus[-1]}
        assert os.sched_getaffinity(runner.native_id) == {cpus[-1]}
        leave.set()
        runner.join()
        binding.restore()  # a second restore does nothing

    status = run_in_child(child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_bind_process_checks_like_bind_thread(node0):
    def child():
        with pytest.raises(ValueError, match="node=999: no such node"):
            numamem.bind_process(999)
        with pytest.raises(TypeError, match="node"):
            numamem.bind_process(False)
        with pytest.raises(ValueError, match="policy"):
            numamem.bind_process(node0, policy="interleave")
        binding = numamem.bind_process(np.int64(node0), policy="preferred")
        errors = []
        t = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, binding.restore)))
        t.start()
        t.join()
        assert errors and _kernel.thread_policy() == ("preferred", (node0,))
        binding.restore()
        assert _kernel.thread_policy() == ("default", ())

    status = run_in_child(child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
