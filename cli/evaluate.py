"""``influence evaluate loo | lds | recall``: can the scores be trusted? Each writes one JSON and one PNG."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Literal

import typer

from cli.common import (
    ARTIFACTS,
    EvalData,
    IdColumn,
    LabelColumn,
    ModelDir,
    PairColumn,
    ReportFolder,
    TextColumn,
    TrainData,
    TrainMaxExamples,
    app,
    checked_options,
    engine_for,
    evaluation_set,
    run_task,
    tqdm_progress,
    training_for,
    write_and_show,
)
from interpret.config import FASTIF_PRESET, EvaluatedMethod, EvaluationConfig, QueryConfig

evaluate_app = typer.Typer(
    help="Measure influence scores against retraining (loo, lds) or the full scan (recall).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(evaluate_app, name="evaluate")

EVALUATION = ARTIFACTS / "evaluate"
DEFAULTS = EvaluationConfig()
Index = Annotated[Path, typer.Option(help="kNN index (its flat vectors are the head's features).")]
TestPoints = Annotated[int, typer.Option(min=1, help="Test points, a seeded sample of the evaluation data.")]
Seed = Annotated[int, typer.Option(help="Seed of the test-point sample and the subsets.")]
Damping = Annotated[float, typer.Option(help="The convex head's L2 term = the influence damping.")]
Methods = Annotated[
    list[str] | None,
    typer.Option(
        "--method",
        help="gradient, gradient_normalized, gradient_rerank (the index's top 250 of each side rescored), "
        "fastif, full or exact; repeat for several.",
    ),
]


def _check_methods(methods: list[str] | None, default: list[EvaluatedMethod]) -> list[EvaluatedMethod]:
    """The ``--method`` values (Typer takes no list of choices), each one checked."""
    known = typing.get_args(EvaluatedMethod)
    unknown = sorted(set(methods or []) - set(known))
    if unknown:
        raise typer.BadParameter(f"unknown {unknown}: use {', '.join(known)}", param_hint="--method")
    return [typing.cast(EvaluatedMethod, method) for method in methods] if methods else default


@evaluate_app.command("loo")
def loo(
    model: ModelDir = ARTIFACTS / "model",
    train_data: TrainData = None,
    index: Index = ARTIFACTS / "index",
    eval_data: EvalData = None,
    test_points: TestPoints = 8,
    m: Annotated[
        int, typer.Option(help="Most influential rows removed, one at a time, per test point.")
    ] = DEFAULTS.m,
    damping: Damping = DEFAULTS.damping,
    seed: Seed = 0,
    out: ReportFolder = EVALUATION,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
    train_max_examples: TrainMaxExamples = None,
    id_column: IdColumn = None,
) -> None:
    """Leave-one-out on the convex head: predicted vs actual change of test losses (Pearson, Spearman)."""
    from tasks.evaluation import sample_rows

    config = checked_options(EvaluationConfig, m=m, damping=damping, seed=seed)
    train = training_for(
        model, train_data, text_column, pair_column, label_column, train_max_examples, id_column
    )
    test = evaluation_set(eval_data, text_column, pair_column, label_column)
    engine = engine_for(model, index, None, train=train)
    rows = sample_rows(len(test), test_points, seed)
    run_task("loo", engine, out, config=config, test=test, rows=rows)


@evaluate_app.command("lds")
def lds(
    scale: Annotated[
        Literal["head", "tracked"],
        typer.Option(help="head: the convex head on every row; tracked: the model's own tracked set."),
    ] = "head",
    model: ModelDir = ARTIFACTS / "model",
    train_data: TrainData = None,
    index: Index = ARTIFACTS / "index",
    gradient_index: Annotated[
        Path | None, typer.Option(help="tracked: gradient index [built in --cache when missing].")
    ] = None,
    methods: Methods = None,
    subsets: Annotated[int, typer.Option(help="Random subsets retrained.")] = DEFAULTS.subsets,
    fraction: Annotated[
        float, typer.Option(help="Share of the training rows in each subset.")
    ] = DEFAULTS.fraction,
    eval_data: EvalData = None,
    test_points: TestPoints = 50,
    damping: Damping = DEFAULTS.damping,
    seed: Seed = 0,
    cache: Annotated[Path, typer.Option(help="Retrained parameters and built indexes, reused.")] = (
        EVALUATION / "cache"
    ),
    workers: Annotated[
        int | None, typer.Option(help="tracked: retrain on N Ray workers (RAY_ADDRESS joins a cluster).")
    ] = None,
    recursion_depth: Annotated[int, typer.Option(min=1)] = FASTIF_PRESET.recursion_depth,
    repetitions: Annotated[int, typer.Option(min=1)] = FASTIF_PRESET.num_repetitions,
    k: Annotated[int, typer.Option(min=1, help="fastif: kNN candidates.")] = QueryConfig.default("k"),
    out: ReportFolder = EVALUATION,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
    train_max_examples: TrainMaxExamples = None,
    id_column: IdColumn = None,
) -> None:
    """Linear datamodeling score: do summed scores rank retrained subsets by their test loss?"""

    from tasks.evaluation import ensure_indexes, lds_tracked, sample_rows

    evaluation = checked_options(
        EvaluationConfig, subsets=subsets, fraction=fraction, damping=damping, seed=seed
    )
    measured = _check_methods(methods, ["gradient", "fastif"])
    train = training_for(
        model, train_data, text_column, pair_column, label_column, train_max_examples, id_column
    )
    test = evaluation_set(eval_data, text_column, pair_column, label_column)
    rows = sample_rows(len(test), test_points, seed)
    if scale == "head":
        engine = engine_for(model, index, None, train=train)
        run_task("lds_head", engine, out, config=evaluation, test=test, rows=rows)
        return
    lissa = FASTIF_PRESET.replace(recursion_depth=recursion_depth, num_repetitions=repetitions)
    config = QueryConfig(k=k, lissa=lissa)
    engine = engine_for(model, index, gradient_index, gradient_optional=True, train=train)
    mapper = None
    if workers is not None:
        from workers.retraining import ray_mapper

        mapper = ray_mapper(workers or None)
    bars: dict = {}

    def progress(stage: str, done: int, total: int) -> None:
        bars.setdefault(stage, tqdm_progress(stage))(done, total)

    try:
        ensure_indexes(engine, measured, cache)
        report = lds_tracked(
            engine,
            model,
            test,
            rows,
            measured,
            cache / "retrains",
            subsets,
            fraction,
            seed,
            config,
            progress,
            mapper,
        )
    finally:
        engine.shutdown()
    write_and_show(report, out, "lds_tracked")


@evaluate_app.command("recall")
def recall(
    model: ModelDir = ARTIFACTS / "model",
    train_data: TrainData = None,
    index: Index = ARTIFACTS / "index",
    gradient_index: Annotated[Path, typer.Option(help="Gradient index folder.")] = ARTIFACTS
    / "gradient-index",
    methods: Methods = None,
    reference: Annotated[
        Literal["full", "exact"], typer.Option(help="full: LiSSA over every row; exact: small tracked sets.")
    ] = "full",
    ms: Annotated[list[int] | None, typer.Option("--m", min=1, help="recall@m; repeat for several.")] = None,
    eval_data: EvalData = None,
    test_points: TestPoints = 5,
    seed: Seed = 0,
    k: Annotated[int, typer.Option(min=1, help="fastif: kNN candidates.")] = QueryConfig.default("k"),
    out: ReportFolder = EVALUATION,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
    train_max_examples: TrainMaxExamples = None,
    id_column: IdColumn = None,
) -> None:
    """recall@m of each method's helpful and harmful lists against a full scan of the same test points."""
    from tasks.evaluation import sample_rows

    measured = _check_methods(methods, ["gradient", "fastif"])
    train = training_for(
        model, train_data, text_column, pair_column, label_column, train_max_examples, id_column
    )
    test = evaluation_set(eval_data, text_column, pair_column, label_column)
    rows = sample_rows(len(test), test_points, seed)
    engine = engine_for(model, index, gradient_index, train=train)
    recall_at = tuple(ms or (10, 100))
    run_task(
        "recall",
        engine,
        out,
        test=test,
        rows=rows,
        query=QueryConfig(k=k),
        methods=measured,
        reference=reference,
        recall_at=recall_at,
    )
