"""``influence evaluate``: how far the answers can be trusted, measured against retraining.

* ``loo``: on the convex head (the final linear layer refitted to convergence on frozen features, with an
  L2 term equal to the damping), the predicted leave-one-out change of test losses against the actual
  one for the most influential rows of several test points (``interpret.evaluation.convex``).
* ``lds``: the linear datamodeling score. Random subsets of the training set are retrained (the convex
  head on all rows, or the default tracked set by repeating ``influence train``); for each test point the
  Spearman correlation, over subsets, of a method's predicted effect (the sum of its scores over the
  subset) with the measured test loss; averaged over test points, with a bootstrap interval.
* ``recall``: recall@m of a method's helpful and harmful lists against the full scan.

Each run returns a typed report (``tasks.reports``); ``tasks.plots.write_report`` stores it as one JSON
and one plot; ``tasks.registry`` runs each by name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from engine.builds import over_examples
from engine.cache import DEFAULT_MAX_BYTES, STestCache
from engine.pipeline import Engine, answer_query
from interpret.cancellation import RequestContext
from interpret.cancellation import checkpoint as step_boundary
from interpret.checkpoint import DEFAULT_MAX_LENGTH
from interpret.config import (
    EvaluatedMethod,
    EvaluationConfig,
    GradientIndexConfig,
    QueryConfig,
    evaluated_query,
)
from interpret.data import ExampleSet
from interpret.evaluation.convex import ConvexHead
from interpret.evaluation.metrics import (
    bootstrap_interval,
    most_influential,
    pearson_spearman,
    per_test_spearman,
    predicted_removal_effect,
    random_subsets,
    subset_effects,
)
from interpret.evaluation.retraining import RetrainCache, RetrainSpec, retrain, test_losses
from interpret.influence.metrics import top_lists_recall
from interpret.models import TrackedModel, load_classifier
from tasks.reports import Interval, LdsReport, LooPoint, LooReport, RecallReport

DEFAULTS = EvaluationConfig()
S_TEST_ENTRIES = 4
"""An evaluation's s_test cache: fastif and full on the same test point share one ``s_test``."""


def shared_s_tests() -> STestCache:
    return STestCache(S_TEST_ENTRIES, DEFAULT_MAX_BYTES)


Progress = Callable[[int, int], None]


def _none_for_nan(values: Iterable[float]) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in values]


def sample_rows(count: int, size: int | None, seed: int) -> np.ndarray:
    """``size`` seeded rows of ``range(count)`` in increasing order (all of them for ``None``)."""
    if size is None or size >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))


# --------------------------------------------------------------------------------------- convex head
def head_features(engine: Engine, examples: ExampleSet, progress: Progress | None = None) -> np.ndarray:
    """The features of ``examples`` (input of the final linear layer); the training set's come from the kNN
    index when it is a flat one (the same vectors, already computed)."""
    if examples is engine.examples and engine.index is not None:
        stored = engine.index.vectors()
        if stored is not None:
            return stored
    return over_examples(engine.backend.encode, examples, progress)


def fit_head(engine: Engine, damping: float, progress: Progress | None = None) -> ConvexHead:
    examples = engine.training_examples()
    features = head_features(engine, examples, progress)
    return ConvexHead.train(features, examples.labels, engine.identity.num_labels, damping)


