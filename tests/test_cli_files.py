"""The files the commands read (``--distances``, ``--bandwidth``, graphs, ``.npz`` tensors) and
write (``--json``, ``--outputs``...): every way they can be wrong is one line naming the file."""
from __future__ import annotations

import json

import numpy as np
import pytest

import numamem
from numamem.cli import main
from numamem.cli._args import read_matrix
from numamem.runtime.randgraph import random_graph
from numamem.runtime.runner import random_tensors

HERE = numamem.topology().memory_nodes()


def error_of(capsys, argv, status=2):
    got = main(argv)
    err = capsys.readouterr().err
    assert got == status, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def bench_doc(nodes, gbs=10.0):
    """What ``numamem bench --json`` writes, for ``nodes`` (the parts the readers look at)."""
    return {
        "format": "numamem-bench/1", "nodes": nodes, "cpu_nodes": nodes,
        "bandwidth": {str(a): {str(b): gbs * 1e9 / (1 if a == b else 2) for b in nodes} for a in nodes},
        "latency_ns": {str(a): {str(b): 90.0 for b in nodes} for a in nodes},
        "threads": {str(a): 2 for a in nodes}, "derived_rows": [],
    }


# ----------------------------------------------------------------------------- read_matrix
def test_read_matrix_forms(tmp_path):
    by_id = write(tmp_path, "a.json", {"0": {"0": 10, "2": 20}, "2": {"0": 20, "2": 10}})
    assert read_matrix(by_id, "distances", [0, 2]).values == {0: {0: 10.0, 2: 20.0}, 2: {0: 20.0, 2: 10.0}}
    listed = write(tmp_path, "b.json", [[10, 21], [21, 10]])
    assert read_matrix(listed, "distances", [3, 5]).values == {3: {3: 10.0, 5: 21.0}, 5: {3: 21.0, 5: 10.0}}
    wrapped = write(tmp_path, "c.json", {"distances": [[10, 21], [21, 10]]})
    assert read_matrix(wrapped, "distances", [0, 1]).values[0][1] == 21.0
    # numamem topology --json: a list in the order of its own nodes, whatever nodes are asked for
    topo = write(tmp_path, "t.json", {"nodes": [{"id": 0}, {"id": 1}, {"id": 2}],
                                      "distances": [[10, 20, 30], [20, 10, 40], [30, 40, 10]]})
    assert read_matrix(topo, "distances", [2, 1]).values == {2: {2: 10.0, 1: 40.0}, 1: {2: 40.0, 1: 10.0}}
    bench = read_matrix(write(tmp_path, "d.json", bench_doc([0, 1])), "bandwidth", [0, 1])
    assert bench.values[0][1] == 5e9 and bench.threads == {0: 2.0, 1: 2.0}
    assert bench.bench_result() == {"bandwidth": {"0": {"0": 1e10, "1": 5e9}, "1": {"0": 5e9, "1": 1e10}},
                                    "threads": {"0": 2.0, "1": 2.0}}


@pytest.mark.parametrize("data, nodes, message", [
    ([[10, True], [True, 10]], [0, 1], "distances entry for nodes 0 and 1 is not a number: true"),
    ({"0": {"0": "10"}}, [0], "distances entry for nodes 0 and 0 is not a number: \"10\""),
    ({"0": {"0": None}}, [0], "is not a number: null"),
    ([[10, 0], [20, 10]], [0, 1], "must be positive and finite, got 0.0"),
    ([[10, -1], [20, 10]], [0, 1], "must be positive and finite"),
    ([[10, 20, 30], [20, 10, 30], [30, 30, 10]], [0, 1], "must be 2x2, in the order of nodes [0, 1]"),
    ([[10, 20], [20]], [0, 1], "must be 2x2"),
    ({"0": {"0": 10}}, [0, 1], "no entry for nodes 0 and 1 (it has nodes [0])"),
    ({"x": {"0": 10}}, [0], "'x' is not a node id"),
    ({"0": [10]}, [0], "row of node 0 must be an object"),
    ({"format": "numamem-plan/1", "graph": "g"}, [0], "a numamem-plan/1 file holds no distances matrix"),
    ("true", [0], "expected a square list or an object"),
    ("{oops", [0], "bad JSON"),
])
def test_read_matrix_refuses(tmp_path, data, nodes, message):
    path = write(tmp_path, "m.json", data if not isinstance(data, str) else data)
    with pytest.raises(ValueError) as info:
        read_matrix(path, "distances", nodes)
    assert message in str(info.value) and path in str(info.value)


