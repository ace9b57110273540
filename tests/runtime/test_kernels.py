"""Block kernels against the float64 reference, for every op and every split of its output."""
from __future__ import annotations

import dataclasses
import tracemalloc
import zlib

import numpy as np
import pytest

from numamem.planner import ops
from numamem.planner.boxes import Slice
from numamem.runtime import kernels as K
from numamem.runtime import reference as R
from numamem.runtime.kernels._common import Window, taps

RTOL = 1e-4


def rel_err(y, ref):
    ref = np.asarray(ref, np.float64)
    return np.linalg.norm(np.asarray(y, np.float64) - ref) / max(np.linalg.norm(ref), 1e-30)


# ------------------------------------------------------------------------------- cases
def _cases():
    """(id, op, operand shapes, attrs) covering every op, its attributes and odd shapes."""
    c = []
    for act in (None, "relu", "relu6", "gelu"):
        c.append((f"dense-{act}", "dense", [(5, 7), (7, 9), (9,)], {"activation": act}))
    c.append(("dense-nobias-3d", "dense", [(3, 4, 6), (6, 5)], {}))
    c.append(("matmul", "matmul", [(2, 3, 5, 4), (2, 3, 4, 6)], {}))
    c.append(("matmul-tb-bcast", "matmul", [(2, 3, 5, 4), (3, 6, 4)], {"transpose_b": True}))
    c.append(("matmul-2d", "matmul", [(7, 3), (3, 5)], {}))
    conv = [
        ("conv-3x3", (3, 4, 7, 8), (6, 4, 3, 3), {"padding": 1}),
        ("conv-s2-p1-bias-relu", (2, 3, 9, 9), (5, 3, 3, 3), {"stride": 2, "padding": 1, "activation": "relu"}),
        ("conv-7x7-s2-p3", (2, 3, 15, 13), (4, 3, 7, 7), {"stride": 2, "padding": 3}),
        ("conv-1x1", (3, 8, 5, 6), (7, 8, 1, 1), {"activation": "relu6"}),
        ("conv-1x1-s2", (2, 8, 7, 7), (4, 8, 1, 1), {"stride": 2}),
        ("conv-1x1-groups", (3, 8, 5, 6), (6, 4, 1, 1), {"groups": 2, "activation": "relu"}),
        ("conv-rect", (2, 3, 8, 9), (4, 3, 2, 3), {"stride": [1, 2], "padding": [1, 0]}),
        ("conv-groups2", (2, 6, 7, 7), (8, 3, 3, 3), {"padding": 1, "groups": 2, "activation": "gelu"}),
        ("conv-depthwise", (3, 6, 8, 8), (6, 1, 3, 3), {"padding": 1, "groups": 6, "activation": "relu6"}),
        ("conv-depthwise-s2", (2, 5, 9, 9), (5, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 5}),
        ("conv-dw-multiplier", (2, 3, 7, 7), (9, 1, 3, 3), {"padding": 1, "groups": 3}),
        ("conv-pad-exceeds", (1, 2, 3, 3), (3, 2, 3, 3), {"padding": 2, "stride": 2}),
    ]
    for name, xs, ws, attrs in conv:
        bias = [] if name in ("conv-3x3", "conv-1x1-s2") else [(ws[0],)]
        c.append((name, "conv2d", [xs, ws] + bias, attrs))
    for op in ("relu", "relu6", "gelu", "sigmoid"):
        c.append((op, op, [(4, 3, 5)], {}))
    c.append(("add-relu", "add", [(3, 4, 5), (3, 4, 5)], {"activation": "relu"}))
    c.append(("add-bcast-gelu", "add", [(3, 4, 5), (4, 1)], {"activation": "gelu"}))
    c.append(("mul-bcast", "mul", [(1, 4, 5), (3, 1, 5)], {}))
    for op in ("maxpool2d", "avgpool2d"):
        c.append((f"{op}-3s2p1", op, [(2, 3, 9, 8)], {"kernel": 3, "stride": 2, "padding": 1}))
        c.append((f"{op}-2", op, [(3, 2, 6, 7)], {"kernel": 2}))
        c.append((f"{op}-rect", op, [(2, 2, 7, 8)], {"kernel": [3, 2], "stride": [1, 2], "padding": [1, 1]}))
    c.append(("global_avgpool", "global_avgpool", [(3, 5, 4, 6)], {}))
    c.append(("batchnorm-4d", "batchnorm", [(3, 5, 4, 4), (5,), (5,)], {}))
    c.append(("batchnorm-2d", "batchnorm", [(4, 6), (6,), (6,)], {}))
    c.append(("layernorm", "layernorm", [(3, 4, 16), (16,), (16,)], {}))
    c.append(("layernorm-eps", "layernorm", [(5, 8), (8,), (8,)], {"eps": 1e-3}))
    c.append(("softmax", "softmax", [(3, 4, 7)], {}))
    c.append(("softmax-axis1", "softmax", [(3, 6, 5)], {"axis": 1}))
    c.append(("reshape", "reshape", [(3, 4, 6)], {"shape": [3, 4, 2, 3]}))
    c.append(("reshape-merge", "reshape", [(3, 4, 6)], {"shape": [3, -1]}))
    c.append(("flatten", "flatten", [(3, 2, 3, 4)], {}))
    c.append(("transpose", "transpose", [(3, 4, 5, 2)], {"perm": [0, 2, 1, 3]}))
    c.append(("transpose-default", "transpose", [(3, 4, 5)], {}))
    c.append(("concat1", "concat", [(3, 2, 4), (3, 5, 4), (3, 1, 4)], {"axis": 1}))
    c.append(("concat0", "concat", [(2, 3), (4, 3)], {}))
    c.append(("embedding", "embedding", [(3, 5), (11, 6)], {}))
    return c


