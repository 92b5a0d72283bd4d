"""The request path in one place (:func:`answer_query`), over an in-process or a Ray-pool backend.

1. encode the query: prediction, the label explained (the predicted one unless given), kNN features;
2. start ``s_test`` (on workers this is not awaited: it does not depend on the kNN search), and search
   the index for k candidates meanwhile;
3. score the candidates with the one averaged ``s_test``;
4. rank: top helpful / harmful, with timings and the LiSSA report.

Both backends present :class:`Backend`; both run the same :class:`~interpret.explainer.Explainer`
methods (in this process, or on Ray actors that are that class), so they give the same answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from index import FeatureIndex, Manifest, build_index, empty_index, load_index, read_manifest
from interpret.attacks import AttackResult
from interpret.cancellation import RequestContext
from interpret.checkpoint import card_data_spec, read_card
from interpret.config import Checked, QueryConfig
from interpret.data import DataSpec, ExampleSet, load_examples
from interpret.explainer import Explainer, Identity, STest, lissa_report
from interpret.influence import InfluenceAnswer, TestPoint, rank
from interpret.saliency import SaliencyMap
from service.cache import STestCache


class Backend(Protocol):
    """Where the model compute of a request runs: in this process, or on a Ray worker pool.

    ``context`` is the request's (its id and wall-clock deadline; never a cached value's): every call stops
    at its next step boundary once the request is cancelled (``cancel``) or past its deadline."""

    identity: Identity
    num_workers: int
    replacements: int
    """Workers killed and replaced so far (a dead or hung one; never a cancelled or late request)."""

    def ping(self) -> list[str | None]: ...

    def prepare(
        self, text: str, pair: str | None, label: int | None, context: RequestContext | None = None
    ) -> TestPoint: ...

    def start_s_test(
        self,
        text: str,
        pair: str | None,
        label: int | None,
        config: QueryConfig,
        context: RequestContext | None = None,
    ) -> object: ...

    def finish_s_test(self, pending: object, progress: bool = False) -> STest: ...

    def score(
        self,
        s_test: STest,
        rows: np.ndarray,
        block_size: int,
        progress: bool = False,
        context: RequestContext | None = None,
    ) -> np.ndarray: ...

    def s_test_nbytes(self, config: QueryConfig) -> int: ...

    def predict(
        self, texts: list[str], pairs: list[str] | None, context: RequestContext | None = None
    ) -> np.ndarray: ...

    def encode(
        self, texts: list[str], pairs: list[str] | None, context: RequestContext | None = None
    ) -> np.ndarray: ...

    def saliency(
        self, text: str, pair: str | None, method: str, label: int | None, params: Checked, context=None
    ) -> SaliencyMap: ...

    def attack(
        self, text: str, pair: str | None, method: str, label, target, params: Checked, context=None
    ) -> AttackResult: ...

    def cancel(self, request_id: str) -> None: ...

    def shutdown(self) -> None: ...


@dataclass
class _LocalPending:
    text: str
    pair: str | None
    label: int | None
    config: QueryConfig
    context: RequestContext | None


class LocalBackend:
    """One :class:`Explainer` in this process, one repetition after another: the single-process reference.
    Calls run on the caller's thread; ``cancel`` (from any thread) stops them at the next step boundary."""

    num_workers = 1
    replacements = 0

    def __init__(self, explainer: Explainer):
        self.explainer = explainer
        self.identity = explainer.identity()

    def ping(self) -> list[str | None]:
        return [self.explainer.ping()]

    def prepare(
        self, text: str, pair: str | None, label: int | None, context: RequestContext | None = None
    ) -> TestPoint:
        return self.explainer.run(context, "prepare", text, pair, label)

    def start_s_test(
        self, text, pair, label, config: QueryConfig, context: RequestContext | None = None
    ) -> _LocalPending:
        # Computed in finish_s_test (with its progress bar): in one process nothing runs alongside.
        return _LocalPending(text, pair, label, config, context)

    def finish_s_test(self, pending: _LocalPending, progress: bool = False) -> STest:
        run, config, context = self.explainer.run, pending.config, pending.context
        point = (pending.text, pending.pair, pending.label)
        if config.exact:
            return STest([run(context, "solve", *point, config.lissa.damping)], None)
        runs = [
            run(context, "lissa_repetition", *point, config.lissa, r, progress)
            for r in range(config.lissa.num_repetitions)
        ]
        vectors = [vector for vector, _ in runs]
        summary = self.explainer.summarize(*vectors)
        return STest(vectors, lissa_report(config.lissa, [report for _, report in runs], summary))

    def score(self, s_test: STest, rows, block_size: int, progress: bool = False, context=None) -> np.ndarray:
        rows = np.asarray(rows)
        return self.explainer.run(
            context, "score_shard", rows, block_size, *s_test.vectors, progress=progress
        )

    def s_test_nbytes(self, config: QueryConfig) -> int:
        vectors = 1 if config.exact else config.lissa.num_repetitions
        return vectors * self.explainer.theta.numel() * self.explainer.theta.element_size()

    def predict(self, texts, pairs, context=None) -> np.ndarray:
        return self.explainer.run(context, "predict", texts, pairs)

    def encode(self, texts, pairs, context=None) -> np.ndarray:
        return self.explainer.run(context, "encode", texts, pairs)

    def saliency(self, text, pair, method, label, params: Checked, context=None) -> SaliencyMap:
        return self.explainer.run(context, "saliency", text, pair, method, label, params)

    def attack(self, text, pair, method, label, target, params: Checked, context=None) -> AttackResult:
        return self.explainer.run(context, "attack", text, pair, method, label, target, params)

    def cancel(self, request_id: str) -> None:
        self.explainer.cancel(request_id)

    def shutdown(self) -> None:
        pass