def test_read_matrix_not_utf8_and_deep(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(b'{"distances": "\xff"}')
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        read_matrix(str(path), "distances", [0])
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="nested too deeply"):
        read_matrix(str(path), "distances", [0])


# ----------------------------------------------------------------------------- plan
def test_plan_distances_refuses_true(capsys, tmp_path):
    """Issue 12 item 13: ``true`` was read as the distance 1."""
    path = write(tmp_path, "d.json", {"distances": [[10, True], [True, 10]]})
    err = error_of(capsys, ["plan", "mlp", "--node-count", "2", "--distances", path, "-q"])
    assert "entry for nodes 0 and 1 is not a number: true" in err and path in err


def test_plan_takes_this_machines_bench_output(capsys, tmp_path):
    """Issue 12 item 11: one reader, the same file usable by plan and run."""
    path = write(tmp_path, "b.json", bench_doc(HERE))
    out = tmp_path / "p.json"
    assert main(["plan", "mlp", "--nodes", "all", "--bandwidth", path, "--json", str(out), "-q"]) == 0
    assert json.loads(out.read_text())["info"]["bandwidth_measured"] is True
    missing = max(HERE) + 1
    err = error_of(capsys, ["plan", "mlp", "--node-count", str(missing + 1), "--bandwidth", path, "-q"])
    assert f"no entry for nodes 0 and {missing}" in err and f"it has nodes {HERE}" in err


# ----------------------------------------------------------------------------- run
@pytest.fixture
def graph_file(tmp_path):
    g = random_graph(0, "cnn")
    path = tmp_path / "g.json"
    g.to_json(path)
    return g, str(path)


def test_run_bandwidth_used_or_refused(capsys, tmp_path, graph_file):
    """Issue 12 item 11: a bench file the estimate cannot use was ignored without a word, and the
    estimate labelled with the published figures."""
    _, graph = graph_file
    mine = write(tmp_path, "mine.json", bench_doc(HERE))
    report = tmp_path / "r.json"
    argv = ["run", graph, "--iters", "1", "--mode", "planned,first-touch", "-q", "--json", str(report),
            "--bandwidth"]
    if len(HERE) >= 2:
        assert main(argv + [mine]) == 0
        assert "measured bandwidth matrix" in json.loads(report.read_text())["estimate"]["basis"]
    else:
        err = error_of(capsys, argv + [mine])
        assert "no entry for nodes 0 and 1" in err and "two-node machine" in err and mine in err
        assert not report.exists()
    two = write(tmp_path, "two.json", bench_doc([0, 1]))
    if len(HERE) < 2:  # a one-node run's estimate is for nodes [0, 1]: a matrix of those is used
        assert main(argv + [two]) == 0
        basis = json.loads(report.read_text())["estimate"]["basis"]
        assert "measured bandwidth matrix" in basis and "Xeon" not in basis
    bad = write(tmp_path, "bad.json", {"bandwidth": {"0": {"0": "fast"}}})
    assert "is not a number" in error_of(capsys, argv + [bad])


# ----------------------------------------------------------------------------- graph files
def test_graph_file_not_utf8_names_the_file(capsys, tmp_path):
    """Issue 12 item 15: the message named neither the file nor what was expected."""
    path = tmp_path / "g.json"
    path.write_bytes(b'{"format": "numamem-graph/1", "name": "\xe9t\xe9"}')
    err = error_of(capsys, ["plan", str(path)])
    assert str(path) in err and "not a UTF-8 text file" in err


def test_deeply_nested_graph_is_one_line(capsys, tmp_path):
    """Issue 12 item 15: a RecursionError traceback."""
    path = tmp_path / "g.json"
    path.write_text('{"format": "numamem-graph/1", "layers": ' + "[" * 200000 + "]" * 200000 + "}")
    for cmd in ("plan", "run"):
        err = error_of(capsys, [cmd, str(path)])
        assert str(path) in err and "nested too deeply" in err


def test_batch_past_64_bit_sizes(capsys):
    """Issue 12 item 17: 'size must hold integers, got dtype object' from deep in the packer."""
    for cmd in ("plan", "run"):
        err = error_of(capsys, [cmd, "mlp", "--batch", str(2**62)])
        assert f"mlp with --batch {2**62}: the tensors take" in err and "64-bit sizes" in err


