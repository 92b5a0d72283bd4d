"""The pool's actors: started, checked to hold the same checkpoint, replaced when they die.

Every actor reports its :class:`~interpret.explainer.Identity` when it has loaded; the set refuses to
start (and a replacement is refused) when one differs from the first or from what the caller expects
(the index manifest's model fingerprint, the data fingerprint).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Mapping

import ray
from ray.exceptions import GetTimeoutError, NodeDiedError, ObjectLostError, RayActorError, WorkerCrashedError

from interpret.explainer import Identity
from workers.actor import InfluenceWorker, WorkerSpec
from workers.cluster import PoolSettings, WorkerMismatchError, WorkerPoolError, WorkerTimeoutError, connect

WORKER_FAILURES = (RayActorError, ObjectLostError, WorkerCrashedError, NodeDiedError)
"""What a dead actor or node raises; anything else a call raises is the call's own error."""
MAX_DEFAULT_CPU_WORKERS = 4  # FastIF uses up to 4 repetitions; more CPU actors only add memory
ACTOR_ENV = {"MALLOC_ARENA_MAX": "2"}
"""glibc gives every thread that allocates its own malloc arena, and an actor's threads (the heavy and light
concurrency groups, torch's intra-op pool) spread memory over many arenas: two arenas lowered a loaded
server's resident memory by about 400 MiB in benchmarks/soak.py; the slow growth under traffic that was
left is what ``workers.actor.trim_heap_periodically`` removes (0.5% over the 10-minute soak)."""


