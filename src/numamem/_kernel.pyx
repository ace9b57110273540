# cython: boundscheck=False, wraparound=False
"""Literal, checked wrappers of the NUMA system calls (mbind, get/set_mempolicy, move_pages).

Each function mirrors one call, takes addresses as integers, releases the GIL around the call and
turns a failure into an exception through :mod:`numamem.errors` (the one error path: a refused
policy call, ``EPERM``, is a :class:`~numamem.errors.PolicyPermissionError` naming the call, the
node and the fix). Policy decisions (what to bind, when to verify) belong to the layers above.
"""
from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

cimport numpy as cnp
import numpy as np

from libc.errno cimport EINVAL

from numamem._libnuma cimport (
    MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE, mmap, MPOL_BIND, MPOL_DEFAULT, MPOL_F_ADDR, MPOL_INTERLEAVE, MPOL_LOCAL, MPOL_MF_MOVE, MPOL_MF_STRICT,
    MPOL_PREFERRED, errno, get_mempolicy, mbind, move_pages, set_mempolicy,
)
from numamem._place cimport mask_words
from numamem.errors import oserror

cnp.import_array()

POLICY_MODES = {
    "default": MPOL_DEFAULT,
    "preferred": MPOL_PREFERRED,
    "bind": MPOL_BIND,
    "interleave": MPOL_INTERLEAVE,
    "local": MPOL_LOCAL,
}
POLICY_NAMES = {mode: name for name, mode in POLICY_MODES.items()}
MF_STRICT = MPOL_MF_STRICT
MF_MOVE = MPOL_MF_MOVE

cdef int BITS_PER_WORD = 8 * sizeof(unsigned long)


