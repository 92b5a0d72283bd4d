"""A pool of :class:`~workers.actor.InfluenceWorker` actors: FastIF's parallel ``s_test`` and scoring.

* The T LiSSA repetitions run at once, one task each, spread over the workers.
* The all-reduce goes through the object store: every scoring task receives the T repetition vectors as
  references and averages them itself, in repetition order. The averaged vector never visits the driver,
  the result is bit-identical whatever the worker count, and a lost repetition is re-run alone. We chose
  this over ``ray.util.collective`` (gloo/NCCL) because a collective group dies with any member and blocks
  the survivors until its timeout, while here one failed part is retried on a fresh actor; for MiniLM's
  3.7M tracked parameters a vector is 15 MB, moved once per worker, next to ~60 s of LiSSA.
* Candidate scoring is sharded across the workers and the shards' scores are concatenated in order.
* Faults: a part whose actor dies is re-run on a replacement actor, at most ``max_retries`` times; then
  the caller gets :class:`WorkerPoolError` naming the part, the worker and the cause. Every call has a
  deadline; when it passes, the busy actors are killed and replaced, and :class:`WorkerTimeoutError` is
  raised. The next query finds a full pool either way.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import ray
from ray.exceptions import (
    GetTimeoutError,
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)
from tqdm.auto import tqdm

from interpret.influence.config import QueryConfig
from interpret.influence.lissa import LissaReport
from interpret.influence.query import TestPoint
from workers.actor import IDENTITY_FIELDS, InfluenceWorker, WorkerSpec
from workers.cluster import PoolSettings, WorkerMismatchError, WorkerPoolError, WorkerTimeoutError, connect

_WORKER_FAILURES = (RayActorError, ObjectLostError, WorkerCrashedError, NodeDiedError)
_MAX_DEFAULT_CPU_WORKERS = 4  # FastIF uses up to 4 repetitions; more CPU actors only add memory


@dataclass
class _Part:
    """One retryable unit of work: a LiSSA repetition, a scoring shard, a prepare call."""

    name: str
    submit: Callable[[object], list[ray.ObjectRef]]
    """Given an actor, start the call; the last ref is the one waited on and read back."""
    slot: int
    attempts: int = 0
    refs: list[ray.ObjectRef] = field(default_factory=list)
    actor: object = None
    worker: str = "?"
    value: object = None


@dataclass
class PendingSTest:
    """Repetitions in flight: returned by ``start_s_test``, consumed by ``finish_s_test``."""

    config: QueryConfig
    parts: list[_Part]
    deadline: float


@dataclass
class STestRefs:
    """A finished ``s_test``: its repetition vectors, still in the object store, and the query deadline."""

    vectors: list[ray.ObjectRef]
    deadline: float | None = None


class WorkerPool:
    """N actors holding the same checkpoint; methods are safe to call from several threads."""

    def __init__(
        self,
        spec: WorkerSpec,
        settings: PoolSettings | None = None,
        expected: Mapping[str, object] | None = None,
    ):
        connect()
        self.settings = settings or PoolSettings()
        self.spec = spec.with_absolute_paths()
        self._expected = dict(expected or {})
        self._lock = threading.Lock()
        self._turn = itertools.count()
        resources = ray.cluster_resources()
        gpus = self.settings.gpus_per_worker
        self._gpus = gpus if gpus is not None else (1.0 if resources.get("GPU", 0) >= 1 else 0.0)
        actor_class = ray.remote(concurrency_groups=InfluenceWorker.CONCURRENCY_GROUPS)(InfluenceWorker)
        self._remote = actor_class.options(
            num_cpus=self.settings.cpus_per_worker, num_gpus=self._gpus, max_restarts=0
        )
        count = self.settings.num_workers or self._default_size(resources)
        self._actors = [self._remote.remote(self.spec) for _ in range(count)]
        self._unverified: dict[int, ray.ObjectRef] = {}
        try:
            identities = self._start_identities(resources)
            self.identity = {name: identities[0][name] for name in IDENTITY_FIELDS}
            for identity in identities:
                self._check_identity(identity)
            self._names = [identity["worker"] for identity in identities]
        except BaseException:
            self.shutdown()
            raise

    def _start_identities(self, resources: Mapping[str, float]) -> list[dict]:
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
        return max(1, min(_MAX_DEFAULT_CPU_WORKERS, cpus))

    def _check_identity(self, identity: Mapping[str, object]) -> None:
        reference = {**self.identity, **self._expected}
        for name, value in reference.items():
            if identity.get(name) != value:
                raise WorkerMismatchError(
                    f"worker {identity['worker']} has {name}={identity.get(name)!r}, expected {value!r}: "
                    "every worker must load the same model folder and training data as the index"
                )

    @property
    def num_workers(self) -> int:
        return len(self._actors)

    @property
    def actors(self) -> list:
        """The live actor handles, by slot (for operators and fault-injection tests)."""
        with self._lock:
            return list(self._actors)

    def shutdown(self) -> None:
        for actor in getattr(self, "_actors", []):
            ray.kill(actor)
        self._actors = []

    def ping(self, timeout: float = 5.0) -> list[str | None]:
        """Each slot's worker name if it answered within ``timeout`` (even while busy), else ``None``."""
        refs = [actor.ping.remote() for actor in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        names = []
        for ref in refs:
            try:
                names.append(ray.get(ref) if ref in ready else None)
            except _WORKER_FAILURES:
                names.append(None)
        return names

    # ----------------------------------------------------------------- running parts with retries

    def _deadline(self) -> float:
        return time.monotonic() + self.settings.deadline_s

    def _slots(self, count: int) -> list[int]:
        """``count`` slots, rotating so concurrent queries spread over the pool."""
        first = next(self._turn)
        return [(first + i) % self.num_workers for i in range(count)]

    def _actor(self, slot: int, deadline: float):
        with self._lock:
            actor, pending = self._actors[slot], self._unverified.pop(slot, None)
        if pending is None:
            return actor
        try:  # a replacement: it must load the very same checkpoint
            identity = ray.get(pending, timeout=max(0.0, deadline - time.monotonic()))
            self._check_identity(identity)
            self._names[slot] = identity["worker"]
        except GetTimeoutError:
            self._restore_unverified(slot, actor, pending)
            raise WorkerTimeoutError(
                f"a replacement worker did not load the model before the deadline (slot {slot})"
            ) from None
        except _WORKER_FAILURES as error:
            self._replace(slot, actor)
            raise WorkerPoolError(f"a replacement worker died while loading the model: {error}") from error
        except WorkerMismatchError:
            self._replace(slot, actor)
            raise
        return actor

    def _restore_unverified(self, slot: int, actor, pending: ray.ObjectRef) -> None:
        with self._lock:
            if self._actors[slot] is actor:
                self._unverified[slot] = pending

    def _replace(self, slot: int, failed) -> None:
        with self._lock:
            if self._actors[slot] is not failed:
                return  # another part already replaced it
            ray.kill(failed)
            self._actors[slot] = self._remote.remote(self.spec)
            self._unverified[slot] = self._actors[slot].identity.remote()
            self._names[slot] = "(starting)"

    def _submit(self, part: _Part, deadline: float) -> None:
        part.actor = self._actor(part.slot, deadline)
        part.worker = self._names[part.slot]
        part.refs = part.submit(part.actor)

    def _start(self, parts: list[_Part], deadline: float) -> list[_Part]:
        for part in parts:
            self._submit(part, deadline)
        return parts

    def _finish(self, parts: list[_Part], deadline: float, progress: str | None = None) -> list[_Part]:
        """Wait for every part; re-run a part whose worker died; give up at the deadline."""
        pending = {part.refs[-1]: part for part in parts if part.value is None}
        bar = tqdm(total=len(parts), desc=progress, unit="part", disable=progress is None)
        while pending:
            remaining = deadline - time.monotonic()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, remaining))
            if not ready:
                self._abandon(list(pending.values()))
                raise WorkerTimeoutError(
                    f"{len(pending)} of {len(parts)} parts ({next(iter(pending.values())).name}, ...) were "
                    f"not done within the {self.settings.deadline_s:g} s deadline; those workers were "
                    "restarted. Raise the deadline or lower recursion_depth / k."
                )
            part = pending.pop(ready[0])
            if self._read(part, deadline):
                bar.update(1)
            else:
                pending[part.refs[-1]] = part
        bar.close()
        return parts

    def _read(self, part: _Part, deadline: float) -> bool:
        """Store the part's value; ``False`` when it was resubmitted after a worker failure."""
        try:
            part.value = ray.get(part.refs[-1])
            return True
        except RayTaskError as error:  # the call itself raised: a user error, re-raised as such
            raise (error.cause or error) from None
        except _WORKER_FAILURES as error:
            part.attempts += 1
            self._replace(part.slot, part.actor)
            if part.attempts > self.settings.max_retries:
                raise WorkerPoolError(
                    f"{part.name} failed on worker {part.worker} {part.attempts} time(s) "
                    f"(max_retries={self.settings.max_retries}): {type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}"
                ) from error
            self._submit(part, deadline)
            return False

    def _abandon(self, parts: Sequence[_Part]) -> None:
        for part in parts:
            self._replace(part.slot, part.actor)

    def _run(self, parts: list[_Part], deadline: float | None, progress: str | None = None) -> list:
        deadline = deadline or self._deadline()
        return [p.value for p in self._finish(self._start(parts, deadline), deadline, progress)]

    # ----------------------------------------------------------------- the calls

    def prepare(
        self, text: str, pair: str | None = None, label: int | None = None, deadline: float | None = None
    ) -> TestPoint:
        """Prediction, label explained and kNN features of one input (computed on one worker)."""
        part = _Part("prepare", lambda a: [a.prepare.remote(text, pair, label)], self._slots(1)[0])
        return self._run([part], deadline)[0]

    def start_s_test(
        self,
        text: str,
        pair: str | None,
        label: int | None,
        config: QueryConfig,
        deadline: float | None = None,
    ) -> PendingSTest:
        """Start the T repetitions (or the exact solve) and return at once."""
        deadline = deadline or self._deadline()
        if config.exact:
            damping = config.lissa.damping
            parts = [
                _Part(
                    "exact s_test",
                    lambda a: [a.exact_s_test.remote(text, pair, label, damping)] * 2,
                    self._slots(1)[0],
                )
            ]
        else:
            slots = self._slots(config.lissa.num_repetitions)
            parts = [
                _Part(
                    f"LiSSA repetition {r}",
                    lambda a, r=r: list(a.lissa_repetition.remote(text, pair, label, config.lissa, r)),
                    slot,
                )
                for r, slot in enumerate(slots)
            ]
        return PendingSTest(config, self._start(parts, deadline), deadline)

    def finish_s_test(
        self, pending: PendingSTest, progress: bool = False
    ) -> tuple[STestRefs, LissaReport | None]:
        """Wait for the repetitions (re-running lost ones); the report holds traces and spread."""
        self._finish(pending.parts, pending.deadline, "s_test" if progress else None)
        refs = STestRefs([part.refs[0] for part in pending.parts], pending.deadline)
        if pending.config.exact:
            return refs, None
        summary_part = _Part("summarize", lambda a: [a.summarize.remote(*refs.vectors)], self._slots(1)[0])
        summary = self._run([summary_part], pending.deadline)[0]
        reports = [part.value for part in pending.parts]
        report = LissaReport(
            pending.config.lissa,
            np.stack([r["trace"] for r in reports]),
            summary["relative_spread"],
            summary["s_test_norm"],
            [r["seconds"] for r in reports],
            [r["worker"] for r in reports],
        )
        return refs, report

    def s_test_nbytes(self, config: QueryConfig) -> int:
        """Object-store bytes one finished ``s_test`` holds (T vectors, or one for the exact solve)."""
        itemsize = np.dtype(self.identity["dtype"]).itemsize if self.identity["dtype"] != "bfloat16" else 2
        vectors = 1 if config.exact else config.lissa.num_repetitions
        return vectors * int(self.identity["num_parameters"]) * itemsize

    def s_test_vector(self, s_test: STestRefs, deadline: float | None = None) -> np.ndarray:
        """The averaged ``s_test`` brought to the driver (for tests and caches; queries never need it)."""
        part = _Part("average", lambda a: [a.averaged.remote(*s_test.vectors)], self._slots(1)[0])
        return self._run([part], deadline)[0]

    def score(
        self,
        s_test: STestRefs,
        rows: Sequence[int],
        block_size: int = 128,
        progress: bool = False,
        deadline: float | None = None,
        num_shards: int | None = None,
    ) -> np.ndarray:
        """Scores of ``rows`` (in that order), sharded over the workers, within the query's deadline."""
        rows = np.asarray(rows, dtype=np.int64)
        count = num_shards or self.settings.num_shards or self.num_workers
        shards = [s for s in np.array_split(rows, count) if len(s)]
        parts = [
            _Part(
                f"scoring shard {i} ({len(shard)} rows)",
                lambda a, shard=shard: [a.score.remote(shard, block_size, *s_test.vectors)],
                slot,
            )
            for i, (shard, slot) in enumerate(zip(shards, self._slots(len(shards)), strict=True))
        ]
        values = self._run(parts, deadline or s_test.deadline, "score" if progress else None)
        return np.concatenate(values) if values else np.empty(0, dtype=np.float64)

    def _sharded(self, method: str, texts: Sequence[str], pairs: Sequence[str] | None, deadline) -> list:
        bounds = np.array_split(np.arange(len(texts)), min(len(texts), self.num_workers) or 1)
        parts = []
        for i, (chunk, slot) in enumerate(zip(bounds, self._slots(len(bounds)), strict=True)):
            chunk_texts = [texts[j] for j in chunk]
            chunk_pairs = [pairs[j] for j in chunk] if pairs is not None else None
            parts.append(
                _Part(
                    f"{method} chunk {i}",
                    lambda a, t=chunk_texts, p=chunk_pairs: [getattr(a, method).remote(t, p)],
                    slot,
                )
            )
        return self._run(parts, deadline)

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, deadline: float | None = None
    ) -> np.ndarray:
        """kNN features of many texts, split over the workers."""
        return np.concatenate(self._sharded("encode", texts, pairs, deadline))

    def predict(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, deadline: float | None = None
    ) -> np.ndarray:
        """Class probabilities ``[N, C]``, split over the workers."""
        return np.concatenate(self._sharded("predict", texts, pairs, deadline))

    def saliency(
        self, text: str, pair: str | None, method: str, label: int | None, parameters: dict, deadline=None
    ):
        """A :class:`~interpret.saliency.SaliencyMap` computed on one worker."""
        call = lambda a: [a.saliency.remote(text, pair, method, label, parameters)]  # noqa: E731
        return self._run([_Part(f"saliency {method}", call, self._slots(1)[0])], deadline)[0]

    def attack(
        self,
        text: str,
        pair: str | None,
        method: str,
        label: int | None,
        target: int | None,
        parameters: dict,
        deadline=None,
    ):
        """An :class:`~interpret.attacks.AttackResult` computed on one worker."""
        name = "search_attack" if method == "triggers" else "attack"
        call = lambda a: [getattr(a, name).remote(text, pair, method, label, target, parameters)]  # noqa: E731
        return self._run([_Part(f"attack {method}", call, self._slots(1)[0])], deadline)[0]
