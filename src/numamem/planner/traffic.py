"""Who reads what from where: the placement rules the partitioner, the runner and the executor share.

The plan checker (:mod:`numamem.planner.check`) recomputes traffic with its own code on purpose
and does not import this module.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T")


def replica_source(holders: Sequence[T], reader: T) -> T:
    """The replica a reader on ``reader`` reads: the one on its own node, else the first.

    ``holders`` lists the nodes (or groups) holding a full replica, in plan order.

    >>> replica_source([0, 1], 1)
    1
    >>> replica_source([0, 1], 2)
    0
    """
    return reader if reader in holders else holders[0]
