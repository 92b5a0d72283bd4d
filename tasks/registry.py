"""One registry of the evaluation tasks and applications: each one's name, report model, whether its test
points must carry true labels, and its runner.

A runner takes :class:`TaskInputs` (the engine, the test points, the sizes) and returns the task's report.
The service's jobs run a task by name (:func:`run_job`); the CLI's commands read their options into the same
:class:`TaskInputs` and call the same runner, so a task is assembled in one place, and a new task is one
entry in :data:`TASKS` (and its name in ``interpret.config.EvaluationTask``, which the wire schema lists).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np
from pydantic import BaseModel

from engine.pipeline import Engine
from interpret.checkpoint import DEFAULT_MAX_LENGTH
from interpret.config import (
    EvaluatedMethod,
    EvaluationConfig,
    EvaluationTask,
    GradientIndexConfig,
    QueryConfig,
)
from interpret.data import ExampleSet
from interpret.evaluation.convex import ConvexHead
from interpret.models import TrackedModel, load_classifier
from tasks import applications, evaluation
from tasks.reports import (
    AuditReport,
    AugmentationReport,
    CorrectionReport,
    InfluenceMapReport,
    LdsReport,
    LooReport,
    RecallReport,
    SimulatabilityReport,
)

Progress = Callable[[int, int], None]
StageProgress = Callable[[str], Progress | None]
"""A progress callback per named stage ("features", "leave one out"): the CLI draws a bar for each."""


class HeadCache:
    """Fitted convex heads by damping: fitting encodes every training row once, so a service keeps them."""

    def __init__(self):
        self._heads: dict[float, ConvexHead] = {}
        self._lock = threading.Lock()

    def get(self, engine: Engine, damping: float, progress: Progress | None = None) -> ConvexHead:
        with self._lock:
            if damping not in self._heads:
                self._heads[damping] = evaluation.fit_head(engine, damping, progress)
            return self._heads[damping]


def _no_progress(_stage: str) -> None:
    return None


@dataclass
class TaskInputs:
    """What a task runs on. Only ``engine`` is always needed; each field says which tasks read it."""

    engine: Engine
    config: EvaluationConfig = field(default_factory=EvaluationConfig)
    test: ExampleSet | None = None
    """The test points (every task but audit)."""
    rows: np.ndarray | None = None
    """Positions in ``test`` evaluated. ``None``: all of them; for influence_map, the model's errors."""
    query: QueryConfig = field(default_factory=QueryConfig)
    """recall, influence_map, error_correction, simulatability: how each test point is queried;
    augmentation: whether the pool is ranked by the normalised view."""
    methods: Sequence[EvaluatedMethod] = ("gradient",)
    """recall: the methods measured."""
    reference: EvaluatedMethod = "full"
    """recall: the reference the methods are measured against (full, or exact)."""
    recall_at: tuple[int, ...] = (10, 100)
    """recall: the m of recall@m."""
    max_points: int | None = None
    """influence_map: at most this many test points (``None``: all)."""
    heads: HeadCache = field(default_factory=HeadCache)
    """loo, lds_head: fitted heads, kept by a service across jobs."""
    work_dir: Path | None = None
    """audit: where its gradient shards are kept (a rerun resumes from them)."""
    model_dir: Path | None = None
    """error_correction: the model folder a fresh copy is loaded from."""
    anchors: ExampleSet | None = None
    """augmentation: labelled examples of the shifted distribution, a few drawn per seed."""
    pool: ExampleSet | None = None
    """augmentation: labelled rows the model never trained on, scored by influence on the anchors."""
    flipped: np.ndarray | None = None
    """audit: which training rows had their label flipped (a noise-injection check)."""
    settings: dict = field(default_factory=dict)
    """Recorded in the report's ``config`` beside the task's own settings."""
    whole_ranking: bool = False
    """audit: return every ranked row (the CLI's export), not the first ``config.limit``."""
    progress: StageProgress = _no_progress

    def test_points(self) -> ExampleSet:
        if self.test is None:
            raise ValueError("this task needs test points")
        return self.test

    def test_rows(self) -> np.ndarray:
        return np.arange(len(self.test_points())) if self.rows is None else self.rows


@dataclass(frozen=True)
class Task:
    name: str
    report: type[BaseModel]
    needs_labels: bool
    """Measured on the test points' true labels: each input must carry one."""
    takes_inputs: bool
    run: Callable[[TaskInputs], BaseModel]


