"""Ray workers: actors that hold the model and call ``interpret``, and the pool that fans work out.

The only package that imports ray.
"""

from workers.actor import InfluenceWorker, WorkerSpec
from workers.pool import (
    PoolSettings,
    STestRefs,
    WorkerMismatchError,
    WorkerPool,
    WorkerPoolError,
    WorkerTimeoutError,
    connect,
)

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
