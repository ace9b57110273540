"""Models exported by PyTorch's ONNX exporter (TorchScript path), imported, planned and computed as
their plans split them, against ONNX Runtime: the Shape/Gather/Concat chains, Constants, Casts and
Identities a real export carries must all fold away."""
from __future__ import annotations

import io

import numpy as np
import pytest

# The test command installs these extras: a missing package fails here, never skips.
import onnx
import onnxruntime  # noqa: F401
import torch

import onnx_models as M  # noqa: E402
from numamem.planner import from_onnx, onnx_weights, plan  # noqa: E402


class _Encoder(torch.nn.Module):
    """Token embedding and one ``TransformerEncoderLayer`` (post-norm, GELU)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 32)
        self.layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, activation="gelu")

    def forward(self, ids):
        return self.layer(self.emb(ids))


class _InvertedResidual(torch.nn.Module):
    """MobileNetV2's block: 1x1 expand, depthwise 3x3, 1x1 project, each with batch norm; ReLU6."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(
            nn.Conv2d(16, 96, 1, bias=False), nn.BatchNorm2d(96), nn.ReLU6(),
            nn.Conv2d(96, 96, 3, padding=1, groups=96, bias=False), nn.BatchNorm2d(96), nn.ReLU6(),
            nn.Conv2d(96, 16, 1, bias=False), nn.BatchNorm2d(16))

    def forward(self, x):
        return x + self.body(x)


class _MaskedAttention(torch.nn.Module):
    """Embedding, then two-head attention with a BERT-style additive mask from an int64 input."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.emb = torch.nn.Embedding(30, d)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.heads = heads

    def forward(self, ids, mask):
        x = self.emb(ids)
        n, length, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (t.view(n, length, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        bias = (1.0 - mask[:, None, None, :].float()) * -10000.0
        scores = q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5 + bias
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, d)


def _export(module, example, opset, dynamic_batch):
    torch.manual_seed(0)
    module.eval()
    for p in module.parameters():  # batch-norm statistics away from the identity
        if p.dim() == 1:
            torch.nn.init.normal_(p, 0.0, 0.1)
    for b in module.buffers():
        if b.dtype.is_floating_point:
            b.copy_(torch.rand_like(b) + 0.5)
    f = io.BytesIO()
    example = example if isinstance(example, tuple) else (example,)
    names = ["inp", "mask"][: len(example)]
    torch.onnx.export(module, example, f, opset_version=opset, input_names=names, output_names=["out"],
                      dynamic_axes={**{n: {0: "batch"} for n in names}, "out": {0: "batch"}} if dynamic_batch
                      else None, dynamo=False)
    return onnx.load_from_string(f.getvalue())


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["encoder_opset17", "inverted_residual_opset13"])
def test_pytorch_export_matches_onnx_runtime(name):
    if name.startswith("encoder"):
        example = torch.randint(0, 50, (2, 8))
        m = _export(_Encoder(), example, 17, True)
    else:
        example = torch.randn(2, 16, 10, 10)
        m = _export(_InvertedResidual(), example, 13, False)
    g = from_onnx(m, batch=2)
    assert not {l.op for l in g.layers} & {"batchnorm"}  # folded into the convolutions
    ws = onnx_weights(m, batch=2)
    xs = {"inp": example.numpy()}
    ref = M.ort_outputs(m, xs)["out"]
    for n in (1, 2, 3):
        p = plan(g, nodes=list(range(n)))
        p.verify()
        assert M.rel_err(M.run_blocks(g, p, ws, xs)["out"], ref) < 1e-4
    assert np.isfinite(ref).all()


@pytest.mark.filterwarnings("ignore")
def test_pytorch_attention_mask_input_is_held_as_floats():
    ids = torch.randint(0, 30, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    m = _export(_MaskedAttention(), (ids, mask), 14, True)
    g = from_onnx(m, batch=2)
    assert g.tensor_dtype("inp") == "int64" and g.tensor_dtype("mask") == "float32"
    ws = onnx_weights(m, batch=2)
    ref = M.ort_outputs(m, {"inp": ids.numpy(), "mask": mask.numpy()})["out"]
    xs = {"inp": ids.numpy(), "mask": mask.numpy().astype(np.float32)}
    for n in (1, 2, 3):
        p = plan(g, nodes=list(range(n)))
        p.verify()
        assert M.rel_err(M.run_blocks(g, p, ws, xs)["out"], ref) < 1e-4
