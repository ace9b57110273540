from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

_F = TypeVar("_F", bound=Callable[..., np.ndarray])

def pooled_array(shape: Any, dtype: Any, order: Any, node: Any, nodes: Any, axis: Any, policy: Any,
                 align: Any, pages: Any, populate: Any, zero: bool) -> np.ndarray | None: ...
def fast_path(zero: bool) -> Callable[[_F], _F]: ...
