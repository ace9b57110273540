"""NodeSessions on the host: per-node outputs equal one default session's, placed weights, lifetime."""
from __future__ import annotations

import gc
import json
import os
import weakref

import numpy as np
import pytest

# The test command installs the onnxruntime extra: a missing package fails here, never skips.
import onnx  # noqa: E402,F401
import onnxruntime as ort  # noqa: E402

import numamem  # noqa: E402
from numamem.engines import _nodes, compare, format_report  # noqa: E402
from numamem.engines._nodes import PlacementWarning  # noqa: E402
from numamem.engines.onnxruntime import (  # noqa: E402
    NodeSessions, default_session, join_rows, random_feeds, run_rows,
)
from numamem.runtime.runner import write_json  # noqa: E402

from engine_models import light_model, light_path, small_cnn, transformer_block  # noqa: E402


def _default_outputs(model, feeds):
    sess = default_session(model)
    rows = next(iter(feeds.values())).shape[0]
    fixed = sess.get_inputs()[0].shape[0]
    return join_rows(run_rows(sess, None, feeds, 0, rows, fixed if isinstance(fixed, int) else None))


@pytest.mark.parametrize("build", [small_cnn, transformer_block])
@pytest.mark.parametrize("prepack", [True, False])
def test_per_node_outputs_equal_default(build, prepack):
    model = build()
    with NodeSessions(model, prepack=prepack) as s:
        feeds = random_feeds(s.sessions[0], batch=5, seed=1)
        got = s.run(None, feeds)
        want = _default_outputs(model, feeds)
        assert len(got) == len(want) == 1
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
        assert got[0].shape[0] == 5


def test_light_models_per_node_equal_default(stress):
    # resnet50 of the light set is 98 MiB of weights: only with --stress
    names = ["squeezenet"] + (["resnet50"] if stress else [])
    for name in names:
        assert os.path.exists(light_path(name)), light_path(name)
        model = light_model(name)
        with NodeSessions(model) as s:
            assert s.fixed_batch == 1  # the light models have a fixed batch of 1
            feeds = random_feeds(s.sessions[0], batch=3, seed=2)
            got = s.run(None, feeds)[0]
            want = _default_outputs(model, feeds)[0]
            assert got.shape[0] == 3
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
            assert s.placement()["weight_bytes"] > 1 << 20


def test_initializers_are_ortvalues_over_the_placed_arrays(node0):
    model = small_cnn()
    with NodeSessions(model, nodes=[node0], prepack=False) as s:
        part = s._parts[0]
        assert set(part.values) == {"w1", "w2"}  # b1, b2 are under MIN_INITIALIZER_BYTES
        for arr, (name, value) in zip(part.arena, part.values.items()):
            assert value.data_ptr() == arr.ctypes.data, name
            assert numamem.owner(arr) is numamem.owner(part.arena.buffer)
        feeds = random_feeds(s.sessions[0], batch=2)
        before = s.run(None, feeds)[0]
        # Without pre-packing ONNX Runtime computes from the placed arrays themselves.
        for arr in part.arena:
            arr *= 2
        after = s.run(None, feeds)[0]
        assert not np.allclose(before, after)


def test_sessions_keep_no_serialized_copy_of_the_weights(node0):
    """ONNX Runtime's Python session keeps the bytes it was built from; a per-node session must
    not: they hold every initializer again, made by whichever thread serialized them (the guest
    test saw such a copy land on the caller's node, not the session's)."""
    model = small_cnn()
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert plain._model_bytes is not None  # the attribute this guards against still exists
    with NodeSessions(model, nodes=[node0]) as s:
        assert [sess._model_bytes for sess in s.sessions] == [None]
        feeds = random_feeds(s.sessions[0], batch=4)
        np.testing.assert_allclose(s.run(None, feeds)[0], plain.run(None, feeds)[0], rtol=1e-5, atol=1e-6)


def test_placement_reports_weights_and_process_memory(node0):
    model = transformer_block()
    with NodeSessions(model, nodes=[node0]) as s:
        feeds = random_feeds(s.sessions[0], batch=4)
        s.warm_up(feeds)
        p = s.placement()
        assert p["weight_bytes"] == sum(a.nbytes for a in s._parts[0].arena)
    (sess,) = p["sessions"]
    assert sess["node"] == node0 and sess["binding"] == "local"
    assert sess["weights_bytes_per_node"] == {node0: p["weight_bytes"]}
    assert set(p["process"]) == {"before", "built", "now"}
    assert all(k == node0 for k in p["process"]["now"])
    assert p["prepack"] is True
    json.dumps(p)


