"""The ``numamem-plan/1`` file format: a :class:`~numamem.planner.plan.Plan` to JSON and back.

The sibling of :mod:`numamem.planner.graph`'s ``numamem-graph/1`` code. ARCHITECTURE.md lists
the required fields; :func:`to_dict` writes them plus the extras the planner knows (reserved
sizes, padding, per-layer flops and cost, tensor table, planner settings). :func:`from_dict`
accepts plans written by other tools with the required fields only and infers the rest from the
rules the planner follows (module doc of :mod:`numamem.planner.planner`): blocks of a tensor on
several nodes reserve whole pages, other blocks round up to the alignment, arenas lie back to
back.

This module sits below the plan model: it reads a plan by attribute, and it builds one from the
classes it is given (:class:`PlanTypes`), which :mod:`numamem.planner.plan` passes in from its
thin delegates (:meth:`~numamem.planner.plan.Plan.to_json`,
:meth:`~numamem.planner.plan.Plan.from_json`). So the model can offer its file form without an
import cycle.

Examples
--------
>>> import numamem.models, numamem.planner
>>> from numamem.planner.plan import PLAN_TYPES
>>> p = numamem.planner.plan(numamem.models.get("mlp", batch=8), nodes=[0, 1])
>>> text = to_json(p)
>>> json.loads(text)["format"]
'numamem-plan/1'
>>> from_json(text, PLAN_TYPES).to_dict() == p.to_dict()
True
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping

from numamem._jsonfile import dump_json
from numamem.planner.boxes import Slice, round_up

FORMAT = "numamem-plan/1"

__all__ = ["FORMAT", "PlanTypes", "from_dict", "from_json", "to_dict", "to_json"]


@dataclass(frozen=True)
class PlanTypes:
    """The classes :func:`from_dict` builds a plan from (those of :mod:`numamem.planner.plan`)."""

    plan: Callable[..., Any]
    block: Callable[..., Any]
    arena: Callable[..., Any]
    layer: Callable[..., Any]
    tensor: Callable[..., Any]


def to_dict(plan: Any) -> dict[str, Any]:
    """``plan`` as a ``numamem-plan/1`` JSON object (required fields plus extras)."""
    return {
        "format": FORMAT,
        "graph": plan.graph,
        "nodes": list(plan.nodes),
        "page_size": plan.page_size,
        "alignment": plan.alignment,
        "steps": plan.steps,
        "arenas": [asdict(a) for a in plan.arenas],
        "blocks": [b.to_dict() for b in plan.blocks],
        "layers": [_layer_dict(l) for l in plan.layers],
        "tensors": {
            n: {"shape": list(t.shape), "itemsize": t.itemsize, "role": t.role, "live": list(t.live)}
            for n, t in plan.tensors.items()
        },
        "info": plan.info,
    }


def _layer_dict(layer: Any) -> dict[str, Any]:
    """A layer as ``asdict`` gives it, copied without ``asdict``'s generic deep copy.

    That copy took 14 s for the two million ``remote_pairs`` of an MLP planned over 1024 nodes
    (each node reading from every other); the same lists copied directly take a fraction of it.
    """
    d = {f.name: getattr(layer, f.name) for f in fields(layer)}
    d["nodes"] = list(layer.nodes)
    d["remote_pairs"] = [list(pair) for pair in layer.remote_pairs]
    return d


def to_json(plan: Any, path: str | os.PathLike | None = None, *, indent: int | None = 1) -> str:
    """Serialise ``plan`` to ``numamem-plan/1``; also write it to ``path`` when given."""
    return dump_json(to_dict(plan), path, indent=indent)


def from_dict(d: Any, types: PlanTypes) -> Any:
    """Read a parsed ``numamem-plan/1`` object (fields beyond the required ones are optional).

    Parameters
    ----------
    d : mapping
        The parsed JSON object.
    types : PlanTypes
        The classes to build (:data:`numamem.planner.plan.PLAN_TYPES`).

    Returns
    -------
    Plan

    Raises
    ------
    ValueError
        When the format is not ``numamem-plan/1`` or a required field is missing or malformed.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"plan: not a {FORMAT} document: the JSON is {_json_kind(d)}, not an object")
    try:
        return _from_dict(d, types)
    except RecursionError:
        # A hostile document nested past Python's recursion limit (in a message's repr, or a
        # comparison): no walk over it first, which would cost seconds on a plan of 1024 nodes.
        raise ValueError("plan: nested too deeply to be a plan") from None