def loo_head(
    head: ConvexHead,
    test_features: np.ndarray,
    test: ExampleSet,
    test_rows: np.ndarray,
    m: int = DEFAULTS.m,
    progress: Progress | None = None,
) -> LooReport:
    """For each test point, remove each of its ``m`` most influential rows in turn, refit the head to
    convergence, and compare the test loss's change with ``-I(z, t) / N``."""
    labels = test.labels[test_rows]
    scores = head.influence(test_features, labels)
    before = head.test_losses(head.weights, test_features, labels)
    points = []
    for position, row in enumerate(test_rows):
        rows = most_influential(scores[position], m)
        actual = []
        for train_row in rows:
            step_boundary()
            weights = np.ones(head.num_examples)
            weights[train_row] = 0.0
            retrained = head.retrain(weights)
            after = head.test_losses(
                retrained, test_features[position : position + 1], labels[position : position + 1]
            )
            actual.append(float(after[0] - before[position]))
        predicted = predicted_removal_effect(scores[position, rows], head.num_examples)
        points.append(
            LooPoint(test_row=int(row), train_rows=rows.tolist(), predicted=predicted.tolist(), actual=actual)
        )
        if progress is not None:
            progress(position + 1, len(test_rows))
    pearson, spearman = pearson_spearman(
        np.concatenate([p.predicted for p in points]), np.concatenate([p.actual for p in points])
    )
    config = {"m": m, "damping": head.damping, "train_rows": head.num_examples, "test_points": len(test_rows)}
    return LooReport(
        config=config, points=points, summary={"loo_pearson_head": pearson, "loo_spearman_head": spearman}
    )


def lds_head(
    head: ConvexHead,
    test_features: np.ndarray,
    test: ExampleSet,
    test_rows: np.ndarray,
    subsets: int = DEFAULTS.subsets,
    fraction: float = DEFAULTS.fraction,
    seed: int = DEFAULTS.seed,
    progress: Progress | None = None,
) -> LdsReport:
    """LDS of the exact influence on the convex head: every subset refitted to convergence."""
    labels = test.labels[test_rows]
    start = time.perf_counter()
    masks = random_subsets(head.num_examples, subsets, fraction, seed)
    measured = np.empty((subsets, len(test_rows)))
    for number, mask in enumerate(masks):
        step_boundary()
        # mean loss over the subset: weight N/|S| on its rows under the head's 1/N normalisation
        weights = mask * (head.num_examples / mask.sum())
        measured[number] = head.test_losses(head.retrain(weights), test_features, labels)
        if progress is not None:
            progress(number + 1, subsets)
    retrain_seconds = time.perf_counter() - start
    clock = time.perf_counter()
    scores = head.influence(test_features, labels)
    seconds = {"retrain": retrain_seconds, "exact": time.perf_counter() - clock}
    config = {
        "subsets": subsets,
        "fraction": fraction,
        "seed": seed,
        "damping": head.damping,
        "train_rows": head.num_examples,
    }
    return _lds_report("head", config, test_rows, {"exact": scores}, masks, measured, seconds, seed)


def _lds_report(scale, config, test_rows, scores: dict, masks, measured, seconds, seed) -> LdsReport:
    per_test, lds, intervals = {}, {}, {}
    for method, method_scores in scores.items():
        values = per_test_spearman(subset_effects(method_scores, masks), measured)
        per_test[method] = _none_for_nan(values)
        lds[method] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        low, high = bootstrap_interval(values, seed)
        intervals[method] = Interval(low=low, high=high)
    summary = {f"lds_{scale}_{method}": value for method, value in lds.items()}
    if scale == "head":
        summary["lds_head"] = lds["exact"]
    else:
        summary[f"lds_{scale}_ci_halfwidth"] = float(
            max((i.high - i.low) / 2 for i in intervals.values() if np.isfinite(i.low))
        )
    summary[f"lds_{scale}_seconds"] = float(sum(seconds.values()))
    return LdsReport(
        scale=scale,
        config=config,
        test_rows=[int(r) for r in test_rows],
        per_test=per_test,
        lds=lds,
        intervals=intervals,
        seconds=seconds,
        summary=summary,
    )


