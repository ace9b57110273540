"""Benchmark script (not a test): conv2d strategies of :mod:`numamem.runtime.kernels.conv`.

Compares, on SqueezeNet, ResNet-50 and MobileNetV2 layer shapes at batch 1, in the same run:

* ``im2col``  - the kernel's default for kernels larger than 1x1: column buffer filled with one
  strided copy per kernel tap (zeroing only the padded border), then one GEMM per sample and group;
* ``swv``     - im2col built with ``numpy.lib.stride_tricks.sliding_window_view`` over a padded
  copy of the sample (one 6-D strided copy), then the same GEMM;
* ``offsets`` - per-kernel-tap accumulation: one GEMM per tap into a temporary, added to ``out``;
* ``depthwise`` (depthwise layers only) - per-tap vectorised multiply-add over all channels,
  against ``im2col`` which then runs one tiny GEMM per group;
* ``gemm`` (1x1 stride-1 unpadded layers only; the whole image or a block of its rows) - the
  input read in place as the GEMM's matrix, against ``im2col`` which copies it first.

The kernel's methods are forced with its private ``_method`` attribute. With ``--against SRC``
(another checkout's ``src`` directory, such as main's) it also times that tree's kernel and this
tree's on every layer with their default methods, interleaved: the before/after of a kernel
change, in one process. The figures and how they were taken: "conv2d methods" and "conv2d
kernel speed" in ``docs/performance.md``.

Run: ``OPENBLAS_NUM_THREADS=1 python asv_bench/scripts/bench_conv2d.py [--runs N] [--clock cpu]
[--against /path/to/other/src]``. Prints the median of N timed calls per method (after one
warm-up call) and the ratio to the first; methods are interleaved run by run so machine noise hits
them alike. ``--clock cpu`` times with the calling thread's CPU time (less sensitive to other
processes on a shared machine than the default wall clock).
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import re
import statistics
import sys
import tempfile
import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from numamem import threads
from numamem.planner.boxes import Slice
from numamem.runtime import kernels as K

LAYERS = [
    # name, x shape, w shape, stride, padding, groups, block (None: the whole output)
    ("resnet50 conv1 7x7/2", (1, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1, None),
    ("resnet50 layer1 3x3", (1, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, None),
    ("resnet50 layer3 3x3", (1, 256, 14, 14), (256, 256, 3, 3), 1, 1, 1, None),
    ("resnet50 layer4 3x3", (1, 512, 7, 7), (512, 512, 3, 3), 1, 1, 1, None),
    ("resnet50 layer1 1x1 256>64", (1, 256, 56, 56), (64, 256, 1, 1), 1, 0, 1, None),
    ("resnet50 layer2 1x1/2", (1, 256, 56, 56), (512, 256, 1, 1), 2, 0, 1, None),
    ("squeezenet squeeze 1x1 rows", (1, 128, 55, 55), (16, 128, 1, 1), 1, 0, 1, Slice(2, 0, 28)),
    ("squeezenet expand 3x3", (1, 16, 55, 55), (64, 16, 3, 3), 1, 1, 1, None),
    ("squeezenet conv10 1x1", (1, 512, 13, 13), (1000, 512, 1, 1), 1, 0, 1, None),
    ("mobilenetv2 dw 3x3 144", (1, 144, 56, 56), (144, 1, 3, 3), 1, 1, 144, None),
    ("mobilenetv2 dw 3x3/2 960", (1, 960, 14, 14), (960, 1, 3, 3), 2, 1, 960, None),
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


def other_kernels(src: str):
    """The ``numamem.runtime.kernels`` package of another checkout, loaded under another name.

    Its files are copied to a temporary package whose absolute imports of itself are renamed, so
    both trees' kernels run in this process (the rest of numamem is this tree's).
    """
    pkg = pathlib.Path(src) / "numamem" / "runtime" / "kernels"
    if not pkg.is_dir():
        raise SystemExit(f"--against: {pkg} is not a directory")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_conv2d_"))
    (tmp / "other_kernels").mkdir()
    for f in pkg.glob("*.py"):
        text = re.sub(r"numamem\.runtime\.kernels\b", "other_kernels", f.read_text())
        (tmp / "other_kernels" / f.name).write_text(text)
    sys.path.insert(0, str(tmp))
    return importlib.import_module("other_kernels")


def bound_call(kmod, xs, ws, attrs, block, x, w, out):
    """A call of ``kmod``'s kernel on ``block`` with its own scratch (inputs given whole)."""
    k = kmod.bind("conv2d", [xs, ws], attrs, block)
    scr = np.empty(k.scratch_bytes, np.uint8)
    return lambda: k([x, w], out[0], scr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--against", metavar="SRC", help="another checkout's src directory: time its kernel too")
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    other = other_kernels(args.against) if args.against else None
    rng = np.random.default_rng(0)
    print(f"median of {args.runs} runs per method (after a warm-up, {args.clock} clock); ratio = method / the first")
    for name, xs, ws, stride, pad, groups, block in LAYERS:
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        attrs = {"stride": stride, "padding": pad, "groups": groups}
        oshape = K.bind("conv2d", [xs, ws], attrs, block).out_shape
        out = [np.empty(oshape, np.float32)]  # a cell: each method writes the array in it
        methods = {}
        if other is not None:
            methods["before"] = bound_call(other, xs, ws, attrs, block, x, w, out)
            methods["after"] = bound_call(K, xs, ws, attrs, block, x, w, out)
        pointwise = ws[2:] == (1, 1) and stride == 1 and pad == 0
        if groups == 1:
            if pointwise:
                methods["gemm"] = bound_call(K, xs, ws, attrs, block, x, w, out)
            for m in ("im2col", "offsets"):
                methods[m] = bound_call(K, xs, ws, dict(attrs, _method=m), block, x, w, out)
            if block is None:
                xpad = np.empty((xs[1], xs[2] + 2 * pad, xs[3] + 2 * pad), np.float32)
                col = np.empty((xs[1] * ws[2] * ws[3], oshape[2] * oshape[3]), np.float32)
                methods["swv"] = lambda: swv_conv(x, w, out[0], stride, pad, xpad, col)
        else:
            methods["depthwise"] = bound_call(K, xs, ws, attrs, block, x, w, out)
            methods["im2col"] = bound_call(K, xs, ws, dict(attrs, _method="im2col"), block, x, w, out)
        times = {m: [] for m in methods}
        results = {}
        with threads.blas_single_thread():
            for m, f in methods.items():  # warm-up, and keep each result to check they agree
                out[0] = np.empty(oshape, np.float32)
                f_out = out[0]
                f()
                results[m] = f_out.copy()
            base = next(iter(results.values()))
            for m, r in results.items():
                err = np.linalg.norm(r - base) / np.linalg.norm(base)
                assert err < 1e-4, (name, m, err)
            for _ in range(args.runs):
                for m, f in methods.items():
                    t = clock()
                    f()
                    times[m].append(clock() - t)
        med = {m: statistics.median(v) for m, v in times.items()}
        first = next(iter(med.values()))
        line = ", ".join(f"{m} {med[m] * 1e3:.3f} ms ({med[m] / first:.2f}x)" for m in methods)
        print(f"{name:28s} {line}")


if __name__ == "__main__":
    main()
