"""Partitioning, placement, Plan JSON and the independent checker."""
import json

import pytest

import numamem.models as models
from numamem.planner import CostModel, GraphBuilder, Plan, PlanError, plan

MiB = 1 << 20
PAGE = 4096


def two_dense(batch=1):
    b = GraphBuilder("two", dtype="float32")
    x = b.input("x", (batch, 64))
    h = b.dense(x, b.weight("w1", (64, 128)), name="fc1", out="h")
    b.output(b.dense(h, b.weight("w2", (128, 32)), name="fc2", out="y"))
    return b.build()


# ------------------------------------------------------------------------- figures / targets
@pytest.mark.parametrize(
    "name, batch, nodes",
    [("resnet50", 1, [0, 1]), ("resnet50", 4, [0, 1]), ("vgg16", 1, [0, 1]), ("vgg16", 2, [0, 1, 2, 3]),
     ("mobilenet_v2", 1, [0, 1]), ("mobilenet_v2", 8, [0, 1]), ("mlp", 16, [0, 1]), ("bert_base", 2, [0, 1]),
     ("resnet50", 2, [0, 1, 2, 3])],
)
def test_builtin_arenas_reach_lower_bound(name, batch, nodes):
    g = models.get(name, batch=batch)
    p = plan(g, nodes=nodes)
    for a in p.arenas:
        assert a.peak == a.lower_bound, (a.node, a.peak, a.lower_bound)
        assert a.size == a.peak + a.page_padding and 0 <= a.page_padding < PAGE
    p.verify()


def test_single_node_resnet50_matches_activation_peak():
    g = models.get("resnet50", batch=1)
    p = plan(g, nodes=[0])
    (a,) = p.arenas
    # one node: weights (live throughout) plus the activation peak, before any rounding
    assert a.lower_bound_unpadded == 9.1875 * MiB + g.total_bytes("weight")
    assert a.peak == a.lower_bound
    assert all(l.axis is None and l.remote_bytes == 0 for l in p.layers)


def test_batch_split_is_consistent_and_local():
    g = models.get("resnet50", batch=2)
    p = plan(g, nodes=[0, 1], batch_axis_only=True)
    assert {l.axis for l in p.layers} == {0}
    assert p.remote_bytes == 0
    for t in g.activations:
        blocks = p.blocks_of(t)
        assert [(b.node, b.slice.axis, b.slice.start, b.slice.stop) for b in blocks] == [(0, 0, 0, 1), (1, 0, 1, 2)]
        assert all(b.offset % PAGE == 0 and b.reserved % PAGE == 0 and b.page_aligned for b in blocks)
    # every ResNet-50 weight is below the replication threshold: one replica per node
    for w in g.weights:
        blocks = p.blocks_of(w)
        assert [b.node for b in blocks] == [0, 1] and all(b.slice is None and b.replica for b in blocks)
        assert all(b.offset % 64 == 0 and not b.page_aligned for b in blocks)


def test_feature_split_when_batch_smaller_than_nodes():
    g = two_dense(batch=1)
    p = plan(g, nodes=[0, 1])
    assert [l.axis for l in p.layers] == [1, 1]
    h = p.blocks_of("h")
    assert [(b.node, b.slice.axis, b.slice.start, b.slice.stop) for b in h] == [(0, 1, 0, 64), (1, 1, 64, 128)]
    # fc2 is feature split: each node reads the half of h that the other node holds
    fc2 = p.layers[1]
    assert fc2.remote_bytes == 2 * 64 * 4
    assert sorted(map(tuple, fc2.remote_pairs)) == [(0, 1, 256), (1, 0, 256)]
    # x (1 row) sits whole on node 0; node 1 reads all of it remotely in fc1
    assert [b.node for b in p.blocks_of("x")] == [0]
    assert p.layers[0].remote_bytes == 64 * 4
    # local bytes: each node reads its own half of h and its half of w2's columns (128 x 16)
    assert fc2.local_bytes == 2 * 64 * 4 + 2 * 128 * 16 * 4


