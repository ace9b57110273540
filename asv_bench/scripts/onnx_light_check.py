"""Check script (not a test): ONNX's light test models imported, planned and computed by numamem.

For every model of ``onnx/backend/test/data/light/`` (or those named on the command line): import
with :func:`numamem.planner.from_onnx`, give the ``ConstantOfShape`` weight placeholders random
values (:func:`numamem.planner.onnx.placeholder_values`), plan on 1, 2 and 3 nodes with
``Plan.verify()``, compute every layer block by block as each plan splits it (each block given
exactly the input regions the plan says it reads), and compare the outputs, and the logits of an
output softmax, with ONNX Runtime on the same weights and inputs. Prints per model the layers, the max relative error over the node counts
(``||y - ref|| / ||ref||``, the run reports' measure; 1e-4 passes) and the seconds of one
numamem pass (whole layers, float32, one thread) against one ONNX Runtime run (one thread).

Run: ``OPENBLAS_NUM_THREADS=1 python asv_bench/scripts/onnx_light_check.py [NAME ...]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

from numamem.planner import from_onnx, onnx_weights, plan
from numamem.planner.boxes import cut
from numamem.planner.onnx import placeholder_values, with_values
from numamem.runtime import kernels as K

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def run_blocks(graph, p, env):
    """Every layer block by block as plan ``p`` splits it (``p`` None: whole layers)."""
    env = dict(env)
    for layer in graph.layers:
        t = graph.tensors[layer.outputs[0]]
        shapes = [graph.tensors[n].shape for n in layer.inputs]
        y = np.empty(t.shape, graph.dtype)
        blocks = [(None, ...)] if p is None else [((b.slice.axis, b.slice.start, b.slice.stop), p.block_index(b))
                                                  for b in p.blocks_of(t.name)]
        for block, index in blocks:
            k = K.bind(layer.op, shapes, layer.attrs, block, graph.dtype)
            ins = [None if r is None else env[n][cut(r, (0,) * len(r))] for n, r in zip(layer.inputs, k.regions)]
            k(ins, y[index])
        env[t.name] = y
    return env


def check(name: str) -> str:
    path = os.path.join(LIGHT, f"light_{name}.onnx")
    m = onnx.load(path)
    vals = placeholder_values(m, seed=0)
    g = from_onnx(path)
    ws = onnx_weights(path, values=vals)
    rng = np.random.default_rng(0)
    xs = {n: rng.standard_normal(g.tensors[n].shape).astype(np.float32) for n in g.inputs}
    # A softmax over 1000 classes of random weights can saturate to one-hot and hide any error:
    # the logits feeding an output softmax are compared too.
    checked = list(g.outputs) + [l.inputs[0] for l in g.layers if l.op == "softmax" and l.outputs[0] in g.outputs]
    mv = with_values(m, vals)
    for n in checked[len(g.outputs):]:
        mv.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(mv.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, xs)))
    t_ort = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_blocks(g, None, {**ws, **xs})
    t_nm = time.perf_counter() - t0
    worst = 0.0
    for nodes in (1, 2, 3):
        p = plan(g, nodes=list(range(nodes)))
        p.verify()
        env = run_blocks(g, p, {**ws, **xs})
        for o in checked:
            r = ref[o].astype(np.float64)
            worst = max(worst, float(np.linalg.norm(env[o] - r) / np.linalg.norm(r)))
    return (f"{name:14s} layers={len(g.layers):4d} gflops={g.flops() / 1e9:6.2f} max_rel_err={worst:.1e} "
            f"{'ok' if worst <= 1e-4 else 'FAIL'} numamem_s={t_nm:.2f} onnxruntime_s={t_ort:.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="light model names (default: all)")
    args = ap.parse_args(argv)
    names = args.names or sorted(f[len("light_"):-len(".onnx")] for f in os.listdir(LIGHT) if f.endswith(".onnx"))
    for name in names:
        print(check(name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