CASES = _cases()


def make_inputs(op, shapes, rng):
    xs = []
    for i, s in enumerate(shapes):
        if op == "embedding" and i == 0:
            xs.append(rng.integers(0, shapes[1][0], size=s, dtype=np.int64))
        elif op == "batchnorm" and i == 1:
            xs.append(rng.uniform(0.5, 1.5, size=s).astype(np.float32))
        else:
            xs.append((rng.standard_normal(s) * 2).astype(np.float32))
    return xs


def cuts(n, parts, rng):
    """``parts`` uneven (possibly empty) ranges covering [0, n)."""
    inner = sorted(rng.integers(0, n + 1, size=parts - 1).tolist())
    pts = [0] + inner + [n]
    return list(zip(pts, pts[1:]))


def run_split(op, xs, attrs, axis, ranges, rng, restrict_inputs):
    """Run every block of a split; return the assembled output (NaN where nothing wrote)."""
    shapes = [x.shape for x in xs]
    out_shape = K.bind(op, shapes, attrs).out_shape
    y = np.full(out_shape, np.nan, np.float32)
    for start, stop in ranges:
        blk = Slice(axis, start, stop)
        bound = K.bind(op, shapes, attrs, blk)
        bshape = bound.out_shape
        out = np.full(bshape, np.nan, np.float32)
        ins = xs
        if restrict_inputs:
            regs = bound.regions
            ins = [None if r is None else np.ascontiguousarray(x[tuple(slice(a, b) for a, b in r)])
                   for x, r in zip(xs, regs)]
        need = bound.scratch_bytes
        # An exactly sized scratch starting at an odd address: carving must realign inside it.
        scratch = np.empty(need + 1, np.uint8)[1:] if need else None
        got = K.run(op, ins, out, attrs, blk, scratch, shapes=shapes)
        assert got is out
        idx = tuple(slice(start, stop) if k == axis else slice(None) for k in range(len(out_shape)))
        y[idx] = out
    return y


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kernel_matches_reference_on_every_split(case):
    name, op, shapes, attrs = case
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    xs = make_inputs(op, shapes, rng)
    ref = R.apply(op, xs, attrs)
    out_shape = ops.infer_shape(op, shapes, attrs)
    assert out_shape == ref.shape
    axes = [a for a in range(len(out_shape)) if ops.splittable(op, shapes, out_shape, attrs, a)]
    assert 0 in axes or op in ("layernorm", "softmax", "reshape", "flatten")
    tried = 0
    for axis in axes:
        n = out_shape[axis]
        for parts in (1, 2, 3):
            for restrict in (False, True):
                ranges = cuts(n, parts, rng)
                y = run_split(op, xs, attrs, axis, ranges, rng, restrict)
                assert not np.isnan(y).any(), (axis, ranges)
                err = rel_err(y, ref)
                assert err <= RTOL, (axis, ranges, restrict, err)
                tried += 1
    assert tried >= 6


