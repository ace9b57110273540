"""Graph model, numamem-graph/1 JSON, validation messages, shape inference, builder."""
import json

import pytest

from numamem.planner import Graph, GraphBuilder, GraphError, ShapeError, infer_shape, load_graph
from numamem.planner.ops import OPS

TINY = {
    "format": "numamem-graph/1",
    "name": "tiny",
    "dtype": "float32",
    "tensors": [
        {"name": "x", "shape": [8, 64], "role": "input"},
        {"name": "w1", "shape": [64, 128], "role": "weight"},
        {"name": "h1", "shape": [8, 128]},
        {"name": "y", "shape": [8, 128], "role": "output"},
    ],
    "layers": [
        {"name": "fc1", "op": "dense", "inputs": ["x", "w1"], "outputs": ["h1"]},
        {"name": "relu1", "op": "relu", "inputs": ["h1"], "outputs": ["y"]},
    ],
}


def tiny(**changes):
    d = json.loads(json.dumps(TINY))
    d.update(changes)
    return d


def test_architecture_example_loads():
    g = Graph.from_dict(TINY)
    assert g.name == "tiny" and g.dtype == "float32"
    assert g.inputs == ["x"] and g.weights == ["w1"] and g.outputs == ["y"]
    assert [l.op for l in g.layers] == ["dense", "relu"]
    assert g.nbytes("h1") == 8 * 128 * 4
    # x: produced at 0, read at 0; h1: 0..1; y: output, live to the last step; w1: whole run.
    assert g.lifetimes() == {"x": (0, 0), "w1": (0, 1), "h1": (0, 1), "y": (1, 1)}
    # step 0: x + h1; step 1: h1 + y
    assert g.activation_peak() == 2 * 8 * 128 * 4


def test_json_round_trip(tmp_path):
    g = Graph.from_dict(TINY)
    path = tmp_path / "g.json"
    g.to_json(path)
    again = load_graph(path)
    assert again == g
    assert json.loads(path.read_text()) == g.to_dict()
    assert g.to_dict()["format"] == "numamem-graph/1"


def test_builder_matches_json_example():
    b = GraphBuilder("tiny", dtype="float32")
    x = b.input("x", (8, 64))
    w = b.weight("w1", (64, 128))
    h = b.dense(x, w, name="fc1", out="h1")
    assert h.shape == (8, 128)
    b.output(b.relu(h, name="relu1", out="y"))
    assert b.build() == Graph.from_dict(TINY)


def test_builder_issue_example():
    g = GraphBuilder("tiny", dtype="float32")
    x = g.input("x", (8, 64))
    w = g.weight("w1", (64, 128))
    h = g.dense(x, w, activation="relu")
    assert h.shape == (8, 128)
    graph = g.build()
    assert graph.layers[0].attrs == {"activation": "relu"}
    assert Graph.from_json(graph.to_json()) == graph