def _head_features(inputs: TaskInputs) -> tuple[ConvexHead, np.ndarray, np.ndarray]:
    head = inputs.heads.get(inputs.engine, inputs.config.damping, inputs.progress("features"))
    rows = inputs.test_rows()
    return head, evaluation.head_features(inputs.engine, inputs.test_points().subset(rows)), rows


def run_loo(inputs: TaskInputs) -> LooReport:
    """Leave-one-out on the convex head: predicted vs actual change of test losses."""
    head, features, rows = _head_features(inputs)
    progress = inputs.progress("leave one out")
    return evaluation.loo_head(head, features, inputs.test_points(), rows, inputs.config.m, progress)


def run_lds_head(inputs: TaskInputs) -> LdsReport:
    """The linear datamodeling score on the convex head: subsets of every row refitted."""
    head, features, rows = _head_features(inputs)
    config = inputs.config
    return evaluation.lds_head(
        head,
        features,
        inputs.test_points(),
        rows,
        config.subsets,
        config.fraction,
        config.seed,
        inputs.progress("retrain"),
    )


def run_recall(inputs: TaskInputs) -> RecallReport:
    """recall@m of each method's helpful and harmful lists against a full scan (or the exact solve)."""
    engine, test, rows, query = inputs.engine, inputs.test_points(), inputs.test_rows(), inputs.query
    cache = evaluation.shared_s_tests()
    reference = evaluation.method_scores(
        engine, test, rows, inputs.reference, query, cache, progress=inputs.progress(inputs.reference)
    )
    scores: dict[str, np.ndarray] = {
        method: evaluation.method_scores(
            engine, test, rows, method, query, cache, progress=inputs.progress(method)
        )
        for method in inputs.methods
    }
    settings = {"reference": inputs.reference, "test_rows": rows.tolist(), "k": query.k, **inputs.settings}
    return evaluation.recall_report(scores, reference, inputs.recall_at, settings)


def run_audit(inputs: TaskInputs) -> AuditReport:
    """Training rows ranked by loss, self-influence or both (``config.rank_by``)."""
    engine = inputs.engine
    if inputs.work_dir is None:
        raise ValueError("audit needs a work_dir for its gradient shards")
    work_dir = inputs.work_dir
    self_influence, loss = applications.self_influence_and_loss(
        engine, work_dir, GradientIndexConfig(), inputs.progress("gradients")
    )
    report = applications.audit_report(
        engine.training_examples(),
        self_influence,
        loss,
        inputs.flipped,
        inputs.config.seed,
        inputs.settings,
        inputs.config.rank_by,
    )
    if not inputs.whole_ranking:
        report.ranked = report.ranked[: inputs.config.limit]
    return report


def run_influence_map(inputs: TaskInputs) -> InfluenceMapReport:
    """Test points -> their top training rows, as a bipartite graph."""
    return applications.influence_map(
        inputs.engine,
        inputs.test_points(),
        inputs.rows,
        inputs.config.top,
        inputs.query,
        inputs.max_points if inputs.max_points is not None else len(inputs.test_points()),
        inputs.progress("test points"),
    )


def tracked_copy(engine: Engine, model_dir: str | Path) -> TrackedModel:
    """A second copy of the engine's model with the same tracked set (fine-tuned, never the engine's)."""
    model, tokenizer = load_classifier(str(model_dir))
    max_length = engine.card.get("max_length", DEFAULT_MAX_LENGTH)
    return TrackedModel(model, tokenizer, engine.identity.tracked_layers, max_length)


def run_error_correction(inputs: TaskInputs) -> CorrectionReport:
    """Fine-tune briefly on the errors' most helpful rows; compare with random and harmful rows."""
    if inputs.model_dir is None:
        raise ValueError("error_correction needs the model folder (model_dir) for its fresh copy")
    config = inputs.config
    return applications.error_correction(
        inputs.engine,
        tracked_copy(inputs.engine, inputs.model_dir),
        inputs.test_points(),
        list(range(config.seeds)),
        config.top,
        applications.correction_training(config.learning_rate),
        inputs.query,
        inputs.progress("seeds"),
    )


