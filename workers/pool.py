"""The pool's domain API: FastIF's parallel ``s_test`` and scoring, and the one-sentence calls.

* The T LiSSA repetitions run at once, one call each, spread over the workers.
* The all-reduce goes through the object store: every scoring call receives the T repetition vectors as
  references and averages them itself, in repetition order. The averaged vector never visits the driver,
  the result is bit-identical whatever the worker count, and a lost repetition is re-run alone. We chose
  this over ``ray.util.collective`` (gloo/NCCL) because a collective group dies with any member and blocks
  the survivors until its timeout, while here one failed part is retried on a fresh actor; for MiniLM's
  3.7M tracked parameters a vector is 15 MB, moved once per worker, next to ~60 s of LiSSA.
* Candidate scoring is sharded across the workers and the shards' scores are concatenated in order.

Lifecycle and identity checks live in ``workers.lifecycle``, retries and deadlines in ``workers.runner``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import ray

from index.gradient import GradientManifest
from interpret.attacks import AttackResult
from interpret.cancellation import RequestContext
from interpret.config import Config, QueryConfig
from interpret.data import AddedRows, DataSpec
from interpret.explainer import Explainer, Identity, STest, STestSummary, result_as
from interpret.influence.preconditioner import IndexCurvature
from interpret.influence.query import TestPoint
from interpret.s_test_plan import finished_s_test, s_test_plan
from interpret.saliency import SaliencyMap
from workers.actor import WorkerSpec
from workers.cluster import PoolSettings
from workers.lifecycle import WorkerSet
from workers.runner import Call, Runner
from workers.shards import ShardActors


@dataclass
class PendingSTest:
    """Repetitions in flight: returned by ``start_s_test``, consumed by ``finish_s_test``."""

    config: QueryConfig
    calls: list[Call]
    context: RequestContext


class WorkerPool:
    """N actors holding the same checkpoint; methods are safe to call from several threads."""

    def __init__(
        self,
        spec: WorkerSpec,
        settings: PoolSettings | None = None,
        expected: Mapping[str, object] | None = None,
    ):
        self.settings = settings or PoolSettings()
        self.workers = WorkerSet(spec, self.settings, expected)
        self.runner = Runner(self.workers, self.settings.max_retries, self.settings.deadline_s)
        self.identity: Identity = self.workers.identity
        self._shared_lock = threading.Lock()
        self._shared_key: str | None = None
        self._shared_ref: ray.ObjectRef | None = None

    @property
    def num_workers(self) -> int:
        return self.workers.size

    @property
    def replacements(self) -> int:
        return self.workers.replacements

    def ping(self) -> list[str | None]:
        return self.workers.ping()

    def load_added_rows(self, train_spec: DataSpec, added: AddedRows | None) -> None:
        """Every worker serves ``train_spec``'s rows with ``added`` after them; a worker started later (a
        replacement) loads them from its spec, and is checked against the new data fingerprint."""
        self.workers.spec = replace(self.workers.spec, train_spec=train_spec, added=added)
        calls = [
            Call(
                "load_added_rows",
                Explainer.load_added_rows,
                (train_spec, added),
                slot,
                self.runner.context(None),
            )
            for slot in range(self.workers.size)
        ]
        identities = [result_as(Identity, result["value"]) for result in self.runner.run(calls)]
        self.workers.expect(data_fingerprint=identities[0].data_fingerprint)
        self.identity = self.workers.identity = identities[0]

    def shutdown(self) -> None:
        self.workers.shutdown()

    def cancel(self, request_id: str) -> None:
        """Stop the request's calls on every worker at their next step boundary."""
        self.workers.cancel(request_id)

    def running_requests(self) -> list[str]:
        """The requests with a call running on any worker."""
        return self.workers.running_requests()

    def _one(self, name: str, method: Callable, args: tuple, context: RequestContext | None, group=None):
        """``method(*args)`` (an :class:`Explainer` method) on one worker; its value."""
        call = Call(name, method, args, self.workers.slots(1)[0], self.runner.context(context), group=group)
        return self.runner.run([call])[0]["value"]

    def prepare(
        self, text: str, pair: str | None, label: int | None, context: RequestContext | None = None
    ) -> TestPoint:
        """Prediction, label explained and kNN features of one input (computed on one worker)."""
        return self._one("prepare", Explainer.prepare, (text, pair, label), context, "light")

    def start_s_test(
        self,
        text: str,
        pair: str | None,
        label: int | None,
        config: QueryConfig,
        context: RequestContext | None = None,
        curvature: IndexCurvature | None = None,
    ) -> PendingSTest:
        """Start the T repetitions (or the one solve) and return at once."""
        context = self.runner.context(context)
        plan = s_test_plan(text, pair, label, config, curvature, self._shared)
        calls = [
            Call(planned.name, planned.method, planned.args, slot, context, planned.outputs, planned.keep)
            for planned, slot in zip(plan, self.workers.slots(len(plan)), strict=True)
        ]
        return PendingSTest(config, self.runner.start(calls), context)

    def finish_s_test(self, pending: PendingSTest, progress: bool = False) -> STest:
        """Wait for the repetitions (re-running lost ones); the report holds traces and spread."""
        results = self.runner.finish(pending.calls, "s_test" if progress else None)

        def summarize(vectors: tuple) -> STestSummary:  # on a worker: the vectors stay in the object store
            return self._one("summarize", Explainer.summarize, vectors, pending.context)

        return finished_s_test(pending.config, results, summarize)

    def s_test_nbytes(self, config: QueryConfig) -> int:
        """Object-store bytes one finished ``s_test`` holds (T vectors, or one for the exact solve)."""
        dtype = self.identity.dtype
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        return config.s_test_vectors * self.identity.num_parameters * itemsize

    def _shared(self, key: str, array: np.ndarray):
        """``array`` in the object store, put once per key (a kfac index's inverse: tens of MB that every
        ``index`` solve reads), so a query ships a reference instead of the matrix."""
        with self._shared_lock:
            if self._shared_key != key:
                self._shared_key, self._shared_ref = key, ray.put(array)
            return self._shared_ref

    def average(self, s_test: STest, context: RequestContext | None = None) -> np.ndarray:
        """The averaged ``s_test`` brought to the driver (for tests and benchmarks; queries never need it)."""
        return self._one("average", Explainer.average, tuple(s_test.vectors), context)

    def score(
        self,
        s_test: STest,
        rows: Sequence[int],
        block_size: int = 128,
        progress: bool = False,
        context: RequestContext | None = None,
        num_shards: int | None = None,
    ) -> np.ndarray:
        """Scores of ``rows`` (in that order), sharded over the workers, within the request's deadline."""
        context = self.runner.context(context)
        order = np.asarray(rows, dtype=np.int64)
        count = num_shards or self.settings.num_shards or self.num_workers
        shards = [s for s in np.array_split(order, count) if len(s)]
        calls = [
            Call(
                f"scoring shard {i} ({len(shard)} rows)",
                Explainer.score_shard,
                (shard, block_size, *s_test.vectors),
                slot,
                context,
            )
            for i, (shard, slot) in enumerate(zip(shards, self.workers.slots(len(shards)), strict=True))
        ]
        values = [r["value"] for r in self.runner.run(calls, "score" if progress else None)]
        return np.concatenate(values) if values else np.empty(0, dtype=np.float64)

    # ---------------------------------------------------------------------------- gradient index

    def projected_test_gradient(self, text, pair, label, projection, context=None) -> np.ndarray:
        """``g~_test`` through the index's projection, on one worker (a light call: one backward)."""
        args = (text, pair, label, projection)
        return self._one("projected test gradient", Explainer.projected_test_gradient, args, context, "light")

    def gradient_shards(self, chunks, projection, context=None) -> Iterator[tuple[int, np.ndarray]]:
        """Projected gradients of each chunk of training rows (one chunk per worker at a time)."""
        shards = self._waves("gradient shard", Explainer.gradient_shard, chunks, (projection,), context)
        return ((n, result_as(np.ndarray, value)) for n, value in shards)

    def kfac_factor_shards(self, chunks, rank, context=None) -> Iterator[tuple[int, dict]]:
        """Kronecker factor sums of each chunk of the fit sample (one chunk per worker at a time)."""
        shards = self._waves("factor shard", Explainer.kfac_factors, chunks, (rank,), context)
        return ((n, result_as(dict, value)) for n, value in shards)

    def _waves(
        self, name: str, method: Callable, chunks, args: tuple, context
    ) -> Iterator[tuple[int, object]]:
        """``method(chunk, *args)`` over the chunks, wave by wave over the workers; yields ``(chunk number,
        value)`` in order, so the caller can save (or add) each before the next wave."""
        for wave in range(0, len(chunks), self.num_workers):
            numbers = range(wave, min(wave + self.num_workers, len(chunks)))
            slots = self.workers.slots(len(numbers))
            calls = [
                Call(f"{name} {n}", method, (chunks[n], *args), slot, self.runner.context(context))
                for n, slot in zip(numbers, slots, strict=True)
            ]
            yield from zip(numbers, (r["value"] for r in self.runner.run(calls)), strict=True)

    def serve_shards(self, directory: Path, manifest: GradientManifest, max_bytes: int | None) -> ShardActors:
        """One Ray actor per shard of the gradient index (``workers.shards``): this process holds none."""
        return ShardActors(directory, manifest, max_bytes, self.settings.deadline_s)

    def projected_training_hessian(self, projection, context=None) -> np.ndarray:
        return self._one("projected Hessian", Explainer.projected_training_hessian, (projection,), context)

    def projection_layers(self, projection, context=None) -> list[dict]:
        return self._one("projection layers", Explainer.projection_layers, (projection,), context, "light")

    def _sharded(
        self, method: Callable, texts: Sequence[str], pairs: Sequence[str] | None, context, group=None
    ):
        context = self.runner.context(context)
        bounds = np.array_split(np.arange(len(texts)), min(len(texts), self.num_workers) or 1)
        calls = []
        for i, (chunk, slot) in enumerate(zip(bounds, self.workers.slots(len(bounds)), strict=True)):
            chunk_texts = [texts[j] for j in chunk]
            chunk_pairs = [pairs[j] for j in chunk] if pairs is not None else None
            arguments = (chunk_texts, chunk_pairs)
            calls.append(Call(f"{method.__name__} chunk {i}", method, arguments, slot, context, group=group))
        return np.concatenate([r["value"] for r in self.runner.run(calls)])

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, context: RequestContext | None = None
    ) -> np.ndarray:
        """kNN features of many texts, split over the workers."""
        return self._sharded(Explainer.encode, texts, pairs, context)

    def predict(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, context: RequestContext | None = None
    ) -> np.ndarray:
        """Class probabilities ``[N, C]``, split over the workers."""
        return self._sharded(Explainer.predict, texts, pairs, context, "light")

    def saliency(
        self, text: str, pair: str | None, method: str, label: int | None, params: Config, context=None
    ) -> SaliencyMap:
        """A saliency map computed on one worker, beside any long repetition."""
        return self._one(
            f"saliency {method}", Explainer.saliency, (text, pair, method, label, params), context, "light"
        )

    def attack(
        self,
        text: str,
        pair: str | None,
        method: str,
        label: int | None,
        target: int | None,
        params: Config,
        context=None,
    ) -> AttackResult:
        """An attack computed on one worker. A universal-trigger search runs over many training examples,
        so it queues with the heavy calls instead of holding up the light ones."""
        group = None if method == "triggers" else "light"
        args = (text, pair, method, label, target, params)
        return self._one(f"attack {method}", Explainer.attack, args, context, group)
