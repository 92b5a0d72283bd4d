"""Retrains for ``influence evaluate lds`` as Ray tasks: one subset per task, one CPU (or GPU) each.

The task calls ``interpret.evaluation.retraining.retrain``, the same function the in-process path runs, so
a retrain is bit-for-bit the same wherever it ran (same seed, same rows, same config); the driver caches
what comes back.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def _retrain_task(spec, examples, rows: np.ndarray, threads: int):
    import torch

    from interpret.evaluation.retraining import retrain

    torch.set_num_threads(threads)
    return retrain(spec, examples, rows).numpy()


def ray_mapper(max_parallel: int | None = None, cpus_per_task: float = 1.0):
    """A ``mapper(spec, examples, rows_list)`` for ``tasks.evaluation.retrain_subsets`` that runs each
    retrain as a Ray task on the cluster this process joins (``RAY_ADDRESS``, else a local one) and yields
    ``(position, theta)`` as tasks finish, at most ``max_parallel`` at a time (``None``: as many as fit)."""

    def mapper(spec, examples, rows_list) -> Iterator[tuple[int, object]]:
        import ray
        import torch

        from workers.cluster import connect

        connect()
        task = ray.remote(num_cpus=cpus_per_task)(_retrain_task)
        examples_ref = ray.put(examples)
        threads = max(1, int(cpus_per_task))
        limit = max_parallel or max(1, int(ray.available_resources().get("CPU", 1) // cpus_per_task))
        waiting = list(enumerate(rows_list))
        running: dict = {}
        while waiting or running:
            while waiting and len(running) < limit:
                position, rows = waiting.pop(0)
                running[task.remote(spec, examples_ref, rows, threads)] = position
            finished, _ = ray.wait(list(running), num_returns=1)
            for reference in finished:
                # a copy: arrays read off the object store are read-only views
                yield running.pop(reference), torch.tensor(ray.get(reference))

    return mapper
