"""Pools and the ``on_node`` NEP 49 scope against NumPy's default allocator, in the same run."""
import numpy as np

import numamem

from .common import first_node


class SmallAllocation:
    """One small allocation: NumPy's default, NumPy inside ``on_node``, and ``numamem.empty``."""

    params = (["numpy", "on_node", "numamem.empty"], [64, 1024, 16384, 65536])
    param_names = ["allocator", "nbytes"]

    def setup(self, allocator, nbytes):
        self.node = first_node()
        self.scope = numamem.on_node(self.node) if allocator == "on_node" else None
        if self.scope is not None:
            self.scope.__enter__()

    def teardown(self, allocator, nbytes):
        if self.scope is not None:
            self.scope.__exit__(None, None, None)

    def time_allocate(self, allocator, nbytes):
        if allocator == "numamem.empty":
            numamem.empty(nbytes, np.uint8, node=self.node)
        else:
            np.empty(nbytes, np.uint8)


class TemporariesChain:
    """An elementwise chain on 1 MiB arrays: every operator allocates a temporary."""

    params = [["numpy", "on_node"]]
    param_names = ["allocator"]

    def setup(self, allocator):
        rng = np.random.default_rng(0)
        self.node = first_node()
        self.a = rng.random(1 << 17)  # 1 MiB of float64
        self.b = rng.random(1 << 17)
        self.allocator = allocator

    def _chain(self):
        a, b = self.a, self.b
        return ((a * b + a) / (b + 1.0) - np.sqrt(a)) * 0.5 + np.abs(a - b)

    def time_chain(self, allocator):
        if allocator == "on_node":
            with numamem.on_node(self.node):
                self._chain()
        else:
            self._chain()


class PoolChurn:
    """Allocate and free a mix of sizes repeatedly through the pool (NumPy default alongside)."""

    params = [["numpy", "on_node"]]
    param_names = ["allocator"]

    def setup(self, allocator):
        self.node = first_node()
        self.sizes = np.random.default_rng(1).integers(1, 300_000, size=200).tolist()
        self.allocator = allocator

    def time_churn(self, allocator):
        if allocator == "on_node":
            with numamem.on_node(self.node):
                for n in self.sizes:
                    np.empty(n, np.uint8)
        else:
            for n in self.sizes:
                np.empty(n, np.uint8)

    def track_pool_in_use_after(self, allocator):
        self.time_churn(allocator)
        return numamem.pool_stats().get((self.node, "bind"), {}).get("in_use", 0)