@dataclass
class Engine:
    """A backend, the training examples (for texts), the kNN index and the model card."""

    backend: Backend
    examples: ExampleSet
    index: FeatureIndex | None
    card: dict

    @property
    def identity(self) -> Identity:
        return self.backend.identity

    def shutdown(self) -> None:
        self.backend.shutdown()


def _index(index_dir: str | Path | None, identity: Identity) -> FeatureIndex | None:
    return (
        None
        if index_dir is None
        else load_index(index_dir, identity.model_fingerprint, identity.data_fingerprint)
    )


def local_engine(
    model_dir: str | Path,
    train_spec: DataSpec | None = None,
    index_dir: str | Path | None = None,
    tracked_layers: int | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Engine:
    """The model, the training examples and the index, all in this process."""
    explainer = Explainer.load(model_dir, train_spec, tracked_layers, dtype)
    backend = LocalBackend(explainer)
    checkpoint = explainer.checkpoint
    return Engine(backend, checkpoint.examples, _index(index_dir, backend.identity), checkpoint.card)


def pooled_engine(
    model_dir: str | Path,
    train_spec: DataSpec | None = None,
    index_dir: str | Path | None = None,
    tracked_layers: int | str | None = None,
    dtype: str = "float32",
    settings=None,
    trust_remote_code: bool = False,
) -> Engine:
    """Model compute on a Ray worker pool; this process holds only the texts and the index."""
    from workers import PoolSettings, WorkerPool, WorkerSpec

    card = read_card(model_dir)
    train_spec = train_spec or card_data_spec(card)
    if train_spec is None:
        raise ValueError(f"{model_dir}: no card.json naming the training data; pass the training data")
    examples = load_examples(train_spec)
    expected = {"data_fingerprint": examples.fingerprint}
    if index_dir is not None:  # every worker must hold the weights the index was built with
        expected["model_fingerprint"] = read_manifest(index_dir).model_fingerprint
    spec = WorkerSpec(str(model_dir), train_spec, tracked_layers, dtype, trust_remote_code)
    pool = WorkerPool(spec, settings or PoolSettings(), expected)
    try:
        return Engine(pool, examples, _index(index_dir, pool.identity), card)
    except BaseException:
        pool.shutdown()
        raise


ENCODE_CHUNK = 2048
"""Training texts per encode call of an index build: its progress (and on a pool, its sharding) grain."""


def build_knn_index(
    engine: Engine,
    directory: str | Path,
    factory: str = "Flat",
    metric: str = "l2",
    progress: Callable[[int, int], None] | None = None,
    context: RequestContext | None = None,
) -> Manifest:
    """Encode the training set through the engine's backend (the same ``features`` queries use) and write
    the FAISS index atomically. The factory string is checked before any encoding."""
    examples, identity = engine.examples, engine.identity
    empty_index(identity.feature_dim, factory, metric)
    starts = range(0, len(examples), ENCODE_CHUNK)
    parts = []
    for done, start in enumerate(starts):
        texts = examples.texts[start : start + ENCODE_CHUNK]
        pairs = examples.pairs[start : start + ENCODE_CHUNK] if examples.pairs is not None else None
        parts.append(engine.backend.encode(texts, pairs, context))
        if progress is not None:
            progress(done + 1, len(starts))
    fingerprints = (identity.model_fingerprint, identity.data_fingerprint)
    return build_index(np.concatenate(parts), directory, *fingerprints, factory, metric)


def answer_query(
    engine: Engine,
    text: str,
    pair: str | None = None,
    label: int | None = None,
    config: QueryConfig | None = None,
    progress: bool = False,
    cache: STestCache | None = None,
    context: RequestContext | None = None,
) -> InfluenceAnswer:
    """Which training examples made this prediction, the FastIF way.

    With ``config.k`` and an index, only the k nearest training examples in feature space are scored;
    with ``config.k=None`` every one is (the full-scan reference). ``timings["s_test"]`` is the wall time
    from starting ``s_test`` until it was ready; on workers it overlaps the kNN search. With a ``cache``,
    an ``s_test`` already computed for the same model, input, label and LiSSA config is reused. The
    ``context`` is this request's (id and deadline): a cached ``s_test`` carries none.
    """
    config = config or QueryConfig()
    backend, examples = engine.backend, engine.examples
    if config.k is not None and engine.index is None:
        raise ValueError("k was given but no index is loaded; build one or use a full scan (k=None)")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    # Encode first: a few milliseconds, and on a busy pool it would otherwise queue behind a repetition.
    point = backend.prepare(text, pair, label, context)
    timings["encode"] = time.perf_counter() - start
    clock = time.perf_counter()
    key = (engine.identity.model_fingerprint, text, pair, point.label, config.exact, config.lissa)
    cached = cache.get(key) if cache is not None else None
    pending = None if cached is not None else backend.start_s_test(text, pair, point.label, config, context)

    search_clock = time.perf_counter()
    distances = None
    if config.k is not None:
        rows, distances = engine.index.search(point.features, min(config.k, len(examples)))
    else:
        rows = np.arange(len(examples))
    timings["search"] = time.perf_counter() - search_clock

    s_test = cached if cached is not None else backend.finish_s_test(pending, progress)
    if cached is None and cache is not None:
        cache.put(key, s_test, backend.s_test_nbytes(config))
    timings["s_test"] = time.perf_counter() - clock
    clock = time.perf_counter()
    scores = backend.score(s_test, rows, config.score_batch_size, progress, context)
    timings["score"] = time.perf_counter() - clock
    timings["total"] = time.perf_counter() - start
    helpful, harmful = rank(examples, rows, scores, distances, config.top)
    return InfluenceAnswer(
        point.predicted_label,
        point.probabilities,
        point.label,
        helpful,
        harmful,
        rows,
        scores,
        distances,
        s_test.report,
        timings,
        s_test_cached=cached is not None,
    )
