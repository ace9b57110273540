# cython: boundscheck=False, wraparound=False, cdivision=True
"""Per-node memory pools for Python and NumPy: :class:`Pool`, :class:`PoolAllocation`, NEP 49.

The allocator itself (chunks, granules, size classes, chunk sources, fork safety) is C in
:mod:`numamem._arena`; this module gives it a Python face and installs it as NumPy's memory
handler. A pool's C state lives as long as its NEP 49 handler capsule: the :class:`Pool` object and
every array NumPy allocated through the handler hold that capsule, so a discarded pool (a test's
fake pool, a pool made directly) frees its chunks and its registry slot once the last of them is
gone, while pools shared through :func:`get_pool` live as long as the process.
"""
cimport cython
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid, PyCapsule_New
from cpython.ref cimport PyObject
from libc.errno cimport ENOMEM
from libc.stdint cimport uint8_t, uintptr_t
from libc.stdlib cimport calloc as c_calloc, free as c_free
from libc.string cimport memset, strncpy

from numamem._arena cimport (
    CHECK_FOREIGN, CHECK_INTERIOR, CHECK_NOT_LIVE, CHECK_OK, CHECK_OTHER_POOL, CHUNK_SIZE, GRANULE,
    MAX_POOLS, RUN_MAX, Chunk, NodePool, arena_alloc, arena_calloc, arena_check, arena_create,
    arena_destroy, arena_free, arena_free_checked, arena_lock, arena_pool_of, arena_realloc,
    arena_release, arena_unlock, arena_usable_size,
)
from numamem._largecache cimport arena_set_cache
from numamem._arena import class_sizes
from numamem._registry import pool_count
from numamem._chunksource cimport FakeSourceState
from numamem._ndarray cimport BufferOwner, Export, array_over
from numamem._place cimport PLACE_PREFERRED, PLACE_STRICT, STEP_MAP, PlaceResult, result_object
from numamem._place import STEPS
from numamem import _topology
import numbers as _numbers
import operator as _operator
import weakref as _weakref

cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyDataMemAllocator:
        void *ctx
        void *(*malloc)(void *ctx, size_t size) noexcept nogil
        void *(*calloc)(void *ctx, size_t nelem, size_t elsize) noexcept nogil
        void *(*realloc)(void *ctx, void *ptr, size_t new_size) noexcept nogil
        void (*free)(void *ctx, void *ptr, size_t size) noexcept nogil
    ctypedef struct PyDataMem_Handler:
        char name[127]
        uint8_t version
        PyDataMemAllocator allocator
    object PyDataMem_SetHandler(object handler)
    object PyDataMem_GetHandler()
    PyObject *PyArray_HANDLER(cnp.PyArrayObject *array)

cimport numpy as cnp
cnp.import_array()

SMALL_MAX = GRANULE
cdef size_t SMALL_BLOCK = GRANULE
#: Alignment of every block a pool hands out (size classes are multiples of it; runs and direct
#: mappings start on granule or page boundaries).
BLOCK_ALIGN = 64
MIDDLE_MAX = RUN_MAX * GRANULE
CHUNK_BYTES = CHUNK_SIZE

__all__ = ["Pool", "PoolAllocation", "PoolExport", "FakeSource", "fake_source", "get_pool", "pools", "class_sizes",
           "pool_count", "set_handler", "get_handler", "pool_of"]


# ---- NEP 49 handler functions ---------------------------------------------------------------
cdef void *_handler_malloc(void *ctx, size_t size) noexcept nogil:
    return arena_alloc(<NodePool *>ctx, size, NULL)


cdef void *_calloc(NodePool *pool, size_t nelem, size_t elsize, PlaceResult *why) noexcept nogil:
    if elsize != 0 and nelem > (<size_t>-1) // elsize:
        return NULL
    # Recycled blocks and reused cached mappings are cleared; fresh mappings are zero already.
    return arena_calloc(pool, nelem * elsize, why)


cdef void *_handler_calloc(void *ctx, size_t nelem, size_t elsize) noexcept nogil:
    return _calloc(<NodePool *>ctx, nelem, elsize, NULL)


cdef void *_handler_realloc(void *ctx, void *ptr, size_t new_size) noexcept nogil:
    return arena_realloc(<NodePool *>ctx, ptr, new_size, NULL)


cdef void _handler_free(void *ctx, void *ptr, size_t size) noexcept nogil:
    arena_free(ptr)


