# numamem._largecache is C only: the cache of freed direct mappings of the pools, called by
# numamem._arena (see _largecache.pyx for its rules). It has no Python-level names.