def test_attrs_round_trip_and_loose_attrs():
    b = GraphBuilder("c")
    x = b.input("x", (1, 4, 9, 9))
    y = b.conv2d(x, b.weight("w", (8, 2, 3, 3)), stride=(2, 1), padding=1, groups=2, activation="relu6")
    assert y.shape == (1, 8, 5, 9)
    g = b.build()
    assert Graph.from_json(g.to_json()) == g
    # attributes beside the standard keys are accepted as well
    d = g.to_dict()
    layer = d["layers"][0]
    layer.update(layer.pop("attrs"))
    assert Graph.from_dict(d) == g


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["layers"][0].update(op="densee"), "layer 'fc1' (densee): unknown op 'densee'"),
        (lambda d: d["layers"][0].update(inputs=["x", "nope"]), "layer 'fc1' (dense): input tensor 'nope' is not defined"),
        (lambda d: d["layers"][1].update(outputs=["z"]), "layer 'relu1' (relu): output tensor 'z' is not defined"),
        (lambda d: d["tensors"][2].update(shape=[8, 100]),
         "layer 'fc1' (dense): output tensor 'h1' has shape [8, 100] but dense of [8, 64], [64, 128] gives [8, 128]"),
        (lambda d: d["tensors"][1].update(shape=[32, 128]), "layer 'fc1' (dense): input x [8, 64] has K=64 but weight [32, 128] has K=32"),
        (lambda d: d["layers"].reverse(), "layer 'relu1' (relu): tensor 'h1' is used before it is produced (by layer 'fc1')"),
        (lambda d: d["tensors"].append({"name": "orphan", "shape": [1]}), "tensor 'orphan': no layer produces it"),
        (lambda d: d["tensors"].append({"name": "x", "shape": [1], "role": "input"}), "tensor 'x': defined twice"),
        (lambda d: d["tensors"][0].update(role="bogus"), "tensor 'x': unknown role 'bogus'"),
        (lambda d: d["tensors"][0].update(shape=[8, 0]), "tensor 'x': shape must be a non-empty list of positive ints"),
        (lambda d: d["tensors"][0].update(shape="8x64"), "tensor 'x': 'shape' must be a list of ints"),
        (lambda d: d["tensors"][0].update(dtype="complex64"), "tensor 'x': dtype 'complex64' is not a numeric type"),
        (lambda d: d.update(format="numamem-graph/2"), "format must be 'numamem-graph/1'"),
        (lambda d: d["layers"][1].update(name="fc1"), "layer 'fc1': defined twice"),
        (lambda d: d["layers"][0].update(attrs={"stride": 2}), "layer 'fc1' (dense): unknown attribute(s) 'stride' for dense"),
        (lambda d: d["layers"][0].update(activation="tanh"), "activation must be one of relu, relu6, gelu"),
        (lambda d: d["layers"][1].update(outputs=["x"]), "output tensor 'x' is a graph input and cannot be produced"),
        (lambda d: d["layers"][1].update(outputs=["h1"]), "tensor 'h1' is already produced by layer 'fc1'"),
        (lambda d: d["layers"][1].update(inputs=[]), "layer 'relu1' (relu): has no inputs"),
        (lambda d: d["layers"][1].update(inputs=["h1", "h1"]), "relu takes 1 inputs, got 2"),
    ],
)
def test_validation_messages_name_the_culprit(mutate, message):
    d = tiny()
    mutate(d)
    with pytest.raises(GraphError) as info:
        Graph.from_dict(d)
    assert message in str(info.value)


