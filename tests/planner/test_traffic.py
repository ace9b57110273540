"""One rule book for reads (planner/traffic.py) and the layering of the planner's modules."""
import ast
import pathlib

import pytest

import numamem.models as models
from numamem.planner import GraphBuilder, plan
from numamem.planner.boxes import full, on_axis
from numamem.planner.traffic import Layout, Read, block_layouts, input_boxes, layer_reads, reads_from

PLANNER = pathlib.Path(__file__).resolve().parents[2] / "src" / "numamem" / "planner"


def _split_dense():
    b = GraphBuilder("split", dtype="float32")
    x = b.input("x", (8, 16))
    b.output(b.dense(x, b.weight("w", (16, 4)), name="fc", out="y"))
    return b.build()


def test_reads_from_sliced_layout_counts_overlaps_per_node():
    layout = Layout(((0, ((0, 4), (0, 3))), (1, ((4, 8), (0, 3))), (0, ((8, 10), (0, 3)))))
    # rows 3..9 of all 3 columns: row 3 and rows 8..9 on node 0, rows 4..7 on node 1
    assert reads_from(layout, ((3, 10), (0, 3)), 1) == {0: 9, 1: 12}
    assert reads_from(layout, ((4, 8), (0, 3)), 0) == {1: 12}


def test_reads_from_replicas_reads_own_node_else_first():
    layout = Layout(((2, full((4, 4))), (1, full((4, 4)))), replicated=True)
    assert reads_from(layout, ((0, 2), (0, 4)), 1) == {1: 8}
    assert reads_from(layout, ((0, 2), (0, 4)), 0) == {2: 8}


def test_layer_reads_whole_layer_and_holder_override():
    g = _split_dense()
    layouts = {"x": Layout(((0, on_axis((8, 16), 0, 0, 4)), (1, on_axis((8, 16), 0, 4, 8)))),
               "w": Layout(((1, full((16, 4))),))}
    (reads,) = layer_reads(g, 0, None, [(0, full((8, 4)))], layouts)
    assert reads == [Read("x", 0, 4 * 16 * 4), Read("x", 1, 4 * 16 * 4), Read("w", 1, 16 * 4 * 4)]
    (reads,) = layer_reads(g, 0, None, [(0, full((8, 4)))], layouts, lambda n: 3 if n == "w" else None)
    assert reads[-1] == Read("w", 3, 16 * 4 * 4) and reads[:2] == [Read("x", 0, 256), Read("x", 1, 256)]


def test_input_boxes_of_a_split_and_a_whole_layer():
    g = _split_dense()
    assert input_boxes(g, 0, None, [full((8, 4))]) == [[full((8, 16)), full((16, 4))]]
    assert input_boxes(g, 0, 1, [on_axis((8, 4), 1, 0, 2), on_axis((8, 4), 1, 2, 4)]) == [
        [full((8, 16)), on_axis((16, 4), 1, 0, 2)], [full((8, 16)), on_axis((16, 4), 1, 2, 4)]]


def test_block_layouts_follow_the_plan_blocks():
    g = models.get("mlp", batch=8)
    p = plan(g, nodes=[0, 1])
    layouts = block_layouts(p.blocks, {n: t.shape for n, t in g.tensors.items()})
    for name in g.tensors:
        blocks = [b for b in p.blocks if b.tensor == name]
        assert layouts[name].nodes == [b.node for b in blocks]
        assert layouts[name].replicated == (blocks[0].slice is None)
        for (_, box), b in zip(layouts[name].parts, blocks):
            assert tuple(slice(a, c) for a, c in box) == p.block_index(b)


@pytest.mark.parametrize("name, batch, nodes", [("resnet50", 2, 4), ("bert_base", 1, 3), ("mobilenet_v2", 1, 2)])
def test_layer_reads_over_the_plans_blocks_give_the_plans_traffic(name, batch, nodes):
    # The partitioner counted each layer's reads with layer_reads over its layouts; counting them
    # again over the blocks of the finished plan must give the same bytes, pair by pair.
    g = models.get(name, batch=batch)
    p = plan(g, nodes=nodes)
    layouts = block_layouts(p.blocks, {n: t.shape for n, t in g.tensors.items()})
    for lp in p.layers:
        out = layouts[g.layers[lp.step].outputs[0]]
        pairs, local = {}, 0
        for (n, _), reads in zip(out.parts, layer_reads(g, lp.step, lp.axis, out.parts, layouts)):
            for r in reads:
                if r.source == n:
                    local += r.nbytes
                else:
                    pairs[r.source, n] = pairs.get((r.source, n), 0) + r.nbytes
        assert local == lp.local_bytes, lp.name
        assert [[s, d, b] for (s, d), b in sorted(pairs.items())] == lp.remote_pairs, lp.name


# ----------------------------------------------------------------------------- module layering
def _imported(module: str) -> set[str]:
    """Every numamem module a planner module imports, at any depth of its code."""
    tree = ast.parse((PLANNER / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("numamem")}


def test_checker_imports_nothing_from_the_planners_geometry_or_rules():
    # The checker must not share the code it checks: a wrong overlap or replica rule would
    # otherwise fool the planner and the checker alike.
    forbidden = {"partition", "boxes", "traffic", "planner", "plan", "packing"}
    bad = {n for n in _imported("check") if n.split(".")[2:3] and n.split(".")[2] in forbidden}
    assert not bad


@pytest.mark.parametrize("module", ["check", "report", "planfile"])
def test_plan_jobs_do_not_import_the_plan_model(module):
    # plan.py delegates to these modules; an import back would be a cycle.
    assert not {n for n in _imported(module) if n.split(".")[2:3] in (["plan"], ["planner"])}
