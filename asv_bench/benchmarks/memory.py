"""First touch, pre-faulting, and memory bandwidth on numamem arrays against NumPy arrays.

* :class:`FirstTouch` -- writing every byte of freshly allocated, never-touched memory (the page
  faults are the cost): NumPy's ``np.empty`` against numamem's lazy (``populate=False``) arrays.
* :class:`Populate` -- what numamem's pre-faulting (``MADV_POPULATE_WRITE``) costs at allocation,
  against a lazy numamem allocation of the same kind; add :class:`FirstTouch` to compare the two
  ways of paying for the pages.
* :class:`Bandwidth` -- copy (``np.copyto``) and triad (``a = b + s * c``, two ufunc passes with
  ``out=``) between preallocated, pre-touched float64 arrays, so that only the memory bus is
  measured; both sides on transparent huge pages where the kernel gives them
  (``track_thp_fraction`` shows what it gave). The thread is bound to the first node. ``remote``
  and ``interleave`` layouts need a second node and are skipped on a one-node machine.

In smoke mode (``NUMAMEM_ASV_SMOKE=1``) the 256 MiB arrays become 8 MiB.
"""
import numpy as np

import numamem

from .common import MiB, node0, second_node, smoke_or, thp_fraction, usable_nodes

BIG = smoke_or(256 * MiB, 8 * MiB)


class FirstTouch:
    """Fill freshly allocated memory: the first-touch page faults are what is timed.

    numamem's lazy arrays are always new mappings. NumPy's are whatever malloc returns: at 256 MiB
    a new mapping too, at 1 MiB often memory that glibc kept after the previous call freed it
    (already faulted), which is what a NumPy program gets as well.
    """

    params = (["np.empty", "numamem-lazy", "numamem-lazy-4k"], smoke_or([1 * MiB, BIG], [1 * MiB, BIG]))
    param_names = ["creator", "nbytes"]
    number = 1  # setup (a fresh, untouched array) runs before every timed call
    repeat = (3, 20, 20.0)
    timeout = 300

    def setup(self, creator, nbytes):
        node = node0()
        if creator == "np.empty":
            self.array = np.empty(nbytes, np.uint8)
        else:
            pages = "4k" if creator.endswith("4k") else "auto"
            self.array = numamem.empty(nbytes, np.uint8, node=node, populate=False, pages=pages)

    def teardown(self, creator, nbytes):
        self.__dict__.pop("array", None)

    def time_first_touch(self, creator, nbytes):
        self.array.fill(1)


class Populate:
    """Allocation alone, pre-faulted (``populate=True``) against lazy (``populate=False``)."""

    params = (["populate", "lazy"], ["auto", "4k"], smoke_or([1 * MiB, BIG], [1 * MiB, BIG]))
    param_names = ["faulting", "pages", "nbytes"]
    repeat = (3, 20, 20.0)
    timeout = 300

    # No setup, so that asv may batch calls of the small size. A pre-faulted 1 MiB array with
    # pages="auto" comes from the node's pool (already populated): that is numamem's default path.
    def time_allocate(self, faulting, pages, nbytes):
        numamem.empty(nbytes, np.uint8, node=node0(), pages=pages, populate=faulting == "populate")


# asv re-runs setup before every timed sample; the arrays are made (and touched) once per process,
# under the thread binding, so that setup stays cheap and the timing never sees a page fault.
_ARRAYS = {}


def _bandwidth_arrays(layout, node):
    if layout not in _ARRAYS:
        n = BIG // 8
        if layout == "numpy":
            make = src_make = lambda: np.empty(n)  # noqa: E731  NumPy >= 1.22 madvises huge pages itself
        elif layout == "numamem-local":
            make = src_make = lambda: numamem.empty(n, node=node, pages="thp")  # noqa: E731
        elif layout == "numamem-local-staggered":
            # Diagnostic: the same arrays started 0, 4 and 8 KiB into slightly larger regions, so
            # that their addresses differ below 2 MiB (as malloc's headers make NumPy's differ).
            made = []

            def make():
                k = len(made)
                made.append(k)
                return numamem.empty(n + 1024, node=node, pages="thp")[512 * k:512 * k + n]

            src_make = make
        elif layout == "numamem-remote":
            other = second_node()
            make = lambda: numamem.empty(n, node=node, pages="thp")  # noqa: E731
            src_make = lambda: numamem.empty(n, node=other, pages="thp")  # noqa: E731
        else:
            nodes = usable_nodes()
            make = src_make = lambda: numamem.empty(  # noqa: E731
                n, nodes=nodes, policy="interleave", pages="thp")
        a, b, c = make(), src_make(), src_make()
        a.fill(0.0)
        b.fill(1.0)
        c.fill(2.0)
        _ARRAYS[layout] = (a, b, c)
    return _ARRAYS[layout]


class Bandwidth:
    """Copy and triad between preallocated, pre-touched float64 arrays of ``BIG`` bytes each.

    Layouts: ``numpy`` (NumPy's allocator, first-touched by the bound thread), ``numamem-local``
    (all three arrays bound to the thread's node, transparent huge pages asked explicitly),
    ``numamem-local-staggered`` (the same, each array started 4 KiB further into its mapping: a
    diagnostic for address aliasing, see docs/performance.md),
    ``numamem-remote`` (sources on a second node, destination local) and ``numamem-interleave``
    (all three interleaved over every usable node).
    """

    params = [["numpy", "numamem-local", "numamem-local-staggered", "numamem-remote", "numamem-interleave"]]
    param_names = ["layout"]
    repeat = (5, 30, 20.0)
    timeout = 300

    def setup(self, layout):
        node = node0()
        if layout in ("numamem-remote", "numamem-interleave"):
            second_node()  # NotImplementedError (skip) on a one-node machine
        self.binding = numamem.bind_thread(node)
        try:
            self.a, self.b, self.c = _bandwidth_arrays(layout, node)
        except BaseException:
            self.binding.restore()
            raise

    def teardown(self, layout):
        # asv calls teardown after a setup that skipped (raised NotImplementedError) too.
        binding = getattr(self, "binding", None)
        if binding is not None:
            binding.restore()

    def time_copy(self, layout):
        np.copyto(self.a, self.b)

    def time_triad(self, layout):
        np.multiply(self.c, 3.0, out=self.a)
        np.add(self.a, self.b, out=self.a)

    def track_thp_fraction(self, layout):
        """Smallest share of the three arrays on transparent huge pages."""
        return min(thp_fraction(x) for x in (self.a, self.b, self.c))

    track_thp_fraction.unit = "fraction"