def test_batch_split_when_batch_allows():
    # activations larger than the weights: the batch split reads least
    p = plan(two_dense(batch=256), nodes=[0, 1])
    assert [l.axis for l in p.layers] == [0, 0]
    assert p.remote_bytes == 0
    # tiny batch: a dense layer's weight outweighs its input, so splitting the weight's columns
    # (each node reads half of it) beats every node reading all of it
    p = plan(two_dense(batch=8), nodes=[0, 1])
    assert [l.axis for l in p.layers] == [1, 1]


def test_weight_rule_threshold():
    g = two_dense(batch=8)
    # below the threshold: replicated
    p = plan(g, nodes=[0, 1], batch_axis_only=True, replicate_bytes=64 * 128 * 4)
    assert all(b.replica for b in p.blocks_of("w1"))
    # above it, read whole by both nodes under a batch split: split evenly along axis 0
    p = plan(g, nodes=[0, 1], batch_axis_only=True, replicate_bytes=0)
    w1 = p.blocks_of("w1")
    assert [(b.node, b.slice.axis, b.slice.start, b.slice.stop) for b in w1] == [(0, 0, 0, 32), (1, 0, 32, 64)]
    assert all(b.page_aligned and b.reserved % PAGE == 0 for b in w1)
    assert p.layers[0].remote_bytes == 2 * 32 * 128 * 4
    # above it, under a feature split: split the way the nodes read it (columns), all local
    p = plan(models.get("mlp", batch=1, features=(64, 128, 32)), nodes=[0, 1], replicate_bytes=0)
    assert [l.axis for l in p.layers] == [1, 1]
    w = p.blocks_of("fc1.w")
    assert [(b.node, b.slice.axis, b.slice.start, b.slice.stop) for b in w] == [(0, 1, 0, 64), (1, 1, 64, 128)]


def test_vgg_large_fc_weights_are_split():
    p = plan(models.get("vgg16", batch=1), nodes=[0, 1])
    fc6 = p.blocks_of("fc6.w")
    assert len(fc6) == 2 and {b.node for b in fc6} == {0, 1}
    assert p.layers[[l.name for l in p.layers].index("fc6")].axis == 1


def test_any_node_ids_and_counts():
    p = plan(two_dense(batch=4), nodes=[3, 7])
    assert p.nodes == [3, 7] and [a.node for a in p.arenas] == [3, 7]
    assert {b.node for b in p.blocks} == {3, 7}
    assert plan(two_dense(batch=4), nodes=3).nodes == [0, 1, 2]
    for bad, exc in (([], ValueError), ([0, 0], ValueError), ([-1], ValueError), (0, ValueError), (True, TypeError)):
        with pytest.raises(exc):
            plan(two_dense(), nodes=bad)
    with pytest.raises(ValueError, match="page_size"):
        plan(two_dense(), page_size=1000)
    with pytest.raises(TypeError):
        plan("resnet50")


def test_arenas_back_to_back_on_pages():
    p = plan(models.get("mobilenet_v2", batch=2), nodes=[0, 1, 2])
    base = 0
    for a in p.arenas:
        assert a.base == base and a.size % PAGE == 0
        base += a.size


def test_distances_and_bandwidth():
    g = models.get("mlp", batch=1)
    slow = plan(g, nodes=[0, 1], bandwidth=[[1e10, 1.0], [1.0, 1e10]])
    assert slow.remote_bytes == 0  # remote reads so slow that one node does everything
    assert slow.info["bandwidth_measured"] is True
    by_id = plan(g, nodes=[4, 5], bandwidth={4: {4: 1e10, 5: 1.0}, "5": {"4": 1.0, "5": 1e10}})
    assert by_id.remote_bytes == 0
    far = plan(g, nodes=[0, 1], distances=[[10, 21], [21, 10]])
    assert far.info["distances"] == [[10.0, 21.0], [21.0, 10.0]]
    assert plan(g, nodes=[0, 1]).info["distances"] == [[10.0, 20.0], [20.0, 10.0]]
    with pytest.raises(ValueError, match="no entry for nodes"):
        plan(g, nodes=[0, 1, 2], distances=[[10, 20], [20, 10]])
    with pytest.raises(ValueError, match="must be positive"):
        plan(g, nodes=[0, 1], bandwidth=[[1, 0], [0, 1]])


