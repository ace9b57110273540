"""numamem.ray: the runtime environment and its worker_process_setup_hook.

Ray itself is not installed by tools/bootstrap (about 300 MB, and a local Ray takes 30 s to start
on the 2-core machine). The hook is what Ray calls in each worker process, with no argument, so it
is run here in a fresh process as Ray would run it; it needs nothing from Ray itself.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import numamem.ray as nr


def _run_hook(tmp_path, env_vars: dict) -> dict:
    """Run the hook in a new process, as a Ray worker would, and report what it did."""
    script = textwrap.dedent("""
        import json, os, warnings
        import numpy as np
        import numamem, numamem.ray as nr
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            nr.setup_worker()
            again = nr.setup_worker()  # Ray may call it once only; a second call changes nothing
        print(json.dumps({
            "binding": nr.worker_binding().to_dict(), "node": nr.worker_node(),
            "again": again.to_dict(), "allocator": numamem.pools.handler_name(np.ones(1000)),
            "cpus": sorted(os.sched_getaffinity(0)),
            "warnings": [str(w.message) for w in caught],
        }))
    """)
    env = {**os.environ, **env_vars, "NUMAMEM_WORKER_CLAIMS": str(tmp_path / "claims"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_runtime_env_names_the_hook_and_the_nodes():
    env = nr.runtime_env(nodes="0", base={"env_vars": {"A": "1"}, "pip": ["x"]})
    assert env == {"pip": ["x"], "worker_process_setup_hook": "numamem.ray.setup_worker",
                   "env_vars": {"A": "1", nr.ENV_NODES: "0", nr.ENV_POLICY: "bind",
                                nr.ENV_ALLOCATOR: "pool"}}
    assert nr.runtime_env(policy="preferred", allocator="policy")["env_vars"] == {
        nr.ENV_NODES: "", nr.ENV_POLICY: "preferred", nr.ENV_ALLOCATOR: "policy"}


@pytest.mark.parametrize("kwargs, error, match", [
    ({"policy": "interleave"}, ValueError, "policy"),
    ({"allocator": "malloc"}, ValueError, "allocator"),
    ({"nodes": "x"}, ValueError, "nodes"),
    ({"base": {"worker_process_setup_hook": "mine.hook"}}, ValueError, "setup_worker"),
])
def test_runtime_env_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        nr.runtime_env(**kwargs)


def test_hook_binds_the_worker_to_the_node_asked(tmp_path, node0, topo):
    result = _run_hook(tmp_path, nr.runtime_env(nodes=[node0])["env_vars"])
    assert result["node"] == node0 and result["binding"]["reason"] == ""
    assert result["again"] == result["binding"]
    assert result["cpus"] == sorted(set(topo.node(node0).cpus) & topo.allowed_cpus)
    assert result["allocator"] == f"numamem_node{node0}_bind"
    # The node was claimed in the host's count of Ray workers.
    claims = [json.loads(p.read_text()) for p in (tmp_path / "claims").glob("*.json")]
    assert len(claims) == 1


def test_hook_with_the_policy_allocator_leaves_numpy_its_own(tmp_path, node0):
    result = _run_hook(tmp_path, nr.runtime_env(nodes=[node0], allocator="policy")["env_vars"])
    assert result["node"] == node0 and result["allocator"] == "default_allocator"


def test_hook_on_one_node_warns_and_leaves_a_plain_worker(tmp_path, topo):
    if len([n for n in topo.memory_nodes() if topo.usable_cpus(n)]) > 1:
        pytest.skip("describes a one-node machine; the multi-node tier covers the others")
    result = _run_hook(tmp_path, nr.runtime_env()["env_vars"])
    assert result["node"] is None and "binding workers adds nothing" in result["binding"]["reason"]
    assert any("plain worker" in w for w in result["warnings"])
    assert result["allocator"] == "default_allocator"


def test_worker_node_before_the_hook_is_none():
    assert nr.worker_node() is None
    assert nr.worker_binding().reason == "numamem.ray.setup_worker has not run"
