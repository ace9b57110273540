"""``numamem plan|run MODEL.onnx``: ONNX models through numamem's own planner and runtime."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

# The test command installs the onnx extra: a missing package fails here, never skips.
import onnx
from onnx import TensorProto, helper, numpy_helper

from numamem.cli import main
from numamem.planner.graph import load_graph


def _cnn(tmp_path, *, dims=("N", 3, 8, 8), name="tiny.onnx", extra_node=None):
    """Conv-Relu-GlobalAveragePool-Flatten-Gemm on input ``data`` (dims as given), output ``probs``."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    b = (0.1 * rng.standard_normal(4)).astype(np.float32)
    fc = (rng.standard_normal((5, 4)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["data", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["probs"], name="fc", transB=1)]
    if extra_node is not None:
        nodes.append(extra_node)
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [dims[0], 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), numpy_helper.from_array(fc, "fc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, str(path))
    return str(path), (w, b, fc)


def _reference(x, w, b, fc):
    """The tiny CNN in float64 NumPy."""
    n, c, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            y += np.einsum("nchw,kc->nkhw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    y = np.maximum(y + b[None, :, None, None], 0)
    return y.mean(axis=(2, 3)) @ fc.T.astype(np.float64)


def _one_line_error(capsys, argv, *parts):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"numamem {argv[0]}: error: "), err
    for p in parts:
        assert p in err, err
    return err


def test_plan_onnx_with_batch_and_export_graph(tmp_path, capsys):
    path, _ = _cnn(tmp_path)
    out = tmp_path / "g.json"
    assert main(["plan", path, "--batch", "3", "--export-graph", str(out), "--node-count", "2"]) == 0
    assert "arena" in capsys.readouterr().out
    g = load_graph(str(out))
    assert g.inputs == ["data"] and g.outputs == ["probs"]
    assert g.tensors["data"].shape == (3, 3, 8, 8) and g.tensors["probs"].shape == (3, 5)


def test_plan_onnx_input_shape(tmp_path, capsys):
    path, _ = _cnn(tmp_path)
    out = tmp_path / "g.json"
    assert main(["plan", path, "--input-shape", "data=2x3x8x8", "--export-graph", str(out), "-q"]) == 0
    assert load_graph(str(out)).tensors["data"].shape == (2, 3, 8, 8)


@pytest.mark.parametrize("bad", ["data", "=1x3", "data=1x0x8x8", "data=1x3xx8", "data=a"])
def test_input_shape_syntax_is_a_usage_error(tmp_path, capsys, bad):
    path, _ = _cnn(tmp_path)
    assert main_exit(["plan", path, "--input-shape", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--input-shape" in err and repr(bad) in err, err


def main_exit(argv):
    """Exit status of ``main(argv)`` also for argparse's usage errors (which exit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_input_shape_refused_where_it_does_not_apply(tmp_path, capsys):
    path, _ = _cnn(tmp_path)
    _one_line_error(capsys, ["plan", "mlp", "--input-shape", "x=1x2"], "--input-shape applies to ONNX models")
    _one_line_error(capsys, ["plan", path, "--batch", "2", "--input-shape", "data=1x3x8x8", "--input-shape",
                             "data=2x3x8x8"], "'data' is given twice")
    _one_line_error(capsys, ["run", path, "--engine", "onnxruntime", "--input-shape", "data=1x3x8x8"],
                    "--input-shape applies to --engine numamem only")
    _one_line_error(capsys, ["plan", path, "--seq-len", "4"], "--seq-len")


def test_run_onnx_inputs_and_outputs_keyed_by_onnx_names(tmp_path, capsys):
    path, (w, b, fc) = _cnn(tmp_path)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", data=x)
    report = tmp_path / "r.json"
    assert main(["run", path, "--nodes", "0", "--workers", "1", "--iters", "1", "--mode", "planned",
                 "--inputs", str(tmp_path / "x.npz"), "--outputs", str(tmp_path / "y.npz"),
                 "--json", str(report), "-q"]) == 0
    with np.load(tmp_path / "y.npz") as f:
        assert f.files == ["probs"]
        got = f["probs"]
    # the model's own initializers are the weights (no --weights, no placeholders)
    ref = _reference(x, w, b, fc)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4
    rep = json.loads(report.read_text())
    assert rep["graph"] == "tiny_cnn" and rep["batch"] == 2 and rep["ok"]


def test_run_onnx_batch_and_export_graph(tmp_path, capsys):
    path, _ = _cnn(tmp_path)
    out = tmp_path / "g.json"
    assert main(["run", path, "--batch", "2", "--nodes", "0", "--workers", "1", "--iters", "1",
                 "--mode", "planned", "--export-graph", str(out), "-q"]) == 0
    assert load_graph(str(out)).tensors["data"].shape == (2, 3, 8, 8)
    # inputs named by anything else than the model's input names are refused, naming them
    np.savez(tmp_path / "x.npz", input=np.zeros((2, 3, 8, 8), np.float32))
    _one_line_error(capsys, ["run", path, "--batch", "2", "--nodes", "0", "--inputs", str(tmp_path / "x.npz")],
                    "'input' is not a input", "data")


def test_missing_symbolic_dim_names_input_and_dim(tmp_path, capsys):
    path, _ = _cnn(tmp_path, dims=("N", 3, "H", 8))
    err = _one_line_error(capsys, ["plan", path, "--batch", "1"], "'data'", "H")
    assert "--input-shape" in err or "input_shapes" in err


def test_unsupported_op_names_node_op_domain_opset(tmp_path, capsys):
    odd = helper.make_node("Hardmax", ["probs"], ["hm"], name="odd_one")
    path, _ = _cnn(tmp_path, extra_node=odd)
    m = onnx.load(path)
    m.graph.output.append(helper.make_tensor_value_info("hm", TensorProto.FLOAT, ["N", 5]))
    onnx.save(m, path)
    _one_line_error(capsys, ["plan", path, "--batch", "1"], "odd_one", "Hardmax", "17")


def test_truncated_file_is_one_line(tmp_path, capsys):
    path, _ = _cnn(tmp_path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    _one_line_error(capsys, ["run", path, "--batch", "1"], path)
    _one_line_error(capsys, ["plan", str(tmp_path / "nope.onnx")], "no such ONNX file")


LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def _check_light_run(argv, tmp_path, capsys, output, logits):
    """``numamem run`` of a light model ending in a softmax: its comparison means something (the
    softmax is not one-hot, the logits are compared in every mode and with ONNX Runtime)."""
    report, outputs = tmp_path / "r.json", tmp_path / "y.npz"
    assert main(argv + ["--json", str(report), "--outputs", str(outputs)]) == 0
    out = capsys.readouterr().out
    assert "correctness: every mode within" in out and "onnxruntime: " in out
    assert f"checked: the outputs and the logits of the final softmax ({logits!r} for {output!r}, max rel err" in out
    r = json.loads(report.read_text())
    assert r["reference"]["logits"] == {output: logits}
    for entry in list(r["modes"].values()) + [r["onnxruntime"]]:
        assert set(entry["rel_err"]) == {output, logits} and entry["ok"]
    with np.load(outputs) as y:
        assert list(y.files) == [output]
        assert float(y[output].max()) < 0.5, "the placeholder weights saturate the softmax"


def test_run_light_squeezenet(tmp_path, capsys):
    _check_light_run(["run", os.path.join(LIGHT, "light_squeezenet.onnx"), "--iters", "1"], tmp_path, capsys,
                     "softmaxout_1", "softmaxout_1/reshape")


def test_readme_example_light_resnet50(tmp_path, capsys, stress):
    # The README's second example, as written there (less the iterations).
    if not stress:
        pytest.skip("ResNet-50 in three modes takes half a minute here: run with --stress")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert 'light/light_resnet50.onnx" --iters 5' in readme
    _check_light_run(["run", os.path.join(LIGHT, "light_resnet50.onnx"), "--iters", "1"], tmp_path, capsys,
                     "gpu_0/softmax_1", "r174")


def test_run_onnx_compares_with_onnxruntime(tmp_path, capsys):
    path, _ = _cnn(tmp_path)
    report = tmp_path / "r.json"
    assert main(["run", path, "--batch", "2", "--nodes", "0", "--workers", "2", "--iters", "2",
                 "--mode", "planned,first-touch", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime:" in out and "intra-op threads" in out and "planned is" in out
    ort = json.loads(report.read_text())["onnxruntime"]
    assert ort["threads"] == 2 and len(ort["seconds"]) == 2 and ort["ok"] and ort["max_rel_err"] < 1e-4
    planned = json.loads(report.read_text())["modes"]["planned"]["median_s"]
    assert ort["planned_vs_onnxruntime"] == pytest.approx(ort["median_s"] / planned)


def test_run_onnx_without_onnxruntime_notes_it(tmp_path, capsys, monkeypatch):
    import numamem.engines.ort_baseline as ob

    def missing(module, extra):
        raise ImportError(f"{module} is not installed; install it with `pip install numamem[{extra}]`")

    monkeypatch.setattr(ob, "require", missing)
    path, _ = _cnn(tmp_path)
    report = tmp_path / "r.json"
    assert main(["run", path, "--batch", "1", "--nodes", "0", "--iters", "1", "--mode", "planned",
                 "--json", str(report)]) == 0
    assert "onnxruntime: not compared (onnxruntime is not installed" in capsys.readouterr().out
    assert json.loads(report.read_text())["onnxruntime"] == {
        "skipped": "onnxruntime is not installed; install it with `pip install numamem[onnxruntime]`"}


def test_run_graph_file_has_no_onnxruntime_entry(tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["run", "mlp", "--nodes", "0", "--iters", "1", "--mode", "planned", "--json", str(report), "-q"]) == 0
    assert "onnxruntime" not in json.loads(report.read_text())


def test_run_onnx_unreadable_inputs_are_one_line(tmp_path, capsys):
    path, _ = _cnn(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    _one_line_error(capsys, ["run", path, "--batch", "1", "--inputs", str(tmp_path / "x.npy")], "a .npy file")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    _one_line_error(capsys, ["run", path, "--batch", "1", "--inputs", str(tmp_path / "bad.npz")],
                    "not a readable .npz file")
