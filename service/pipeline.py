"""The request path in one place (:func:`answer_query`), over an in-process or a Ray-pool backend.

1. encode the query: prediction, the label explained (the predicted one unless given), kNN features;
2. start ``s_test`` (on workers this is not awaited: it does not depend on the kNN search), and search
   the index for k candidates meanwhile;
3. score the candidates with the one averaged ``s_test``;
4. rank: top helpful / harmful, with timings and the LiSSA report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from index import FeatureIndex, load_index, read_manifest
from interpret.attacks import AttackResult, attack
from interpret.checkpoint import card_data_spec, load_checkpoint, read_card
from interpret.data import DataSpec, ExampleSet, load_examples
from interpret.influence import (
    InfluenceAnswer,
    LissaReport,
    QueryConfig,
    TestPoint,
    exact_s_test,
    lissa_s_test,
    prepare_test_point,
    rank,
    score_rows,
    training_hessian,
)
from interpret.models import encode_features
from interpret.saliency import SaliencyMap, TextClassifier, saliency
from service.cache import STestCache

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_SST2 = REPO_ROOT.parent / "shared" / "data" / "sst2"

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def sst2_spec(split: str) -> DataSpec:
    """SST-2 from ``../shared/data/sst2`` when present, else GLUE's copy on the hub."""
    local = LOCAL_SST2 / ("train.tsv" if split == "train" else "dev.tsv")
    if local.is_file():
        return DataSpec(str(local))
    return DataSpec(f"hub:glue/sst2:{'train' if split == 'train' else 'validation'}", text_column="sentence")


class InfluenceBackend(Protocol):
    """Where the model compute of a query runs: in this process, or on a Ray worker pool."""

    def prepare(self, text: str, pair: str | None, label: int | None) -> TestPoint: ...

    def start_s_test(self, text: str, pair: str | None, label: int | None, config: QueryConfig): ...

    def finish_s_test(self, pending, progress: bool = False) -> tuple[object, LissaReport | None]: ...

    def score(self, s_test, rows: np.ndarray, block_size: int, progress: bool = False) -> np.ndarray: ...

    def s_test_nbytes(self, config: QueryConfig) -> int: ...

    def predict(self, texts: list[str], pairs: list[str] | None) -> np.ndarray: ...

    def encode(self, texts: list[str], pairs: list[str] | None) -> np.ndarray: ...

    def saliency(self, text: str, pair: str | None, method: str, label: int | None, parameters: dict): ...

    def attack(self, text: str, pair: str | None, method: str, label, target, parameters: dict): ...


