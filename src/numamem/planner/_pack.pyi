"""Type stubs of numamem.planner._pack (the packer's C loops)."""
from typing import Literal

import numpy as np
import numpy.typing as npt

HEURISTICS: tuple[str, ...]

def dense_ranks(values: npt.ArrayLike) -> np.ndarray: ...

def greedy(
    lower: npt.NDArray[np.int64],
    upper: npt.NDArray[np.int64],
    size: npt.NDArray[np.int64],
    order: npt.NDArray[np.int64],
    best_fit: bool,
) -> npt.NDArray[np.int64]: ...

def greedy_until(
    lower: npt.NDArray[np.int64],
    upper: npt.NDArray[np.int64],
    size: npt.NDArray[np.int64],
    order: npt.NDArray[np.int64],
    best_fit: bool,
    deadline: float,
) -> tuple[npt.NDArray[np.int64], int]: ...

class SkylineSearch:
    def __init__(
        self,
        size: npt.ArrayLike,
        width: npt.ArrayLike,
        sec_lo: npt.ArrayLike,
        sec_hi: npt.ArrayLike,
        nbr_start: npt.ArrayLike,
        nbr: npt.ArrayLike,
        sec_start: npt.ArrayLike,
        sec_mem: npt.ArrayLike,
    ) -> None: ...
    def solve(
        self, capacity: int, node_limit: int, deadline: float, heuristic: int
    ) -> tuple[
        Literal["ok", "infeasible", "budget", "deadline"], npt.NDArray[np.int64] | None, int
    ]: ...