# The capsule's memory: NumPy's handler struct first (the capsule points at it), then its pool.
cdef struct PoolHandler:
    PyDataMem_Handler handler
    NodePool *pool


cdef void _destroy_handler(object capsule) noexcept:
    # The last holder of the capsule (the Pool object, or the last array NumPy allocated with it)
    # is gone: nothing can reach the pool's memory any more.
    cdef PoolHandler *owner = <PoolHandler *>PyCapsule_GetPointer(capsule, "mem_handler")
    if owner == NULL:
        return
    arena_destroy(owner.pool)
    c_free(owner)


# ---- the fake chunk source --------------------------------------------------------------------
cdef class FakeSource:
    """Settings of a fake chunk source (see :func:`fake_source`)."""
    cdef FakeSourceState settings
    cdef readonly object step
    cdef readonly int errno_code

    def __repr__(self):
        return (f"fake_source(limit={self.settings.limit}, step={self.step!r}, errno={self.errno_code}, "
                f"misplace_every={self.settings.faults.misplace_every}, "
                f"misplace_last={bool(self.settings.faults.misplace_last)})")



def fake_source(long limit=-1, step=None, int errno=0, long misplace_every=0, bint misplace_last=False):
    """A chunk source of heap memory for tests of the pool on any machine.

    Chunks are ``posix_memalign`` memory placed by the real placement routine over faked system
    calls, so each of its failure branches can be reached on a one-node machine.

    Parameters
    ----------
    limit : int
        How many 2 MiB chunks it may have mapped at once (a direct mapping of ``k`` chunks counts
        ``k``; unmapping gives them back); -1: no limit. Past it a map fails with ENOMEM
        ("exhausted").
    step : {"prefer", "populate", "verify", "bind"}, optional
        The placement call that fails on every map, leaving ``errno``.
    errno : int
        The errno of the failing call (e.g. ``errno.EPERM``; ``EINVAL`` at ``"populate"`` makes the
        routine touch pages instead, as on kernels before 5.14).
    misplace_every : int
        ``k > 0``: every ``k``-th page ``move_pages`` is asked about is reported on another node.
    misplace_last : bool
        The last page of each ``move_pages`` answer is reported on another node.

    Returns
    -------
    FakeSource
        Pass it as ``Pool(node, policy, source=...)``.
    """
    if step is not None and step not in ("prefer", "populate", "verify", "bind"):
        raise ValueError(f"step must be 'prefer', 'populate', 'verify', 'bind' or None, not {step!r}")
    if (step is None) != (errno == 0):
        raise ValueError("give step= and errno= together (a failing call and the errno it leaves)")
    if limit < -1:
        raise ValueError(f"limit must be -1 (none) or a chunk count >= 0, not {limit}")
    if misplace_every < 0:
        raise ValueError(f"misplace_every must be >= 0, not {misplace_every}")
    cdef FakeSource source = FakeSource.__new__(FakeSource)
    memset(&source.settings, 0, sizeof(FakeSourceState))
    source.settings.limit = limit
    source.settings.faults.fail_step = 0 if step is None else STEPS[step]
    source.settings.faults.fail_errno = errno
    source.settings.faults.misplace_every = misplace_every
    source.settings.faults.misplace_last = misplace_last
    source.step = step
    source.errno_code = errno
    return source


# ---- Python layer ------------------------------------------------------------------------------
cdef dict _POOLS = {}
# Every live Pool object by the address of its C pool, for pool_of (which finds the C pool).
_BY_ARENA = _weakref.WeakValueDictionary()
# Passed as `source` by pool_of: a Pool object over a C pool that exists already.
cdef object _ADOPT = object()

_CHECK_MESSAGES = {
    CHECK_FOREIGN: "was not allocated by a numamem pool",
    CHECK_OTHER_POOL: "belongs to another pool",
    CHECK_INTERIOR: "points inside a block, not at its start",
    CHECK_NOT_LIVE: "is not a live block (already freed?)",
}