def test_cost_model_is_a_parameter():
    g = models.get("resnet50", batch=2)
    # with compute the only cost, a batch split of two equal halves is as good as any split and
    # the consistency preference keeps it everywhere
    p = plan(g, nodes=[0, 1], cost_model=CostModel(local_bandwidth=1e30))
    assert {l.axis for l in p.layers} == {0}


def test_deterministic():
    g = models.get("mobilenet_v2", batch=1)
    assert plan(g, nodes=[0, 1]).to_json() == plan(g, nodes=[0, 1]).to_json()


# ------------------------------------------------------------------------- JSON
def test_plan_json_round_trip(tmp_path):
    g = models.get("resnet50", batch=1)
    p = plan(g, nodes=[0, 1])
    path = tmp_path / "plan.json"
    text = p.to_json(path)
    q = Plan.from_json(path)
    assert q == p and Plan.from_json(text) == p
    q.verify()
    q.verify(g)


def test_plan_json_has_architecture_fields():
    p = plan(two_dense(batch=8), nodes=[0, 1])
    d = json.loads(p.to_json())
    assert d["format"] == "numamem-plan/1"
    assert d["graph"] == "two" and d["nodes"] == [0, 1] and d["page_size"] == 4096
    for a in d["arenas"]:
        assert {"node", "size", "lower_bound"} <= set(a)
    for b in d["blocks"]:
        assert {"tensor", "index", "node", "offset", "size", "slice", "live"} <= set(b)
        assert b["slice"] is None or set(b["slice"]) == {"axis", "start", "stop"}
        assert len(b["live"]) == 2
    for l in d["layers"]:
        assert {"name", "step", "axis", "local_bytes", "remote_bytes"} <= set(l)


def test_minimal_plan_json_loads():
    """A plan with only the required fields (from another tool) loads and verifies."""
    p = plan(two_dense(batch=8), nodes=[0, 1])
    d = json.loads(p.to_json())
    keep = {"format", "graph", "nodes", "page_size", "arenas", "blocks", "layers"}
    d = {k: v for k, v in d.items() if k in keep}
    d["arenas"] = [{k: a[k] for k in ("node", "size", "lower_bound")} for a in d["arenas"]]
    d["blocks"] = [{k: b[k] for k in ("tensor", "index", "node", "offset", "size", "slice", "live")}
                   for b in d["blocks"]]
    q = Plan.from_dict(d)
    assert [b.reserved for b in q.blocks] == [b.reserved for b in p.blocks]
    assert [a.base for a in q.arenas] == [a.base for a in p.arenas]
    q.verify(two_dense(batch=8))


def test_bad_plan_json():
    with pytest.raises(ValueError, match="bad JSON"):
        Plan.from_json("{oops")
    with pytest.raises(ValueError, match="format must be"):
        Plan.from_json('{"format": "x"}')
    with pytest.raises(ValueError, match="malformed"):
        Plan.from_json('{"format": "numamem-plan/1"}')


# ------------------------------------------------------------------------- the checker
@pytest.fixture(scope="module")
def base_plan():
    g = models.get("mobilenet_v2", batch=2)
    return g, plan(g, nodes=[0, 1], batch_axis_only=True)


def tamper(p, fn):
    q = Plan.from_json(p.to_json())
    fn(q)
    return q


def violations(p, graph=None):
    with pytest.raises(PlanError) as info:
        p.verify(graph)
    return info.value.violations


def _colive_pair(p):
    blocks = [b for b in p.blocks if b.node == 0]
    for a in blocks:
        for b in blocks:
            if a is not b and a.live[0] <= b.live[1] and b.live[0] <= a.live[1] and a.offset != b.offset:
                return a, b
    raise AssertionError("no co-live pair")


def test_checker_overlap(base_plan):
    g, p = base_plan

    def fn(q):
        a, b = _colive_pair(q)
        b.offset = a.offset
    v = violations(tamper(p, fn))
    assert any("share bytes" in s for s in v)


