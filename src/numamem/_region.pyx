# cython: boundscheck=False, wraparound=False
"""The owner of numamem memory: one ``mmap``'d, aligned range.

A :class:`Region` maps anonymous memory, lets the layer above apply policies and advice to it,
and exports it through the buffer protocol. Every array numamem returns is built on an export of its
region, so the array's ``.base`` is an ``Export`` (numamem._ndarray) whose ``.obj`` is the region: the export
keeps the mapping alive for as long as any view exists, ``close()`` refuses (``BufferError``) while
one does, and the mapping is unmapped exactly once — by ``close()`` or by the last reference going.
"""
from libc.stdint cimport uintptr_t
from libc.string cimport memset

from numamem._ndarray cimport BufferOwner

from numamem._libnuma cimport (
    MADV_HUGEPAGE, MADV_NOHUGEPAGE, MAP_ANONYMOUS, MAP_HUGE_1GB, MAP_HUGE_2MB, MAP_HUGETLB,
    MAP_PRIVATE, errno, madvise, munmap, nm_add, nm_align_up,
)
from numamem._place cimport (
    PLACE_BIND_LAZY, PLACE_PREFERRED, PLACE_PREFERRED_LAZY, PLACE_STRICT, POPULATED_TOUCH,
    PlaceOps, PlaceResult, injected_ops, kernel_ops, map_aligned, place_on_node, populate_range,
    result_object,
)
from numamem.errors import from_place_result, oserror

import os

cdef size_t BASE_PAGE = os.sysconf("SC_PAGE_SIZE")
# Counts unmaps, so tests can prove that each mapping is released exactly once.
cdef Py_ssize_t _unmapped = 0
cdef Py_ssize_t _mapped = 0

ADVICE = {"hugepage": MADV_HUGEPAGE, "nohugepage": MADV_NOHUGEPAGE}


def _free_bytes(int node, size_t hugetlb):
    """Free bytes on ``node`` (of ``hugetlb`` pages if nonzero), for a shortage's message; None if unknown."""
    from numamem import _topology

    try:
        if hugetlb:
            return _topology.node_hugepages(node, hugetlb).free_bytes
        return _topology.node_free_memory(node)
    except (OSError, ValueError, KeyError):
        return None


def mapping_counts():
    """Return ``(mapped, unmapped)``: how many regions this process has mapped and unmapped."""
    return _mapped, _unmapped


