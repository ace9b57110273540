"""ONNX's own operator test cases (``onnx.backend.test.case.node``) for every op numamem imports.

Each case whose ops are all in :data:`numamem.planner.onnx.SUPPORTED` either imports and, computed
as its plan on 2 nodes splits it, matches the case's expected outputs within 1e-4, or is refused
with an :class:`OnnxImportError` (an op form numamem does not take, such as 3-D pooling or a 0-d
tensor). A crash or a wrong number fails. Operands after the first become initializers, since
numamem takes weights and op parameters (Clip bounds, Slice starts) as constants.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

# The test command installs these extras: a missing package fails here, never skips.
import onnx  # noqa: E402,F401

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import onnx_models as M  # noqa: E402
from numamem.planner import from_onnx, onnx_weights, plan  # noqa: E402
from numamem.planner.onnx import SUPPORTED, OnnxImportError  # noqa: E402

#: Cases whose expected output ONNX Runtime does not reproduce either; compared with ONNX Runtime.
AGAINST_ONNX_RUNTIME = {
    # Expected data differs from ONNX Runtime by 1.5e-4 relative; numamem matches ONNX Runtime to 1e-7.
    "test_averagepool_2d_ceil_last_window_starts_on_pad",
}


def _cases():
    from onnx.backend.test.case.node import collect_testcases

    out = []
    with warnings.catch_warnings():  # the generators of other ops' cases divide by zero on purpose
        warnings.simplefilter("ignore")
        every = collect_testcases(None)
    for tc in every:
        ops = {n.op_type for n in tc.model.graph.node} - {"Constant"}
        if not ops or not ops <= set(SUPPORTED) or not tc.data_sets:
            continue
        inputs, outputs = tc.data_sets[0]
        if not all(isinstance(v, np.ndarray) and v.dtype.kind in "fi" for v in inputs):
            continue
        if not all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in outputs):
            continue
        out.append(tc)
    return out


CASES = _cases()


def _as_constants(tc):
    """The case's model with every input but the first an initializer; the first input's feed."""
    m = onnx.ModelProto()
    m.CopyFrom(tc.model)
    inits = {t.name for t in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in inits]
    inputs, _outputs = tc.data_sets[0]
    feeds = dict(zip(names, inputs))
    keep = [i for i in m.graph.input if i.name not in names[1:]]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    for n in names[1:]:
        m.graph.initializer.append(numpy_helper.from_array(feeds[n], n))
    return m, {names[0]: feeds[names[0]]}


def test_most_cases_import():
    # The clean refusals stay a minority (3-D pools, 1-D matmuls, LayerNormalization's extra outputs).
    imported = 0
    for tc in CASES:
        m, feeds = _as_constants(tc)
        try:
            from_onnx(m, input_shapes={k: v.shape for k, v in feeds.items()})
            imported += 1
        except OnnxImportError:
            pass
    assert len(CASES) > 200 and imported >= 180


@pytest.mark.parametrize("tc", CASES, ids=[tc.name for tc in CASES])
def test_onnx_node_case(tc):
    m, feeds = _as_constants(tc)
    shapes = {k: v.shape for k, v in feeds.items()}
    try:
        g = from_onnx(m, input_shapes=shapes)
    except OnnxImportError:
        return  # refused cleanly: an op form numamem does not take
    ws = onnx_weights(m, input_shapes=shapes)
    xs = {k: v.astype(g.tensor_dtype(k)) for k, v in feeds.items() if k in g.tensors}
    expected = dict(zip([o.name for o in m.graph.output], tc.data_sets[0][1]))
    if tc.name in AGAINST_ONNX_RUNTIME:
        m.ir_version = min(m.ir_version, 8)
        expected = M.ort_outputs(m, feeds)
    env = M.run_blocks(g, plan(g, nodes=[0, 1]), ws, xs)
    for name, ref in expected.items():
        assert env[name].shape == ref.shape
        if np.linalg.norm(ref):
            assert M.rel_err(env[name], ref) < 1e-4, name
        else:
            assert np.abs(env[name]).max() < 1e-6, name
