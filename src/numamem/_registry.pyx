# cython: boundscheck=False, wraparound=False, cdivision=True
"""Process-wide state of numamem's pools: the address directory and the registry of pool locks.

* The **directory** maps ``address >> 21`` (a 2 MiB slot) to the record of the chunk or direct
  mapping covering it, in two levels of 8192 entries (47-bit user addresses), so a free finds its
  pool and size from the pointer alone. Tables are created on demand and never freed (64 KiB each).
* The **registry** holds the lock of every live pool (at most ``MAX_POOLS``). ``pthread_atfork``
  takes the registry's lock, every pool lock and the directory's lock before ``fork()`` and releases
  them in both processes, so a forked child finds every pool consistent and unlocked.

Lock order everywhere: the registry, a pool, the directory.
"""
from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc as c_calloc

cdef extern from "<pthread.h>" nogil:
    int pthread_mutex_init(pthread_mutex_t *mutex, void *attr)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)

DEF SLOT_SHIFT = 21
DEF DIR_BITS = 13
DEF DIR_SIZE = 8192

cdef void **DIRECTORY[DIR_SIZE]
cdef pthread_mutex_t DIRECTORY_LOCK
cdef pthread_mutex_t *POOL_LOCKS[MAX_POOLS]
cdef int POOL_COUNT = 0
cdef pthread_mutex_t REGISTRY_LOCK

pthread_mutex_init(&DIRECTORY_LOCK, NULL)
pthread_mutex_init(&REGISTRY_LOCK, NULL)


# ---- the registry and fork safety --------------------------------------------------------------
cdef int registry_add(pthread_mutex_t *lock) noexcept nogil:
    """Register a pool's lock; -1 when ``MAX_POOLS`` pools exist."""
    global POOL_COUNT
    pthread_mutex_lock(&REGISTRY_LOCK)
    if POOL_COUNT >= MAX_POOLS:
        pthread_mutex_unlock(&REGISTRY_LOCK)
        return -1
    POOL_LOCKS[POOL_COUNT] = lock
    POOL_COUNT += 1
    pthread_mutex_unlock(&REGISTRY_LOCK)
    return 0


cdef void registry_remove(pthread_mutex_t *lock) noexcept nogil:
    """Unregister a pool's lock (its slot goes to the next pool)."""
    global POOL_COUNT
    cdef int i
    pthread_mutex_lock(&REGISTRY_LOCK)
    for i in range(POOL_COUNT):
        if POOL_LOCKS[i] == lock:
            POOL_COUNT -= 1
            POOL_LOCKS[i] = POOL_LOCKS[POOL_COUNT]
            POOL_LOCKS[POOL_COUNT] = NULL
            break
    pthread_mutex_unlock(&REGISTRY_LOCK)


cdef int registry_count() noexcept nogil:
    return POOL_COUNT


cdef void _before_fork() noexcept nogil:
    cdef int i
    pthread_mutex_lock(&REGISTRY_LOCK)
    for i in range(POOL_COUNT):
        pthread_mutex_lock(POOL_LOCKS[i])
    pthread_mutex_lock(&DIRECTORY_LOCK)


cdef void _after_fork() noexcept nogil:
    cdef int i
    pthread_mutex_unlock(&DIRECTORY_LOCK)
    for i in range(POOL_COUNT):
        pthread_mutex_unlock(POOL_LOCKS[i])
    pthread_mutex_unlock(&REGISTRY_LOCK)


pthread_atfork(_before_fork, _after_fork, _after_fork)


def pool_count():
    """Pools registered in this process (each holds one of ``MAX_POOLS`` slots)."""
    return POOL_COUNT


# ---- the directory -------------------------------------------------------------------------------
cdef void *directory_lookup(void *ptr) noexcept nogil:
    """The record registered for the 2 MiB slot of ``ptr``, or NULL."""
    cdef uintptr_t index = (<uintptr_t>ptr) >> SLOT_SHIFT
    cdef void **table
    if (index >> (2 * DIR_BITS)) != 0:
        return NULL
    table = DIRECTORY[index >> DIR_BITS]
    if table == NULL:
        return NULL
    return table[index & (DIR_SIZE - 1)]


cdef void directory_lock() noexcept nogil:
    """Hold the directory still: records read meanwhile cannot be unregistered (and then freed).

    For a lookup of an address nothing keeps alive (``numamem._arena.arena_pool_of``); a free
    needs none, since the block it frees keeps its chunk registered.
    """
    pthread_mutex_lock(&DIRECTORY_LOCK)


cdef void directory_unlock() noexcept nogil:
    pthread_mutex_unlock(&DIRECTORY_LOCK)


cdef int directory_set(char *base, size_t length, void *record) noexcept nogil:
    """Point every 2 MiB slot of ``[base, base + length)`` at ``record`` (NULL: clear them).

    Every slot a mapping covers points at it, so interior pointers of direct mappings resolve too.
    Returns -1 when an address is beyond the directory or a table cannot be allocated.
    """
    cdef uintptr_t first = (<uintptr_t>base) >> SLOT_SHIFT
    cdef uintptr_t last = ((<uintptr_t>base) + length - 1) >> SLOT_SHIFT
    cdef uintptr_t index
    cdef void **table
    pthread_mutex_lock(&DIRECTORY_LOCK)
    index = first
    while index <= last:
        if (index >> (2 * DIR_BITS)) != 0:
            pthread_mutex_unlock(&DIRECTORY_LOCK)
            return -1
        table = DIRECTORY[index >> DIR_BITS]
        if table == NULL:
            if record == NULL:
                index += 1
                continue
            table = <void **>c_calloc(DIR_SIZE, sizeof(void *))
            if table == NULL:
                pthread_mutex_unlock(&DIRECTORY_LOCK)
                return -1
            DIRECTORY[index >> DIR_BITS] = table
        table[index & (DIR_SIZE - 1)] = record
        index += 1
    pthread_mutex_unlock(&DIRECTORY_LOCK)
    return 0
