"""Type stubs of numamem.planner._greedy (the packer's greedy pass)."""
import numpy as np
import numpy.typing as npt

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
