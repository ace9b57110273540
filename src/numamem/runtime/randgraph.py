"""Small random layer graphs that together use every op of ``numamem-graph/1``.

They exist to test the executors against the float64 reference on shapes that are not the
friendly ones of the built-in models (odd sizes, small batches, strides, padding, groups,
broadcasting), and are small enough for the reference's explicit loops and for an emulated CPU.

Examples
--------
>>> from numamem.runtime.randgraph import KINDS, OPS_COVERED, random_graph
>>> g = random_graph(0, "cnn")
>>> sorted({l.op for k in KINDS for l in random_graph(0, k).layers}) == sorted(OPS_COVERED)
True
"""
from __future__ import annotations

import numpy as np

from numamem.planner.builder import GraphBuilder
from numamem.planner.graph import Graph

__all__ = ["KINDS", "OPS_COVERED", "random_graph"]

KINDS = ("cnn", "transformer", "onnx")
#: Every op of the graph format; the kinds of random graph use all of them between them ("onnx":
#: the ops with ONNX semantics of :mod:`numamem.planner.ops_onnx`).
OPS_COVERED = ("add", "avgpool2d", "batchnorm", "concat", "conv2d", "dense", "embedding", "flatten", "gelu",
               "global_avgpool", "layernorm", "matmul", "maxpool2d", "mul", "relu", "relu6", "reshape",
               "sigmoid", "softmax", "transpose",
               "abs", "avgpool", "clip", "conv", "div", "erf", "exp", "gelu_erf", "hard_sigmoid", "hard_swish",
               "leaky_relu", "log", "lrn", "max", "maxpool", "min", "neg", "pow", "reciprocal", "reduce_mean",
               "slice", "sqrt", "sub", "tanh")

_ACTS = (None, "relu", "relu6", "gelu")


