"""NUMA-bound Dask workers and node-placed dask arrays (optional extra: ``numamem[dask]``).

One worker process per node group, each bound to its node before it touches memory::

    dask worker SCHEDULER --nworkers 2 --preload numamem.dask            # nodes round-robin
    dask worker SCHEDULER --preload numamem.dask --numamem-nodes 1       # this one on node 1

or on one machine ``LocalCluster(processes=True, preload=["numamem.dask"])``, or for workers
already running ``client.register_plugin(numamem.dask.NumaWorkerPlugin())``. A bound worker's
tasks run on its node's CPUs and allocate on its node; it carries the resource ``numa-<node>``.

Arrays whose chunks live on chosen nodes, and reductions computed where the chunks are::

    x = numamem.dask.placed_array((8192, 4096), "float32", chunks=(1024, 4096), fill="random")
    total, = numamem.dask.compute((x @ w).sum())

See ``docs/scale-out.md``.
"""
from numamem._workerbind import NumaWorkerWarning, WorkerBinding
from numamem.dask._arrays import (
    chunk_nodes, compute, from_array, localize, persist, placed_array, task_nodes,
)
from numamem.dask._worker import (
    NumaWorkerPlugin, WorkerReport, dask_setup, dask_teardown, report, resource_name,
    worker_binding, worker_node,
)

__all__ = [
    "dask_setup", "dask_teardown", "NumaWorkerPlugin", "NumaWorkerWarning", "WorkerBinding",
    "WorkerReport", "report", "resource_name", "worker_binding", "worker_node",
    "placed_array", "from_array", "chunk_nodes", "localize", "compute", "persist", "task_nodes",
]
