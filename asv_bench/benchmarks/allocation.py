"""Allocation costs: numamem creators against NumPy's, at sizes from 4 KiB to 1 GiB.

``time_allocate_fill`` is the figure that matters to a user: allocate and write every byte once,
so the first touch (page faults, zeroing by the kernel) is inside the timing for both sides, as a
program pays it. ``time_allocate`` alone shows where each side pays: numamem's strict (``bind``)
arrays are pre-faulted up front (``MADV_POPULATE_WRITE``) so that running out of node memory is an
exception, while NumPy pays the same page faults later, at first touch.

Every timed call allocates and frees, as a program's loop does: repeated calls may be served from
memory that the previous call freed (glibc's heap below its mmap threshold, numamem's pool for
small arrays), which is the steady state a program sees. Benchmarks that must start from
never-touched memory are in ``memory.py`` (:class:`~benchmarks.memory.FirstTouch`).

Views of one operation, each against NumPy in the same run:

* :class:`AllocateFill` -- the four creators (``np.empty``, ``np.zeros``, ``numamem.empty``,
  ``numamem.zeros``) with numamem's defaults (``policy="bind"``, ``pages="auto"``);
* :class:`PageKinds` -- numamem's page kinds (4 KiB, transparent huge pages, hugetlbfs 2 MiB and
  1 GiB; skipped when the node has no such pages free);
* :class:`Policies` -- numamem's placement policies (interleave spans every usable node);
* :class:`SecondNode` -- local against remote allocation (skipped on a one-node machine).

In smoke mode (``NUMAMEM_ASV_SMOKE=1``) the 256 MiB and 1 GiB sizes become 8 MiB.
"""
import numpy as np

import numamem

from .common import GiB, KiB, MiB, node0, require_pages, second_node, smoke_or, thp_fraction, usable_nodes

SIZES = smoke_or([4 * KiB, 1 * MiB, 256 * MiB, 1 * GiB], [4 * KiB, 1 * MiB, 8 * MiB])

CREATORS = {
    "np.empty": lambda n: np.empty(n, np.uint8),
    "np.zeros": lambda n: np.zeros(n, np.uint8),
    "numamem.empty": lambda n: numamem.empty(n, np.uint8, node=node0()),
    "numamem.zeros": lambda n: numamem.zeros(n, np.uint8, node=node0()),
}


class AllocateFill:
    """The four creators with their defaults, allocation alone and allocation plus a full write.

    No ``setup``: asv then batches several calls per sample for the small sizes (a setup would be
    re-run before every timed call, and one microsecond-scale call per sample is mostly noise).
    """

    params = (list(CREATORS), SIZES)
    param_names = ["creator", "nbytes"]
    repeat = (3, 20, 20.0)
    timeout = 300

    def time_allocate(self, creator, nbytes):
        CREATORS[creator](nbytes)

    def time_allocate_fill(self, creator, nbytes):
        CREATORS[creator](nbytes).fill(1)

    def peakmem_allocate_fill(self, creator, nbytes):
        CREATORS[creator](nbytes).fill(1)

    def track_thp_fraction(self, creator, nbytes):
        """Share of the filled array on transparent huge pages (both sides should be near 1)."""
        array = CREATORS[creator](nbytes)
        array.fill(1)
        return thp_fraction(array)

    track_thp_fraction.unit = "fraction"


class PageKinds:
    """``numamem.empty(node=k, pages=...)`` plus a full write, per page kind (NumPy: AllocateFill).

    The setup only checks (once per process) that the page kind is available, and is cheap
    because asv re-runs it before every timed call.
    """

    params = (["auto", "4k", "thp", "2M", "1G"], SIZES)
    param_names = ["pages", "nbytes"]
    repeat = (3, 20, 20.0)
    timeout = 300

    def setup(self, pages, nbytes):
        require_pages(pages, nbytes, node0())

    def time_allocate(self, pages, nbytes):
        numamem.empty(nbytes, np.uint8, node=node0(), pages=pages)

    def time_allocate_fill(self, pages, nbytes):
        numamem.empty(nbytes, np.uint8, node=node0(), pages=pages).fill(1)


def _policy_kw(policy):
    return {
        "bind": dict(node=node0()),
        "bind-lazy": dict(node=node0(), populate=False),
        "preferred": dict(node=node0(), policy="preferred"),
        "interleave": dict(nodes=usable_nodes(), policy="interleave"),
        "local": dict(policy="local"),
    }[policy]


class Policies:
    """numamem's placement policies, allocation plus a full write (NumPy: AllocateFill).

    ``bind`` pre-faults by default; ``bind-lazy``, ``preferred``, ``interleave`` and ``local``
    fault at first touch, like NumPy. ``interleave`` spans every usable node (on a one-node
    machine it measures the policy's overhead only).
    """

    params = (["bind", "bind-lazy", "preferred", "interleave", "local"], SIZES)
    param_names = ["policy", "nbytes"]
    repeat = (3, 20, 20.0)
    timeout = 300
    _kw = {}

    def time_allocate_fill(self, policy, nbytes):
        kw = self._kw.get(policy)
        if kw is None:
            kw = self._kw[policy] = _policy_kw(policy)
        numamem.empty(nbytes, np.uint8, **kw).fill(1)


class SecondNode:
    """Allocation plus a full write on another node than the thread's (multi-node machines only).

    The thread is bound to the first node; ``local`` binds the array there, ``remote`` to the
    second node, so the pre-faulting and the writes cross the interconnect. Skipped on a machine
    with one usable node.
    """

    params = (["local", "remote"], smoke_or([1 * MiB, 256 * MiB], [1 * MiB]))
    param_names = ["array_node", "nbytes"]
    repeat = (3, 20, 20.0)
    timeout = 300

    def setup(self, array_node, nbytes):
        self.node = second_node() if array_node == "remote" else node0()
        if array_node == "local":
            second_node()  # the pair is only meaningful where a remote node exists
        self.binding = numamem.bind_thread(node0())

    def teardown(self, array_node, nbytes):
        # asv calls teardown after a setup that skipped (raised NotImplementedError) too.
        binding = self.__dict__.pop("binding", None)
        if binding is not None:
            binding.restore()

    def time_allocate_fill(self, array_node, nbytes):
        numamem.empty(nbytes, np.uint8, node=self.node).fill(1)


class Zeros:
    """``zeros`` then a full read: the kernel's zero pages against numamem's pre-faulted ones."""

    params = (["np.zeros", "numamem.zeros"], smoke_or([4 * KiB, 1 * MiB, 64 * MiB], [4 * KiB, 1 * MiB]))
    param_names = ["creator", "nbytes"]
    repeat = (3, 20, 20.0)

    def time_zeros_sum(self, creator, nbytes):
        CREATORS[creator](nbytes).sum()


class Inspect:
    """What it costs to ask the kernel where an array is."""

    params = [smoke_or([1 * MiB, 256 * MiB], [1 * MiB])]
    param_names = ["nbytes"]
    _arrays = {}

    def setup(self, nbytes):
        # Made once per process: asv re-runs setup before every timed call.
        if nbytes not in self._arrays:
            self._arrays[nbytes] = numamem.zeros(nbytes, np.uint8, node=node0())
        self.array = self._arrays[nbytes]

    def time_page_nodes(self, nbytes):
        numamem.page_nodes(self.array)

    def time_placement(self, nbytes):
        numamem.placement(self.array)