def _cnn(rng: np.random.Generator, batch: int) -> Graph:
    g = GraphBuilder("random_cnn")
    c = int(rng.integers(2, 5))
    h, w = int(rng.integers(7, 12)), int(rng.integers(7, 12))
    x = g.input("x", (batch, c, h, w))
    o1 = int(rng.integers(3, 7))
    k = int(rng.choice([1, 3]))
    y = g.conv2d(x, g.weight("c1.w", (o1, c, k, k)), g.weight("c1.b", (o1,)), stride=int(rng.integers(1, 3)),
                 padding=k // 2, activation=_ACTS[int(rng.integers(0, 4))])
    y = g.batchnorm(y, g.weight("bn.s", (o1,)), g.weight("bn.t", (o1,)))
    kp = int(rng.choice([2, 3]))
    pad = int(rng.integers(0, kp // 2 + 1))
    mp = g.maxpool2d(y, kp, 1, pad)
    ap = g.avgpool2d(y, kp, 1, pad)
    s = g.add(mp, ap, activation=_ACTS[int(rng.integers(0, 4))])
    dw = g.conv2d(s, g.weight("dw.w", (o1, 1, 3, 3)), padding=1, groups=o1, activation="relu6")
    gate = g.sigmoid(g.relu6(dw))
    m = g.mul(gate, s)
    m = g.relu(m)
    cat = g.concat([m, mp], axis=1)
    o2 = 2 * o1
    c2 = g.conv2d(cat, g.weight("c2.w", (o2, 2, 3, 3)), g.weight("c2.b", (o2,)), padding=1, groups=o1)
    gap = g.global_avgpool(c2)
    flat = g.flatten(g.gelu(cat))
    feats = int(rng.integers(5, 12))
    d1 = g.dense(flat, g.weight("fc1.w", (flat.shape[1], feats)), g.weight("fc1.b", (feats,)), activation="relu")
    d2 = g.dense(gap, g.weight("fc2.w", (o2, feats)))
    out = g.softmax(g.add(d1, d2))
    g.output(out)
    return g.build()


def _transformer(rng: np.random.Generator, batch: int) -> Graph:
    g = GraphBuilder("random_transformer")
    seq = int(rng.integers(3, 8))
    heads = int(rng.integers(1, 4))
    dh = int(rng.integers(2, 5))
    d = heads * dh
    vocab = int(rng.integers(10, 30))
    ids = g.input("ids", (batch, seq), dtype="int64")
    e = g.embedding(ids, g.weight("tok", (vocab, d)))
    pos = g.weight("pos", (seq, d))
    e = g.add(e, pos)
    ln = g.layernorm(e, g.weight("ln.g", (d,)), g.weight("ln.b", (d,)))

    def heads_of(t, name):
        r = g.reshape(t, (batch, seq, heads, dh), name=f"{name}.r")
        return g.transpose(r, (0, 2, 1, 3), name=f"{name}.t")

    q = heads_of(g.dense(ln, g.weight("wq", (d, d)), g.weight("bq", (d,))), "q")
    k = heads_of(g.dense(ln, g.weight("wk", (d, d))), "k")
    v = heads_of(g.dense(ln, g.weight("wv", (d, d))), "v")
    scores = g.matmul(q, k, transpose_b=True)
    att = g.softmax(scores, axis=-1)
    ctx = g.matmul(att, v)
    ctx = g.reshape(g.transpose(ctx, (0, 2, 1, 3)), (batch, seq, d))
    r1 = g.add(ctx, e)
    ff = int(rng.integers(d, 2 * d + 1))
    h = g.dense(r1, g.weight("w1", (d, ff)), g.weight("b1", (ff,)), activation="gelu")
    h = g.gelu(h)
    h2 = g.dense(h, g.weight("w2", (ff, d)))
    scale = g.weight("scale", (d,))
    y = g.mul(g.add(h2, r1), scale)
    y = g.sigmoid(g.relu(y))
    cat = g.concat([y, g.relu6(ln)], axis=2)
    g.output(g.layernorm(cat, g.weight("ln2.g", (2 * d,)), g.weight("ln2.b", (2 * d,)), eps=1e-3))
    return g.build()


def _onnx(rng: np.random.Generator, batch: int) -> Graph:
    """The ONNX-semantics ops: asymmetric pads, dilations, ceil-mode pools, and a chain of math
    kept on positive values where the op needs them (sqrt, log, reciprocal, pow)."""
    g = GraphBuilder("random_onnx")
    c = int(rng.integers(2, 5))
    x = g.input("x", (batch, c, int(rng.integers(8, 13)), int(rng.integers(8, 13))))
    pads = [int(v) for v in rng.integers(0, 3, 4)]
    y = g.layer("conv", [x, g.weight("c.w", (2 * c, 1, 3, 3)), g.weight("c.b", (2 * c,))],
                strides=[int(v) for v in rng.integers(1, 3, 2)], pads=pads,
                dilations=[int(v) for v in rng.integers(1, 3, 2)], group=c)
    y = g.layer("lrn", [g.layer("hard_swish", [y])], size=3, alpha=1e-3, beta=0.75, bias=1.5)
    ceil = bool(rng.integers(0, 2))
    window = {"kernel": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1], "ceil_mode": ceil}
    mp = g.layer("maxpool", [y], **window)
    ap = g.layer("avgpool", [y], count_include_pad=bool(rng.integers(0, 2)), **window)
    d = g.layer("sub", [g.layer("max", [mp, ap]), g.layer("min", [mp, ap])])
    p = g.layer("exp", [g.layer("clip", [d], min=-3.0, max=3.0)])  # positive from here on
    q = g.layer("div", [g.layer("sqrt", [p]), g.layer("reciprocal", [g.layer("abs", [g.layer("neg", [p])])])])
    r = g.layer("pow", [p, g.weight("expo", (1,))])
    t = g.layer("tanh", [g.layer("log", [g.add(q, r)])])
    n = g.layer("hard_sigmoid", [g.layer("erf", [g.layer("leaky_relu", [t], alpha=0.2)])], alpha=0.3, beta=0.4)
    gm = g.layer("gelu_erf", [n])
    rm = g.layer("reduce_mean", [gm], axes=[2, 3], keepdims=True)
    out = g.mul(g.layer("slice", [gm], axis=1, start=1, stop=2 * c),
                g.layer("slice", [rm], axis=1, start=1, stop=2 * c))
    g.output(out)
    return g.build()


def random_graph(seed: int, kind: str = "cnn", batch: int | None = None) -> Graph:
    """A small random graph of ``kind`` (``"cnn"``, ``"transformer"`` or ``"onnx"``) from ``seed``.

    Parameters
    ----------
    seed : int
    kind : {"cnn", "transformer", "onnx"}
    batch : int, optional
        Batch size (default: random, 1 to 5).

    Returns
    -------
    Graph
    """
    rng = np.random.default_rng(seed)
    if batch is None:
        batch = int(rng.integers(1, 6))
    if kind == "cnn":
        return _cnn(rng, batch)
    if kind == "transformer":
        return _transformer(rng, batch)
    if kind == "onnx":
        return _onnx(rng, batch)
    raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
