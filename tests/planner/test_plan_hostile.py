"""Hostile and malformed plans and graphs: clear ValueErrors, never a Python traceback (issue 12).

Items 15 and 19: a block with ``live=[5, 1]`` made :meth:`Plan.verify` raise IndexError,
``Plan.from_json('[]')`` looked for a file named ``[]``, and deeply nested JSON given to
``Graph.from_json`` (or a nested dict to ``Graph.from_dict``) hit Python's recursion limit.
"""
import copy
import json
import random

import pytest
from hypothesis import given, settings, strategies as st

import numamem.models as models
from numamem.planner import Graph, GraphError, Plan, PlanError, plan
from numamem.runtime.randgraph import random_graph


@pytest.fixture(scope="module")
def mlp_plan():
    g = models.get("mlp", batch=4, features=(8, 16, 4))
    return g, plan(g, nodes=[0, 1, 2])


def _violations(p, graph=None):
    with pytest.raises(PlanError) as info:
        p.verify(graph)
    return info.value.violations


@pytest.mark.parametrize("live", [(5, 1), (3, 2), (0, 10**12), (-4, -2), (10**12, 10**12 + 1)])
def test_block_live_ranges_outside_the_steps_are_violations(mlp_plan, live):
    g, p = mlp_plan
    q = copy.deepcopy(p)
    q.blocks[0].live = live
    for graph in (None, g):
        found = _violations(q, graph)
        assert any(f"live range {list(live)} is not within steps" in v for v in found), found


@pytest.mark.parametrize("axis", [2, 7, 10**30, -1])
def test_a_layer_axis_that_is_not_an_axis_of_its_output_is_a_violation(mlp_plan, axis):
    g, p = mlp_plan
    q = copy.deepcopy(p)
    q.layers[1].axis = axis
    assert any(f"split axis {axis} is not an axis" in v for v in _violations(q, g))


def test_a_layer_axis_other_than_its_blocks_is_a_violation(mlp_plan):
    g, p = mlp_plan
    q = copy.deepcopy(p)
    layer = next(l for l in q.layers if l.axis is not None)
    layer.axis = 1 - layer.axis
    assert any("slice another" in v for v in _violations(q, g))


@pytest.mark.parametrize("text, kind", [("[]", "a list"), ("  [1, 2]", "a list"), ("3", "a number"),
                                        ('"plan"', "a string"), ("null", "null"), ("true", "a boolean")])
def test_json_that_is_not_an_object_is_not_a_plan(text, kind):
    with pytest.raises(ValueError, match=f"not a numamem-plan/1 document: the JSON is {kind}, not an object"):
        Plan.from_json(text)


def test_a_missing_plan_file_is_still_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Plan.from_json(str(tmp_path / "nope.json"))
    path = tmp_path / "3"  # a file whose name is JSON is read as a file
    path.write_text("[]")
    with pytest.raises(ValueError, match="the JSON is a list"):
        Plan.from_json(str(path))


def test_deeply_nested_plan_json_is_refused():
    with pytest.raises(ValueError, match="nested too deeply to be a plan"):
        Plan.from_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply to be a plan"):
        Plan.from_json('{"format": "numamem-plan/1", "blocks": ' + "[" * 100_000 + "]" * 100_000 + "}")


@pytest.mark.parametrize("where", ["format", "graph", "blocks"])
def test_deeply_nested_plan_dicts_are_refused(mlp_plan, where):
    d = mlp_plan[1].to_dict()
    d[where] = _nested(100_000)
    with pytest.raises(ValueError, match="nested too deeply to be a plan|malformed"):
        Plan.from_dict(d)


def test_non_integer_shapes_in_a_plan_file_are_malformed(mlp_plan):
    _, p = mlp_plan
    d = json.loads(p.to_json())
    d["tensors"]["x"]["shape"] = [4, None]
    with pytest.raises(ValueError, match="malformed numamem-plan/1 document"):
        Plan.from_dict(d)


_VALUES = [-5, -1, 0, 1, 2, 3, 5, 64, 4096, 10**12, 2**63, None, "x", 1.5, [], [5, 1], {}, True]


def _paths(d, prefix=()):
    if isinstance(d, dict):
        for k, v in d.items():
            if k != "info":
                yield prefix + (k,)
                yield from _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d[:4]):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


_GRAPHS = {"mlp": models.get("mlp", batch=4, features=(8, 16, 4)), "cnn": random_graph(3, "cnn")}
_DOCS = {name: plan(g, nodes=[0, 1, 2]).to_dict() for name, g in _GRAPHS.items()}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_GRAPHS)), st.integers(0, 2**32 - 1))
def test_tampered_plans_give_value_errors_only(name, seed):
    rng = random.Random(seed)
    d = copy.deepcopy(_DOCS[name])
    paths = list(_paths(d))
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths)
        cur = d
        try:
            for k in path[:-1]:
                cur = cur[k]
            cur[path[-1]] = rng.choice(_VALUES)
        except (KeyError, IndexError, TypeError):
            pass
    try:
        p = Plan.from_dict(d)
    except ValueError:
        return
    for graph in (None, _GRAPHS[name]):
        try:
            p.verify(graph)
        except PlanError:
            pass


def _nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def _graph_doc(**layer):
    return {"format": "numamem-graph/1", "name": "t",
            "tensors": [{"name": "x", "shape": [2, 3], "role": "input"}, {"name": "y", "shape": [2, 3], "role": "output"}],
            "layers": [{"name": "r", "op": "softmax", "inputs": ["x"], "outputs": ["y"], **layer}]}


def test_deeply_nested_graph_json_text_is_refused():
    with pytest.raises(GraphError, match="nested too deeply to be a graph"):
        Graph.from_json("[" * 100_000 + "]" * 100_000)
    text = json.dumps(_graph_doc(attrs={"axis": []})).replace("[]", "[" * 5000 + "]" * 5000)
    with pytest.raises(GraphError, match="nested too deeply to be a graph"):
        Graph.from_json(text)


@pytest.mark.parametrize("where", ["attrs", "loose", "dtype", "role"])
def test_deeply_nested_graph_dicts_are_refused(where):
    deep = _nested(100_000)
    d = _graph_doc(attrs={"axis": deep}) if where == "attrs" else _graph_doc(axis=deep) if where == "loose" else _graph_doc()
    if where == "dtype":
        d["dtype"] = deep
    elif where == "role":
        d["tensors"][0]["role"] = deep
    with pytest.raises(GraphError, match="nested too deeply to be a graph"):
        Graph.from_dict(d)


def test_ordinary_nesting_still_loads():
    g = random_graph(0, "cnn")
    assert Graph.from_dict(json.loads(g.to_json())) == g