def test_close_frees_the_sessions_and_their_weights(node0, mapping_counter):
    s = NodeSessions(small_cnn(), nodes=[node0])
    arena_owner = weakref.ref(numamem.owner(s._parts[0].arena.buffer))
    session = weakref.ref(s.sessions[0])
    assert mapping_counter()[0] >= 1
    s.close()
    s.close()  # once only
    gc.collect()
    assert session() is None
    assert arena_owner() is None
    mapped, unmapped = mapping_counter()
    assert mapped == unmapped
    with pytest.raises(ValueError, match="closed"):
        s.run(None, {"x": np.zeros((1, 3, 16, 16), np.float32)})


def test_run_checks_its_feeds(node0):
    with NodeSessions(small_cnn(), nodes=[node0]) as s:
        with pytest.raises(ValueError, match="input_feed is empty"):
            s.run(None, {})
        with pytest.raises(ValueError, match="same batch"):
            s.run(None, {"x": np.zeros((2, 3, 16, 16), np.float32), "z": np.zeros((3,), np.float32)})


def test_fixed_batch_model_rejects_a_partial_batch(node0):
    with NodeSessions(light_model("squeezenet"), nodes=[node0]) as s:
        assert s.split(3) == [(0, 3)]
        with pytest.raises(ValueError, match="batch"):
            s.split(0)


def test_session_options_are_checked_and_applied(node0):
    with pytest.raises(TypeError, match="not_an_option"):
        NodeSessions(small_cnn(), nodes=[node0], not_an_option=1)
    with NodeSessions(small_cnn(), nodes=[node0], threads_per_node=1,
                      graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL) as s:
        so = s.sessions[0].get_session_options()
        assert so.intra_op_num_threads == 1
        assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_intra_op_threads_are_pinned_to_the_node(node0, topo):
    cpus = sorted(topo.usable_cpus(node0))
    with NodeSessions(small_cnn(), nodes=[node0], threads_per_node=3) as s:
        so = s.sessions[0].get_session_options()
        assert so.intra_op_num_threads == 3
        mask = ",".join(str(c + 1) for c in cpus)
        assert so.get_session_config_entry("session.intra_op_thread_affinities") == f"{mask};{mask}"


