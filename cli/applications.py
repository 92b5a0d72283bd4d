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
    engine_for,
    evaluation_set,
    run_task,
    training_for,
)
from interpret.config import AuditRanking, EvaluationConfig, SimulationLabels

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
    rank_by: Annotated[
        AuditRanking,
        typer.Option(help="Order of the list: loss, self_influence, or combined (their rank average)."),
    ] = DEFAULTS.rank_by,
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
    """Rank training rows by loss, self-influence or both: the first rows to check for wrong labels."""
    from engine.pipeline import local_engine
    from interpret.checkpoint import read_card
    from tasks.applications import retrain_with_noise

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
    run_task(
        "audit",
        engine,
        out,
        config=EvaluationConfig(seed=seed, rank_by=rank_by),
        work_dir=work / "gradients",
        flipped=flipped,
        settings=config,
        whole_ranking=True,
    )


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
    config = checked_options(EvaluationConfig, top=top)
    train = training_for(
        model, train_data, text_column, pair_column, label_column, train_max_examples, id_column
    )
    test = evaluation_set(eval_data, text_column, pair_column, label_column)
    engine = engine_for(model, index, gradient_index, gradient_optional=True, train=train)
    run_task("influence_map", engine, out, config=config, test=test, max_points=max_points)


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
    config = checked_options(EvaluationConfig, seeds=seeds, top=top, learning_rate=learning_rate)
    train = training_for(
        model, train_data, text_column, pair_column, label_column, train_max_examples, id_column
    )
    test = evaluation_set(eval_data, text_column, pair_column, label_column)
    engine = engine_for(model, index, gradient_index, gradient_optional=True, train=train)
    run_task("error_correction", engine, out, config=config, test=test, model_dir=model)


@app.command()
def simulate(
    model: ModelDir = ARTIFACTS / "model",
    train_data: TrainData = None,
    gradient_index: GradientIndex = ARTIFACTS / "gradient-index",
    index: Annotated[Path, typer.Option(help="kNN index, for fastif.")] = ARTIFACTS / "index",
    eval_data: EvalData = None,
    points: Annotated[
        int, typer.Option(min=1, help="Seeded test points of the evaluation set (all of them if fewer).")
    ] = 50,
    top: Annotated[int, typer.Option(help="Rows per strategy per test point.")] = DEFAULTS.top,
    simulator_rows: Annotated[
        int, typer.Option(help="Training rows, labelled by the model, the simulator learns from.")
    ] = DEFAULTS.simulator_rows,
    labels: Annotated[
        SimulationLabels,
        typer.Option(
            help="Labels on the rows shown: data (as an answer shows them) or model (its predictions)."
        ),
    ] = DEFAULTS.simulation_labels,
    learning_rate: Annotated[
        float, typer.Option(help="Of the simulator's fine-tune per point.")
    ] = DEFAULTS.simulation_learning_rate,
    normalize: Annotated[
        bool, typer.Option(help="Rows from the normalised view (cosine in the preconditioned space).")
    ] = DEFAULTS.normalize,
    seed: int = 0,
    out: ReportFolder = APPLICATIONS,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
    train_max_examples: TrainMaxExamples = None,
    id_column: IdColumn = None,
) -> None:
    """Do the influential rows explain the model? A simulator learns each point's rows; does it move to the
    model's prediction (FastIF 6.1)?"""
    from interpret.config import QueryConfig
    from tasks.evaluation import sample_rows

    config = checked_options(
        EvaluationConfig,
        top=top,
        simulator_rows=simulator_rows,
        simulation_labels=labels,
        simulation_learning_rate=learning_rate,
        seed=seed,
    )
    train = training_for(
        model, train_data, text_column, pair_column, label_column, train_max_examples, id_column
    )
    test = evaluation_set(eval_data, text_column, pair_column, label_column)
    engine = engine_for(model, index, gradient_index, gradient_optional=True, train=train)
    run_task(
        "simulatability",
        engine,
        out,
        config=config,
        test=test,
        rows=sample_rows(len(test), points, seed),
        query=QueryConfig(normalize=normalize),
    )


@app.command()
def augment(
    anchors: Annotated[
        str, typer.Option(help="A few labelled examples of the shifted distribution (file or hub:...).")
    ],
    pool: Annotated[
        str, typer.Option(help="Labelled rows the model never trained on, to choose from (file or hub:...).")
    ],
    model: ModelDir = ARTIFACTS / "model",
    train_data: TrainData = None,
    gradient_index: Annotated[
        Path, typer.Option(help="Gradient index: its projection and curvature score the pool.")
    ] = ARTIFACTS / "gradient-index",
    eval_data: Annotated[
        str | None, typer.Option("--eval", help="The shifted test set, held out [SST-2 dev].")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Draws of the anchors (seeds 0..n-1).")] = DEFAULTS.seeds,
    anchor_count: Annotated[int, typer.Option(help="Anchors drawn per seed.")] = DEFAULTS.anchor_count,
    top: Annotated[int, typer.Option(help="Most helpful pool rows per anchor.")] = DEFAULTS.top,
    learning_rate: Annotated[float, typer.Option(help="Of the brief fine-tune.")] = DEFAULTS.learning_rate,
    normalize: Annotated[
        bool, typer.Option(help="Rank the pool by the normalised view (cosine in the preconditioned space).")
    ] = DEFAULTS.normalize,
    out: ReportFolder = APPLICATIONS,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
    train_max_examples: TrainMaxExamples = None,
    id_column: IdColumn = None,
) -> None:
    """Augment from a pool by influence on a few anchors of a shifted set; against random rows and the
    anchors alone (FastIF 6.3)."""
    from interpret.config import QueryConfig

    if not gradient_index.exists():
        raise typer.BadParameter(
            f"{gradient_index} does not exist: the pool is scored with a gradient index, build one with "
            "`influence index build --kind gradient`",
            param_hint="--gradient-index",
        )
    config = checked_options(
        EvaluationConfig, seeds=seeds, anchor_count=anchor_count, top=top, learning_rate=learning_rate
    )
    train = training_for(
        model, train_data, text_column, pair_column, label_column, train_max_examples, id_column
    )
    sets = {
        name: evaluation_set(source, text_column, pair_column, label_column)
        for name, source in (("anchors", anchors), ("pool", pool), ("test", eval_data))
    }
    engine = engine_for(model, None, gradient_index, train=train)
    run_task(
        "augmentation",
        engine,
        out,
        config=config,
        test=sets["test"],
        anchors=sets["anchors"],
        pool=sets["pool"],
        model_dir=model,
        query=QueryConfig(normalize=normalize),
        settings={"anchors_data": anchors, "pool_data": pool},
    )
