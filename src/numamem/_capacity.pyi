import os

from numamem._place import PlaceOutcome

CAPACITY_CHECK: int
CGROUP_CHECK: int

def use_limits(sysfs: str | os.PathLike[str] | None = ..., proc_self_cgroup: str | os.PathLike[str] | None = ...,
               cgroup_fs: str | os.PathLike[str] | None = ...) -> tuple[str, str, str] | None: ...
def capacity(length: int, node: int = ...) -> PlaceOutcome | None: ...