def test_model_from_path_and_bytes(tmp_path, node0):
    model = small_cnn()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    outs = []
    for m in (str(path), path, model.SerializeToString()):
        with NodeSessions(m, nodes=[node0]) as s:
            outs.append(s.run(None, feeds)[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    with pytest.raises(TypeError, match="model must be"):
        NodeSessions(42)


def test_refused_policies_still_run_and_placement_tells(monkeypatch, node0):
    def refuse(node, policy="bind"):
        raise PermissionError(1, "set_mempolicy: Operation not permitted")

    real_empty = _nodes.empty

    def empty(shape, dtype, *, node, policy, align):
        if policy != "local":
            raise PermissionError(1, "mbind: Operation not permitted")
        return real_empty(shape, dtype, node=node, policy=policy, align=align)

    monkeypatch.setattr(_nodes, "bind_thread", refuse)
    monkeypatch.setattr(_nodes, "empty", empty)
    model = small_cnn()
    with pytest.warns(PlacementWarning):
        s = NodeSessions(model, nodes=[node0])
    with s:
        feeds = random_feeds(s.sessions[0], batch=2)
        np.testing.assert_allclose(s.run(None, feeds)[0], _default_outputs(model, feeds)[0], rtol=1e-5, atol=1e-6)
        (sess,) = s.placement()["sessions"]
        assert sess["binding"] == "cpus-only"
        assert sess["weights_bytes_per_node"] == {node0: s._parts[0].arena.nbytes}


def test_compare_report(tmp_path, node0):
    report = compare(transformer_block(), iters=2, batch=4, nodes=[node0])
    assert report["format"] == "numamem-run/1" and report["engine"] == "onnxruntime"
    assert report["nodes"] == [node0] and report["batch"] == 4 and report["ok"]
    assert set(report["modes"]) == {"default", "per-node"}
    per = report["modes"]["per-node"]
    assert per["pages"] == {str(node0): {str(node0): -(-report["weight_bytes"] // 4096)}}
    assert per["remote_bytes"] == 0 and per["local_bytes"] == report["weight_bytes"]
    assert len(per["seconds"]) == 2 and per["rel_err"] <= 1e-4
    est = report["estimate"]
    assert est["basis"].startswith("ESTIMATE") and est["target_nodes"] == [0, 1]
    assert est["traffic"]["default"]["remote_bytes"] == report["weight_bytes"]
    assert est["traffic"]["per-node"]["remote_bytes"] == 0
    assert report["outputs"]["names"] == ["y"]
    assert "per-node" in format_report(report)
    write_json(report, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["format"] == "numamem-run/1"


def test_compare_checks_its_arguments():
    with pytest.raises(ValueError, match="unknown mode"):
        compare(small_cnn(), modes=["planned"])
    with pytest.raises(ValueError, match="engine='torch'"):
        compare(small_cnn(), engine="torch")
    with pytest.raises(ValueError, match="iters"):
        compare(small_cnn(), iters=0)


# ------------------------------------------------------------------------------ small batches
def _threads_running(session):
    """Record the thread that runs each call of ``session`` (an ``InferenceSession``)."""
    import threading

    seen = []
    real = session.run

    def spy(*args, **kwargs):
        seen.append(threading.current_thread())
        return real(*args, **kwargs)

    session.run = spy
    return seen


def test_single_part_runs_on_the_calling_thread_without_copies(monkeypatch, node0):
    import threading

    from numamem.engines import onnxruntime as eo

    model = small_cnn()
    concatenated = []
    monkeypatch.setattr(eo, "join_rows", lambda chunks: concatenated.append(chunks))
    with NodeSessions(model, nodes=[node0]) as s:
        seen = _threads_running(s.sessions[0])
        outputs = []
        real = s.sessions[0].run
        s.sessions[0].run = lambda *a, **k: outputs.append(real(*a, **k)) or outputs[-1]
        feeds = random_feeds(s.sessions[0], batch=1, seed=3)
        got = s.run(None, feeds)
        # A one-node process cannot work or allocate anywhere else, so the caller runs the part.
        if _nodes.process_on_node(node0):
            assert seen == [threading.current_thread()]
        else:
            assert len(seen) == 1
        assert concatenated == []
        assert got[0] is outputs[-1][0]  # ONNX Runtime's own output array, not a copy
        np.testing.assert_allclose(got[0], _default_outputs(model, feeds)[0], rtol=1e-5, atol=1e-6)


def test_a_caller_off_the_node_hands_the_part_over(monkeypatch, node0):
    import threading

    model = small_cnn()
    monkeypatch.setattr(_nodes.NodeWorker, "caller_on_node", lambda self: False)
    with NodeSessions(model, nodes=[node0]) as s:
        seen = _threads_running(s.sessions[0])
        feeds = random_feeds(s.sessions[0], batch=2, seed=3)
        got = s.run(None, feeds)[0]
    assert len(seen) == 1 and seen[0] is not threading.current_thread()
    assert seen[0].name.startswith(f"numamem-node{node0}")
    np.testing.assert_allclose(got, _default_outputs(model, feeds)[0], rtol=1e-5, atol=1e-6)


def _two_sessions_on(monkeypatch, node):
    """Make NodeSessions see ``node`` twice: two parts on a one-node machine."""
    from numamem.engines import onnxruntime as eo

    share = _nodes.resolve_nodes([node])[0]
    monkeypatch.setattr(eo, "resolve_nodes", lambda nodes, threads: [share, share])


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_batches_smaller_or_larger_than_the_node_count_equal_default(monkeypatch, node0, batch):
    model = transformer_block()
    _two_sessions_on(monkeypatch, node0)
    with NodeSessions(model) as s:
        assert len(s.sessions) == 2
        feeds = random_feeds(s.sessions[0], batch=batch, seed=4)
        assert [b - a for a, b in s.split(batch)] == {1: [1, 0], 2: [1, 1], 3: [2, 1]}[batch]
        got = s.run(None, feeds)[0]
    assert got.shape[0] == batch
    np.testing.assert_allclose(got, _default_outputs(model, feeds)[0], rtol=1e-5, atol=1e-6)


def test_join_rows_of_one_call_is_that_calls_outputs():
    a, b = np.arange(6.0).reshape(3, 2), np.ones((3, 1), np.float32)
    got = join_rows([[a, b]])
    assert got[0] is a and got[1] is b
    two = join_rows([[a, b], [a, b]])
    assert two[0].shape == (6, 2) and not np.shares_memory(two[0], a)
