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
    status, out, err = run(capsys, "plan", "resnet50", "--batch", "2", "--node-count", "2",
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
    assert run(capsys, "plan", str(graph_path), "--json", str(again), "-q")[0] == 0  # default: --node-count 2
    assert json.loads(again.read_text()) == json.loads(plan_path.read_text())


def test_plan_nodes_not_on_this_machine(capsys, tmp_path):
    status, out, _ = run(capsys, "plan", "mlp", "--node-count", "12", "--no-layers", "--page-size", "65536")
    assert status == 0
    assert f"nodes {list(range(12))}" in out and "page 65536 B" in out and "fc1" not in out


def test_plan_nodes_are_this_machines(capsys, tmp_path):
    import numamem

    here = numamem.topology().memory_nodes()
    status, out, _ = run(capsys, "plan", "mlp", "--nodes", "all", "--no-layers")
    assert status == 0 and f"nodes {here}" in out
    status, out, _ = run(capsys, "plan", "mlp", "--nodes", str(here[0]), "--no-layers")
    assert status == 0 and f"nodes [{here[0]}]" in out
    # --nodes names nodes of this machine; counts are --node-count
    status, _, err = run(capsys, "plan", "mlp", "--nodes", "1000")
    assert status == 2 and err.startswith("numamem plan: error: --nodes=1000: no such node")


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
        (["plan", "mlp", "--nodes", "0,0"], "node 0 is named twice"),
        (["plan", "mlp", "--nodes", "zero"], "'zero' is not a node id"),
        (["plan", "mlp", "--nodes", "0", "--node-count", "2"], "not allowed with argument"),
        (["plan", "mlp", "--node-count", "0"], "expected a positive integer"),
        (["plan", "mlp", "--node-count", "1025"], "at most 1024 NUMA nodes"),
        (["plan", "mlp", "--page-size", "1000"], "power of two"),
        (["plan", "mlp", "--seq-len", "8"], "--seq-len applies to bert_base only"),
    ],
)
def test_plan_errors_are_one_line(capsys, argv, message):
    try:
        status, out, err = run(capsys, *argv)
    except SystemExit as exc:  # a usage error, found by argparse
        status, err = exc.code, capsys.readouterr().err
    assert status == 2
    assert message in err and "Traceback" not in err and err.startswith("numamem plan: error:")
    assert err.count("\n") == 1


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
    assert list(commands) == ["topology", "doctor", "plan", "pack", "run", "bench"]


@pytest.mark.parametrize("text, nodes", [
    ("0", [0]), ("2", [2]), ("0,2", [0, 2]), ("2,0", [0, 2]), ("0-3", [0, 1, 2, 3]), ("0-1,3", [0, 1, 3]),
    ("3,0-1", [0, 1, 3]), ("5-5", [5]), (" 0, 2 ", [0, 2]), ("all", None), ("ALL", None), ("1023", [1023]),
])
def test_parse_nodes(text, nodes):
    assert parse_nodes(text) == nodes


@pytest.mark.parametrize("text, message", [
    ("", "--nodes is empty"),
    (" ", "--nodes is empty"),
    ("0,", "an empty item"),
    (",1", "an empty item"),
    ("0,,1", "an empty item"),
    ("3-1", "the range 3-1 runs backwards (write 1-3)"),
    ("0,0", "node 0 is named twice"),
    ("0-2,1", "node 1 is named twice"),
    ("0-2,1-4", "node 1 is named twice"),
    ("a,b", "'a' is not a node id"),
    ("-1", "'-1' is not a node id"),
    ("1-", "'1-' is not a node id"),
    ("0-1-2", "'0-1-2' is not a node id"),
    ("1.5", "'1.5' is not a node id"),
    ("0-99999999999", "past the last node id Linux allows (1023)"),
    ("+0-1", "relative (+) and inverted (!)"),
    ("!0", "relative (+) and inverted (!)"),
])
def test_parse_nodes_refuses(text, message):
    with pytest.raises(ValueError) as info:
        parse_nodes(text)
    assert message in str(info.value)