def test_checker_outside_arena_and_alignment(base_plan):
    g, p = base_plan
    v = violations(tamper(p, lambda q: setattr(q.blocks[0], "offset", q.arena(q.blocks[0].node).size)))
    assert any("outside the arena" in s for s in v)
    page_block = next(b for b in p.blocks if b.page_aligned)
    i = p.blocks.index(page_block)
    v = violations(tamper(p, lambda q: setattr(q.blocks[i], "offset", q.blocks[i].offset + 64)))
    assert any("not page-aligned" in s for s in v)
    v = violations(tamper(p, lambda q: setattr(q.blocks[0], "offset", q.blocks[0].offset + 1)))
    assert any("not aligned to 64" in s for s in v)
    v = violations(tamper(p, lambda q: setattr(q.arenas[0], "size", q.arenas[0].size + 100)))
    assert any("not a multiple of the page" in s for s in v)


def test_checker_coverage(base_plan):
    g, p = base_plan
    name = g.activations[3]
    v = violations(tamper(p, lambda q: q.blocks.remove(q.blocks_of(name)[1])))
    assert any(f"tensor {name!r}: slices cover" in s for s in v)
    v = violations(tamper(p, lambda q: setattr(q.blocks_of(name)[0], "size", 8)))
    assert any("but its slice holds" in s for s in v)
    v = violations(tamper(p, lambda q: [q.blocks.remove(b) for b in q.blocks_of("x")]))
    assert "tensor 'x' has no blocks" in v
    w = g.weights[0]
    v = violations(tamper(p, lambda q: setattr(q.blocks_of(w)[1], "node", 0)))
    assert any("two replicas on one node" in s for s in v)


def test_checker_lifetimes_and_bounds(base_plan):
    g, p = base_plan
    name = g.activations[5]
    v = violations(tamper(p, lambda q: setattr(q.blocks_of(name)[0], "live", (q.blocks_of(name)[0].live[0] + 1,) * 2)))
    assert any("does not cover the tensor's" in s for s in v)
    v = violations(tamper(p, lambda q: setattr(q.arenas[1], "lower_bound", q.arenas[1].lower_bound - 4096)))
    assert any("lower_bound" in s and "its blocks give" in s for s in v)
    v = violations(tamper(p, lambda q: setattr(q.arenas[1], "peak", 0)))
    assert any("its blocks end at" in s for s in v)


def test_checker_traffic_and_graph(base_plan):
    g, p = base_plan
    q = tamper(p, lambda q: setattr(q.layers[4], "remote_bytes", 99))
    q.verify()  # without the graph, traffic cannot be recomputed
    v = violations(q, g)
    assert any("99 remote" in s for s in v)
    other = models.get("mobilenet_v2", batch=4)
    v = violations(Plan.from_json(p.to_json()), other)
    assert any("the graph gives" in s for s in v)


def test_checker_lists_every_violation(base_plan):
    g, p = base_plan

    def fn(q):
        q.arenas[0].lower_bound += 1
        q.arenas[1].lower_bound += 1
        q.blocks[0].offset = -64
    with pytest.raises(PlanError) as info:
        tamper(p, fn).verify()
    assert len(info.value.violations) >= 3
    assert "violates" in str(info.value) and isinstance(info.value, ValueError)


def test_report_mentions_arenas_and_layers():
    p = plan(two_dense(batch=1), nodes=[0, 1])
    text = p.report()
    assert "lower bound" in text and "fc2" in text and "remote" in text
    assert "fc2" not in p.report(layers=False)


def test_edge_graphs():
    from numamem.planner import Graph, Tensor

    g = Graph("empty", "float32", [Tensor("x", (2,), "input")], [])
    p = plan(g, nodes=[0, 1])
    assert [b.node for b in p.blocks] == [0, 1] and p.steps == 0
    p.verify(g)
    # more nodes than rows and a page smaller than the default alignment's multiple
    p = plan(models.get("mlp", batch=3, features=(5, 7)), nodes=8, page_size=64)
    p.verify()
    assert {b.node for b in p.blocks_of("x")} == {0, 1, 2}