def run_simulatability(inputs: TaskInputs) -> SimulatabilityReport:
    """Train a simulator on the model's predictions; one step on each point's helpful rows, random rows,
    random rows of the model's label and harmful rows; how far each moves it toward the model's label."""
    config = inputs.config
    simulator, taken = applications.train_simulator(inputs.engine, config.simulator_rows, config.seed)
    report = applications.simulatability(
        inputs.engine,
        simulator,
        inputs.test_points(),
        inputs.test_rows(),
        config.top,
        applications.simulation_training(config.simulation_learning_rate, config.top),
        inputs.query,
        config.seed,
        config.simulation_labels,
        inputs.progress("test points"),
    )
    report.config.update(simulator_rows=len(taken), **inputs.settings)
    return report


def run_augmentation(inputs: TaskInputs) -> AugmentationReport:
    """Fine-tune on the pool rows most helpful for a few anchors, on random pool rows, or on the anchors;
    the change of accuracy on the test points (the shifted side, held out)."""
    if inputs.model_dir is None:
        raise ValueError("augmentation needs the model folder (model_dir) for its fresh copy")
    if inputs.anchors is None or inputs.pool is None:
        raise ValueError("augmentation needs anchors and a pool")
    config = inputs.config
    report = applications.augmentation(
        inputs.engine,
        tracked_copy(inputs.engine, inputs.model_dir),
        inputs.anchors,
        inputs.pool,
        inputs.test_points(),
        list(range(config.seeds)),
        config.anchor_count,
        config.top,
        applications.correction_training(config.learning_rate),
        inputs.query.normalize,
        inputs.progress("seeds"),
        inputs.progress("gradients"),
    )
    report.config.update(inputs.settings)
    return report


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("loo", LooReport, True, True, run_loo),
        Task("lds_head", LdsReport, True, True, run_lds_head),
        Task("recall", RecallReport, True, True, run_recall),
        Task("influence_map", InfluenceMapReport, False, True, run_influence_map),
        Task("audit", AuditReport, False, False, run_audit),
        Task("error_correction", CorrectionReport, True, True, run_error_correction),
        Task("simulatability", SimulatabilityReport, False, True, run_simulatability),
        Task("augmentation", AugmentationReport, True, True, run_augmentation),
    )
}
QUERYING_TASKS = ("influence_map", "error_correction", "simulatability", "augmentation")
"""The tasks that rank training rows for their points, so read ``normalize`` (``EvaluationConfig``)."""
if set(TASKS) != set(get_args(EvaluationTask)):  # the wire schema's list and this one are the same tasks
    raise RuntimeError(f"tasks {sorted(TASKS)} != EvaluationTask {sorted(get_args(EvaluationTask))}")


# --------------------------------------------------------------------------------------- as a job
def examples_from_inputs(engine: Engine, inputs) -> ExampleSet:
    """A request's inputs as a test set (a missing label becomes the predicted one)."""
    texts = [item.text for item in inputs]
    pairs = [item.text_pair for item in inputs] if any(item.text_pair for item in inputs) else None
    labels = np.array([-1 if item.label is None else item.label for item in inputs], dtype=np.int64)
    if (labels < 0).any():
        predicted = engine.backend.predict(texts, pairs).argmax(axis=1)
        labels = np.where(labels < 0, predicted, labels)
    ids = [f"input-{position}" for position in range(len(inputs))]
    return ExampleSet(texts, pairs, labels, ids, "request", "request")


def run_job(
    engine: Engine,
    request,
    heads: HeadCache,
    scratch_dir: Path,
    model_dir: Path,
    progress: Progress | None = None,
) -> BaseModel:
    """One ``kind=evaluate`` job (``request`` is checked already): the report of ``request.task``. An
    audit keeps its gradient shards in ``scratch_dir`` (each written whole, so a rerun resumes), apart
    from the served indexes."""
    task = TASKS[request.task]
    test = examples_from_inputs(engine, request.inputs) if task.takes_inputs else None
    inputs = TaskInputs(
        engine,
        request.config(),
        test,
        None if test is None else np.arange(len(test)),  # every input (a map explains each, not errors)
        methods=tuple(request.methods),
        heads=heads,
        anchors=examples_from_inputs(engine, request.anchors) if request.anchors else None,
        pool=examples_from_inputs(engine, request.pool) if request.pool else None,
        work_dir=scratch_dir / "audit-gradients",
        model_dir=model_dir,
        query=QueryConfig(normalize=request.normalize),
        settings={"task": task.name},
        progress=(lambda _stage: progress) if progress is not None else _no_progress,
    )
    return task.run(inputs)
