# Cython-only module: wrap_ndarray is a cdef function used by _region and _pool.
