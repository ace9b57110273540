# No Python-level names: the chunk sources are C, used by numamem._arena.
