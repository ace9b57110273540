"""The ONNX-semantics ops: every splittable axis, cut in blocks, against the float64 reference."""
from __future__ import annotations

import math

import numpy as np
import pytest

from numamem.planner import ops
from numamem.planner.ops_onnx import ONNX_OPS
from numamem.runtime import kernels as K
from numamem.runtime import reference as R

CASES = [
    ("conv", [(2, 4, 9, 8), (6, 2, 3, 3), (6,)], {"strides": [2, 1], "pads": [1, 0, 2, 1], "group": 2}),
    ("conv", [(2, 4, 9, 8), (6, 2, 3, 3), (6,)], {"strides": [2, 1], "pads": [1, 0, 2, 1], "dilations": [2, 1],
                                                  "group": 2, "activation": "relu"}),
    ("conv", [(1, 4, 9, 8), (8, 1, 3, 3)], {"strides": 2, "pads": [0, 1, 1, 0], "group": 4}),
    ("conv", [(1, 4, 11, 10), (4, 1, 3, 3)], {"dilations": 2, "pads": [2, 1, 1, 2], "group": 4}),
    ("conv", [(1, 4, 9, 8), (4, 4, 1, 1)], {"activation": "gelu"}),
    ("maxpool", [(2, 3, 9, 10)], {"kernel": [3, 2], "strides": 2, "pads": [1, 0, 0, 1], "ceil_mode": False}),
    ("maxpool", [(2, 3, 9, 10)], {"kernel": [3, 2], "strides": 2, "pads": [1, 0, 0, 1], "ceil_mode": True}),
    ("maxpool", [(1, 2, 7, 7)], {"kernel": 2, "strides": 2, "pads": [0, 0, 1, 1], "ceil_mode": True}),
    *[("avgpool", [(2, 3, 9, 10)], {"kernel": 3, "strides": 2, "pads": [1, 0, 1, 1], "ceil_mode": ceil,
                                    "count_include_pad": cip}) for ceil in (False, True) for cip in (False, True)],
    ("avgpool", [(1, 2, 7, 13)], {"kernel": 3, "strides": [1, 2], "pads": [0, 2, 0, 1], "ceil_mode": True,
                                  "count_include_pad": True}),
    ("lrn", [(2, 7, 4, 5)], {"size": 5, "alpha": 1e-3, "beta": 0.75, "bias": 2.0}),
    ("lrn", [(2, 7, 4, 5)], {"size": 4}),
    *[(op, [(3, 5, 7)], {}) for op in ("tanh", "erf", "sqrt", "exp", "gelu_erf", "neg", "reciprocal", "abs", "log",
                                       "hard_swish", "leaky_relu", "hard_sigmoid")],
    ("leaky_relu", [(3, 5, 7)], {"alpha": 0.3}),
    ("hard_sigmoid", [(3, 5, 7)], {"alpha": 0.5, "beta": 0.4}),
    ("clip", [(3, 5, 7)], {"min": 0.0, "max": 6.0}),
    ("clip", [(3, 5, 7)], {"min": -0.5}),
    ("clip", [(3, 5, 7)], {"max": 0.25}),
    *[(op, [(3, 5, 7), (5, 1)], {}) for op in ("sub", "div", "pow", "max", "min")],
    ("div", [(1,), (3, 5, 7)], {}),
    ("reduce_mean", [(3, 5, 7)], {"axes": [-1]}),
    ("reduce_mean", [(3, 5, 7)], {"axes": [0, 2]}),
    ("reduce_mean", [(3, 5, 7)], {"axes": [1], "keepdims": False}),
    ("slice", [(3, 5, 7)], {"axis": 1, "start": 1, "stop": 4}),
]


def test_every_onnx_op_has_a_case():
    assert {c[0] for c in CASES} == set(ONNX_OPS)


def _inputs(op, shapes, rng):
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    if op in ("sqrt", "pow", "div", "log", "reciprocal"):
        xs = [np.abs(x) + 0.5 for x in xs]
    return xs


@pytest.mark.parametrize("op, shapes, attrs", CASES)
def test_blocks_match_reference(op, shapes, attrs):
    rng = np.random.default_rng(sum(map(ord, op)))
    xs = _inputs(op, shapes, rng)
    out_shape = ops.infer_shape(op, shapes, attrs)
    ref = R.apply(op, xs, attrs)
    assert ref.shape == out_shape
    axes = [a for a in range(len(out_shape)) if ops.splittable(op, shapes, out_shape, attrs, a)]
    assert axes or math.prod(out_shape) == 1
    for axis in axes:
        n = out_shape[axis]
        cuts = sorted({0, n // 3, n})
        y = np.full(out_shape, np.nan, np.float32)
        for lo, hi in zip(cuts, cuts[1:]):
            k = K.bind(op, shapes, attrs, (axis, lo, hi))
            # Each operand cut to exactly the region the block reads.
            ins = [None if r is None else x[tuple(slice(a, b) for a, b in r)] for x, r in zip(xs, k.regions)]
            idx = tuple(slice(lo, hi) if d == axis else slice(None) for d in range(len(out_shape)))
            k(ins, y[idx], np.empty(k.scratch_bytes, np.uint8))
        np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-6, err_msg=f"{op} {attrs} axis {axis}")


def test_unsplittable_axes_are_refused():
    assert not ops.splittable("lrn", [(2, 7, 4, 5)], (2, 7, 4, 5), {"size": 3}, 1)
    assert not ops.splittable("reduce_mean", [(3, 5, 7)], (3, 5, 1), {"axes": [-1]}, 2)
    with pytest.raises(ValueError, match="cannot be split along output axis 1"):
        K.bind("lrn", [(2, 7, 4, 5)], {"size": 3}, (1, 0, 3))


def test_erf_is_accurate_in_float32():
    from numamem.runtime.kernels.mathops import erf

    x = np.linspace(-6, 6, 20001)
    y = np.empty(x.shape, np.float32)
    erf(x.astype(np.float32), y)
    assert np.abs(y - R.erf(x)).max() < 1e-6


def test_pool_shapes_follow_onnx_runtime_ceil_rule():
    # ceil((7 + 1 - 2) / 2) + 1 = 4 windows, and the last starts inside the input: kept.
    assert ops.infer_shape("maxpool", [(1, 1, 7, 7)], {"kernel": 2, "strides": 2, "pads": [0, 0, 1, 1],
                                                      "ceil_mode": True}) == (1, 1, 4, 4)
    # ceil((8 - 2 + 1) / 2) + 1 = 5 windows, but the last would start past the input and its
    # leading pad (4 * 2 >= 8 + 0): dropped, as ONNX Runtime does.
    assert ops.infer_shape("maxpool", [(1, 1, 8, 8)], {"kernel": 2, "strides": 2, "pads": [0, 0, 1, 1],
                                                      "ceil_mode": True}) == (1, 1, 4, 4)
    with pytest.raises(ops.ShapeError, match="must be smaller than the kernel"):
        ops.infer_shape("avgpool", [(1, 1, 8, 8)], {"kernel": 2, "pads": [2, 0, 0, 0]})
