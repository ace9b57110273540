"""Type stubs of numamem.planner._overlap (the overlap sweep of packing.check)."""
import numpy as np
import numpy.typing as npt

def first_overlap(
    who: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int8],
    rank: npt.NDArray[np.int64],
    by_rank: npt.NDArray[np.int64],
    offset: npt.NDArray[np.int64],
    end: npt.NDArray[np.int64],
) -> tuple[int, int] | None: ...