# --------------------------------------------------------------------------------------- tracked set
def method_scores(
    engine: Engine,
    test: ExampleSet,
    test_rows: np.ndarray,
    method: EvaluatedMethod,
    config: QueryConfig | None = None,
    cache: STestCache | None = None,
    context: RequestContext | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """A method's influence scores ``[T, N]`` of every training row on each test point's *true* label;
    rows a method does not score (fastif's non-candidates) get 0, i.e. "no influence". A gradient rerank
    keeps the index's scores for the rows it did not rescore."""
    scores = np.zeros((len(test_rows), engine.num_examples))
    query = evaluated_query(config or QueryConfig(), method)
    for position, row in enumerate(test_rows):
        text = test.texts[row]
        pair = test.pairs[row] if test.pairs is not None else None
        label = int(test.labels[row])
        if query.method == "gradient":
            if engine.gradient_index is None:
                raise ValueError(
                    f"method={method} needs a gradient index: "
                    "build one with `influence index build --kind gradient`"
                )
            gradient = engine.backend.projected_test_gradient(
                text, pair, label, engine.gradient_index.projection, context
            )
            (rows, values), _ = engine.gradient_index.search(gradient, engine.num_examples, query.normalize)
            scores[position, rows] = values
        if query.method != "gradient" or query.rerank is not None:
            answer = answer_query(engine, text, pair, label, query, cache=cache, context=context)
            scores[position, answer.candidate_rows] = answer.candidate_scores
        if progress is not None:
            progress(position + 1, len(test_rows))
    return scores


def retrain_subsets(
    spec: RetrainSpec,
    examples: ExampleSet,
    masks: np.ndarray,
    cache: RetrainCache,
    progress: Progress | None = None,
    mapper: Callable | None = None,
) -> list[torch.Tensor]:
    """``theta`` retrained on each subset, from the cache where present. ``mapper(spec, examples, rows_list)``
    (``workers.retraining.ray_mapper`` on a Ray cluster) yields ``(position, theta)`` for the missing
    subsets as they finish; without one they run here, one after another."""
    keys = [spec.key(np.flatnonzero(mask)) for mask in masks]
    thetas: list[torch.Tensor | None] = [cache.get(key) for key in keys]
    missing = [n for n, theta in enumerate(thetas) if theta is None]
    done = len(masks) - len(missing)
    if progress is not None:
        progress(done, len(masks))
    rows_list = [np.flatnonzero(masks[n]) for n in missing]
    if mapper is None:

        def mapper(spec, examples, rows_list):
            for position, rows in enumerate(rows_list):
                step_boundary()
                yield position, retrain(spec, examples, rows)

    for position, theta in mapper(spec, examples, rows_list):
        number = missing[position]
        cache.put(keys[number], theta)
        thetas[number] = theta
        done += 1
        if progress is not None:
            progress(done, len(masks))
    return [_retrained(theta) for theta in thetas]


def _retrained(theta: torch.Tensor | None) -> torch.Tensor:
    assert theta is not None  # cached, or retrained above
    return theta


def lds_tracked(
    engine: Engine,
    model_dir: str | Path,
    test: ExampleSet,
    test_rows: np.ndarray,
    methods: list[EvaluatedMethod],
    cache_dir: str | Path,
    subsets: int = DEFAULTS.subsets,
    fraction: float = DEFAULTS.fraction,
    seed: int = DEFAULTS.seed,
    config: QueryConfig | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    mapper: Callable | None = None,
    given_scores: Mapping[str, np.ndarray] | None = None,
) -> LdsReport:
    """LDS of ``methods`` on the model's own tracked set: ``subsets`` retrains of ``influence train`` on
    random ``fraction``s of its training rows (cached in ``cache_dir``), and each method's scores of all
    rows on the test points' true labels. ``given_scores`` adds methods scored elsewhere (a peer's
    library, ``[T, N]`` in this product's sign: positive raises the test loss), on the same retrains."""
    for method, given in (given_scores or {}).items():  # before any retraining
        if given.shape != (len(test_rows), engine.num_examples):
            raise ValueError(
                f"{method}: scores must be [{len(test_rows)}, {engine.num_examples}], got {given.shape}"
            )
    spec = RetrainSpec.from_card(engine.card)
    masks = random_subsets(engine.num_examples, subsets, fraction, seed)

    def stage(name: str) -> Progress:
        return lambda done, total: progress(name, done, total) if progress is not None else None

    start = time.perf_counter()
    thetas = retrain_subsets(
        spec, engine.training_examples(), masks, RetrainCache(cache_dir), stage("retrain"), mapper=mapper
    )
    seconds = {"retrain": time.perf_counter() - start}
    model, tokenizer = load_classifier(str(model_dir))
    tracked = TrackedModel(
        model, tokenizer, spec.tracked_layers, engine.card.get("max_length", DEFAULT_MAX_LENGTH)
    )
    measured = test_losses(tracked, thetas, test.subset(test_rows))
    # Test point by test point, every method in turn: fastif and full then share one s_test (the cache
    # holds a few entries, not one per test point).
    s_test_cache = shared_s_tests()
    scores: dict[str, np.ndarray] = {}
    for method in methods:
        scores[method], seconds[method] = np.zeros((len(test_rows), engine.num_examples)), 0.0
    for position in range(len(test_rows)):
        for method in methods:
            clock = time.perf_counter()
            one = test_rows[position : position + 1]
            scores[method][position] = method_scores(engine, test, one, method, config, s_test_cache)[0]
            seconds[method] += time.perf_counter() - clock
        stage("scores")(position + 1, len(test_rows))
    scores.update(given_scores or {})
    lissa = (config or QueryConfig()).lissa
    settings = {
        "subsets": subsets,
        "fraction": fraction,
        "seed": seed,
        "train_rows": engine.num_examples,
        "retrain": spec.train_config,
        "tracked_layers": spec.tracked_layers,
        "k": (config or QueryConfig()).k,
        "lissa": {
            "recursion_depth": lissa.recursion_depth,
            "num_repetitions": lissa.num_repetitions,
            "damping": lissa.damping,
        },
        "gradient_index": None if engine.gradient_index is None else engine.gradient_index.manifest.spec,
    }
    report = _lds_report("tracked", settings, test_rows, scores, masks, measured, seconds, seed)
    report.summary["lds_small_scale_seconds"] = float(seconds["retrain"] + seconds.get("gradient", 0.0))
    return report


# --------------------------------------------------------------------------------------- recall
def recall_report(
    scores: Mapping[str, np.ndarray],
    reference: np.ndarray,
    ms: tuple[int, ...] = (10, 100),
    config: dict | None = None,
) -> RecallReport:
    """recall@m of each method's top lists against the reference scores ``[T, N]`` (a method's
    ``[T, N]`` scores; zeros for rows it did not score, which it therefore did not return)."""
    per_test: dict[str, list[float]] = {}
    for method, values in scores.items():
        rows = np.arange(values.shape[1])
        for position in range(len(reference)):
            for key, value in top_lists_recall(reference[position], values[position], rows, ms).items():
                per_test.setdefault(f"{method}:{key}", []).append(value)
    summary = {key.replace(":", "_"): float(np.mean(values)) for key, values in per_test.items()}
    return RecallReport(config={"ms": list(ms), **(config or {})}, per_test=per_test, summary=summary)


def ensure_indexes(
    engine: Engine,
    methods: Iterable[EvaluatedMethod],
    directory: str | Path,
    gradient: GradientIndexConfig | None = None,
) -> Engine:
    """Give the engine the indexes ``methods`` need: loaded from ``directory`` when one there fits the
    model, else built there (an LDS model trained on a few thousand rows builds both in seconds); a
    gradient index with ``gradient``'s settings (the defaults when ``None``)."""
    from engine.builds import build_gradient_index, build_knn_index
    from engine.pipeline import gradient_index_for, knn_index_for
    from index.store import IndexMismatchError

    directory, methods = Path(directory), list(methods)
    if "fastif" in methods and engine.index is None:
        try:
            engine.index = knn_index_for(directory / "index", engine.identity)
        except (IndexMismatchError, FileNotFoundError):
            build_knn_index(engine, directory / "index")
            engine.index = knn_index_for(directory / "index", engine.identity)
    searches = any(evaluated_query(QueryConfig(), method).method == "gradient" for method in methods)
    if searches and engine.gradient_index is None:
        engine.gradient_index = gradient_index_for(
            directory / "gradient-index", engine.backend, optional=True
        )
        if engine.gradient_index is None:
            build_gradient_index(engine, directory / "gradient-index", gradient)
            engine.gradient_index = gradient_index_for(directory / "gradient-index", engine.backend)
    return engine