def _from_dict(d: Mapping, types: PlanTypes) -> Any:
    Block, Arena, LayerPlan, TensorInfo = types.block, types.arena, types.layer, types.tensor
    if d.get("format") != FORMAT:
        raise ValueError(f"plan: format must be {FORMAT!r}, got {d.get('format')!r}")
    if "graph" in d and not isinstance(d["graph"], str):
        raise ValueError(f"plan: malformed {FORMAT} document ('graph' must be the graph's name, a string, "
                         f"not {_json_kind(d['graph'])})")
    try:
        blocks = [
            Block(
                tensor=b["tensor"], index=int(b["index"]), node=int(b["node"]), offset=int(b["offset"]),
                size=int(b["size"]), reserved=int(b.get("reserved", b["size"])),
                slice=None if b.get("slice") is None else Slice(
                    int(b["slice"]["axis"]), int(b["slice"]["start"]), int(b["slice"]["stop"])),
                live=(int(b["live"][0]), int(b["live"][1])),
                replica=bool(b.get("replica", b.get("slice") is None)),
                page_aligned=bool(b.get("page_aligned", False)),
            )
            for b in d["blocks"]
        ]
        # Plans written by other tools may carry only the required fields: infer what the
        # page rule implies (blocks of a tensor on several nodes reserve whole pages) and lay
        # the arenas out back to back.
        page, align = int(d["page_size"]), int(d.get("alignment", 1))
        spread = {}
        for b in blocks:
            spread.setdefault(b.tensor, set()).add(b.node if b.slice is not None else -1)
        for b, raw in zip(blocks, d["blocks"]):
            if "reserved" not in raw:
                multi = len(spread[b.tensor] - {-1}) > 1
                b.reserved = round_up(max(b.size, 1), page if multi else align)
                b.page_aligned = multi
        arenas = [
            Arena(node=int(a["node"]), size=int(a["size"]), lower_bound=int(a["lower_bound"]),
                  **{k: int(a[k]) for k in ("peak", "base", "page_padding", "block_padding",
                                              "lower_bound_unpadded") if k in a})
            for a in d["arenas"]
        ]
        if not any("peak" in a for a in d["arenas"]):
            for a in arenas:
                a.peak = max((b.offset + b.reserved for b in blocks if b.node == a.node), default=0)
                a.page_padding = a.size - a.peak
        if not any("base" in a for a in d["arenas"]):
            base = 0
            for a in arenas:
                a.base, base = base, base + a.size
        layers = [
            LayerPlan(name=l["name"], step=int(l["step"]), axis=None if l.get("axis") is None else int(l["axis"]),
                      local_bytes=int(l["local_bytes"]), remote_bytes=int(l["remote_bytes"]),
                      op=l.get("op", ""), nodes=list(l.get("nodes", [])), flops=int(l.get("flops", 0)),
                      cost_s=float(l.get("cost_s", 0.0)), remote_pairs=[list(p) for p in l.get("remote_pairs", [])])
            for l in d["layers"]
        ]
        tensors = {
            n: TensorInfo(tuple(int(x) for x in t["shape"]), int(t["itemsize"]), t.get("role"),
                          (int(t["live"][0]), int(t["live"][1])))
            for n, t in d.get("tensors", {}).items()
        }
        return types.plan(graph=d["graph"], nodes=[int(n) for n in d["nodes"]], page_size=int(d["page_size"]),
                          arenas=arenas, blocks=blocks, layers=layers, alignment=align,
                          steps=int(d.get("steps", len(layers))), tensors=tensors, info=dict(d.get("info", {})))
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as exc:
        raise ValueError(f"plan: malformed numamem-plan/1 document ({type(exc).__name__}: {exc})") from None


def from_json(source: str | os.PathLike, types: PlanTypes) -> Any:
    """Read ``numamem-plan/1`` from JSON text or from a file path (``types`` as in :func:`from_dict`).

    A string is JSON text when it starts with ``{`` or ``[``, or names no file but parses as JSON
    (then it is refused as not a plan, not looked up as a file); anything else is a path.

    Raises
    ------
    ValueError
        When the text is not JSON, not a plan, or nested too deeply.
    OSError
        When a path cannot be read.
    """
    text = os.fspath(source)
    if isinstance(source, os.PathLike) or not _looks_like_json(text):
        with open(text, encoding="utf-8") as f:
            text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"plan: bad JSON: {exc}") from None
    except RecursionError:
        # json.loads recurses once per nesting level: a hostile document must not be a traceback
        raise ValueError("plan: JSON nested too deeply to be a plan") from None
    return from_dict(data, types)


def _looks_like_json(text: str) -> bool:
    if text.lstrip().startswith(("{", "[")):
        return True
    if os.path.exists(text):
        return False
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False  # neither a file nor JSON: open() names the missing file
    return True


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"
