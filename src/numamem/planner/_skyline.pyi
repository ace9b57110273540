"""Type stubs of numamem.planner._skyline (the packer's exact search)."""
from typing import Literal

import numpy as np
import numpy.typing as npt

HEURISTICS: tuple[str, ...]

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
