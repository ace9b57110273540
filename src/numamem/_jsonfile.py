"""Writing numamem's JSON documents (graphs, plans, run reports, bench results) one way."""
from __future__ import annotations

import json
import os
from typing import Any


def dump_json(data: Any, path: str | os.PathLike | None = None, *, indent: int | None = 1, **options) -> str:
    """Serialise ``data`` as JSON with a final newline; also write it to ``path`` when given.

    ``options`` go to :func:`json.dumps` (e.g. ``allow_nan=False``). Returns the text.
    """
    text = json.dumps(data, indent=indent, **options) + "\n"
    if path is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return text
