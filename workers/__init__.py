"""Ray workers: actors that hold the model and call ``interpret``, and the pool that fans work out.

The only package that imports ray. Names load on first use, so ``workers.cluster`` (settings and errors)
can be imported without starting or even importing ray.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "InfluenceWorker": "workers.actor",
    "WorkerSpec": "workers.actor",
    "PoolSettings": "workers.cluster",
    "WorkerMismatchError": "workers.cluster",
    "WorkerPoolError": "workers.cluster",
    "WorkerTimeoutError": "workers.cluster",
    "connect": "workers.cluster",
    "WorkerPool": "workers.pool",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
