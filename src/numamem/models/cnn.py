"""VGG-16, ResNet-50 (v1.5) and MobileNetV2 in inference form (NCHW, 224x224 RGB input).

Each convolution carries the bias that batch normalisation folds into, and the activation that
follows it; residual additions carry the ReLU that follows them (ResNet) or none (MobileNetV2).
"""
from __future__ import annotations

from numamem.planner.builder import GraphBuilder
from numamem.planner.graph import Graph, Tensor


def _conv(g: GraphBuilder, x: Tensor, name: str, out_ch: int, k: int, stride: int = 1,
          padding: int = 0, groups: int = 1, activation: str | None = "relu") -> Tensor:
    w = g.weight(f"{name}.w", (out_ch, x.shape[1] // groups, k, k))
    b = g.weight(f"{name}.b", (out_ch,))
    return g.conv2d(x, w, b, stride=stride, padding=padding, groups=groups, activation=activation, name=name)


def _classifier(g: GraphBuilder, x: Tensor, name: str, classes: int) -> Tensor:
    w = g.weight(f"{name}.w", (x.shape[1], classes))
    b = g.weight(f"{name}.b", (classes,))
    return g.output(g.dense(x, w, b, name=name))


def vgg16(batch: int = 1, dtype: str = "float32", classes: int = 1000) -> Graph:
    """VGG-16 (configuration D): 13 3x3 convolutions with ReLU, 5 max pools, 3 dense layers.

    Examples
    --------
    >>> vgg16().activation_peak() / 2**20
    24.5
    """
    g = GraphBuilder("vgg16", dtype=dtype)
    x = g.input("x", (batch, 3, 224, 224))
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    stage, conv, pool = 1, 1, 1
    for c in cfg:
        if c == "M":
            x = g.maxpool2d(x, 2, 2, name=f"pool{pool}")
            pool, stage, conv = pool + 1, stage + 1, 1
        else:
            x = _conv(g, x, f"conv{stage}_{conv}", int(c), 3, padding=1)
            conv += 1
    x = g.flatten(x, name="flatten")
    for i, width in ((6, 4096), (7, 4096)):
        w = g.weight(f"fc{i}.w", (x.shape[1], width))
        b = g.weight(f"fc{i}.b", (width,))
        x = g.dense(x, w, b, activation="relu", name=f"fc{i}")
    _classifier(g, x, "fc8", classes)
    return g.build()


def resnet50(batch: int = 1, dtype: str = "float32", classes: int = 1000) -> Graph:
    """ResNet-50 v1.5 (stride in the 3x3 convolution of each bottleneck).

    The shortcut projection of a stage's first block runs before the block's main path; the
    residual ``add`` carries the ReLU. Float32 at batch 1 peaks at 9.1875 MiB of live activations.

    Examples
    --------
    >>> g = resnet50()
    >>> len(g.layers), g.activation_peak() / 2**20
    (72, 9.1875)
    """
    g = GraphBuilder("resnet50", dtype=dtype)
    x = g.input("x", (batch, 3, 224, 224))
    x = _conv(g, x, "conv1", 64, 7, stride=2, padding=3)
    x = g.maxpool2d(x, 3, 2, 1, name="maxpool")
    for stage, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
        for i in range(blocks):
            s = stride if i == 0 else 1
            p = f"layer{stage}.{i}"
            if i == 0:
                shortcut = _conv(g, x, f"{p}.downsample", width * 4, 1, stride=s, activation=None)
            else:
                shortcut = x
            h = _conv(g, x, f"{p}.conv1", width, 1)
            h = _conv(g, h, f"{p}.conv2", width, 3, stride=s, padding=1)
            h = _conv(g, h, f"{p}.conv3", width * 4, 1, activation=None)
            x = g.add(h, shortcut, activation="relu", name=f"{p}.add")
    x = g.global_avgpool(x, name="avgpool")
    _classifier(g, x, "fc", classes)
    return g.build()


def mobilenet_v2(batch: int = 1, dtype: str = "float32", classes: int = 1000, width: float = 1.0) -> Graph:
    """MobileNetV2 (width multiplier 1.0 by default): inverted residual blocks with ReLU6.

    Float32 at batch 1 has 65 activation tensors (input included) totalling 26.88 MiB.

    Examples
    --------
    >>> g = mobilenet_v2()
    >>> len(g.activations), round(g.total_bytes() / 2**20, 2)
    (65, 26.88)
    """

    def ch(c: int) -> int:
        # torchvision's _make_divisible(c * width, 8)
        v = max(8, int(c * width + 4) // 8 * 8)
        return v + 8 if v < 0.9 * c * width else v

    g = GraphBuilder("mobilenet_v2", dtype=dtype)
    x = g.input("x", (batch, 3, 224, 224))
    x = _conv(g, x, "features.0", ch(32), 3, stride=2, padding=1, activation="relu6")
    settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
    idx = 1
    for t, c, n, s in settings:
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features.{idx}"
            inp = x
            hidden = inp.shape[1] * t
            h = inp
            if t != 1:
                h = _conv(g, h, f"{p}.expand", hidden, 1, activation="relu6")
            h = _conv(g, h, f"{p}.dw", hidden, 3, stride=stride, padding=1, groups=hidden, activation="relu6")
            h = _conv(g, h, f"{p}.project", ch(c), 1, activation=None)
            x = g.add(h, inp, name=f"{p}.add") if stride == 1 and inp.shape[1] == ch(c) else h
            idx += 1
    x = _conv(g, x, f"features.{idx}", ch(1280) if width > 1.0 else 1280, 1, activation="relu6")
    x = g.global_avgpool(x, name="avgpool")
    _classifier(g, x, "classifier", classes)
    return g.build()