cdef unsigned long *_make_mask(nodes, int words) except NULL:
    cdef unsigned long *mask = <unsigned long *>calloc(words, sizeof(unsigned long))
    if mask == NULL:
        raise MemoryError("cannot allocate a node mask")
    cdef long node
    for value in nodes:
        node = value
        if node < 0 or node >= words * BITS_PER_WORD:
            free(mask)
            raise ValueError(f"node {node} is outside the kernel's node range")
        mask[node // BITS_PER_WORD] |= (<unsigned long>1) << (node % BITS_PER_WORD)
    return mask


cdef tuple _mask_nodes(unsigned long *mask, int words):
    cdef list nodes = []
    cdef int node
    for node in range(words * BITS_PER_WORD):
        if mask[node // BITS_PER_WORD] & ((<unsigned long>1) << (node % BITS_PER_WORD)):
            nodes.append(node)
    return tuple(nodes)


def bind_range(uintptr_t address, size_t length, str policy, nodes=(), unsigned flags=0):
    """Apply a memory policy to ``[address, address + length)`` with ``mbind(2)``.

    Parameters
    ----------
    address, length : int
        A page-aligned range of this process.
    policy : {"default", "preferred", "bind", "interleave", "local"}
    nodes : iterable of int
        The policy's nodes (empty for "default" and "local").
    flags : int
        ``MF_STRICT`` / ``MF_MOVE`` to check or move pages already present.
    """
    cdef int mode = POLICY_MODES[policy]
    cdef int words = mask_words()
    cdef unsigned long *mask = _make_mask(nodes, words)
    cdef long rc
    cdef int err = 0
    # libnuma passes size + 1 as maxnode: the kernel historically drops the last bit.
    cdef unsigned long maxnode = words * BITS_PER_WORD + 1
    with nogil:
        rc = mbind(<void *>address, length, mode, mask, maxnode, flags)
        if rc != 0:
            err = errno
    free(mask)
    if rc != 0:
        nodes = list(nodes)
        raise oserror(err, f"mbind({policy}, nodes={nodes}, {length} bytes)", node=nodes or None)


cdef tuple _get_policy(void *address, unsigned flags, str call):
    cdef int words = mask_words()
    cdef unsigned long *mask = _make_mask((), words)
    cdef int mode = 0
    cdef long rc
    cdef int err = 0
    with nogil:
        rc = get_mempolicy(&mode, mask, words * BITS_PER_WORD + 1, address, flags)
        if rc != 0:
            err = errno
    try:
        if rc != 0:
            raise oserror(err, call)
        # High bits carry mode flags (MPOL_F_STATIC_NODES etc.); the mode is the low byte.
        return POLICY_NAMES.get(mode & 0xFF, f"mode-{mode & 0xFF}"), _mask_nodes(mask, words)
    finally:
        free(mask)


def range_policy(uintptr_t address):
    """Return ``(policy, nodes)`` in force for the page at ``address`` (``get_mempolicy(MPOL_F_ADDR)``)."""
    return _get_policy(<void *>address, MPOL_F_ADDR, "get_mempolicy(MPOL_F_ADDR)")


def thread_policy():
    """Return ``(policy, nodes)`` of the calling thread (``get_mempolicy`` with no address)."""
    return _get_policy(NULL, 0, "get_mempolicy()")


def set_thread_policy(str policy, nodes=()):
    """Set the calling thread's memory policy (``set_mempolicy(2)``)."""
    cdef int mode = POLICY_MODES[policy]
    cdef int words = mask_words()
    cdef unsigned long *mask = _make_mask(nodes, words)
    cdef long rc
    cdef int err = 0
    with nogil:
        rc = set_mempolicy(mode, mask, words * BITS_PER_WORD + 1)
        if rc != 0:
            err = errno
    free(mask)
    if rc != 0:
        nodes = list(nodes)
        raise oserror(err, f"set_mempolicy({policy}, nodes={nodes})", node=nodes or None)


def page_status(const cnp.uint64_t[::1] addresses, target_node=None):
    """Query, or with ``target_node`` move, the pages at ``addresses`` (``move_pages(2)``).

    Parameters
    ----------
    addresses : uint64 array
        One address inside each page of interest.
    target_node : int, optional
        Move every page to this node instead of only asking where it is.

    Returns
    -------
    numpy.ndarray of int32
        Per page: its node, or a negative errno (``-ENOENT``: not faulted in; ``-EFAULT``: not
        mapped; ``-EBUSY``/``-EACCES``: could not be moved).
    """
    cdef Py_ssize_t count = addresses.shape[0]
    status = np.full(count, -1, dtype=np.int32)
    cdef int[::1] status_view = status
    cdef int *nodes = NULL
    cdef long rc = 0
    cdef int err = 0
    cdef Py_ssize_t i
    if count == 0:
        return status
    if target_node is not None:
        nodes = <int *>malloc(count * sizeof(int))
        if nodes == NULL:
            raise MemoryError("cannot allocate the move_pages node list")
        for i in range(count):
            nodes[i] = target_node
    with nogil:
        rc = move_pages(0, count, <void **>&addresses[0], nodes, &status_view[0], MPOL_MF_MOVE if nodes != NULL else 0)
        if rc < 0:
            err = errno
    free(nodes)
    if rc < 0:
        raise oserror(err, f"move_pages({count} pages{'' if target_node is None else f', to node {target_node}'})",
                      node=target_node)
    return status


# A page of this process's address space, never touched, that probes may set policies on.
cdef void *_scratch = NULL


cdef void *_scratch_page() except NULL:
    global _scratch
    cdef void *page
    if _scratch == NULL:
        page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if page == MAP_FAILED:
            raise oserror(errno, "mmap(4096 bytes)", "a scratch page for probing memory policy")
        _scratch = page
    return _scratch


def mbind_errno(int node):
    """Probe: the errno of ``mbind(MPOL_PREFERRED, node)`` on a scratch page (0 when permitted).

    One system call on an untouched page that only probes use, so it changes nothing else; the
    answer is not cached, because a seccomp filter may be installed at any time.
    """
    cdef void *page = _scratch_page()
    cdef unsigned long mask[16]
    cdef int words = mask_words()
    cdef long rc
    cdef int err = 0
    if words > 16 or node < 0 or node >= words * BITS_PER_WORD:
        return EINVAL
    memset(mask, 0, sizeof(mask))
    mask[node // BITS_PER_WORD] = (<unsigned long>1) << (node % BITS_PER_WORD)
    with nogil:
        rc = mbind(page, 4096, MPOL_PREFERRED, mask, words * BITS_PER_WORD + 1, 0)
        if rc != 0:
            err = errno
    return err
