cdef object wrap_ndarray(object exporter, char *data, size_t available, object shape, object dtype, str order)
