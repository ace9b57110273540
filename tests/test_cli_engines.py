"""``numamem run --engine onnxruntime|torch``: the report, the files, and the errors before any run."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

# The test command installs both extras: a missing package fails here, never skips.
import onnx
import torch  # noqa: F401
from onnx import TensorProto, helper, numpy_helper

from numamem.cli import main
from numamem.runtime.runner import FORMAT


@pytest.fixture
def onnx_file(tmp_path):
    """A two-layer perceptron (symbolic batch) and its weights, as an .onnx file."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Relu", ["h0"], ["h"]),
         helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the installed ONNX Runtime reads
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return str(path), w1, w2


def test_onnxruntime_report_outputs_and_inputs(onnx_file, tmp_path, capsys):
    path, w1, w2 = onnx_file
    x = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    out, y = tmp_path / "r.json", tmp_path / "y"
    assert main(["run", path, "--engine", "onnxruntime", "--iters", "2", "--nodes", "0", "--inputs",
                 str(tmp_path / "x.npz"), "--json", str(out), "--outputs", str(y)]) == 0
    text = capsys.readouterr().out
    assert "under onnxruntime" in text and "per-node" in text and "default" in text
    r = json.loads(out.read_text())
    assert r["format"] == FORMAT and r["engine"] == "onnxruntime" and r["graph"] == "tiny_mlp"
    assert r["nodes"] == [0] and r["iters"] == 2 and r["batch"] == 6 and r["ok"] is True
    assert list(r["modes"]) == ["default", "per-node"]
    for e in r["modes"].values():
        assert len(e["seconds"]) == 2 and e["rel_err"] <= 1e-4
    assert "_outputs" not in r
    # --outputs holds default's outputs (np.savez added .npz), which are the model's on --inputs
    with np.load(str(y) + ".npz") as f:
        assert f.files == ["y"]
        np.testing.assert_allclose(f["y"], np.maximum(x @ w1, 0) @ w2, rtol=1e-5, atol=1e-5)


def test_onnxruntime_random_inputs_batch_and_one_mode(onnx_file, tmp_path, capsys):
    path = onnx_file[0]
    out = tmp_path / "r.json"
    assert main(["run", path, "--engine", "onnxruntime", "--batch", "3", "--mode", "per-node", "--iters", "1",
                 "-q", "--json", str(out)]) == 0
    assert capsys.readouterr().out == ""
    r = json.loads(out.read_text())
    assert list(r["modes"]) == ["per-node"] and r["batch"] == 3


def test_torch_on_builtin_mlp(tmp_path, capsys):
    out, y = tmp_path / "r.json", tmp_path / "y.npz"
    assert main(["run", "mlp", "--engine", "torch", "--batch", "2", "--iters", "1", "--seed", "4",
                 "--json", str(out), "--outputs", str(y)]) == 0
    assert "under torch" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["engine"] == "torch" and r["graph"] == "mlp" and r["batch"] == 2 and r["ok"] is True
    assert list(r["modes"]) == ["default", "per-node"]
    import numamem.models

    g = numamem.models.get("mlp", batch=2)
    with np.load(y) as f:
        assert set(f.files) == set(g.outputs)
        assert all(f[n].shape == tuple(g.tensors[n].shape) for n in g.outputs)


def test_torch_takes_weights_and_inputs_files(tmp_path):
    import numamem.models
    from numamem.runtime.reference import reference_forward
    from numamem.runtime.runner import random_tensors

    g = numamem.models.get("mlp", batch=2)
    ws, xs = random_tensors(g, 7)
    np.savez(tmp_path / "w.npz", **ws)
    np.savez(tmp_path / "x.npz", **xs)
    y = tmp_path / "y.npz"
    assert main(["run", "mlp", "--engine", "torch", "--batch", "2", "--iters", "1", "--mode", "default", "-q",
                 "--weights", str(tmp_path / "w.npz"), "--inputs", str(tmp_path / "x.npz"),
                 "--outputs", str(y)]) == 0
    ref = reference_forward(g, ws, xs)
    with np.load(y) as f:
        for n in g.outputs:
            np.testing.assert_allclose(f[n], ref[n], rtol=1e-3, atol=1e-3)


def _error(capsys, argv, status=2):
    assert main(argv) == status
    err = capsys.readouterr().err.strip()
    assert err.startswith("numamem run: error: ") and "\n" not in err, err
    return err


def test_onnx_file_with_engine_torch(onnx_file, capsys):
    err = _error(capsys, ["run", onnx_file[0], "--engine", "torch"])
    assert "--engine onnxruntime" in err


def test_builtin_name_with_engine_onnxruntime(capsys):
    err = _error(capsys, ["run", "mlp", "--engine", "onnxruntime"])
    assert "'mlp' is a built-in model" in err