def _strict_int(value, name, what):
    """``value`` as a Python int (NumPy integers too); a bool, float or str is a TypeError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {what}, not {value!r}")
    try:
        return _operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {what}, not {value!r}") from None

cdef class Pool:
    """A node's memory pool for one policy.

    Parameters
    ----------
    node : int
        The node every page of the pool is on.
    policy : {"bind", "preferred"}
    source : {"kernel", "fake"} or FakeSource
        Where chunks come from: node-bound kernel mappings, or a fake source (:func:`fake_source`;
        ``"fake"`` is ``fake_source()``) that stands in for them in tests of the pool logic.
    fake_chunk_limit : int
        With ``source="fake"``: the fake source's ``limit`` (chunks mapped at once; -1: none).

    Notes
    -----
    Pools made with ``source="kernel"`` are shared per (node, policy) through :func:`get_pool` and
    live as long as the process. Any other pool frees its memory and registry slot when the pool
    and every array NumPy allocated through its handler are gone; addresses from its
    :meth:`malloc` are invalid from then on.
    """
    def __cinit__(self, int node, str policy="bind", source="kernel", long fake_chunk_limit=-1):
        cdef FakeSource fake = None
        cdef PoolHandler *owner
        if source is _ADOPT:
            return  # pool_of fills it in
        if policy not in ("bind", "preferred"):
            raise ValueError(f"pool policy must be 'bind' or 'preferred', not {policy!r}")
        if isinstance(source, FakeSource):
            fake = source
        elif source == "fake":
            fake = fake_source(fake_chunk_limit)
        elif source != "kernel":
            raise ValueError(f"source must be 'kernel', 'fake' or a fake_source(), not {source!r}")
        if fake_chunk_limit != -1 and source != "fake":
            raise ValueError("fake_chunk_limit applies to source='fake' only")
        if node < 0 or node >= 64 * 16:
            raise ValueError(f"node {node} is outside the range pools support (0-1023)")
        owner = <PoolHandler *>c_calloc(1, sizeof(PoolHandler))
        if owner == NULL:
            raise MemoryError("cannot allocate a pool")
        owner.pool = arena_create(node, PLACE_STRICT if policy == "bind" else PLACE_PREFERRED,
                                  NULL if fake is None else &fake.settings)
        if owner.pool == NULL:
            c_free(owner)
            raise MemoryError(f"at most {MAX_POOLS} pools per process ({pool_count()} exist)")
        self._pool = owner.pool
        self.node = node
        self.policy = policy
        self.source = "kernel" if fake is None else "fake"
        name = f"numamem_node{node}_{policy}{'_fake' if fake is not None else ''}".encode()
        strncpy(owner.handler.name, name, 126)
        owner.handler.version = 1
        owner.handler.allocator.ctx = owner.pool
        owner.handler.allocator.malloc = _handler_malloc
        owner.handler.allocator.calloc = _handler_calloc
        owner.handler.allocator.realloc = _handler_realloc
        owner.handler.allocator.free = _handler_free
        self._capsule = PyCapsule_New(&owner.handler, "mem_handler", _destroy_handler)
        _BY_ARENA[<uintptr_t>owner.pool] = self

    def malloc(self, size_t size):
        """Allocate ``size`` bytes; return the address (an int).

        Raises
        ------
        NodeMemoryError
            The source could not supply memory on the node (with where the pages went, if
            they went elsewhere).
        PolicyPermissionError, OSError
            A placement call failed for another reason (named in the message).
        """
        cdef void *memory
        cdef PlaceResult why
        with nogil:
            memory = arena_alloc(self._pool, size, &why)
        if memory == NULL:
            self._raise_failed(size, &why)
        return <uintptr_t>memory

    def calloc(self, size_t nelem, size_t elsize):
        """Allocate ``nelem * elsize`` zeroed bytes; return the address."""
        cdef void *memory
        cdef PlaceResult why
        if elsize != 0 and nelem > (<size_t>-1) // elsize:
            raise MemoryError(f"calloc({nelem}, {elsize}): the size overflows")
        with nogil:
            memory = _calloc(self._pool, nelem, elsize, &why)
        if memory == NULL:
            self._raise_failed(nelem * elsize, &why)
        return <uintptr_t>memory

    def realloc(self, uintptr_t address, size_t new_size):
        """Resize the block at ``address`` (0 for a new one), keeping its node and content."""
        cdef void *memory
        cdef PlaceResult why
        if address:
            self._check(address, "realloc")
        with nogil:
            memory = arena_realloc(self._pool, <void *>address, new_size, &why)
        if memory == NULL:
            self._raise_failed(new_size, &why)
        return <uintptr_t>memory

    def free(self, uintptr_t address):
        """Return the block at ``address`` (from this pool's :meth:`malloc`) to the pool.

        Checked: a double free, an address inside a block, another pool's block or memory no
        pool allocated raise ``ValueError`` and change nothing. The block of a
        :class:`PoolAllocation` is its owner's to free (``close()``); freed here as well, the
        owner's later free of a small block is refused without harm, but the bytes may have been
        handed out again meanwhile.
        """
        cdef int answer
        with nogil:
            answer = arena_free_checked(self._pool, <void *>address)
        if answer != CHECK_OK:
            raise ValueError(f"free({address:#x}): the address {_CHECK_MESSAGES[answer]}")

    cdef int _check(self, size_t address, str call) except -1:
        cdef int answer
        with nogil:
            answer = arena_check(self._pool, <void *>address)
        if answer != CHECK_OK:
            raise ValueError(f"{call}({address:#x}): the address {_CHECK_MESSAGES[answer]}")
        return 0

    def usable_size(self, uintptr_t address):
        """Bytes usable at ``address`` (the block's size class, run or mapping size)."""
        self._check(address, "usable_size")
        return arena_usable_size(<void *>address)

    def release(self):
        """Give chunks with nothing live in them and cached mappings back to the kernel; return the bytes released."""
        cdef size_t released
        with nogil:
            released = arena_release(self._pool)
        return released

    def large_cache(self, max_bytes=None, decay=None):
        """Read or set how many freed direct mappings (blocks above 1 MiB) the pool keeps for reuse.

        A freed large block stays mapped and placed and serves the next request it fits (it is at
        most 1/16 larger), without a new mapping or placement check. The pool unmaps cached
        mappings beyond ``max_bytes`` (oldest first); those unused for ``decay`` seconds, or
        while it handed out more than ``max_bytes`` in other blocks (checked at its next
        allocation or free of anything but a small block); and all of them before it maps new
        memory or at :meth:`release`.

        Parameters
        ----------
        max_bytes : int, optional
            Bytes of freed mappings kept at most (0: none, every large block is unmapped on free
            as before); lowering it unmaps the excess now. Default for new pools: 64 MiB.
        decay : float, optional
            Seconds a cached mapping may stay unused (default for new pools: 1.0; 0: none is
            kept past the call that caches it).

        Returns
        -------
        dict
            The settings now: ``{"max_bytes": int, "decay": float}``.

        Raises
        ------
        TypeError, ValueError
            If ``max_bytes`` is not an int >= 0 or ``decay`` not a finite number >= 0.
        """
        cdef NodePool *pool = self._pool
        cdef size_t limit
        cdef long long decay_ns
        arena_lock(pool)
        limit, decay_ns = pool.cache_max, pool.cache_decay_ns
        arena_unlock(pool)
        if max_bytes is not None:
            max_bytes = _strict_int(max_bytes, "max_bytes", "an int number of bytes")
            if max_bytes < 0 or max_bytes > (<size_t>-1):
                raise ValueError(f"max_bytes must be >= 0 bytes, not {max_bytes}")
            limit = max_bytes
        if decay is not None:
            if isinstance(decay, bool) or not isinstance(decay, _numbers.Real):
                raise TypeError(f"decay must be a number of seconds, not {decay!r}")
            if not (0 <= decay < 1e9):
                raise ValueError(f"decay must be a finite number of seconds >= 0, not {decay!r}")
            decay_ns = <long long>(decay * 1e9)
        if max_bytes is not None or decay is not None:
            with nogil:
                arena_set_cache(pool, limit, decay_ns)
        return {"max_bytes": limit, "decay": decay_ns / 1e9}

    def stats(self):
        """Bytes and counts of the pool.

        Returns
        -------
        dict
            ``in_use`` (bytes of live blocks), ``mapped`` (bytes mapped), ``cached``
            (``mapped - in_use``), ``peak_mapped`` (highest ``mapped`` since creation or
            :meth:`reset_peak`), ``allocations`` (live blocks), ``chunks`` (2 MiB chunks),
            ``idle_chunks`` (chunks with nothing live, kept for reuse), ``direct`` (live direct
            mappings), ``cached_mappings`` and ``cached_mapping_bytes`` (freed direct mappings
            kept for reuse, see :meth:`large_cache`), ``reused_mappings`` (large requests they
            served), ``maps`` (mappings made by the chunk source: chunks and direct), ``touched``
            (chunks populated by touching, where the kernel lacks ``MADV_POPULATE_WRITE``).
        """
        cdef NodePool *pool = self._pool
        arena_lock(pool)
        result = {
            "in_use": pool.in_use,
            "mapped": pool.mapped,
            "cached": pool.mapped - pool.in_use,
            "peak_mapped": pool.peak_mapped,
            "allocations": pool.allocations,
            "chunks": pool.chunk_count,
            "idle_chunks": pool.idle_count,
            "direct": pool.direct_count,
            "cached_mappings": pool.cached_count,
            "cached_mapping_bytes": pool.cached_bytes,
            "reused_mappings": pool.reuses,
            "maps": pool.maps,
            "touched": pool.touched,
        }
        arena_unlock(pool)
        return result

    def reset_peak(self):
        """Start ``stats()["peak_mapped"]`` again from the bytes mapped now."""
        arena_lock(self._pool)
        self._pool.peak_mapped = self._pool.mapped
        arena_unlock(self._pool)

    @property
    def handler(self):
        """The NEP 49 ``mem_handler`` capsule that allocates from this pool."""
        return self._capsule

    def allocation(self, size_t size, bint zero=False):
        """Allocate an owner object (:class:`PoolAllocation`) of ``size`` bytes."""
        return PoolAllocation._create(self, size, zero)

    cdef int _raise_failed(self, size_t size, PlaceResult *why) except -1:
        from numamem.errors import from_place_result

        outcome = result_object(why, self.node)
        what = f"a chunk of the {self.policy} pool"
        error = from_place_result(outcome, self.node, size, 4096, False, _free_bytes(self.node), what)
        if error is None:  # not a placement failure: a size beyond the address space
            error = MemoryError(f"the {self.policy} pool of node {self.node} cannot allocate {size} bytes")
        raise error

    def __repr__(self):
        s = self.stats()
        return (f"<numamem Pool node={self.node} policy={self.policy} source={self.source} "
                f"in_use={s['in_use']} mapped={s['mapped']}>")


def _free_bytes(int node):
    # A callable: read only when the error is a shortage.
    def read():
        from numamem import _topology

        try:
            return _topology.node_free_memory(node)
        except (OSError, ValueError, KeyError):
            return None
    return read


def get_pool(node, str policy="bind"):
    """Return the process-wide kernel pool of ``node`` for ``policy`` (created on first use).

    Raises
    ------
    TypeError
        If ``node`` is not an int node id (a bool or a float is not one).
    ValueError
        If this process may not place memory on ``node`` (no such node, no memory, outside the
        cpuset), checked when its pool is first asked for, before anything is mapped.
    """
    node = _strict_int(node, "node", "an int node id")
    key = (node, policy)
    pool = _POOLS.get(key)
    if pool is None:
        _topology.topology(refresh=False).check_memory_node(node, "node")
        pool = _POOLS.setdefault(key, Pool(node, policy))
    return pool


def pools():
    """All process-wide kernel pools made so far, as ``{(node, policy): Pool}``."""
    return dict(_POOLS)


def pool_of(cnp.ndarray array):
    """The :class:`Pool` whose memory holds ``array``'s data (the pools' address directory), or None.

    Any pool, whatever its source, shared or not. When the pool's object is gone while NumPy arrays
    keep its C pool alive (they hold its handler), a new :class:`Pool` object over that handler
    stands for it from then on.
    """
    cdef void *data = cnp.PyArray_DATA(array)
    cdef NodePool *arena
    cdef PyObject *handler
    cdef PoolHandler *record
    cdef Pool pool
    with nogil:
        arena = arena_pool_of(data)
    if arena == NULL:
        return None
    found = _BY_ARENA.get(<uintptr_t>arena)
    if found is not None:
        return found
    # Only the array's own handler can keep the C pool alive for a new object.
    handler = PyArray_HANDLER(<cnp.PyArrayObject *>array)
    if handler == NULL or not PyCapsule_IsValid(<object>handler, "mem_handler"):
        return None
    record = <PoolHandler *>PyCapsule_GetPointer(<object>handler, "mem_handler")
    if record.handler.allocator.malloc != _handler_malloc or record.pool != arena:
        return None
    pool = Pool.__new__(Pool, arena.node, "bind", _ADOPT)
    pool._pool = arena
    pool.node = arena.node
    pool.policy = "bind" if arena.mode == PLACE_STRICT else "preferred"
    pool.source = "kernel" if arena.source.ctx == NULL else "fake"
    pool._capsule = <object>handler
    _BY_ARENA[<uintptr_t>arena] = pool
    return pool


# The block must go back while its pool is certainly alive: the garbage collector must not clear
# `pool` (possibly the last reference to a discarded pool) before __dealloc__ frees the block.
@cython.no_gc_clear
cdef class PoolAllocation(BufferOwner):
    """The owner of a block carved from a :class:`Pool` (the root of an array's ``.base`` chain).

    Exports its bytes through the buffer protocol like :class:`numamem.Region`; returns the block to
    its pool exactly once, when the last export and reference are gone (or at ``close()``).
    """

    @staticmethod
    cdef PoolAllocation _create(Pool pool, size_t size, bint zero):
        cdef PoolAllocation self = PoolAllocation.__new__(PoolAllocation)
        cdef void *memory
        cdef PlaceResult why
        with nogil:
            memory = arena_calloc(pool._pool, size, &why) if zero else arena_alloc(pool._pool, size, &why)
        if memory == NULL:
            pool._raise_failed(size, &why)
        self._set_memory(<char *>memory, size)
        self.pool = pool
        return self

    def __dealloc__(self):
        if not self._closed and self._address != NULL:
            arena_free(self._address)
        self._closed = True
        self._address = NULL

    def close(self):
        """Return the block to its pool now; ``BufferError`` while arrays or views use it."""
        if self._closed:
            return
        self._check_no_exports()
        arena_free(self._address)
        self._closed = True
        self._address = NULL

    @property
    def page_size(self):
        """The base page size (pool chunks are made of base pages, or THP where the kernel folds them)."""
        return 4096

    def __repr__(self):
        return f"<numamem.PoolAllocation {self._size} bytes node={self.pool.node} {self.pool.policy}>"


# The creators' fast path (numamem._fast) makes one of these per array, and no PoolAllocation
# until someone asks for the owner (numamem.owner, placement, close): most small arrays are
# temporaries nobody inspects, and an owner with its info dict costs more than the array itself.
# (No @cython.freelist here: Cython ignores it on a subtype, only the base class may keep one.)
@cython.no_gc
cdef class PoolExport(Export):
    """The ``.base`` of a pooled array from the creators: holds its block until the owner is asked for.

    ``obj`` then makes the :class:`PoolAllocation` that adopts the block (once; the same owner
    every time after), and this export counts in its ``exports`` as any other export does.
    """

    cdef BufferOwner owner_object(self):
        cdef PoolAllocation owner
        if self._owner is None:
            owner = PoolAllocation.__new__(PoolAllocation)
            owner._set_memory(self._address, self._size)
            owner.pool = self._pool
            owner.info = {"request": self._request, "pages": "auto", "alignment": BLOCK_ALIGN,
                          "shape": (self._shape,) if type(self._shape) is int else self._shape}
            owner._exports = 1  # this export
            self._owner = owner
            self._address = NULL  # the owner frees it now
        return self._owner

    def __dealloc__(self):
        # Runs before _pool is cleared, so the pool is alive while its block goes back.
        if self._owner is not None:
            self._owner._exports -= 1  # the owner frees the block (close or dealloc)
        elif self._address != NULL:
            arena_free(self._address)  # the owner never made: the block goes back here
            self._address = NULL


cdef object pool_array(Pool pool, object request, object shape, size_t nbytes, int nd,
                       cnp.npy_intp *dims, cnp.dtype descr, bint fortran, bint zero):
    """A new array over a block of ``pool`` (zeroed if ``zero``): the creators' fast path.

    The caller has checked everything: ``dims`` (``nd`` of them) and ``descr`` describe exactly
    ``nbytes`` bytes of plain data, and ``request`` is the validated request the pool serves.
    """
    cdef void *memory
    cdef PlaceResult why
    cdef PoolExport base
    if nbytes <= SMALL_BLOCK:
        # A size-class block, with the GIL held: releasing and retaking it would cost a third of
        # np.empty's whole time on every array, to spare other threads the rare moments (one
        # per 2 MiB chunk mapped) when the pool maps and places a chunk.
        memory = arena_calloc(pool._pool, nbytes, &why) if zero else arena_alloc(pool._pool, nbytes, &why)
    else:
        with nogil:
            # Blocks are recycled: calloc clears them (invariant 5).
            memory = arena_calloc(pool._pool, nbytes, &why) if zero else arena_alloc(pool._pool, nbytes, &why)
    if memory == NULL:
        pool._raise_failed(nbytes, &why)
    base = PoolExport.__new__(PoolExport)
    base._pool = pool
    base._address = <char *>memory
    base._size = nbytes
    base._request = request
    base._shape = shape
    return array_over(base, <char *>memory, nd, dims, descr, fortran)


def set_handler(handler):
    """Install ``handler`` (a ``mem_handler`` capsule) for the current context; return the previous one."""
    return PyDataMem_SetHandler(handler)


def get_handler():
    """The ``mem_handler`` capsule NumPy uses in the current context."""
    return PyDataMem_GetHandler()
