"""numamem.engines on a multi-node guest: each session's or replica's memory on its node.

Witnessed with ``kernelcheck`` (``move_pages`` through ctypes and ``/proc/self/numa_maps``), not
numamem. The guest's CPUs are emulated and ONNX Runtime and PyTorch are big: one small model
(two Gemm layers, 1.1 MiB of weights) and one small PyTorch MLP serve every test. Both engines
come from the project's virtual environment (tools/bootstrap installs the onnxruntime and torch
extras); a missing one is an error here, never a skip. PyTorch is imported only inside a forked
child of the one test that needs it: its import is slow under emulation and its memory (about
150 MiB of anonymous pages) should not stay in the process that runs the rest of the tier.
"""
from __future__ import annotations

import ctypes

import numpy as np
import onnx
import onnxruntime  # noqa: F401  (an ImportError here fails the tier, as it must)
import pytest
from onnx import TensorProto, helper, numpy_helper

import numamem
from numamem.engines.onnxruntime import NodeSessions, default_session

import kernelcheck as kc

# Allocations of other threads (the interpreter, pytest) while a session is built: small.
NOISE = 256 << 10
# What the calling thread's own Python work may add meanwhile (reading numa_maps three times, the
# protobuf and dict objects): small objects come from pymalloc's 1 MiB arenas, so one new arena
# touched on the caller's node is not a leak. Tests that allow it use weights far larger.
CALLER_NOISE = (1 << 20) + NOISE
M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


@pytest.fixture(autouse=True, scope="module")
def fresh_large_allocations():
    """Give every malloc of 64 KiB or more a fresh mapping, as docs/engines.md recommends.

    glibc otherwise raises its mmap threshold after large frees and serves large blocks from
    heaps whose pages an exited thread may have faulted on another node; with a fixed threshold
    the engines' large buffers are first-touched by the thread that allocates them, so what a
    session allocates shows up as growth on its node. Put back to glibc's initial 128 KiB after.
    """
    libc = ctypes.CDLL(None)
    assert libc.mallopt(M_MMAP_THRESHOLD, 64 << 10) == 1
    yield
    libc.mallopt(M_MMAP_THRESHOLD, 128 << 10)