class LocalBackend:
    """Everything in this process, one repetition after another: the single-process reference."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        self.theta = checkpoint.tracked.parameters()
        self.classifier = TextClassifier.of(checkpoint.tracked)
        self._hessian: torch.Tensor | None = None
        self.progress = False

    def hessian(self) -> torch.Tensor:
        """The explicit training Hessian, computed once (only for small tracked sets)."""
        if self._hessian is None:
            self._hessian = training_hessian(self.checkpoint.tracked, self.theta, self.checkpoint.train)
        return self._hessian

    def prepare(self, text: str, pair: str | None, label: int | None) -> TestPoint:
        return prepare_test_point(self.checkpoint.tracked, self.theta, text, pair, label)

    def start_s_test(self, text: str, pair: str | None, label: int | None, config: QueryConfig):
        v = self.prepare(text, pair, label).v
        if config.exact:
            return exact_s_test(self.hessian(), v, config.lissa.damping), None
        result = lissa_s_test(
            self.checkpoint.tracked, self.theta, v, self.checkpoint.train, config.lissa, self.progress
        )
        return result.s_test, result.report()

    def finish_s_test(self, pending, progress: bool = False):
        return pending

    def s_test_nbytes(self, config: QueryConfig) -> int:
        return self.theta.numel() * self.theta.element_size()

    def predict(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        return self.checkpoint.tracked.probabilities(texts, pairs)

    def encode(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        return encode_features(self.checkpoint.tracked, texts, pairs, progress=False)

    def saliency(self, text: str, pair: str | None, method: str, label: int | None, parameters: dict):
        return saliency(self.classifier, text, method, pair, label, **parameters)

    def attack(self, text: str, pair: str | None, method: str, label, target, parameters: dict):
        examples = self.checkpoint.examples
        return attack(self.classifier, text, method, pair, label, target, examples, **parameters)

    def score(self, s_test, rows: np.ndarray, block_size: int, progress: bool = False) -> np.ndarray:
        checkpoint = self.checkpoint
        return score_rows(
            checkpoint.tracked, self.theta, s_test, checkpoint.train, rows, block_size, progress=progress
        )


def answer_query(
    backend: InfluenceBackend,
    examples: ExampleSet,
    search: SearchFn | None,
    text: str,
    pair: str | None = None,
    label: int | None = None,
    config: QueryConfig | None = None,
    progress: bool = False,
    cache: STestCache | None = None,
    cache_scope: str = "",
) -> InfluenceAnswer:
    """Which training examples made this prediction, the FastIF way.

    With ``config.k`` and a ``search``, only the k nearest training examples in feature space are scored;
    with ``config.k=None`` every one is (the full-scan reference). ``timings["s_test"]`` is the wall time
    from starting ``s_test`` until it was ready; on workers it overlaps the kNN search. With a ``cache``,
    an ``s_test`` already computed for the same input, label and LiSSA config (under ``cache_scope``, the
    model fingerprint) is reused.
    """
    config = config or QueryConfig()
    if config.k is not None and search is None:
        raise ValueError("k was given but no index is loaded; build one or use a full scan (k=None)")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    # Encode first: a few milliseconds, and on a busy pool it would otherwise queue behind a repetition.
    point = backend.prepare(text, pair, label)
    timings["encode"] = time.perf_counter() - start
    clock = time.perf_counter()
    key = (cache_scope, text, pair, point.label, config.exact, config.lissa)
    cached = cache.get(key) if cache is not None else None
    pending = None if cached is not None else backend.start_s_test(text, pair, point.label, config)

    search_clock = time.perf_counter()
    distances = None
    if config.k is not None:
        rows, distances = search(point.features, min(config.k, len(examples)))
    else:
        rows = np.arange(len(examples))
    timings["search"] = time.perf_counter() - search_clock

    s_test, report = cached if cached is not None else backend.finish_s_test(pending, progress)
    if cached is None and cache is not None:
        cache.put(key, (s_test, report), backend.s_test_nbytes(config))
    timings["s_test"] = time.perf_counter() - clock
    clock = time.perf_counter()
    scores = backend.score(s_test, rows, config.score_batch_size, progress)
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
        report,
        timings,
        s_test_cached=cached is not None,
    )


class Engine:
    """A backend, the training examples (for texts) and the kNN index: answers influence queries."""

    backend: InfluenceBackend
    examples: ExampleSet
    index: FeatureIndex | None
    fingerprint: str
    num_labels: int
    num_parameters: int
    tracked_layers: int | str
    num_workers: int = 1

    def ping(self) -> list[str | None]:
        """Names of the compute workers that answer (``None`` for one that does not)."""
        return ["in-process"]

    def query(
        self,
        text: str,
        pair: str | None = None,
        label: int | None = None,
        config: QueryConfig | None = None,
        progress: bool = False,
        cache: STestCache | None = None,
    ) -> InfluenceAnswer:
        search = self.index.search if self.index is not None else None
        return answer_query(
            self.backend, self.examples, search, text, pair, label, config, progress, cache, self.fingerprint
        )


class LocalEngine(Engine):
    """The model, the training examples and the index, all in this process."""

    def __init__(
        self,
        model_dir: str | Path,
        train_spec: DataSpec | None = None,
        index_dir: str | Path | None = None,
        tracked_layers: int | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        checkpoint = load_checkpoint(model_dir, train_spec, tracked_layers, dtype)
        self.card, self.tracked, self.train = checkpoint.card, checkpoint.tracked, checkpoint.train
        self.examples, self.fingerprint = checkpoint.examples, checkpoint.fingerprint
        self.backend = LocalBackend(checkpoint)
        self.num_labels = int(self.tracked.model.config.num_labels)
        self.num_parameters, self.tracked_layers = self.tracked.num_parameters, self.tracked.tracked_layers
        self.index = None
        if index_dir is not None:
            self.index = load_index(index_dir, self.fingerprint, self.examples.fingerprint)

    def hessian(self) -> torch.Tensor:
        return self.backend.hessian()

    def query(self, *args, progress: bool = False, **kwargs) -> InfluenceAnswer:
        self.backend.progress = progress
        return super().query(*args, progress=progress, **kwargs)


class PooledEngine(Engine):
    """Model compute on a Ray worker pool; this process holds only the texts and the index."""

    def __init__(
        self,
        model_dir: str | Path,
        train_spec: DataSpec | None = None,
        index_dir: str | Path | None = None,
        tracked_layers: int | str | None = None,
        dtype: str = "float32",
        settings=None,
    ):
        from workers import PoolSettings, WorkerPool, WorkerSpec

        self.card = read_card(model_dir)
        train_spec = train_spec or card_data_spec(self.card)
        if train_spec is None:
            raise ValueError(f"{model_dir}: no card.json naming the training data; pass the training data")
        self.examples = load_examples(train_spec)
        expected = {"data_fingerprint": self.examples.fingerprint}
        if index_dir is not None:  # every worker must hold the weights the index was built with
            expected["model_fingerprint"] = read_manifest(index_dir).model_fingerprint
        spec = WorkerSpec(str(model_dir), train_spec, tracked_layers, dtype)
        self.pool = WorkerPool(spec, settings or PoolSettings(), expected)
        self.backend = self.pool
        self.num_workers = self.pool.num_workers
        identity = self.pool.identity
        self.fingerprint, self.num_labels = identity["model_fingerprint"], identity["num_labels"]
        self.num_parameters, self.tracked_layers = identity["num_parameters"], identity["tracked_layers"]
        self.index = None
        if index_dir is not None:
            try:
                self.index = load_index(index_dir, self.fingerprint, self.examples.fingerprint)
            except BaseException:
                self.pool.shutdown()
                raise

    def ping(self) -> list[str | None]:
        return self.pool.ping()

    def shutdown(self) -> None:
        self.pool.shutdown()


TRACE_POINTS = 50


def answer_to_dict(answer: InfluenceAnswer, config: QueryConfig) -> dict:
    """JSON view of an answer: the ``InfluenceResult`` schema of the API and ``influence query --json``."""
    lissa = None
    if answer.lissa is not None:
        traces = answer.lissa.norm_traces
        step = max(1, traces.shape[1] // TRACE_POINTS)
        lissa = {
            "config": {k: v for k, v in asdict(answer.lissa.config).items() if k != "divergence_bound"},
            "final_norm": [float(t[-1]) for t in traces],
            "norm_trace": [[float(x) for x in t[step - 1 :: step]] for t in traces],
            "relative_spread": answer.lissa.relative_spread,
            "s_test_norm": answer.lissa.s_test_norm,
            "seconds": answer.lissa.seconds,
            "workers": answer.lissa.workers,
        }
    return {
        "prediction": {"label": answer.predicted_label, "probabilities": answer.probabilities},
        "label_used": answer.label_used,
        "helpful": [asdict(e) for e in answer.helpful],
        "harmful": [asdict(e) for e in answer.harmful],
        "quality": {
            "timings_s": answer.timings,
            "candidates": len(answer.candidate_rows),
            "k": config.k,
            "exact": config.exact,
            "cached_s_test": answer.s_test_cached,
            "lissa": lissa,
        },
    }


def saliency_to_dict(result: SaliencyMap) -> dict:
    """The ``SaliencyResponse`` view of a saliency map."""
    predicted = int(np.argmax(result.probabilities))
    return {
        "method": result.method,
        "tokens": result.tokens,
        "word_ids": result.word_ids,
        "scores": result.scores,
        "raw_scores": result.raw_scores,
        "label_explained": result.label,
        "prediction": {"label": predicted, "probabilities": result.probabilities},
        "extra": result.extra,
    }


def attack_to_dict(result: AttackResult) -> dict:
    """The ``AttackResponse`` view of an attack."""

    def prediction(probabilities: list[float]) -> dict:
        return {"label": int(np.argmax(probabilities)), "probabilities": probabilities}

    return {
        "method": result.method,
        "original": result.original,
        "final": result.final,
        "outputs_before": prediction(result.outputs_before),
        "outputs_after": [prediction(p) for p in result.outputs_after],
        "edits": [asdict(edit) for edit in result.edits],
        "success": result.success,
        "extra": result.extra,
    }
