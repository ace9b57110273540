"""Status lines for long commands (``numamem run``, ``numamem bench``)."""
from __future__ import annotations

import sys
import time


class Progress:
    """Status lines on stderr, once the command has run for ``after`` seconds, at most every ``every`` s."""

    def __init__(self, prog: str, after: float = 3.0, every: float = 1.0, stream=None):
        self.prog, self.after, self.every = prog, after, every
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.monotonic()
        self._last = -1e9

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now - self.t0 < self.after or now - self._last < self.every:
            return
        self._last = now
        print(f"{self.prog}: [{now - self.t0:5.1f} s] {message}", file=self.stream, flush=True)
