# Process-wide state of the pools (see _registry.pyx): the address directory and the pool locks.

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass

cdef enum:
    MAX_POOLS = 1024

cdef int registry_add(pthread_mutex_t *lock) noexcept nogil
cdef void registry_remove(pthread_mutex_t *lock) noexcept nogil
cdef int registry_count() noexcept nogil
cdef void *directory_lookup(void *ptr) noexcept nogil
cdef int directory_set(char *base, size_t length, void *record) noexcept nogil
cdef void directory_lock() noexcept nogil
cdef void directory_unlock() noexcept nogil