# ----------------------------------------------------------------------------- tensors
@pytest.mark.parametrize("bad, message", [
    (lambda a: a.astype(np.complex64), "has dtype complex64"),
    (lambda a: np.zeros(a.shape, [("re", "f4"), ("im", "f4")]), "has dtype [('re', '<f4'), ('im', '<f4')]"),
    (lambda a: a.astype(str), "has dtype <U"),
    (lambda a: a > 0, "has dtype bool"),
    (lambda a: np.where(np.arange(a.size).reshape(a.shape) == 1, np.nan, a), "holds NaN or infinite values"),
    (lambda a: np.full(a.shape, 1e300), "holds NaN or infinite values (as float32)"),  # inf as float32
])
def test_weights_of_the_wrong_kind_name_the_tensor(capsys, tmp_path, graph_file, bad, message):
    """Issue 12 items 13 and 17: complex and structured weights were cast, strings failed without
    a tensor name, NaN was blamed on the runtime ('outputs differ from the reference')."""
    g, graph = graph_file
    ws, _ = random_tensors(g, 0)
    name = g.weights[0]
    ws[name] = bad(ws[name])
    np.savez(tmp_path / "w.npz", **ws)
    err = error_of(capsys, ["run", graph, "--weights", str(tmp_path / "w.npz"), "--iters", "1"])
    assert f"weight {name!r}" in err and message in err and "w.npz" in err


def test_inputs_with_nan_are_refused(capsys, tmp_path, graph_file):
    g, graph = graph_file
    _, xs = random_tensors(g, 0)
    name = g.inputs[0]
    xs[name] = np.full_like(xs[name], np.inf)
    np.savez(tmp_path / "x.npz", **xs)
    err = error_of(capsys, ["run", graph, "--inputs", str(tmp_path / "x.npz")])
    assert f"input {name!r} holds NaN or infinite values" in err


def test_weights_file_that_is_not_an_npz(capsys, tmp_path, graph_file):
    """Issue 12 item 15: BadZipFile traceback; a .npy gave "'numpy.ndarray' object does not support
    the context manager protocol"."""
    _, graph = graph_file
    corrupt = tmp_path / "c.npz"
    corrupt.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    err = error_of(capsys, ["run", graph, "--weights", str(corrupt)])
    assert str(corrupt) in err and "not a readable .npz file" in err
    npy = tmp_path / "w.npy"
    np.save(npy, np.zeros(3, np.float32))
    err = error_of(capsys, ["run", graph, "--weights", str(npy)])
    assert str(npy) in err and "numpy.savez" in err


# ----------------------------------------------------------------------------- output paths
@pytest.mark.parametrize("option", ["--json", "--outputs"])
def test_run_checks_output_paths_before_running(capsys, tmp_path, graph_file, monkeypatch, option):
    """Issue 12 item 18: a path that cannot be written was found only after the whole run."""
    from numamem.runtime import runner

    def must_not_run(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(runner, "run_graph", must_not_run)
    _, graph = graph_file
    folder = tmp_path / "d.npz"  # (np.savez adds .npz to a name without it)
    folder.mkdir()
    for path, message in ((tmp_path / "no" / "such" / "dir" / "r.npz", "cannot write there"),
                          (folder, "is a directory")):
        err = error_of(capsys, ["run", graph, option, str(path)])
        assert err.startswith(f"numamem run: error: {option} {path}") and message in err
    assert not (tmp_path / "no").exists()


def test_output_check_leaves_no_file_and_keeps_existing_ones(capsys, tmp_path):
    out = tmp_path / "p.json"
    assert main(["plan", "mlp", "--json", str(tmp_path / "x" / "p.json"), "-q"]) == 2
    assert "--json" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["pack", str(tmp_path / "missing.csv"), "--out", str(out)]) == 1
    assert not out.exists()  # created by the check, removed again
    out.write_text("keep")
    assert main(["pack", str(tmp_path / "missing.csv"), "--out", str(out)]) == 1
    assert out.read_text() == "keep"
    capsys.readouterr()
    err = error_of(capsys, ["bench", "--json", str(tmp_path)])
    assert "--json" in err and "is a directory" in err


@pytest.mark.parametrize("value", [10**6, -1])
def test_embedding_ids_outside_the_table(capsys, tmp_path, value):
    """An IndexError traceback from the reference ops, after the set-up of every mode."""
    from numamem.planner import GraphBuilder

    b = GraphBuilder("emb", dtype="float32")
    b.output(b.embedding(b.input("ids", (2, 3), dtype="int64"), b.weight("table", (10, 4))))
    g = b.build()
    graph = tmp_path / "emb.json"
    g.to_json(graph)
    _, xs = random_tensors(g, 0)
    xs = {k: np.full_like(v, value) for k, v in xs.items()}
    np.savez(tmp_path / "x.npz", **xs)
    err = error_of(capsys, ["run", str(graph), "--inputs", str(tmp_path / "x.npz")])
    assert f"input 'ids' holds the id {value}, outside the 10 rows of 'table'" in err
