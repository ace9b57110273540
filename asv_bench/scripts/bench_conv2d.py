"""Benchmark script (not a test): conv2d strategies of :mod:`numamem.runtime.kernels.conv`.

Compares, on ResNet-50 and MobileNetV2 layer shapes at batch 1, in the same run:

* ``im2col``  - the kernel's default: column buffer filled with one strided copy per kernel tap
  (zeroing only the padded border), then one GEMM per sample and group;
* ``swv``     - im2col built with ``numpy.lib.stride_tricks.sliding_window_view`` over a padded
  copy of the sample (one 6-D strided copy), then the same GEMM;
* ``offsets`` - per-kernel-tap accumulation: one GEMM per tap into a temporary, added to ``out``;
* ``depthwise`` (depthwise layers only) - per-tap vectorised multiply-add over all channels,
  against ``im2col`` which then runs one tiny GEMM per group.

The kernel's methods are forced with its private ``_method`` attribute. The figures and how they
were taken: "conv2d methods" in ``docs/performance.md``.

Run: ``OPENBLAS_NUM_THREADS=1 python asv_bench/scripts/bench_conv2d.py [--runs N]``. Prints the median
of N timed calls per method (after one warm-up call) and the ratio to ``im2col``; methods are
interleaved run by run so machine noise hits them alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from numamem.planner import ops
from numamem.runtime import kernels as K

LAYERS = [
    # name, x shape, w shape, stride, padding, groups
    ("resnet50 conv1 7x7/2", (1, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1),
    ("resnet50 layer1 3x3", (1, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1),
    ("resnet50 layer3 3x3", (1, 256, 14, 14), (256, 256, 3, 3), 1, 1, 1),
    ("resnet50 layer4 3x3", (1, 512, 7, 7), (512, 512, 3, 3), 1, 1, 1),
    ("mobilenetv2 dw 3x3 144", (1, 144, 56, 56), (144, 1, 3, 3), 1, 1, 144),
    ("mobilenetv2 dw 3x3/2 960", (1, 960, 14, 14), (960, 1, 3, 3), 2, 1, 960),
]


def swv_conv(x, w, out, stride, pad, xpad, col):
    """im2col through sliding_window_view of a padded copy (scratch ``xpad`` and ``col``)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = out.shape[2:]
    w2 = w.reshape(o, cg * kh * kw)
    xpad[:, :pad, :] = 0
    xpad[:, h + pad:, :] = 0
    xpad[:, :, :pad] = 0
    xpad[:, :, wd + pad:] = 0
    for i in range(n):
        np.copyto(xpad[:, pad:pad + h, pad:pad + wd], x[i])
        win = sliding_window_view(xpad, (kh, kw), axis=(1, 2))[:, ::stride, ::stride][:, :oh, :ow]
        # win: [C, OH, OW, kh, kw] -> col [C, kh, kw, OH, OW]
        np.copyto(col.reshape(c, kh, kw, oh, ow), win.transpose(0, 3, 4, 1, 2))
        np.matmul(w2, col, out=out[i].reshape(o, oh * ow))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"median of {args.runs} runs per method (after a warm-up); ratio = method / im2col")
    for name, xs, ws, stride, pad, groups in LAYERS:
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        attrs = {"stride": stride, "padding": pad, "groups": groups}
        oshape = ops.infer_shape("conv2d", [xs, ws], attrs)
        methods = {}
        ref = np.empty(oshape, np.float32)
        if groups == 1:
            for m in ("im2col", "offsets"):
                a = dict(attrs, _method=m)
                scr = np.empty(K.bind("conv2d", [xs, ws], a).scratch_bytes, np.uint8)
                methods[m] = (lambda a=a, scr=scr: K.run("conv2d", [x, w], out, a, None, scr))
            xpad = np.empty((xs[1], xs[2] + 2 * pad, xs[3] + 2 * pad), np.float32)
            col = np.empty((xs[1] * ws[2] * ws[3], oshape[2] * oshape[3]), np.float32)
            methods["swv"] = lambda: swv_conv(x, w, out, stride, pad, xpad, col)
        else:
            for m, a in (("depthwise", attrs), ("im2col", dict(attrs, _method="im2col"))):
                scr = np.empty(K.bind("conv2d", [xs, ws], a).scratch_bytes, np.uint8)
                methods[m] = (lambda a=a, scr=scr: K.run("conv2d", [x, w], out, a, None, scr))
        out = ref
        times = {m: [] for m in methods}
        results = {}
        for m, f in methods.items():  # warm-up, and keep each result to check they agree
            out = np.empty(oshape, np.float32)
            f()
            results[m] = out.copy()
        base = results["im2col"]
        for m, r in results.items():
            err = np.linalg.norm(r - base) / np.linalg.norm(base)
            assert err < 1e-4, (name, m, err)
        out = np.empty(oshape, np.float32)
        for _ in range(args.runs):
            for m, f in methods.items():
                t = time.perf_counter()
                f()
                times[m].append(time.perf_counter() - t)
        med = {m: statistics.median(v) for m, v in times.items()}
        line = ", ".join(f"{m} {med[m] * 1e3:.2f} ms ({med[m] / med['im2col']:.2f}x)" for m in methods)
        print(f"{name:28s} {line}")


if __name__ == "__main__":
    main()
