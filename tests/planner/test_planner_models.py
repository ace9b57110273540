"""Built-in models: the figures of ARCHITECTURE.md and the issue, registry, parameters."""

import pytest

import numamem.models as models
from numamem.planner import Graph

MiB = 1 << 20


def test_names():
    assert models.names() == ["bert_base", "mlp", "mobilenet_v2", "resnet50", "vgg16"]


def test_resnet50_peak_batch1():
    g = models.get("resnet50", batch=1)
    assert g.activation_peak() == 9.1875 * MiB
    assert g.tensor("x").shape == (1, 3, 224, 224)
    assert [g.tensor(t).shape for t in g.outputs] == [(1, 1000)]
    # torchvision ResNet-50 has 25,557,032 parameters; folding batch norm leaves conv biases and
    # drops the per-channel scales, so count what the inference form keeps:
    conv_w = sum(g.nbytes(w) for w in g.weights if w.endswith(".w")) // 4
    assert conv_w == 25_502_912  # every conv and fc weight of torchvision's ResNet-50
    # 4.1 GMACs at 224x224 (the usual "4.1 GFLOPs")
    assert 8.1e9 < g.flops() < 8.3e9


def test_vgg16_peak_batch1():
    g = models.get("vgg16", batch=1)
    assert g.activation_peak() == 24.5 * MiB
    assert sum(g.nbytes(w) for w in g.weights) // 4 == 138_357_544  # VGG-16's parameter count


def test_mobilenet_v2_counts():
    g = models.get("mobilenet_v2", batch=1)
    assert len(g.activations) == 65
    assert round(g.total_bytes() / MiB, 2) == 26.88
    # torchvision mobilenet_v2 has 3,504,872 parameters, 2 per batch-norm channel among them;
    # folding turns each channel's 2 into one conv bias. Batch-norm channels by hand:
    # stem 32, first block 32 + 16, then 6*in + 6*in + out per block, last conv 1280.
    blocks = [(16, 24), (24, 24), (24, 32), (32, 32), (32, 32), (32, 64), (64, 64), (64, 64), (64, 64),
              (64, 96), (96, 96), (96, 96), (96, 160), (160, 160), (160, 160), (160, 320)]
    bn = 32 + 48 + sum(12 * i + o for i, o in blocks) + 1280
    assert bn == 17_056
    params = sum(g.nbytes(w) for w in g.weights) // 4
    assert params == 3_504_872 - bn


@pytest.mark.parametrize("name", ["resnet50", "vgg16", "mobilenet_v2", "mlp"])
def test_batch_scales_activations(name):
    g1, g4 = models.get(name, batch=1), models.get(name, batch=4)
    assert g4.activation_peak() == 4 * g1.activation_peak()
    assert g4.total_bytes("weight") == g1.total_bytes("weight")
    assert all(g4.tensor(t).shape[0] == 4 for t in g4.activations)


def test_bert_base():
    g = models.get("bert_base", batch=2, seq_len=32)
    assert g.tensor("ids").shape == (2, 32) and g.tensor_dtype("ids") == "int64"
    assert [g.tensor(t).shape for t in g.outputs] == [(2, 32, 768)]
    # BERT-base encoder and embeddings: about 109M parameters (85M encoder + 23.8M word table
    # and the position table at this sequence length)
    params = sum(g.nbytes(w) for w in g.weights) // 4
    encoder = 12 * (4 * (768 * 768 + 768) + 768 * 3072 + 3072 + 3072 * 768 + 768 + 4 * 768)
    assert params == encoder + 30522 * 768 + 32 * 768 + 2 * 768
    assert sum(1 for l in g.layers if l.op == "matmul") == 24
    small = models.get("bert-base", batch=1, seq_len=8, layers=2)
    assert len([l for l in small.layers if l.op == "softmax"]) == 2


def test_dtype_parameter():
    g = models.get("mlp", batch=2, dtype="float64", features=(4, 8, 2))
    assert g.dtype == "float64" and g.nbytes("x") == 2 * 4 * 8


def test_models_round_trip_json():
    for name in models.names():
        g = models.get(name, batch=2) if name != "bert_base" else models.get(name, seq_len=16, layers=2)
        assert Graph.from_json(g.to_json()) == g


def test_registry_errors():
    with pytest.raises(KeyError, match="no built-in model 'alexnet'.*resnet50"):
        models.get("alexnet")
    with pytest.raises(ValueError, match="batch must be a positive int"):
        models.get("mlp", batch=0)
    with pytest.raises(ValueError):
        models.mlp(features=(3,))


def test_inference_form_has_no_batchnorm_and_fused_activations():
    for name in ("resnet50", "vgg16", "mobilenet_v2"):
        g = models.get(name)
        ops = {l.op for l in g.layers}
        assert "batchnorm" not in ops and "relu" not in ops and "relu6" not in ops
        assert all("activation" in l.attrs or l.op != "conv2d" or "project" in l.name or "downsample" in l.name
                   or "conv3" in l.name for l in g.layers)
