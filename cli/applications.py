"""``influence audit | map | correct``: FastIF's applications of influence scores, each writing one JSON
and one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    data_spec,
    engine_for,
    tqdm_progress,
    training_for,
    write_and_show,
)
from interpret.config import EvaluationConfig, GradientIndexConfig, QueryConfig

APPLICATIONS = ARTIFACTS / "applications"
DEFAULTS = EvaluationConfig()
GradientIndex = Annotated[
    Path, typer.Option(help="Gradient index (the fast method; fastif answers without one).")
]


@app.command()
def audit(
    model: ModelDir = ARTIFACTS / "model",
    train_data: TrainData = None,
    inject_noise: Annotated[
        float | None,
        typer.Option(
            help="Check the ranking: flip this share of labels on a --rows subset, retrain, and count the "
            "flips each ranking finds (e.g. 0.1)."
        ),
    ] = None,
    rows: Annotated[
        int, typer.Option(min=1, help="With --inject-noise: training rows of the noisy subset.")
    ] = 5000,
    seed: int = 0,
    out: ReportFolder = APPLICATIONS,
    work: Annotated[Path, typer.Option(help="Noisy data, its model and gradient shards, reused.")] = (
        APPLICATIONS / "audit-work"
    ),
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
    train_max_examples: TrainMaxExamples = None,
    id_column: IdColumn = None,
) -> None:
    """Rank training rows by self-influence (and loss): the first rows to check for wrong labels."""
    from interpret.checkpoint import read_card
    from service.applications import audit_report, retrain_with_noise, self_influence_and_loss
    from service.pipeline import local_engine

    if inject_noise is not None and not 0 < inject_noise < 1:
        raise typer.BadParameter(f"a share in (0, 1), got {inject_noise}", param_hint="--inject-noise")
    train = training_for(
        model,
        train_data,
        text_column,
        pair_column,
        label_column,
        train_max_examples,
        id_column,
        needs="the audit",
    )
    flipped = None
    config = {"model": str(model), "inject_noise": inject_noise, "rows": rows, "seed": seed}
    if inject_noise is not None:
        model, taken, flipped = retrain_with_noise(read_card(model), work, rows, inject_noise, seed)
        config["source_rows"] = taken.tolist()
        train = None  # the noisy model's card names its own data
    engine = local_engine(model, train)
    try:
        self_influence, loss = self_influence_and_loss(
            engine, work / "gradients", GradientIndexConfig(), tqdm_progress("gradients")
        )
        report = audit_report(engine.examples, self_influence, loss, flipped, seed, config)
    finally:
        engine.shutdown()
    write_and_show(report, out, "audit")


@app.command("map")
def influence_map_command(
    model: ModelDir = ARTIFACTS / "model",
    train_data: TrainData = None,
    gradient_index: GradientIndex = ARTIFACTS / "gradient-index",
    index: Annotated[Path, typer.Option(help="kNN index, for fastif.")] = ARTIFACTS / "index",
    eval_data: EvalData = None,
    top: Annotated[int, typer.Option(help="Helpful and harmful rows per test point.")] = DEFAULTS.top,
    max_points: Annotated[int, typer.Option(min=1, help="At most this many of the evaluation errors.")] = 50,
    out: ReportFolder = APPLICATIONS,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
    train_max_examples: TrainMaxExamples = None,
    id_column: IdColumn = None,
) -> None:
    """Which training rows drive which test predictions: a bipartite graph over the evaluation errors."""
    from interpret.data import load_examples
    from service.applications import influence_map

    checked_options(EvaluationConfig, top=top)
    train = training_for(
        model, train_data, text_column, pair_column, label_column, train_max_examples, id_column
    )
    test = load_examples(data_spec(eval_data, "eval", text_column, pair_column, label_column))
    engine = engine_for(model, index, gradient_index, None, 900.0, gradient_optional=True, train=train)
    try:
        report = influence_map(
            engine, test, None, top, QueryConfig(), max_points, tqdm_progress("test points")
        )
    finally:
        engine.shutdown()
    write_and_show(report, out, "influence_map")


@app.command()
def correct(
    model: ModelDir = ARTIFACTS / "model",
    train_data: TrainData = None,
    gradient_index: GradientIndex = ARTIFACTS / "gradient-index",
    index: Annotated[Path, typer.Option(help="kNN index, for fastif.")] = ARTIFACTS / "index",
    eval_data: EvalData = None,
    seeds: Annotated[int, typer.Option(help="Splits of the evaluation set (seeds 0..n-1).")] = DEFAULTS.seeds,
    top: Annotated[int, typer.Option(help="Helpful rows per misclassified point.")] = DEFAULTS.top,
    learning_rate: Annotated[float, typer.Option(help="Of the brief fine-tune.")] = DEFAULTS.learning_rate,
    out: ReportFolder = APPLICATIONS,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
    train_max_examples: TrainMaxExamples = None,
    id_column: IdColumn = None,
) -> None:
    """Fine-tune briefly on the errors' most helpful rows; compare with random and harmful rows."""
    from interpret.checkpoint import DEFAULT_MAX_LENGTH, read_card
    from interpret.data import load_examples
    from interpret.models import TrackedModel, load_classifier
    from service.applications import correction_training, error_correction

    checked_options(EvaluationConfig, seeds=seeds, top=top, learning_rate=learning_rate)
    train = training_for(
        model, train_data, text_column, pair_column, label_column, train_max_examples, id_column
    )
    test = load_examples(data_spec(eval_data, "eval", text_column, pair_column, label_column))
    card = read_card(model)
    copy = TrackedModel(
        *load_classifier(str(model)),
        card.get("tracked_layers", 2),
        card.get("max_length", DEFAULT_MAX_LENGTH),
    )
    train_config = correction_training(learning_rate)
    engine = engine_for(model, index, gradient_index, None, 900.0, gradient_optional=True, train=train)
    try:
        report = error_correction(
            engine, copy, test, list(range(seeds)), top, train_config, QueryConfig(), tqdm_progress("seeds")
        )
    finally:
        engine.shutdown()
    write_and_show(report, out, "error_correction")
