"""``numamem run``: the report, the files it reads and writes, and its errors."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from numamem.cli import main
from numamem.cli._progress import Progress
from numamem.runtime.randgraph import random_graph
from numamem.runtime.reference import reference_forward
from numamem.runtime.runner import FORMAT, estimate_speedup, random_tensors, run_graph


@pytest.fixture
def graph_file(tmp_path):
    g = random_graph(0, "cnn")
    path = tmp_path / "g.json"
    g.to_json(path)
    return g, str(path)


def rel_err(y, ref):
    return np.linalg.norm(np.asarray(y, np.float64) - ref) / np.linalg.norm(ref)


def test_run_writes_the_report_and_outputs(graph_file, tmp_path, capsys):
    g, path = graph_file
    out, y = tmp_path / "r.json", tmp_path / "y.npz"
    assert main(["run", path, "--iters", "2", "--json", str(out), "--outputs", str(y), "--seed", "3"]) == 0
    text = capsys.readouterr().out
    for word in ("planned", "first-touch", "interleave", "speed-up", "estimate", "ESTIMATE", "pages"):
        assert word in text
    r = json.loads(out.read_text())
    assert r["format"] == FORMAT and r["graph"] == g.name and r["nodes"] == [0] and r["iters"] == 2
    assert r["ok"] is True
    assert set(r["modes"]) == {"planned", "first-touch", "interleave"}
    for mode, e in r["modes"].items():
        assert len(e["seconds"]) == 2 and e["median_s"] == pytest.approx(float(np.median(e["seconds"])))
        assert len(e["layer_median_s"]) == len(g.layers)
        assert len(e["cpu_seconds"]) == 2 and e["median_cpu_s"] > 0
        assert e["peak_tensor_bytes"] > 0
        assert e["remote_bytes"] == 0 and e["local_bytes"] > 0  # one node: everything is local
        assert e["max_rel_err"] <= 1e-4
        assert all(set(h) <= {"0"} for h in e["pages"].values()), e["pages"]
    pl = r["modes"]["planned"]
    assert pl["pages"] == {"0": {"0": r["plan"]["arena_bytes"] // 4096}}
    assert pl["measured_local_bytes"] == pl["local_bytes"] + pl["remote_bytes"]
    assert pl["peak_tensor_bytes"] >= r["plan"]["arena_bytes"]
    # a framework that frees tensors after their last reader holds at most all of them at once
    assert r["modes"]["first-touch"]["peak_tensor_bytes"] <= r["all_tensors_bytes"]
    assert r["estimate"]["basis"].startswith("ESTIMATE")
    assert r["estimate"]["planned_vs_first_touch"] > 0
    # --outputs holds the first mode's outputs, from the seeded random tensors
    ws, xs = random_tensors(g, 3)
    ref = reference_forward(g, ws, xs)
    with np.load(y) as f:
        assert set(f.files) == set(g.outputs)
        for n in g.outputs:
            assert rel_err(f[n], ref[n]) <= 1e-4


def test_run_reads_weights_and_inputs(graph_file, tmp_path):
    g, path = graph_file
    ws, xs = random_tensors(g, 11)
    np.savez(tmp_path / "w.npz", **ws)
    np.savez(tmp_path / "x.npz", **xs)
    y = tmp_path / "y.npz"
    assert main(["run", path, "--iters", "1", "--mode", "first-touch", "--weights", str(tmp_path / "w.npz"),
                 "--inputs", str(tmp_path / "x.npz"), "--outputs", str(y), "-q"]) == 0
    ref = reference_forward(g, ws, xs)
    with np.load(y) as f:
        for n in g.outputs:
            assert rel_err(f[n], ref[n]) <= 1e-4


def _error(capsys, argv):
    status = main(argv)
    err = capsys.readouterr().err
    assert status != 0
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_missing_and_misshaped_weights_are_named(graph_file, tmp_path, capsys):
    g, path = graph_file
    ws, xs = random_tensors(g, 0)
    missing = dict(ws)
    del missing["dw.w"]
    np.savez(tmp_path / "m.npz", **missing)
    assert "'dw.w' is missing" in _error(capsys, ["run", path, "--weights", str(tmp_path / "m.npz")])
    bad = dict(ws, **{"c1.b": np.zeros(99, np.float32)})
    np.savez(tmp_path / "b.npz", **bad)
    assert "'c1.b' has shape [99]" in _error(capsys, ["run", path, "--weights", str(tmp_path / "b.npz")])
    extra = dict(ws, bogus=np.zeros(1))
    np.savez(tmp_path / "e.npz", **extra)
    assert "'bogus'" in _error(capsys, ["run", path, "--weights", str(tmp_path / "e.npz")])
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 1), np.float32))
    assert "input 'x' has shape [1, 1]" in _error(capsys, ["run", path, "--inputs", str(tmp_path / "x.npz")])
    assert "No such file" in _error(capsys, ["run", path, "--weights", str(tmp_path / "nope.npz")])


def test_nodes_and_modes_are_checked(graph_file, capsys):
    _, path = graph_file
    import numamem

    here = numamem.topology().node_ids
    missing = max(here) + 1
    assert f"--nodes={missing}: no such node" in _error(capsys, ["run", path, "--nodes", str(missing)])
    assert f"--nodes={missing}: no such node" in _error(capsys, ["run", path, "--nodes", f"0-{missing}"])
    assert "an empty item" in _error(capsys, ["run", path, "--nodes", "7,"])
    with pytest.raises(SystemExit):  # counts are for plans of other machines only
        main(["run", path, "--node-count", "2"])
    assert "unrecognized arguments: --node-count" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a RuntimeError traceback ("can't start new thread") before
        main(["run", path, "--workers", "100000"])
    assert "at most 1024 worker threads per node" in capsys.readouterr().err
    assert "unknown mode 'fast'" in _error(capsys, ["run", path, "--mode", "planned,fast"])
    assert "neither a built-in model" in _error(capsys, ["run", "no-such-graph"])


def test_run_graph_api_on_a_builtin_model():
    import numamem.models

    g = numamem.models.get("mlp", batch=4, features=(32, 64, 16))
    r = run_graph(g, modes=["planned", "first-touch"], iters=3, keep_outputs=True)
    assert r["ok"] and set(r["_outputs"]) == {"planned", "first-touch"}
    assert r["modes"]["first-touch"]["speedup_vs_first_touch"] == 1.0
    assert r["plan"]["arena_bytes"] <= r["all_tensors_bytes"] + 4096
    with pytest.raises(ValueError, match="unknown mode"):
        run_graph(g, modes=["x"])


def test_estimate_favours_local_traffic():
    g = random_graph(0, "cnn")
    n = len(g.layers)
    shares = [{0: 0.5, 1: 0.5}] * n
    local = [{(0, 0): 10**8, (1, 1): 10**8}] * n
    remote = [{(0, 0): 10**8, (0, 1): 10**8}] * n  # node 1 reads node 0's memory
    est = estimate_speedup(g, [1e-4] * n, {"planned": local, "first-touch": remote}, shares, [0, 1])
    assert est["planned_vs_first_touch"] == pytest.approx(105 / 34, rel=1e-6)
    assert "ESTIMATE" in est["basis"] and "Xeon Gold 6140" in est["basis"]
    bw = {"0": {"0": 1e10, "1": 5e9}, "1": {"0": 5e9, "1": 1e10}}
    est = estimate_speedup(g, [1e-4] * n, {"planned": local, "first-touch": remote}, shares, [0, 1], bw)
    assert est["planned_vs_first_touch"] == pytest.approx(2.0) and "measured" in est["basis"]
    # compute-bound layers: traffic does not matter
    est = estimate_speedup(g, [10.0] * n, {"planned": local, "first-touch": remote}, shares, [0, 1])
    assert est["planned_vs_first_touch"] == pytest.approx(1.0)


def test_progress_prints_only_after_a_while():
    s = io.StringIO()
    p = Progress("numamem run", after=3600, stream=s)
    p("iteration 1/2")
    assert s.getvalue() == ""
    p = Progress("numamem run", after=0, every=0, stream=s)
    p("iteration 2/2")
    assert "numamem run:" in s.getvalue() and "iteration 2/2" in s.getvalue()
