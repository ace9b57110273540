"""bind_thread restores affinity and policy; a forked child can allocate (invariant 7)."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import numamem
from numamem import _kernel

from conftest import run_in_child


def test_bind_thread_sets_and_restores(node0, topo):
    cpus = sorted(topo.node(node0).cpus)
    os.sched_setaffinity(0, {cpus[-1]})
    try:
        before_policy = _kernel.thread_policy()
        with numamem.bind_thread(node0) as binding:
            assert os.sched_getaffinity(0) == set(cpus) & topo.allowed_cpus
            assert _kernel.thread_policy() == ("bind", (node0,))
            first_touch = np.ones(1 << 18)
            assert set(numamem.page_nodes(first_touch).tolist()) == {node0}
        assert os.sched_getaffinity(0) == {cpus[-1]}
        assert _kernel.thread_policy() == before_policy
        binding.restore()  # a second restore does nothing
    finally:
        os.sched_setaffinity(0, topo.allowed_cpus)


def test_bind_thread_plain_call_and_policies(node0):
    binding = numamem.bind_thread(node0, policy="preferred")
    try:
        assert _kernel.thread_policy() == ("preferred", (node0,))
    finally:
        binding.restore()
    with numamem.bind_thread(node0, policy="local"):
        assert _kernel.thread_policy()[0] == "local"
    assert _kernel.thread_policy() == ("default", ())


def test_bind_thread_is_per_thread(node0):
    # Another thread that already runs keeps its own policy; a thread created inside the binding
    # inherits it, as Linux threads inherit affinity and memory policy from their creator.
    seen = {}
    bound, checked = threading.Event(), threading.Event()

    def existing():
        bound.wait()
        seen["existing"] = _kernel.thread_policy()
        checked.set()

    def created():
        seen["created"] = _kernel.thread_policy()

    t = threading.Thread(target=existing)
    t.start()
    with numamem.bind_thread(node0):
        bound.set()
        checked.wait()
        c = threading.Thread(target=created)
        c.start()
        c.join()
    t.join()
    assert seen["existing"] == ("default", ())
    assert seen["created"] == ("bind", (node0,))


def test_bind_thread_restore_from_another_thread_is_refused(node0):
    binding = numamem.bind_thread(node0)
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, binding.restore)))
    t.start()
    t.join()
    binding.restore()
    assert errors and _kernel.thread_policy() == ("default", ())


def test_bind_thread_errors(fake_topology, topo, node0):
    with pytest.raises(ValueError, match="node=999: no such node"):
        numamem.bind_thread(999)
    with pytest.raises(TypeError):
        numamem.bind_thread("0")
    with pytest.raises(ValueError, match="policy"):
        numamem.bind_thread(node0, policy="interleave")
    cpu_less = tuple(numamem.Node(n.id, () if n.id == node0 else n.cpus, n.mem_total, n.mem_free, {})
                     for n in topo.nodes)
    fake_topology(nodes=cpu_less)
    with pytest.raises(ValueError, match="no CPUs"):
        numamem.bind_thread(node0)
    fake_topology(nodes=topo.nodes, allowed_cpus=frozenset({10_000}))
    with pytest.raises(ValueError, match="cpuset"):
        numamem.bind_thread(node0)
    assert _kernel.thread_policy() == ("default", ())


def test_forked_child_allocates(node0):
    parent_array = numamem.full(1000, 3.0, node=node0)

    def child():
        a = numamem.zeros((512, 512), node=node0)
        assert not a.any()
        a[...] = parent_array[:1].item()
        assert float(a.sum()) == 3.0 * a.size
        assert set(numamem.page_nodes(a).tolist()) == {node0}
        with numamem.bind_thread(node0):
            assert numamem.ones(10, node=node0).sum() == 10

    status = run_in_child(child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert parent_array.sum() == 3000.0


def test_errors_map_errno_to_subclasses():
    import errno
    from numamem.errors import NumaUnavailableError, oserror
    assert isinstance(oserror(errno.ENOENT, "x"), FileNotFoundError)
    assert isinstance(oserror(errno.EPERM, "mbind(node=1)"), PermissionError)
    assert isinstance(oserror(errno.ENOSYS, "get_mempolicy"), NumaUnavailableError)
    err = oserror(errno.EINVAL, "mbind(bind, nodes=[3])", "placing")
    assert err.errno == errno.EINVAL and "mbind(bind, nodes=[3])" in str(err) and "placing" in str(err)