@pytest.mark.parametrize("method", ["im2col", "offsets"])
@pytest.mark.parametrize("case", [c for c in CASES if c[1] == "conv2d" and c[2][1][1] > 1],
                         ids=lambda c: c[0])
def test_conv2d_methods_agree(case, method):
    name, op, shapes, attrs = case
    rng = np.random.default_rng(1)
    xs = make_inputs(op, shapes, rng)
    ref = R.apply(op, xs, attrs)
    a = dict(attrs, _method=method)
    for axis in range(4):
        y = run_split(op, xs, a, axis, cuts(ref.shape[axis], 3, rng), rng, restrict_inputs=axis % 2 == 0)
        assert rel_err(y, ref) <= RTOL



@pytest.mark.parametrize("case", [c for c in CASES if c[1] == "conv2d" and c[2][1][1] == 1], ids=lambda c: c[0])
def test_forced_im2col_on_depthwise_layers(case):
    """``_method`` forces the grouped im2col where depthwise would run (the benchmark's baseline)."""
    name, op, shapes, attrs = case
    rng = np.random.default_rng(12)
    xs = make_inputs(op, shapes, rng)
    ref = R.apply(op, xs, attrs)
    for axis in range(4):
        y = run_split(op, xs, dict(attrs, _method="im2col"), axis, cuts(ref.shape[axis], 3, rng), rng,
                      restrict_inputs=axis % 2 == 1)
        assert rel_err(y, ref) <= RTOL
    with pytest.raises(ValueError, match="_method"):
        K.bind(op, shapes, dict(attrs, _method="depthwise"))


def test_as_slice_forms():
    assert K.as_slice(Slice(1, 2, 5), (4, 8)) == Slice(1, 2, 5)
    assert K.as_slice({"axis": np.int64(-2), "start": 1, "stop": 3}, (4, 8)) == Slice(0, 1, 3)
    assert K.as_slice(None, (4, 8)) == Slice(0, 0, 4)
    with pytest.raises(ValueError, match="block axis"):
        K.as_slice((-3, 0, 1), (4, 8))
    with pytest.raises(ValueError, match=r"\(axis, start, stop\)"):
        K.as_slice((0, 1), (4, 8))
    with pytest.raises(TypeError, match="block must be"):
        K.as_slice(slice(0, 2), (4, 8))
    with pytest.raises(TypeError):
        K.as_slice((0, 1.0, 2), (4, 8))

def test_whole_output_of_unsplittable_axis_is_allowed():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    out = np.empty((4, 6), np.float32)
    K.run("softmax", [x], out, {}, Slice(1, 0, 6))
    assert rel_err(out, R.softmax(x)) <= RTOL
    with pytest.raises(ValueError, match="cannot be split"):
        K.run("softmax", [x], out[:, :3], {}, Slice(1, 0, 3))
    with pytest.raises(ValueError, match="cannot be split"):
        K.bind("layernorm", [(4, 6), (6,), (6,)], {}, Slice(1, 2, 4))


def test_out_is_written_in_place_including_views():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    w = rng.standard_normal((5, 8)).astype(np.float32)
    big = np.zeros((6, 20), np.float32)
    view = big[:, 4:12]  # not C-contiguous: dense computes into a temporary and copies back
    assert K.run("dense", [x, w], view, {}) is view
    assert rel_err(big[:, 4:12], R.dense(x, w)) <= RTOL
    assert not big[:, :4].any() and not big[:, 12:].any()
    buf = np.zeros(64, np.float32)
    out = buf[8:38].reshape(6, 5)
    K.run("relu", [x], out)
    np.testing.assert_array_equal(buf[8:38].reshape(6, 5), np.maximum(x, 0))


@pytest.mark.parametrize("op", ["relu", "relu6", "gelu", "sigmoid"])
def test_elementwise_in_place(op):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 70000)) * 3).astype(np.float32)  # > CHUNK_ELEMENTS: gelu chunks
    ref = R.apply(op, [x], {})
    K.run(op, [x], x)
    assert rel_err(x, ref) <= RTOL


def test_add_and_batchnorm_in_place():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    b = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    ref = R.apply("add", [a, b], {"activation": "gelu"})
    K.run("add", [a, b], a, {"activation": "gelu"})
    assert rel_err(a, ref) <= RTOL
    s, t = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    ref = R.apply("batchnorm", [b, s, t], {})
    K.run("batchnorm", [b, s, t], b)
    assert rel_err(b, ref) <= RTOL


