"""Built-in layer graphs, written from shape arithmetic in inference form.

Batch normalisation is folded into the preceding convolution's bias and activations are fused
into the layer that feeds them, as an inference engine would run the network; no weights are
stored, only shapes. Each builder takes the batch size (and BERT the sequence length) and the
element type.

Examples
--------
>>> import numamem.models
>>> numamem.models.names()
['bert_base', 'mlp', 'mobilenet_v2', 'resnet50', 'vgg16']
>>> g = numamem.models.get("resnet50", batch=1)
>>> g.activation_peak() / 2**20
9.1875
"""
from __future__ import annotations

from typing import Any, Callable

from numamem.planner.graph import Graph
from numamem.models.bert import bert_base
from numamem.models.cnn import mobilenet_v2, resnet50, vgg16
from numamem.models.mlp import mlp

_REGISTRY: dict[str, Callable[..., Graph]] = {
    "bert_base": bert_base,
    "mlp": mlp,
    "mobilenet_v2": mobilenet_v2,
    "resnet50": resnet50,
    "vgg16": vgg16,
}


def names() -> list[str]:
    """Names of the built-in models, sorted."""
    return sorted(_REGISTRY)


def get(name: str, batch: int = 1, **kwargs: Any) -> Graph:
    """Build the built-in model ``name``.

    Parameters
    ----------
    name : str
        One of :func:`names` (``-`` and ``_`` are interchangeable, case is ignored).
    batch : int, default 1
        Batch size.
    **kwargs
        Passed to the model's builder: ``dtype`` for every model, ``seq_len`` (and ``layers``,
        ``hidden``, ...) for ``bert_base``, ``features`` for ``mlp``.

    Returns
    -------
    Graph

    Raises
    ------
    KeyError
        If there is no such model (the message lists the known ones).
    ValueError
        If a parameter is out of range.
    """
    key = name.strip().lower().replace("-", "_")
    builder = _REGISTRY.get(key)
    if builder is None:
        raise KeyError(f"no built-in model {name!r} (known: {', '.join(names())})")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    return builder(batch=batch, **kwargs)


__all__ = ["get", "names", "bert_base", "mlp", "mobilenet_v2", "resnet50", "vgg16"]
