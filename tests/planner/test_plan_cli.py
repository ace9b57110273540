"""``numamem plan``: output, files, and one-line errors with a non-zero exit."""
import json

import pytest

from numamem.cli import build_parser, main
from numamem.planner import Graph, Plan
from numamem.cli._args import parse_nodes


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_plan_builtin_writes_plan_and_graph(capsys, tmp_path):
    plan_path, graph_path = tmp_path / "p.json", tmp_path / "g.json"
    status, out, err = run(capsys, "plan", "resnet50", "--batch", "2", "--nodes", "2",
                           "--json", str(plan_path), "--export-graph", str(graph_path))
    assert status == 0 and err == ""
    assert "lower bound" in out and "remote" in out and "layer4.2.add" in out
    graph = Graph.from_json(graph_path.read_text())
    assert graph.name == "resnet50" and graph.tensor("x").shape == (2, 3, 224, 224)
    p = Plan.from_json(plan_path)
    assert p.nodes == [0, 1]
    p.verify(graph)
    # planning the exported graph file gives the same plan
    again = tmp_path / "p2.json"
    assert run(capsys, "plan", str(graph_path), "--nodes", "0,1", "--json", str(again), "-q")[0] == 0
    assert json.loads(again.read_text()) == json.loads(plan_path.read_text())


def test_plan_nodes_not_on_this_machine(capsys, tmp_path):
    status, out, _ = run(capsys, "plan", "mlp", "--nodes", "5,9", "--no-layers", "--page-size", "65536")
    assert status == 0
    assert "nodes [5, 9]" in out and "page 65536 B" in out and "fc1" not in out


def test_plan_options(capsys, tmp_path):
    dist = tmp_path / "d.json"
    dist.write_text(json.dumps({"distances": [[10, 32], [32, 10]]}))
    out_path = tmp_path / "p.json"
    status, _, _ = run(capsys, "plan", "bert_base", "--seq-len", "16", "--batch", "2", "--batch-axis-only",
                       "--distances", str(dist), "--json", str(out_path), "-q")
    assert status == 0
    d = json.loads(out_path.read_text())
    assert d["info"]["distances"] == [[10.0, 32.0], [32.0, 10.0]]
    assert {l["axis"] for l in d["layers"]} == {0}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plan", "nosuchmodel"], "neither a built-in model"),
        (["plan", "mlp", "--nodes", "0,0"], "repeat a node"),
        (["plan", "mlp", "--nodes", "zero"], "--nodes must be"),
        (["plan", "mlp", "--page-size", "1000"], "power of two"),
        (["plan", "mlp", "--seq-len", "8"], "--seq-len applies to bert_base only"),
    ],
)
def test_plan_errors_are_one_line(capsys, argv, message):
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert message in err and "Traceback" not in err and err.startswith("numamem plan: error:")


@pytest.mark.parametrize(
    "text, message",
    [
        ("{oops", "bad JSON"),
        (json.dumps({"format": "numamem-graph/1", "name": "t", "tensors": [{"name": "x", "shape": [2], "role": "input"},
                     {"name": "y", "shape": [2]}], "layers": [{"name": "l", "op": "foo", "inputs": ["x"], "outputs": ["y"]}]}),
         "layer 'l' (foo): unknown op 'foo'"),
        (json.dumps({"format": "numamem-graph/1", "name": "t", "tensors": [{"name": "x", "shape": [2], "role": "input"},
                     {"name": "y", "shape": [2]}], "layers": [{"name": "l", "op": "relu", "inputs": ["z"], "outputs": ["y"]}]}),
         "input tensor 'z' is not defined"),
    ],
)
def test_plan_bad_graph_files(capsys, tmp_path, text, message):
    path = tmp_path / "g.json"
    path.write_text(text)
    status, _, err = run(capsys, "plan", str(path))
    assert status == 2 and message in err and str(path) in err and "Traceback" not in err
    status, _, err = run(capsys, "plan", str(path), "--batch", "2")
    assert status == 2 and "--batch" in err


def test_every_command_is_registered():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert list(commands) == ["topology", "plan", "pack", "run", "bench"]


def test_parse_nodes():
    assert parse_nodes("0,2") == [0, 2] and parse_nodes("3") == [0, 1, 2] and parse_nodes("3,") == [3]
    for bad in ("", "0", "-1,", "a,b"):
        with pytest.raises(ValueError):
            parse_nodes(bad)