def test_weights_with_engine_onnxruntime(onnx_file, tmp_path, capsys):
    np.savez(tmp_path / "w.npz", w1=onnx_file[1])
    err = _error(capsys, ["run", onnx_file[0], "--engine", "onnxruntime", "--weights", str(tmp_path / "w.npz")])
    assert "--weights" in err


def test_unknown_engine(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "mlp", "--engine", "tensorrt"])
    assert exc.value.code == 2
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["--mode", "planned"], "unknown mode 'planned' for --engine onnxruntime"),
    (["--reference", "kernels"], "--reference applies to --engine numamem"),
    (["--layers"], "--layers applies to --engine numamem"),
    (["--seq-len", "8"], "--seq-len"),
    (["--nodes", "0-1,5"], "--nodes"),
])
def test_engine_option_errors(onnx_file, capsys, argv, words):
    assert words in _error(capsys, ["run", onnx_file[0], "--engine", "onnxruntime", *argv])


def test_numamem_modes_with_engine_torch(capsys):
    assert "unknown mode 'default' for --engine numamem" in _error(capsys, ["run", "mlp", "--mode", "default"])
    assert "unknown mode 'planned' for --engine torch" in _error(
        capsys, ["run", "mlp", "--engine", "torch", "--mode", "planned"])


def test_not_an_onnx_file(tmp_path, capsys):
    for name, data in (("empty.onnx", b""), ("bad.onnx", b"\xff\xfe not protobuf \x00\x01")):
        (tmp_path / name).write_bytes(data)
        assert "not an ONNX model" in _error(capsys, ["run", str(tmp_path / name), "--engine", "onnxruntime"])
    assert "no such ONNX file" in _error(capsys, ["run", str(tmp_path / "gone.onnx"), "--engine", "onnxruntime"])


@pytest.mark.parametrize("feeds, words", [
    ({"z": np.zeros((2, 8), np.float32)}, "'z' is not an input"),
    ({}, "input 'x' is missing"),
    ({"x": np.zeros((2, 9), np.float32)}, "has shape [2, 9], the model needs ['?', 8]"),
    ({"x": np.zeros((2, 8), np.complex64)}, "dtype complex64"),
])
def test_bad_onnx_inputs_are_refused_before_the_run(onnx_file, tmp_path, capsys, feeds, words):
    np.savez(tmp_path / "x.npz", **feeds)
    err = _error(capsys, ["run", onnx_file[0], "--engine", "onnxruntime", "--inputs", str(tmp_path / "x.npz")])
    assert words in err


def test_batch_disagreeing_with_inputs(onnx_file, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 8), np.float32))
    err = _error(capsys, ["run", onnx_file[0], "--engine", "onnxruntime", "--batch", "3",
                          "--inputs", str(tmp_path / "x.npz")])
    assert "--batch 3" in err and "2 rows" in err


def test_output_paths_checked_before_the_run(onnx_file, tmp_path, capsys):
    err = _error(capsys, ["run", onnx_file[0], "--engine", "onnxruntime", "--json", str(tmp_path)])
    assert "--json" in err and "is a directory" in err


@pytest.mark.parametrize("engine, extra", [("onnxruntime", "numamem[onnxruntime]"), ("torch", "numamem[torch]")])
def test_missing_engine_names_the_extra(onnx_file, monkeypatch, capsys, engine, extra):
    monkeypatch.setitem(sys.modules, engine, None)  # import fails as if not installed
    graph = onnx_file[0] if engine == "onnxruntime" else "mlp"
    err = _error(capsys, ["run", graph, "--engine", engine])
    assert extra in err


def test_onnxruntime_refusing_the_model_is_one_line(tmp_path, capsys):
    # a model ONNX Runtime cannot build (an op no opset has): its own exception, not a traceback
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "bad",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "bad.onnx"))
    err = _error(capsys, ["run", str(tmp_path / "bad.onnx"), "--engine", "onnxruntime", "--iters", "1"])
    assert "ONNX Runtime refused 'bad'" in err


def test_outputs_that_differ_exit_1(onnx_file, monkeypatch, capsys):
    import numamem.engines

    real = numamem.engines.compare
    # no relative error is below -1: every mode "differs", as a wrong engine result would
    monkeypatch.setattr(numamem.engines, "compare", lambda model, **kw: real(model, rtol=-1.0, **kw))
    assert main(["run", onnx_file[0], "--engine", "onnxruntime", "--iters", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert "outputs of default, per-node differ from those of default by more than -1" in err


def test_an_input_that_is_not_a_tensor_is_refused(tmp_path, capsys):
    graph = helper.make_graph([helper.make_node("SequenceLength", ["s"], ["y"])], "seq",
                              [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "seq.onnx"))
    assert "'s' of the model is not a typed tensor" in _error(capsys, ["run", str(tmp_path / "seq.onnx"),
                                                                       "--engine", "onnxruntime"])