cdef class Region(BufferOwner):
    """One anonymous, aligned memory mapping (the owner at the root of an array's ``.base`` chain).

    Parameters
    ----------
    size : int
        Bytes the caller needs (may be 0; a zero-size region still maps one page so that its
        address is valid and placeable).
    align : int
        Alignment of the first byte, a power of two. Alignments above the page size are obtained
        by over-mapping and trimming, so the region holds no pages outside the aligned range.
    hugetlb : int
        0 for ordinary pages, or 2 MiB / 1 GiB for hugetlbfs pages of that size.

    Notes
    -----
    The mapping is private and anonymous; it is not touched here, so no page exists until the
    layer above has applied its policy and populated it.
    """
    cdef size_t _length
    cdef size_t _page_size

    def __cinit__(self, size_t size, size_t align=0, size_t hugetlb=0):
        global _mapped
        cdef size_t page = BASE_PAGE
        cdef int flags = MAP_PRIVATE | MAP_ANONYMOUS
        cdef size_t length, mapped_length
        cdef char *start
        cdef int err = 0
        if hugetlb:
            if hugetlb == 2 * 1024 * 1024:
                flags |= MAP_HUGETLB | MAP_HUGE_2MB
            elif hugetlb == 1024 * 1024 * 1024:
                flags |= MAP_HUGETLB | MAP_HUGE_1GB
            else:
                raise ValueError(f"hugetlb page size must be 2 MiB or 1 GiB, not {hugetlb}")
            page = hugetlb
        if align == 0:
            align = page
        if align & (align - 1):
            raise ValueError(f"align must be a power of two, not {align}")
        if nm_align_up(size if size else 1, page, &length) != 0:
            raise OverflowError(f"size {size} overflows when rounded to {page}-byte pages")
        # mmap returns page-aligned addresses; a larger alignment needs slack to trim. Huge-page
        # mappings are naturally aligned to their page size by the kernel.
        mapped_length = length
        if align > page:
            if nm_add(length, align - page, &mapped_length) != 0:
                raise OverflowError(f"size {size} with alignment {align} overflows")
        with nogil:
            start = map_aligned(length, align, flags, page, &err)
        if start == NULL:
            raise oserror(err, f"mmap({mapped_length} bytes{', hugetlb ' + str(hugetlb) if hugetlb else ''})")
        self._set_memory(start, size)
        self._length = length
        self._page_size = page
        _mapped += 1

    def __dealloc__(self):
        # Never raises: a failed munmap here could only mean a corrupted address, and there is no
        # caller to tell; the address is dropped so it cannot be unmapped twice.
        global _unmapped
        if not self._closed and self._address != NULL:
            munmap(self._address, self._length)
            _unmapped += 1
        self._address = NULL
        self._closed = True

    # -- operations the layer above composes --------------------------------------------------
    def advise(self, str advice, size_t offset=0, length=None):
        """Apply ``madvise`` advice (``"hugepage"`` or ``"nohugepage"``) to the region or a part.

        Raises ``OSError`` (e.g. ``EINVAL`` where the kernel has no transparent huge pages).
        """
        if advice not in ADVICE:
            raise ValueError(f"advice must be one of {sorted(ADVICE)}, not {advice!r}")
        cdef size_t span = self._span(offset, length)
        cdef int advice_code = ADVICE[advice]
        cdef int rc, err = 0
        with nogil:
            rc = madvise(self._address + offset, span, advice_code)
            if rc != 0:
                err = errno
        if rc != 0:
            raise oserror(err, f"madvise({advice}, {span} bytes)")

    def populate(self, size_t offset=0, length=None):
        """Fault in every page of the region (or a part) for writing.

        Uses ``MADV_POPULATE_WRITE`` (Linux 5.14+); where the kernel lacks it (``EINVAL``),
        writes each page's first byte back instead (base pages only). Failure to find memory is
        returned by the kernel as ``ENOMEM``/``EFAULT`` (hugetlb pool empty) and raised as
        ``OSError`` — unless the kernel OOM-kills first, which is why the caller checks capacity
        before populating.

        Returns
        -------
        str
            ``"madvise"`` or ``"touch"``: how the pages were faulted.
        """
        cdef size_t span = self._span(offset, length)
        cdef PlaceResult result
        cdef int rc
        result.populated_by = 0
        with nogil:
            rc = populate_range(kernel_ops(), self._address + offset, span, self._page_size, &result)
        if rc != 0:
            raise oserror(result.err, f"madvise(MADV_POPULATE_WRITE, {span} bytes)")
        return "touch" if result.populated_by == POPULATED_TOUCH else "madvise"

    def place(self, int node, str policy="bind", bint populate=True, size_t offset=0, length=None,
              str what=""):
        """Place the region (or a part) on ``node`` with the one placement routine (``numamem._place``).

        Parameters
        ----------
        node : int
        policy : {"bind", "preferred"}
            ``bind`` with ``populate``: populate under ``preferred``, verify with ``move_pages``,
            then bind strictly. ``preferred`` with ``populate``: populate, no verification.
            Without ``populate`` only the policy is set; pages are placed at first touch.
        populate : bool
        offset, length : int
            The part to place (whole pages; default: from ``offset`` to the end of the mapping).
        what : str
            What is being placed, for the error message.

        Returns
        -------
        PlaceOutcome
            How it went (``populated_by``, pages checked).

        Raises
        ------
        NodeMemoryError, HugePageError
            The node lacked the memory (pages landed elsewhere, or populate ran out); the error
            says where the pages went.
        PolicyPermissionError
            The kernel refused a policy call (EPERM: no CAP_SYS_NICE, or a seccomp filter).
        OSError
            Any other failure of a call, named in the message.
        """
        cdef size_t span = self._span(offset, length)
        cdef int mode
        cdef int rc
        cdef PlaceResult result
        cdef const PlaceOps *ops = injected_ops()
        if policy == "bind":
            mode = PLACE_STRICT if populate else PLACE_BIND_LAZY
        elif policy == "preferred":
            mode = PLACE_PREFERRED if populate else PLACE_PREFERRED_LAZY
        else:
            raise ValueError(f"policy must be 'bind' or 'preferred', not {policy!r}")
        with nogil:
            rc = place_on_node(self._address + offset, span, node, mode, self._page_size, ops, &result)
        outcome = result_object(&result, node)
        if rc != 0:
            hugetlb = self._page_size != BASE_PAGE
            raise from_place_result(outcome, node, span, self._page_size, hugetlb,
                                    lambda: _free_bytes(node, self._page_size if hugetlb else 0), what)
        return outcome

    def zero(self):
        """Write zeros over the caller's bytes (for memory that may have been used before)."""
        self._check_open()
        with nogil:
            memset(self._address, 0, self._size)

    def close(self):
        """Unmap now.

        Raises
        ------
        BufferError
            If any array or memoryview still uses the memory; nothing is freed then.
        """
        global _unmapped
        if self._closed:
            return
        self._check_no_exports()
        munmap(self._address, self._length)
        _unmapped += 1
        self._closed = True
        self._address = NULL

    cdef size_t _span(self, size_t offset, length) except? 0:
        self._check_open()
        cdef size_t span = self._length - offset if length is None else length
        if offset > self._length or span > self._length - offset:
            raise ValueError(f"range [{offset}, {offset}+{span}) is outside the {self._length}-byte region")
        return span

    # -- read-only facts ----------------------------------------------------------------------
    @property
    def mapped_bytes(self):
        """Bytes mapped: ``nbytes`` rounded up to whole pages (at least one page)."""
        return self._length

    @property
    def page_size(self):
        """The mapping's page size: the base page, or the hugetlbfs page size."""
        return self._page_size

    def __repr__(self):
        if self._closed:
            return "<numamem.Region closed>"
        where = self.info.get("description", "")
        return (f"<numamem.Region {self._size} bytes at {<uintptr_t>self._address:#x}"
                f"{' ' + where if where else ''}>")