def test_sigmoid_extremes_do_not_warn():
    x = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], np.float32)
    out = np.empty_like(x)
    with np.errstate(all="raise"):
        K.run("sigmoid", [x], out)
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1], atol=1e-30)


def test_empty_block_touches_nothing():
    x = np.ones((4, 3), np.float32)
    out = np.empty((0, 3), np.float32)
    assert K.run("relu", [x], out, block=Slice(0, 2, 2)) is out
    assert K.bind("gelu", [(4, 3)], {}, Slice(0, 2, 2)).scratch_bytes == 0


def test_block_forms_and_errors():
    shapes = [(4, 6), (6, 8)]
    assert K.bind("dense", shapes, {}, {"axis": 1, "start": 2, "stop": 5}).out_shape == (4, 3)
    assert K.bind("dense", shapes, {}, (-1, 2, 5)).out_shape == (4, 3)
    assert K.bind("dense", shapes, {}, None).out_shape == (4, 8)
    with pytest.raises(ValueError):
        K.as_slice(Slice(0, 0, 5), (4, 8))
    with pytest.raises(ValueError):
        K.as_slice((2, 0, 1), (4, 8))
    with pytest.raises(ValueError):
        Slice(0, 3, 2)
    x, w = np.ones((4, 6), np.float32), np.ones((6, 8), np.float32)
    with pytest.raises(ValueError, match="block needs"):
        K.run("dense", [x, w], np.empty((4, 8), np.float32), {}, Slice(1, 0, 4))
    with pytest.raises(ValueError, match="neither the full"):
        K.run("dense", [x[:3], w], np.empty((2, 8), np.float32), {}, Slice(0, 0, 2), shapes=shapes)
    with pytest.raises(ValueError, match="unknown op"):
        K.bind("conv3d", shapes, {})
    with pytest.raises(ValueError):
        K.bind("dense", [(4, 6), (5, 8)], {})
    with pytest.raises(ValueError, match="activation"):
        K.bind("dense", shapes, {"activation": "tanh"})
    xs = [np.ones((1, 2, 8, 8), np.float32), np.ones((4, 2, 3, 3), np.float32)]
    need = K.bind("conv2d", [a.shape for a in xs], {}, None).scratch_bytes
    with pytest.raises(ValueError, match="too small"):
        K.run("conv2d", xs, np.empty((1, 4, 6, 6), np.float32), {}, None, np.empty(need // 2, np.uint8))


def test_embedding_rejects_out_of_range_ids():
    table = np.ones((5, 3), np.float32)
    out = np.empty((1, 2, 3), np.float32)
    with pytest.raises(IndexError):
        K.run("embedding", [np.array([[0, 5]]), table], out)
    with pytest.raises(IndexError):
        K.run("embedding", [np.array([[-1, 0]]), table], out)


def test_graph_blockwise_matches_reference_forward():
    """A small CNN run layer by layer in two batch blocks and two channel blocks (as an executor would)."""
    rng = np.random.default_rng(7)
    layers = [
        {"op": "conv2d", "inputs": ["x", "w1", "b1"], "outputs": ["h1"], "attrs": {"padding": 1, "activation": "relu"}},
        {"op": "maxpool2d", "inputs": ["h1"], "outputs": ["h2"], "kernel": 2},
        {"op": "conv2d", "inputs": ["h2", "w2"], "outputs": ["h3"], "attrs": {"padding": 1, "groups": 8}},
        {"op": "batchnorm", "inputs": ["h3", "s", "t"], "outputs": ["h4"]},
        {"op": "add", "inputs": ["h4", "h2"], "outputs": ["h5"], "attrs": {"activation": "relu6"}},
        {"op": "global_avgpool", "inputs": ["h5"], "outputs": ["h6"]},
        {"op": "dense", "inputs": ["h6", "w3", "b3"], "outputs": ["h7"]},
        {"op": "softmax", "inputs": ["h7"], "outputs": ["y"]},
    ]
    weights = {
        "w1": rng.standard_normal((8, 3, 3, 3)), "b1": rng.standard_normal(8),
        "w2": rng.standard_normal((8, 1, 3, 3)), "s": rng.uniform(0.5, 1.5, 8), "t": rng.standard_normal(8),
        "w3": rng.standard_normal((8, 5)), "b3": rng.standard_normal(5),
    }
    inputs = {"x": rng.standard_normal((4, 3, 8, 8))}
    ref = R.reference_forward({"layers": layers}, weights, inputs)
    env = {k: np.asarray(v, np.float32) for k, v in {**weights, **inputs}.items()}
    for layer in layers:
        attrs = {**layer.get("attrs", {}), **{k: v for k, v in layer.items()
                                              if k not in ("op", "inputs", "outputs", "attrs")}}
        xs = [env[n] for n in layer["inputs"]]
        shapes = [x.shape for x in xs]
        out_shape = ops.infer_shape(layer["op"], shapes, attrs)
        y = np.empty(out_shape, np.float32)
        axis = 1 if ops.splittable(layer["op"], shapes, out_shape, attrs, 1) and layer["op"] != "dense" else 0
        half = out_shape[axis] // 2
        for lo, hi in ((0, half), (half, out_shape[axis])):
            idx = tuple(slice(lo, hi) if k == axis else slice(None) for k in range(len(out_shape)))
            K.run(layer["op"], xs, y[idx], attrs, Slice(axis, lo, hi))
        env[layer["outputs"][0]] = y
    for name in ("h1", "h3", "h5", "h7", "y"):
        assert rel_err(env[name], ref[name]) <= RTOL, name


# ----------------------------------------------------------------------- allocations
def _alloc_cases():
    """Ops with a block of >= 2 MiB of output, far above what the bound below allows."""
    return [
        ("dense-gelu", "dense", [(512, 512), (512, 2048), (2048,)], {"activation": "gelu"}, (1, 100, 1200)),
        ("dense-3d", "dense", [(8, 128, 256), (256, 1024)], {"activation": "relu"}, (2, 10, 900)),
        ("matmul-tb", "matmul", [(4, 8, 256, 64), (4, 8, 256, 64)], {"transpose_b": True}, (0, 1, 3)),
        ("conv-3x3", "conv2d", [(4, 32, 64, 64), (64, 32, 3, 3), (64,)], {"padding": 1, "activation": "relu"}, (1, 8, 56)),
        ("conv-1x1", "conv2d", [(4, 64, 64, 64), (64, 64, 1, 1)], {}, (0, 0, 4)),
        ("conv-1x1-rows", "conv2d", [(4, 64, 64, 64), (64, 64, 1, 1), (64,)], {"activation": "relu"}, (2, 3, 50)),
        ("conv-1x1-cols", "conv2d", [(4, 64, 64, 64), (64, 64, 1, 1)], {}, (3, 10, 60)),
        ("conv-7x7-s2", "conv2d", [(1, 3, 224, 224), (64, 3, 7, 7)], {"stride": 2, "padding": 3, "activation": "gelu"}, (1, 0, 48)),
        ("conv-dw", "conv2d", [(4, 64, 64, 64), (64, 1, 3, 3), (64,)], {"padding": 1, "groups": 64, "activation": "relu6"}, (1, 5, 60)),
        ("conv-grouped", "conv2d", [(4, 64, 64, 64), (64, 16, 3, 3)], {"padding": 1, "groups": 4}, (1, 10, 60)),
        ("conv-rows", "conv2d", [(3, 32, 64, 64), (64, 32, 3, 3)], {"padding": 1}, (2, 3, 50)),
        ("relu", "relu", [(1024, 1024)], {}, (0, 100, 900)),
        ("relu6", "relu6", [(512, 1024)], {}, (1, 0, 1024)),
        ("gelu", "gelu", [(512, 1024)], {}, (0, 0, 512)),
        ("sigmoid", "sigmoid", [(512, 1024)], {}, (0, 0, 512)),
        ("add-gelu", "add", [(1024, 1024), (1024,)], {"activation": "gelu"}, (1, 24, 1000)),
        ("mul", "mul", [(1024, 1024), (1024, 1024)], {}, (0, 12, 900)),
        ("maxpool", "maxpool2d", [(4, 64, 64, 64)], {"kernel": 3, "stride": 1, "padding": 1}, (1, 3, 60)),
        ("avgpool", "avgpool2d", [(2, 64, 64, 64)], {"kernel": 3, "stride": 1, "padding": 1}, (0, 0, 2)),
        ("global_avgpool", "global_avgpool", [(128, 4096, 2, 2)], {}, (1, 0, 4096)),
        ("batchnorm", "batchnorm", [(2, 64, 64, 64), (64,), (64,)], {}, (1, 0, 64)),
        ("layernorm", "layernorm", [(16, 128, 512), (512,), (512,)], {}, (1, 10, 100)),
        ("softmax", "softmax", [(16, 128, 512)], {}, (0, 1, 15)),
        ("transpose", "transpose", [(8, 128, 8, 64)], {"perm": [0, 2, 1, 3]}, (0, 0, 8)),
        ("reshape", "reshape", [(16, 128, 512)], {"shape": [16, 128, 8, 64]}, (1, 0, 100)),
        ("concat", "concat", [(4, 64, 64, 32), (4, 96, 64, 32)], {"axis": 1}, (1, 30, 150)),
        ("embedding-rows", "embedding", [(16, 128), (1000, 512)], {}, (0, 2, 14)),
        ("embedding-cols", "embedding", [(16, 128), (1000, 512)], {}, (2, 0, 300)),
    ]


ALLOC_CASES = _alloc_cases()
ALLOC_BOUND = 192 * 1024  # bytes; every output block checked is >= 2 MiB


@pytest.mark.parametrize("case", ALLOC_CASES, ids=[c[0] for c in ALLOC_CASES])
def test_steady_state_call_allocates_no_large_temporaries(case):
    name, op, shapes, attrs, (axis, lo, hi) = case
    rng = np.random.default_rng(8)
    xs = make_inputs(op, shapes, rng)
    blk = Slice(axis, lo, hi)
    bound = K.bind(op, shapes, attrs, blk)
    out = np.empty(bound.out_shape, np.float32)
    scratch = np.empty(bound.scratch_bytes, np.uint8)
    K.run(op, xs, out, attrs, blk, scratch)  # warm-up: first-call caches (BLAS, ufunc loops)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        K.run(op, xs, out, attrs, blk, scratch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # NumPy's ufunc iterator may allocate its buffers (8192 elements per operand) for strided or
    # broadcast operands: a constant, whatever the size of the data, so the bound is one too.
    assert out.nbytes >= 2 * 1024 * 1024
    assert peak < ALLOC_BOUND, f"{name}: peak {peak} bytes traced, output {out.nbytes}"
    if op not in ("conv2d", "dense"):  # their float64 loops are slow at these sizes; covered above
        ref = R.apply(op, xs, attrs)
        idx = tuple(slice(lo, hi) if k == axis else slice(None) for k in range(ref.ndim))
        assert rel_err(out, ref[idx]) <= RTOL


@pytest.mark.parametrize("seed", range(16))
def test_random_conv2d_and_pool_configs(seed):
    """Seeded random shapes, strides, paddings (conv padding may exceed the kernel), groups."""
    rng = np.random.default_rng(1000 + seed)
    g = int(rng.choice([1, 1, 2, 3]))
    cg = 1 if rng.random() < 0.3 else int(rng.integers(1, 4))
    og = int(rng.integers(1, 4))
    kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
    sh, sw = (int(v) for v in rng.integers(1, 4, size=2))
    ph, pw = (int(v) for v in rng.integers(0, 4, size=2))
    h = int(rng.integers(max(1, kh - 2 * ph), kh + 8))
    w = int(rng.integers(max(1, kw - 2 * pw), kw + 8))
    n = int(rng.integers(1, 4))
    act = [None, "relu", "relu6", "gelu"][int(rng.integers(0, 4))]
    shapes = [(n, g * cg, h, w), (g * og, cg, kh, kw)] + ([(g * og,)] if rng.random() < 0.5 else [])
    attrs = {"stride": [sh, sw], "padding": [ph, pw], "groups": g, "activation": act}
    pk = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    pool_attrs = {"kernel": list(pk), "stride": [int(v) for v in rng.integers(1, 4, size=2)],
                  "padding": [int(rng.integers(0, pk[0] // 2 + 1)), int(rng.integers(0, pk[1] // 2 + 1))]}
    pool_shape = [(n, int(rng.integers(1, 5)), int(rng.integers(pk[0], pk[0] + 7)), int(rng.integers(pk[1], pk[1] + 7)))]
    for op, shp, at in (("conv2d", shapes, attrs), ("maxpool2d", pool_shape, pool_attrs),
                        ("avgpool2d", pool_shape, pool_attrs)):
        xs = make_inputs(op, shp, rng)
        ref = R.apply(op, xs, at)
        for axis in range(4):
            for parts in (2, 3):
                y = run_split(op, xs, at, axis, cuts(ref.shape[axis], parts, rng), rng,
                              restrict_inputs=bool(rng.integers(0, 2)))
                assert rel_err(y, ref) <= RTOL, (op, shp, at, axis)


@pytest.mark.parametrize("op", ["gelu", "sigmoid"])
def test_transcendental_ops_pointwise_accuracy(op):
    """Elementwise, tighter than the norm-wise bound: a wrong constant shows up here."""
    x = np.linspace(-2.5, 2.5, 101, dtype=np.float32)
    out = np.empty_like(x)
    K.run(op, [x], out)
    np.testing.assert_allclose(out, R.apply(op, [x]), rtol=1e-5, atol=1e-7)


def test_float64_graph_dtype():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 6, 6))
    w = rng.standard_normal((5, 4, 3, 3))
    out = np.empty((2, 5, 6, 6))
    K.run("conv2d", [x, w], out, {"padding": 1, "activation": "gelu"})
    np.testing.assert_allclose(out, R.apply("conv2d", [x, w], {"padding": 1, "activation": "gelu"}), rtol=1e-9, atol=1e-12)


def test_bound_kernel_reused_and_run_from_threads():
    """One bound kernel per block, called repeatedly from worker threads, each with its own scratch."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(10)
    shapes = [(6, 8, 12, 12), (16, 8, 3, 3), (16,)]
    attrs = {"padding": 1, "activation": "relu"}
    y = np.zeros(ops.infer_shape("conv2d", shapes, attrs), np.float32)
    bound = [K.bind("conv2d", shapes, attrs, Slice(1, lo, hi)) for lo, hi in ((0, 5), (5, 11), (11, 16))]
    outs = [np.empty(b.out_shape, np.float32) for b in bound]
    scratch = [np.empty(b.scratch_bytes, np.uint8) for b in bound]
    for _ in range(2):  # new inputs each iteration, same bound kernels and buffers
        xs = make_inputs("conv2d", shapes, rng)
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda i: bound[i](xs, outs[i], scratch[i]), range(3)))
        for b, o in zip(bound, outs):
            y[:, b.block.start:b.block.stop] = o
        assert rel_err(y, R.apply("conv2d", xs, attrs)) <= RTOL
    with pytest.raises(ValueError, match="dtype"):
        bound[0](xs, np.empty(bound[0].out_shape, np.float64))


def test_rows_wholly_in_padding_read_nothing():
    """Padding wider than the kernel: some output rows see only zeros (and the bias)."""
    shapes = [(1, 1, 9, 4), (2, 1, 1, 1), (2,)]
    attrs = {"padding": [3, 0], "stride": [2, 1]}
    rng = np.random.default_rng(11)
    xs = make_inputs("conv2d", shapes, rng)
    ref = R.apply("conv2d", xs, attrs)
    regions = [K.bind("conv2d", shapes, attrs, Slice(2, t, t + 1)).regions[0][2] for t in range(ref.shape[2])]
    assert regions[0] == (0, 0) and regions[-1] == (9, 9)  # empty, never reversed
    for restrict in (False, True):
        y = run_split("conv2d", xs, attrs, 2, [(t, t + 1) for t in range(ref.shape[2])], rng, restrict)
        assert rel_err(y, ref) <= RTOL


# ------------------------------------------------------------- bind-time geometry, 1x1 GEMM
def test_taps_match_brute_force():
    """Each tap's output, border and input index tuples agree with the window arithmetic."""
    rng = np.random.default_rng(21)
    for _ in range(300):
        nh, nw = (int(v) for v in rng.integers(1, 7, 2))
        sh, sw, dh, dw = (int(v) for v in rng.integers(1, 4, 4))
        kh, kw = (int(v) for v in rng.integers(1, 5, 2))
        H, W = (int(v) for v in rng.integers(1, 12, 2))
        org_h, org_w = (int(v) for v in rng.integers(-4, 4, 2))
        g = Window(nh, nw, org_h, org_w, sh, sw)
        tps = taps(g, (kh, kw), (H, W), (dh, dw))
        assert [(t.i, t.j) for t in tps] == [(i, j) for i in range(kh) for j in range(kw)]
        x = np.arange(H * W).reshape(H, W)
        for t in tps:
            rows = np.arange(nh) * sh + t.i * dh + org_h
            cols = np.arange(nw) * sw + t.j * dw + org_w
            inside = ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]
            mark = np.zeros((nh, nw), int)
            mark[t.out] += 1
            for b in t.border:
                mark[b] += 2
            np.testing.assert_array_equal(mark, np.where(inside, 1, 2))  # a partition, exactly
            assert t.empty == (not inside.any())
            if not t.empty:
                want = x[np.clip(rows, 0, H - 1)][:, np.clip(cols, 0, W - 1)][t.out]
                np.testing.assert_array_equal(x[t.src], want)


@pytest.mark.parametrize("seed", range(6))
def test_1x1_gemm_equals_im2col_on_random_blocks(seed):
    """The 1x1 GEMM path (whole image, rows, columns, channel slices across groups) agrees with im2col."""
    rng = np.random.default_rng(100 + seed)
    groups = int(rng.choice([1, 2, 3]))
    cg, opg = int(rng.integers(2, 6)), int(rng.integers(1, 6))  # cg == 1 would be depthwise
    n, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
    shapes = [(n, cg * groups, h, w), (opg * groups, cg, 1, 1), (opg * groups,)]
    attrs = {"groups": groups, "activation": str(rng.choice(["relu", "gelu", "none"]))}
    if attrs["activation"] == "none":
        del attrs["activation"]
    xs = make_inputs("conv2d", shapes, rng)
    ref = R.apply("conv2d", xs, attrs)
    for axis in range(4):
        for restrict in (False, True):
            ranges = cuts(ref.shape[axis], 3, rng)
            for lo, hi in ranges:
                if hi > lo:
                    assert K.bind("conv2d", shapes, attrs, Slice(axis, lo, hi))._ctx.prep.method == "gemm"
            y = run_split("conv2d", xs, attrs, axis, ranges, rng, restrict)
            forced = run_split("conv2d", xs, dict(attrs, _method="im2col"), axis, ranges, rng, restrict)
            np.testing.assert_allclose(y, forced, rtol=1e-5, atol=1e-5)
            assert rel_err(y, ref) <= RTOL


PREP_CASES = [
    ("conv2d", [(2, 6, 9, 8), (4, 3, 3, 3), (4,)], {"padding": 1, "stride": 2, "groups": 2, "activation": "relu"}, (2, 1, 4)),
    ("conv2d", [(2, 6, 9, 8), (6, 1, 3, 3)], {"padding": 1, "groups": 6}, (1, 1, 5)),
    ("conv2d", [(2, 6, 9, 8), (4, 6, 1, 1)], {}, (3, 2, 7)),
    ("conv2d", [(2, 6, 9, 8), (4, 6, 3, 2)], {"padding": [1, 0], "_method": "offsets"}, (0, 1, 2)),
    ("maxpool2d", [(2, 3, 9, 8)], {"kernel": 3, "stride": 2, "padding": 1}, (2, 1, 4)),
    ("avgpool2d", [(2, 3, 9, 8)], {"kernel": 3, "stride": 1, "padding": 1}, (3, 2, 6)),
]


@pytest.mark.parametrize("case", PREP_CASES, ids=lambda c: f"{c[0]}-{c[2]}")
def test_body_without_bind_time_prep_computes_the_same(case):
    """A body handed a context without ``prep`` (called directly) works it out and gives the same block."""
    op, shapes, attrs, blk = case
    rng = np.random.default_rng(5)
    xs = make_inputs(op, shapes, rng)
    bound = K.bind(op, shapes, attrs, Slice(*blk))
    assert bound._ctx.prep is not None
    ins = [x[c] for x, c in zip(xs, bound._cuts)]
    scratch = np.empty(bound.scratch_bytes, np.uint8)
    a = bound(xs, np.empty(bound.out_shape, np.float32), scratch)
    b = np.empty(bound.out_shape, np.float32)
    bufs = [np.empty(s.shape, s.dtype) for s in K.KERNELS[op].scratch(bound._ctx)]
    K.KERNELS[op].run(ins, b, dataclasses.replace(bound._ctx, prep=None), bufs)
    np.testing.assert_array_equal(a, b)
