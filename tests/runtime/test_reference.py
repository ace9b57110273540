"""The float64 reference against hand-computed values and textbook identities.

The kernels are tested against the reference, so the reference itself is pinned here to values
worked out by hand or to identities that do not reuse its own code paths.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from numamem.runtime import reference as R


def test_gelu_tanh_form_values():
    x = np.array([-3.0, -1.0, 0.0, 1.0, 2.0])
    want = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))) for v in x]
    np.testing.assert_allclose(R.apply("gelu", [x]), want, rtol=1e-15)
    assert R.apply("gelu", [np.array([1.0])])[0] == pytest.approx(0.8411919906082768, rel=1e-12)


def test_activations():
    x = np.array([-2.0, 0.5, 7.0])
    np.testing.assert_array_equal(R.apply("relu", [x]), [0, 0.5, 7])
    np.testing.assert_array_equal(R.apply("relu6", [x]), [0, 0.5, 6])
    np.testing.assert_allclose(R.apply("sigmoid", [np.array([0.0, 800.0, -800.0])]), [0.5, 1.0, 0.0], atol=1e-300)


def test_conv2d_by_hand():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 3, 3))
    y = R.apply("conv2d", [x, w], {"padding": 1})
    assert y.shape == (1, 1, 4, 4)
    assert y[0, 0, 0, 0] == 0 + 1 + 4 + 5
    assert y[0, 0, 1, 1] == sum(range(0, 3)) + sum(range(4, 7)) + sum(range(8, 11))
    # Cross-correlation, not convolution: an asymmetric kernel picks the right-hand neighbour.
    w2 = np.zeros((1, 1, 1, 2))
    w2[0, 0, 0, 1] = 1
    np.testing.assert_array_equal(R.apply("conv2d", [x, w2], {}), x[:, :, :, 1:])
    y = R.apply("conv2d", [x, w, np.array([10.0])], {"stride": 2, "padding": 1})
    np.testing.assert_array_equal(y[0, 0], [[10 + 10, 10 + 1 + 2 + 3 + 5 + 6 + 7],
                                            [10 + 4 + 5 + 8 + 9 + 12 + 13, 10 + 5 + 6 + 7 + 9 + 10 + 11 + 13 + 14 + 15]])


def test_conv2d_groups_are_independent_convolutions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    y = R.apply("conv2d", [x, w], {"groups": 2, "padding": 1})
    y0 = R.apply("conv2d", [x[:, :3], w[:2]], {"padding": 1})
    y1 = R.apply("conv2d", [x[:, 3:], w[2:]], {"padding": 1})
    np.testing.assert_allclose(y, np.concatenate([y0, y1], axis=1))
    # A 1x1 convolution is a matrix product over channels.
    w1 = rng.standard_normal((7, 6, 1, 1))
    np.testing.assert_allclose(R.apply("conv2d", [x, w1], {}), np.einsum("nchw,oc->nohw", x, w1[:, :, 0, 0]))


def test_pools_as_pytorch():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    y = R.apply("maxpool2d", [x], {"kernel": 2, "stride": 1, "padding": 1})
    np.testing.assert_array_equal(y[0, 0], [[1, 2, 2], [3, 4, 4], [3, 4, 4]])
    # count_include_pad: the corner window holds one real value and three padded zeros.
    y = R.apply("avgpool2d", [x], {"kernel": 2, "stride": 1, "padding": 1})
    np.testing.assert_array_equal(y[0, 0], [[0.25, 0.75, 0.5], [1.0, 2.5, 1.5], [0.75, 1.75, 1.0]])
    # stride defaults to the kernel
    assert R.apply("maxpool2d", [np.ones((1, 1, 4, 4))], {"kernel": 2}).shape == (1, 1, 2, 2)


def test_dense_matmul_against_numpy():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    np.testing.assert_allclose(R.apply("dense", [x, w, b], {}), x @ w + b)
    a, bb = rng.standard_normal((2, 1, 3, 4)), rng.standard_normal((5, 6, 4))
    np.testing.assert_allclose(R.apply("matmul", [a, bb], {"transpose_b": True}), a @ np.swapaxes(bb, -1, -2))


def test_normalisations():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 10)) * 5 + 2
    y = R.apply("layernorm", [x, np.ones(10), np.zeros(10)], {"eps": 0.0})
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(axis=-1), 1, rtol=1e-12)
    s = R.apply("softmax", [x], {"axis": 0})
    np.testing.assert_allclose(s.sum(axis=0), 1)
    assert (R.apply("softmax", [np.array([1000.0, 1000.0])]) == 0.5).all()  # no overflow
    xb = rng.standard_normal((2, 3, 2, 2))
    yb = R.apply("batchnorm", [xb, np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 0.0])])
    np.testing.assert_allclose(yb[:, 1], xb[:, 1] * 2 + 1)
    np.testing.assert_allclose(R.apply("global_avgpool", [xb]), xb.mean(axis=(2, 3)))


def test_layout_ops_and_embedding():
    x = np.arange(24.0).reshape(2, 3, 4)
    assert R.apply("flatten", [x]).shape == (2, 12)
    assert R.apply("reshape", [x], {"shape": [4, -1]}).shape == (4, 6)
    assert R.apply("transpose", [x], {"perm": [2, 0, 1]})[1, 0, 2] == x[0, 2, 1]
    assert R.apply("concat", [x, x], {"axis": 2}).shape == (2, 3, 8)
    table = np.arange(12.0).reshape(4, 3)
    ids = np.array([[3, 0]], dtype=np.int64)
    np.testing.assert_array_equal(R.apply("embedding", [ids, table]), [[[9, 10, 11], [0, 1, 2]]])
    with pytest.raises(IndexError):
        R.apply("embedding", [np.array([[-1]]), table])
    with pytest.raises(ValueError, match="unknown op"):
        R.apply("conv3d", [x])


class _Layer:
    def __init__(self, op, inputs, outputs, attrs=None):
        self.name, self.op, self.inputs, self.outputs, self.attrs = op, op, inputs, outputs, attrs or {}


def test_reference_forward_accepts_dicts_lists_and_objects():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4))
    w1, w2 = rng.standard_normal((4, 8)), rng.standard_normal((8, 3))
    want = np.maximum(x @ w1, 0) @ w2
    e = np.exp(want - want.max(axis=-1, keepdims=True))
    want = e / e.sum(axis=-1, keepdims=True)
    graph = {
        "format": "numamem-graph/1", "name": "tiny", "dtype": "float32",
        "layers": [
            {"name": "fc1", "op": "dense", "inputs": ["x", "w1"], "outputs": ["h"], "attrs": {"activation": "relu"}},
            {"name": "fc2", "op": "dense", "inputs": ["h", "w2"], "outputs": ["z"]},
            {"name": "sm", "op": "softmax", "inputs": ["z"], "outputs": ["y"], "axis": -1},
        ],
    }
    env = R.reference_forward(graph, {"w1": w1, "w2": w2}, {"x": x.astype(np.float32)})
    np.testing.assert_allclose(env["y"], want, rtol=1e-6)  # x was rounded to float32
    assert env["y"].dtype == np.float64
    env2 = R.reference_forward(graph["layers"], {"w1": w1, "w2": w2}, {"x": x})
    np.testing.assert_allclose(env2["y"], want, rtol=1e-12)

    class G:
        layers = [_Layer("dense", ("x", "w1"), ("h",), {"activation": "relu"}),
                  _Layer("dense", ("h", "w2"), ("z",)), _Layer("softmax", ("z",), ("y",))]
    np.testing.assert_allclose(R.reference_forward(G(), {"w1": w1, "w2": w2}, {"x": x})["y"], want, rtol=1e-12)
    with pytest.raises(KeyError):
        R.reference_forward(graph, {"w1": w1}, {"x": x})
