from typing import Any

STEP_NAMES: dict[int, str]
STEPS: dict[str, int]
MODES: dict[str, int]
POPULATED: dict[int, str | None]

class PlaceOutcome:
    step: str
    node: int
    populated_by: str | None
    checked: int
    misplaced: int
    histogram: dict[int | str, int]
    limit: str | None
    available: int | None
    capacity_detail: str
    @property
    def errno(self) -> int: ...
    @property
    def ok(self) -> bool: ...

class injected:
    def __init__(self, step: str | None = ..., errno: int = ..., misplace_every: int = ...,
                 misplace_last: bool = ..., node: int = ...) -> None: ...
    def __enter__(self) -> injected: ...
    def __exit__(self, *exc: Any) -> bool: ...

def place_fake(length: int, node: int = ..., mode: str = ..., step: str | None = ..., errno: int = ...,
               misplace_every: int = ..., misplace_last: bool = ..., page_size: int = ...) -> PlaceOutcome: ...