class WorkerSet:
    """N verified actors by slot; thread-safe. ``get(slot)`` hands out a slot's live, verified actor."""

    def __init__(
        self, spec: WorkerSpec, settings: PoolSettings, expected: Mapping[str, object] | None = None
    ):
        connect()
        self.settings, self.spec = settings, spec.with_absolute_paths()
        self._expected = dict(expected or {})
        self._lock = threading.Lock()
        self._turn = itertools.count()
        resources = ray.cluster_resources()
        gpus = settings.gpus_per_worker
        self._gpus = gpus if gpus is not None else (1.0 if resources.get("GPU", 0) >= 1 else 0.0)
        # Ray's typed overloads leave out concurrency_groups, which ray.remote takes for actor classes.
        actor_class = ray.remote(concurrency_groups=InfluenceWorker.CONCURRENCY_GROUPS)(InfluenceWorker)  # type: ignore[call-overload]
        self._remote = actor_class.options(
            num_cpus=settings.cpus_per_worker,
            num_gpus=self._gpus,
            max_restarts=0,
            runtime_env={"env_vars": ACTOR_ENV},
        )
        count = settings.num_workers or self._default_size(resources)
        self._actors = [self._remote.remote(self.spec) for _ in range(count)]
        self._unverified: dict[int, ray.ObjectRef] = {}
        self.replacements = 0
        """Actors killed and replaced since start (a dead or hung worker): what operators watch."""
        try:
            identities = self._start_identities(resources)
            self.identity: Identity = identities[0]
            for identity in identities:
                self._check(identity)
            self.names = [identity.worker for identity in identities]
        except BaseException:
            self.shutdown()
            raise

    def _start_identities(self, resources: Mapping[str, float]) -> list[Identity]:
        """Wait for every actor to load the checkpoint; say why when they cannot."""
        try:
            return ray.get([a.identity.remote() for a in self._actors], timeout=self.settings.deadline_s)
        except GetTimeoutError:
            raise WorkerTimeoutError(
                f"{len(self._actors)} workers (each {self.settings.cpus_per_worker:g} CPU, "
                f"{self._gpus:g} GPU) did not start within {self.settings.deadline_s:g} s; "
                f"the cluster offers {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs: "
                "lower the worker count or add nodes"
            ) from None
        except RayActorError as error:  # __init__ raised: e.g. the model folder is missing on a node
            cause = str(error).strip().splitlines()
            raise WorkerPoolError(
                f"a worker failed to load {self.spec.model_dir}: {cause[-1] if cause else error}"
            ) from error

    def _default_size(self, resources: Mapping[str, float]) -> int:
        if self._gpus > 0:
            return max(1, int(resources.get("GPU", 0) // self._gpus))
        cpus = int(resources.get("CPU", 1) // self.settings.cpus_per_worker)
        return max(1, min(MAX_DEFAULT_CPU_WORKERS, cpus))

    def _check(self, identity: Identity) -> None:
        problem = identity.mismatch(self.identity)
        for name, value in self._expected.items():
            if problem is None and getattr(identity, name) != value:
                problem = (
                    f"worker {identity.worker} has {name}={getattr(identity, name)!r}, expected {value!r}"
                )
        if problem is not None:
            raise WorkerMismatchError(
                f"{problem}: every worker must load the same model folder and training data as the index"
            )

    def expect(self, **values: object) -> None:
        """What a worker started from now on must report (``Identity`` fields), beside the pool's own."""
        with self._lock:
            self._expected.update(values)

    @property
    def size(self) -> int:
        return len(self._actors)

    @property
    def actors(self) -> list:
        """The live actor handles, by slot (for operators and fault-injection tests)."""
        with self._lock:
            return list(self._actors)

    def slots(self, count: int) -> list[int]:
        """``count`` slots, rotating so concurrent queries spread over the pool."""
        first = next(self._turn)
        return [(first + i) % self.size for i in range(count)]

    def get(self, slot: int, deadline: float):
        """The slot's actor; a replacement is first checked to hold the very same checkpoint."""
        with self._lock:
            actor, pending = self._actors[slot], self._unverified.pop(slot, None)
        if pending is None:
            return actor
        try:
            identity = ray.get(pending, timeout=max(0.0, deadline - time.monotonic()))
            self._check(identity)
            self.names[slot] = identity.worker
        except GetTimeoutError:
            with self._lock:
                if self._actors[slot] is actor:
                    self._unverified[slot] = pending
            raise WorkerTimeoutError(
                f"a replacement worker did not load the model before the deadline (slot {slot})"
            ) from None
        except WORKER_FAILURES as error:
            self.replace(slot, actor)
            raise WorkerPoolError(f"a replacement worker died while loading the model: {error}") from error
        except WorkerMismatchError:
            self.replace(slot, actor)
            raise
        return actor

    def replace(self, slot: int, failed) -> None:
        """Kill ``failed`` and start a fresh actor in its slot (unless another caller already did)."""
        with self._lock:
            if self._actors[slot] is not failed:
                return
            ray.kill(failed)
            self.replacements += 1
            self._actors[slot] = self._remote.remote(self.spec)
            self._unverified[slot] = self._actors[slot].identity.remote()
            self.names[slot] = "(starting)"

    def cancel(self, request_id: str) -> None:
        """Tell every worker to stop the request's calls at their next step boundary (not waited for)."""
        for actor in self.actors:
            actor.cancel.options(concurrency_group="health").remote(request_id)

    def ping(self, timeout: float = 5.0) -> list[str | None]:
        """Each slot's worker name if it answered within ``timeout`` (even while busy), else ``None``."""
        refs = [actor.ping.options(concurrency_group="health").remote() for actor in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        names = []
        for ref in refs:
            try:
                names.append(ray.get(ref) if ref in ready else None)
            except WORKER_FAILURES:
                names.append(None)
        return names

    def running_requests(self, timeout: float = 5.0) -> list[str]:
        """The requests with a call running on any worker (asked in the ``health`` group, so a busy worker
        answers); a worker that does not answer within ``timeout`` is left out."""
        refs = [actor.running_requests.options(concurrency_group="health").remote() for actor in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        running: set[str] = set()
        for ref in ready:
            with contextlib.suppress(*WORKER_FAILURES):
                running.update(ray.get(ref))
        return sorted(running)

    def shutdown(self) -> None:
        for actor in getattr(self, "_actors", []):
            ray.kill(actor)
        self._actors = []
