"""Ray workers: actors that hold the model and call ``interpret``, and the pool that fans work out.

The only package that imports ray.
"""

from workers.actor import InfluenceWorker, WorkerSpec
from workers.cluster import PoolSettings, WorkerMismatchError, WorkerPoolError, WorkerTimeoutError, connect
from workers.pool import STestRefs, WorkerPool

__all__ = [
    "InfluenceWorker",
    "PoolSettings",
    "STestRefs",
    "WorkerMismatchError",
    "WorkerPool",
    "WorkerPoolError",
    "WorkerSpec",
    "WorkerTimeoutError",
    "connect",
]
