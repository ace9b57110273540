# cython: boundscheck=False, wraparound=False
"""The owner of numamem memory: one ``mmap``'d, aligned range.

A :class:`Region` maps anonymous memory, lets the layer above apply policies and advice to it,
and exports it through the buffer protocol. Every array numamem returns is built on a buffer export
of its region, so the array's ``.base`` is a ``memoryview`` whose ``.obj`` is the region: the export
keeps the mapping alive for as long as any view exists, ``close()`` refuses (``BufferError``) while
one does, and the mapping is unmapped exactly once — by ``close()`` or by the last reference going.
"""
from cpython.buffer cimport PyBUF_FORMAT
from libc.stdint cimport uintptr_t
from libc.string cimport memset

from numamem._ndarray cimport wrap_ndarray

from numamem._libnuma cimport (
    MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_POPULATE_WRITE, MAP_ANONYMOUS, MAP_FAILED, MAP_HUGE_1GB,
    MAP_HUGE_2MB, MAP_HUGETLB, MAP_PRIVATE, PROT_READ, PROT_WRITE, errno, madvise, mmap, munmap,
    nm_add, nm_align_up,
)
from numamem.errors import oserror

import errno as _errno
import os

cdef size_t BASE_PAGE = os.sysconf("SC_PAGE_SIZE")
cdef char *BYTE_FORMAT = b"B"
# Counts unmaps, so tests can prove that each mapping is released exactly once.
cdef Py_ssize_t _unmapped = 0
cdef Py_ssize_t _mapped = 0

ADVICE = {"hugepage": MADV_HUGEPAGE, "nohugepage": MADV_NOHUGEPAGE}


def mapping_counts():
    """Return ``(mapped, unmapped)``: how many regions this process has mapped and unmapped."""
    return _mapped, _unmapped


cdef class Region:
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
    cdef char *_address
    cdef size_t _length
    cdef size_t _size
    cdef size_t _page_size
    cdef Py_ssize_t _exports
    cdef bint _closed
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]
    cdef public dict info
    cdef object __weakref__

    def __cinit__(self, size_t size, size_t align=0, size_t hugetlb=0):
        global _mapped
        cdef size_t page = BASE_PAGE
        cdef int flags = MAP_PRIVATE | MAP_ANONYMOUS
        cdef size_t length, mapped_length, trimmed_head
        cdef uintptr_t raw, start
        cdef void *addr
        cdef int err = 0
        self._address = NULL
        self._closed = True
        self.info = {}
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
            addr = mmap(NULL, mapped_length, PROT_READ | PROT_WRITE, flags, -1, 0)
            if addr == MAP_FAILED:
                err = errno
        if addr == MAP_FAILED:
            raise oserror(err, f"mmap({mapped_length} bytes{', hugetlb ' + str(hugetlb) if hugetlb else ''})")
        raw = <uintptr_t>addr
        start = (raw + align - 1) & ~(<uintptr_t>align - 1)
        if start != raw:
            munmap(addr, start - raw)
        trimmed_head = start - raw
        if mapped_length - trimmed_head > length:
            munmap(<void *>(start + length), mapped_length - trimmed_head - length)
        self._address = <char *>start
        self._length = length
        self._size = size
        self._page_size = page
        self._shape[0] = size
        self._strides[0] = 1
        self._closed = False
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

    # -- buffer protocol: each export pins the mapping ---------------------------------------
    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if self._closed:
            raise ValueError("operation on a closed Region")
        buffer.buf = self._address
        buffer.obj = self
        buffer.len = self._size
        buffer.readonly = 0
        buffer.itemsize = 1
        buffer.format = BYTE_FORMAT if (flags & PyBUF_FORMAT) else NULL
        buffer.ndim = 1
        buffer.shape = self._shape
        buffer.strides = self._strides
        buffer.suboffsets = NULL
        buffer.internal = NULL
        self._exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        self._exports -= 1

    # -- operations the layer above composes --------------------------------------------------
    def advise(self, str advice, size_t offset=0, length=None):
        """Apply ``madvise`` advice (``"hugepage"`` or ``"nohugepage"``) to the region or a part.

        Raises ``OSError`` (e.g. ``EINVAL`` where the kernel has no transparent huge pages).
        """
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
        writes a zero byte into each page instead. Failure to find memory is returned by the
        kernel as ``ENOMEM``/``EFAULT`` (hugetlb pool empty) and raised as ``OSError`` — unless
        the kernel OOM-kills first, which is why the caller checks capacity before populating.

        Returns
        -------
        str
            ``"madvise"`` or ``"touch"``: how the pages were faulted.
        """
        cdef size_t span = self._span(offset, length)
        cdef size_t page = self._page_size
        cdef size_t position
        cdef volatile char *cursor
        cdef int rc, err = 0
        with nogil:
            rc = madvise(self._address + offset, span, MADV_POPULATE_WRITE)
            if rc != 0:
                err = errno
        if rc == 0:
            return "madvise"
        if err != _errno.EINVAL or self._page_size != BASE_PAGE:
            # Touching hugetlb pages without a free one would be a SIGBUS, not an error code:
            # only base pages fall back to touching.
            raise oserror(err, f"madvise(MADV_POPULATE_WRITE, {span} bytes)")
        with nogil:
            position = 0
            while position < span:
                cursor = <volatile char *>(self._address + offset + position)
                cursor[0] = cursor[0]
                position += page
        return "touch"

    def ndarray(self, shape, dtype, str order="C", size_t offset=0):
        """Return an ndarray over the region's bytes starting at ``offset``.

        The array's ``.base`` is a ``memoryview`` of this region: that buffer export keeps the
        mapping alive while the array or any view of it exists (``close()`` refuses until then).

        Parameters
        ----------
        shape : tuple of int
            Non-negative extents; their product times the item size must fit.
        dtype : numpy.dtype
        order : {"C", "F"}
        offset : int
            Byte offset of the first element.
        """
        self._check_open()
        if offset > self._size:
            raise ValueError(f"offset {offset} does not fit the {self._size}-byte region")
        return wrap_ndarray(self, self._address + offset, self._size - offset, shape, dtype, order)

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
        if self._exports:
            raise BufferError(
                f"cannot close Region: {self._exports} exported buffer(s) (arrays or views) still use it")
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

    cdef int _check_open(self) except -1:
        if self._closed:
            raise ValueError("operation on a closed Region")
        return 0

    # -- read-only facts ----------------------------------------------------------------------
    @property
    def address(self):
        """Address of the first byte (an ``int``)."""
        self._check_open()
        return <uintptr_t>self._address

    @property
    def nbytes(self):
        """Bytes the caller asked for."""
        return self._size

    @property
    def mapped_bytes(self):
        """Bytes mapped: ``nbytes`` rounded up to whole pages (at least one page)."""
        return self._length

    @property
    def page_size(self):
        """The mapping's page size: the base page, or the hugetlbfs page size."""
        return self._page_size

    @property
    def exports(self):
        """Number of live buffer exports (arrays and memoryviews built on this region)."""
        return self._exports

    @property
    def closed(self):
        """True once unmapped."""
        return self._closed

    def __repr__(self):
        if self._closed:
            return "<numamem.Region closed>"
        where = self.info.get("description", "")
        return (f"<numamem.Region {self._size} bytes at {<uintptr_t>self._address:#x}"
                f"{' ' + where if where else ''}>")