def _model(hidden: int = 256) -> onnx.ModelProto:
    """Two Gemm layers: ``hidden`` x 1024 and 16 x ``hidden`` float32 weights (1 MiB at 256)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((hidden, 1024)) * 0.03).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((16, hidden)) * 0.06).astype(np.float32), "w2")
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h0"], transB=1),
             helper.make_node("Relu", ["h0"], ["h"]),
             helper.make_node("Gemm", ["h", "w2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "two_gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(batch: int = 4) -> dict:
    return {"x": np.random.default_rng(1).standard_normal((batch, 1024)).astype(np.float32)}


def _anon() -> dict[int, int]:
    """Bytes of anonymous memory per node, from numa_maps (the witness's own reading)."""
    out: dict[int, int] = {}
    for e in kc.numa_maps():
        if "file=" in e.raw:
            continue
        for node, pages in e.pages.items():
            out[node] = out.get(node, 0) + pages * e.kernel_page_kb * 1024
    return out


def _grown_elsewhere(before: dict, after: dict, node: int) -> int:
    return sum(max(0, after.get(n, 0) - before.get(n, 0)) for n in after if n != node)


def _cpu_nodes(expected) -> list[int]:
    return [n["id"] for n in expected["nodes"] if n["cpus"] and n["mem_mib"] > 0]


def _assert_on(array, node, what):
    hist = kc.histogram(kc.nodes_of(array))
    assert hist == {node: sum(hist.values())}, (what, node, hist)


def test_session_weights_and_build_memory_on_its_node(cpu_node):
    # 8 MiB of weights, so that a copy of them left on the calling thread's node would exceed
    # CALLER_NOISE many times over. The model is made (by this thread) before the first reading.
    model = _model(hidden=2048)
    before = _anon()
    with NodeSessions(model, nodes=[cpu_node]) as s:
        after = _anon()
        arena = s._parts[0].arena
        assert arena.nbytes >= 8 << 20
        _assert_on(arena.buffer, cpu_node, "weight arena")
        assert after.get(cpu_node, 0) - before.get(cpu_node, 0) >= arena.nbytes
        assert _grown_elsewhere(before, after, cpu_node) <= CALLER_NOISE, (before, after)
        # While the session itself was built the calling thread only waited: no slack for it.
        built = s.placement()["sessions"][0]["build_bytes_per_node"]
        assert sum(b for k, b in built.items() if k != cpu_node and b > 0) <= NOISE, built
        y = s.run(None, _feeds())[0]
        assert y.shape == (4, 16)
        (sess,) = s.placement()["sessions"]
        assert sess["binding"] == "local"
        assert sess["weights_bytes_per_node"] == {cpu_node: arena.nbytes}


@pytest.mark.requires("two_cpu_nodes")
def test_one_session_per_node_each_on_its_node(expected):
    nodes = _cpu_nodes(expected)[:2]
    model = _model()
    feeds = _feeds(6)
    with NodeSessions(model, nodes=nodes) as s:
        s.warm_up(feeds)
        got = s.run(None, feeds)[0]
        p = s.placement()
        for part, report in zip(s._parts, p["sessions"]):
            n = part.share.node
            _assert_on(part.arena.buffer, n, f"session on node {n}")
            assert report["weights_bytes_per_node"] == {n: part.arena.nbytes}
            # What ONNX Runtime allocated on its own while this session alone was built or first
            # run (pre-packed weights, kernels, its arena) landed on the session's node.
            for key in ("build_bytes_per_node", "warmup_bytes_per_node"):
                elsewhere = sum(b for k, b in report[key].items() if k != n and b > 0)
                assert elsewhere <= NOISE, (n, key, report[key])
            assert report["build_bytes_per_node"].get(n, 0) >= 256 * 1024 * 4 // 2, report
    want = default_session(model).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.requires("two_cpu_nodes")
def test_default_session_puts_what_it_loads_on_the_loading_threads_node(expected):
    loader = _cpu_nodes(expected)[0]
    model = _model()

    def build():
        with numamem.bind_thread(loader, "local"):
            before = _anon()
            sess = default_session(model)
            return sess, before, _anon()

    sess, before, after = kc.run_in_thread(build)
    # The weights (a 1 MiB and a 16 KiB tensor, deserialized by the loading thread) are among
    # what grew there, and cannot be among what grew elsewhere (ONNX Runtime's own pool threads,
    # which it pins to CPUs of any node, may add their stacks there).
    assert after.get(loader, 0) - before.get(loader, 0) >= 1 << 20
    assert _grown_elsewhere(before, after, loader) < 1 << 20, (before, after)
    del sess


@pytest.mark.requires("two_cpu_nodes")
def test_replicas_on_their_nodes_where_the_default_module_has_one(expected):
    nodes = _cpu_nodes(expected)[:2]

    def check():
        import torch

        from numamem.engines.torch import NodeReplicas

        def load():
            with numamem.bind_thread(nodes[0], "local"):
                torch.manual_seed(0)
                return torch.nn.Sequential(torch.nn.Linear(1024, 256), torch.nn.ReLU(),
                                           torch.nn.Linear(256, 16)).eval()

        module = kc.run_in_thread(load)  # the framework's loading thread runs on the first node
        # The weight matrices (64 KiB and more: fresh mappings, see fresh_large_allocations) are
        # first-touched by the loading thread. The small biases come from a malloc arena, which
        # a new thread may inherit from an exited one with pages already on another node.
        for name, p in module.named_parameters():
            if p.nbytes >= 64 << 10:
                _assert_on(p.detach().numpy(), nodes[0], f"default {name}")
        x = torch.randn(5, 1024)
        with torch.inference_mode():
            want = module(x)
        with NodeReplicas(module, nodes=nodes) as r:
            for n, rep, report in zip(nodes, r.replicas, r.placement()["sessions"]):
                for name, p in rep.named_parameters():
                    _assert_on(p.detach().numpy(), n, f"replica {name}")
                assert report["weights_bytes_per_node"] == {n: rep._numamem_placed.arena.nbytes}
            got = r(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    problem = kc.run_in_child(check)
    assert problem is None, problem
