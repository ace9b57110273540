"""A multi-layer perceptron: dense layers with fused ReLU, the last one without."""
from __future__ import annotations

from typing import Sequence

from numamem.planner.builder import GraphBuilder
from numamem.planner.graph import Graph


def mlp(batch: int = 1, features: Sequence[int] = (1024, 4096, 4096, 1000), dtype: str = "float32") -> Graph:
    """Dense ``features[0] -> features[1] -> ... -> features[-1]``, ReLU between layers.

    Parameters
    ----------
    batch : int
    features : sequence of int
        Input width, hidden widths, output width (at least two entries).
    dtype : str

    Examples
    --------
    >>> g = mlp(batch=8, features=(64, 128, 10))
    >>> [g.tensor(t).shape for t in g.outputs]
    [(8, 10)]
    """
    if len(features) < 2 or any(int(f) < 1 for f in features):
        raise ValueError(f"features must hold at least two positive widths, got {list(features)}")
    g = GraphBuilder("mlp", dtype=dtype)
    x = g.input("x", (batch, features[0]))
    n = len(features) - 1
    for i in range(n):
        w = g.weight(f"fc{i + 1}.w", (features[i], features[i + 1]))
        b = g.weight(f"fc{i + 1}.b", (features[i + 1],))
        x = g.dense(x, w, b, activation="relu" if i < n - 1 else None, name=f"fc{i + 1}")
    g.output(x)
    return g.build()