def test_bad_json_and_file_name(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(GraphError, match=r"bad\.json: graph: bad JSON"):
        load_graph(path)
    with pytest.raises(GraphError, match="must be an object"):
        Graph.from_json("[1, 2]")


def test_graph_error_is_value_error():
    assert issubclass(GraphError, ValueError) and issubclass(ShapeError, ValueError)


# ----------------------------------------------------------------------- shape inference
CASES = [
    ("dense", [(8, 64), (64, 128)], {}, (8, 128)),
    ("dense", [(2, 5, 64), (64, 32), (32,)], {"activation": "gelu"}, (2, 5, 32)),
    ("matmul", [(4, 3, 5), (4, 5, 7)], {}, (4, 3, 7)),
    ("matmul", [(2, 12, 16, 64), (2, 12, 16, 64)], {"transpose_b": True}, (2, 12, 16, 16)),
    ("matmul", [(3, 1, 4, 5), (6, 5, 2)], {}, (3, 6, 4, 2)),
    ("conv2d", [(1, 3, 224, 224), (64, 3, 7, 7)], {"stride": 2, "padding": 3}, (1, 64, 112, 112)),
    ("conv2d", [(2, 32, 112, 112), (32, 1, 3, 3), (32,)], {"stride": 2, "padding": 1, "groups": 32}, (2, 32, 56, 56)),
    ("conv2d", [(1, 4, 10, 7), (6, 2, 3, 2)], {"stride": [2, 1], "padding": [0, 1], "groups": 2}, (1, 6, 4, 8)),
    ("conv2d", [(1, 1, 5, 5), (1, 1, 5, 5)], {}, (1, 1, 1, 1)),
    ("relu", [(3, 4)], {}, (3, 4)),
    ("relu6", [(3, 4)], {}, (3, 4)),
    ("gelu", [(3, 4)], {}, (3, 4)),
    ("sigmoid", [(3, 4)], {}, (3, 4)),
    ("add", [(8, 1, 5), (4, 5)], {"activation": "relu"}, (8, 4, 5)),
    ("mul", [(2, 3, 4, 4), (3, 1, 1)], {}, (2, 3, 4, 4)),
    ("maxpool2d", [(1, 64, 112, 112)], {"kernel": 3, "stride": 2, "padding": 1}, (1, 64, 56, 56)),
    ("maxpool2d", [(1, 64, 224, 224)], {"kernel": 2}, (1, 64, 112, 112)),
    ("avgpool2d", [(1, 8, 7, 7)], {"kernel": [3, 2], "stride": 1, "padding": [1, 0]}, (1, 8, 7, 6)),
    ("global_avgpool", [(2, 2048, 7, 7)], {}, (2, 2048)),
    ("batchnorm", [(2, 16, 5, 5), (16,), (16,)], {}, (2, 16, 5, 5)),
    ("layernorm", [(2, 7, 768), (768,), (768,)], {"eps": 1e-12}, (2, 7, 768)),
    ("softmax", [(2, 12, 7, 7)], {"axis": 1}, (2, 12, 7, 7)),
    ("reshape", [(2, 7, 768)], {"shape": [2, 7, 12, -1]}, (2, 7, 12, 64)),
    ("transpose", [(2, 7, 12, 64)], {"perm": [0, 2, 1, 3]}, (2, 12, 7, 64)),
    ("transpose", [(2, 3, 4)], {}, (4, 3, 2)),
    ("flatten", [(2, 512, 7, 7)], {}, (2, 25088)),
    ("concat", [(1, 3, 4), (1, 5, 4)], {"axis": 1}, (1, 8, 4)),
    ("concat", [(1, 3), (2, 3)], {}, (3, 3)),
    ("embedding", [(2, 16), (30522, 768)], {}, (2, 16, 768)),
    # ONNX-semantics ops (numamem.planner.ops_onnx)
    ("conv", [(1, 3, 17, 15), (8, 3, 3, 3)], {"strides": [2, 1], "pads": [0, 1, 2, 1]}, (1, 8, 9, 15)),
    ("conv", [(1, 8, 9, 15), (8, 4, 3, 3)], {"dilations": 2, "pads": 2, "group": 2}, (1, 8, 9, 15)),
    ("maxpool", [(1, 8, 9, 15)], {"kernel": 3, "strides": 2, "pads": [1, 0, 1, 1], "ceil_mode": True}, (1, 8, 5, 8)),
    ("maxpool", [(1, 1, 7, 7)], {"kernel": 2, "strides": 2, "pads": [0, 0, 1, 1], "ceil_mode": True}, (1, 1, 4, 4)),
    ("avgpool", [(1, 8, 7, 13)], {"kernel": 3, "strides": [1, 2], "pads": [0, 2, 0, 1], "ceil_mode": True,
                                  "count_include_pad": True}, (1, 8, 5, 8)),
    ("lrn", [(1, 64, 55, 55)], {"size": 5, "alpha": 1e-4, "beta": 0.75, "bias": 2.0}, (1, 64, 55, 55)),
    ("tanh", [(3, 4)], {}, (3, 4)),
    ("erf", [(3, 4)], {}, (3, 4)),
    ("sqrt", [(3, 4)], {}, (3, 4)),
    ("exp", [(3, 4)], {}, (3, 4)),
    ("gelu_erf", [(3, 4)], {}, (3, 4)),
    ("clip", [(3, 4)], {"min": -1.0, "max": None}, (3, 4)),
    ("sub", [(2, 7, 32), (2, 7, 1)], {}, (2, 7, 32)),
    ("div", [(2, 7, 32), (1,)], {}, (2, 7, 32)),
    ("pow", [(2, 7, 32), (1,)], {}, (2, 7, 32)),
    ("reduce_mean", [(2, 7, 32)], {"axes": [-1]}, (2, 7, 1)),
    ("reduce_mean", [(2, 7, 32)], {"axes": [0, 2], "keepdims": False}, (7,)),
    ("slice", [(2, 32, 5, 8)], {"axis": 1, "start": 12, "stop": 32}, (2, 20, 5, 8)),
    *[(op, [(3, 4)], {}, (3, 4)) for op in ("neg", "reciprocal", "abs", "log", "hard_swish")],
    ("leaky_relu", [(3, 4)], {"alpha": 0.1}, (3, 4)),
    ("hard_sigmoid", [(3, 4)], {"alpha": 0.2, "beta": 0.5}, (3, 4)),
    ("max", [(2, 3, 4), (4,)], {}, (2, 3, 4)),
    ("min", [(2, 1, 4), (3, 1)], {}, (2, 3, 4)),
]


def test_every_op_has_a_case():
    assert {c[0] for c in CASES} == set(OPS)


@pytest.mark.parametrize("op, shapes, attrs, expected", CASES)
def test_shape_inference(op, shapes, attrs, expected):
    assert infer_shape(op, shapes, attrs) == expected


@pytest.mark.parametrize(
    "op, shapes, attrs, message",
    [
        ("conv2d", [(1, 3, 8, 8), (4, 2, 3, 3)], {}, "2 input channels per group"),
        ("conv2d", [(1, 3, 8, 8), (4, 1, 3, 3)], {"groups": 2}, "groups=2 must divide"),
        ("conv2d", [(1, 3, 2, 2), (4, 3, 3, 3)], {}, "kernel 3 does not fit input size 2"),
        ("conv2d", [(1, 3, 8, 8), (4, 3, 3, 3)], {"stride": 0}, "kernel and stride must be >= 1"),
        ("conv2d", [(1, 3, 8), (4, 3, 3, 3)], {}, "must be 4-D"),
        ("add", [(2, 3), (4,)], {}, "do not broadcast"),
        ("matmul", [(2, 3), (4, 5)], {}, "has K=3"),
        ("maxpool2d", [(1, 1, 4, 4)], {}, "'kernel' is required"),
        ("maxpool2d", [(1, 1, 4, 4)], {"kernel": 2, "padding": 2}, "at most half the kernel"),
        ("batchnorm", [(2, 3, 4, 4), (4,), (3,)], {}, "scale must have shape [3]"),
        ("layernorm", [(2, 8), (8,), (7,)], {}, "beta must have shape [8]"),
        ("softmax", [(2, 3)], {"axis": 2}, "out of range"),
        ("reshape", [(2, 3)], {"shape": [4, -1]}, "cannot reshape"),
        ("reshape", [(2, 3)], {"shape": [-1, -1]}, "one -1"),
        ("transpose", [(2, 3)], {"perm": [0, 0]}, "not a permutation"),
        ("concat", [(1, 3), (2, 4)], {"axis": 0}, "differ outside the concatenation axis"),
        ("embedding", [(2,), (10, 4)], {}, "ids must be 2-D"),
        ("dense", [(2, 3)], {}, "dense takes 2 to 3 inputs, got 1"),
        ("nosuch", [(2, 3)], {}, "unknown op 'nosuch'"),
    ],
)
def test_shape_errors(op, shapes, attrs, message):
    with pytest.raises(ShapeError) as info:
        infer_shape(op, shapes, attrs)
    assert message in str(info.value)


def test_embedding_needs_int64_ids():
    b = GraphBuilder("e")
    ids = b.input("ids", (2, 3))  # float32 by the graph's dtype
    b.embedding(ids, b.weight("t", (10, 4)), name="emb")
    with pytest.raises(GraphError, match="ids tensor 'ids' must have dtype int64"):
        b.build()
    b = GraphBuilder("e")
    ids = b.input("ids", (2, 3), dtype="int64")
    e = b.embedding(ids, b.weight("t", (10, 4)), name="emb")
    g = b.build()
    assert g.itemsize("ids") == 8 and g.itemsize(e.name) == 4


def test_builder_errors_name_layer():
    b = GraphBuilder("bad")
    x = b.input("x", (2, 3))
    with pytest.raises(GraphError, match=r"layer 'fc' \(dense\): input x \[2, 3\] has K=3"):
        b.dense(x, b.weight("w", (4, 5)), name="fc")
    with pytest.raises(GraphError, match="tensor 'missing' is not defined"):
        b.relu("missing")
    with pytest.raises(GraphError, match="tensor 'x': defined twice"):
        b.input("x", (1,))
    with pytest.raises(GraphError, match="cannot be an output"):
        b.output(x)


def test_builder_every_op():
    b = GraphBuilder("all")
    x = b.input("x", (2, 4, 8, 8))
    h = b.conv2d(x, b.weight("cw", (8, 4, 3, 3)), b.weight("cb", (8,)), padding=1, activation="relu")
    h = b.batchnorm(h, b.weight("s", (8,)), b.weight("t", (8,)))
    h = b.sigmoid(b.gelu(b.relu6(b.relu(h))))
    h = b.maxpool2d(h, 2)
    h = b.avgpool2d(h, 3, 1, 1)
    h = b.mul(h, b.weight("m", (8, 1, 1)))
    h = b.add(h, h, activation="relu")
    g = b.global_avgpool(h)
    f = b.flatten(h)
    c = b.concat([g, b.dense(f, b.weight("fw", (128, 8)))], axis=1)
    r = b.reshape(c, (2, 4, 4))
    t = b.transpose(r, (0, 2, 1))
    m = b.matmul(t, r, transpose_b=True)
    s = b.softmax(m, axis=1)
    n = b.layernorm(s, b.weight("ga", (4,)), b.weight("be", (4,)))
    ids = b.input("ids", (2, 5), dtype="int64")
    e = b.embedding(ids, b.weight("tab", (11, 4)))
    # The ONNX-semantics ops have no builder methods; `layer` builds any op.
    o = b.layer("conv", [x, b.weight("ow", (8, 2, 3, 3))], strides=2, pads=[0, 1, 1, 0], dilations=1, group=2)
    o = b.layer("lrn", [b.layer("maxpool", [o], kernel=2, ceil_mode=True)], size=3)
    o = b.layer("avgpool", [o], kernel=2, pads=[0, 0, 1, 1], count_include_pad=True)
    for op in ("tanh", "erf", "sqrt", "exp", "gelu_erf", "neg", "reciprocal", "abs", "log", "hard_swish",
               "leaky_relu", "hard_sigmoid"):
        o = b.layer(op, [o])
    o = b.layer("clip", [o], min=0.0, max=1.0)
    for op in ("sub", "div", "pow", "max", "min"):
        o = b.layer(op, [o, o])
    o = b.layer("slice", [b.layer("reduce_mean", [o], axes=[1])], axis=2, start=0, stop=1)
    b.output(n)
    b.output(e)
    b.output(o)
    g = b.build()
    assert {l.op for l in g.layers} == set(OPS)
    assert g.tensor(n).shape == (2, 4, 4) and g.tensor(e).shape == (2, 5, 4)
    assert Graph.from_json(g.to_json()) == g
    assert g.flops() > 0
