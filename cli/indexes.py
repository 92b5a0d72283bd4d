"""``influence index build``: the kNN index (FastIF's candidates) or the gradient index (the default
method once built), in this process or sharded over Ray workers (``--workers``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import (
    ARTIFACTS,
    IdColumn,
    LabelColumn,
    PairColumn,
    TextColumn,
    TrainData,
    TrainMaxExamples,
    TrustRemoteCode,
    console,
    index_app,
    training_for,
)
from interpret.config import (
    DEFAULT_FACTORY,
    DEFAULT_INDEX_KIND,
    DEFAULT_KNN_METRIC,
    GradientIndexConfig,
    IndexKind,
    Metric,
    Preconditioner,
    ProjectionKind,
)

DEFAULTS = GradientIndexConfig()


def _progress_bar(description: str):
    from tqdm.auto import tqdm

    bar = tqdm(desc=description, unit="shard")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, progress


@index_app.command("build")
def index_build(
    model: Annotated[Path, typer.Option(help="Fine-tuned model folder.")] = ARTIFACTS / "model",
    train_data: TrainData = None,
    kind: Annotated[
        IndexKind,
        typer.Option(help="knn (FastIF candidates) or gradient (projected, preconditioned gradients)."),
    ] = DEFAULT_INDEX_KIND,
    out: Annotated[
        Path | None, typer.Option(help="Index folder [artifacts/index; artifacts/gradient-index].")
    ] = None,
    factory: Annotated[
        str, typer.Option(help="FAISS factory string: Flat, IVF1024,Flat, HNSW32, ...")
    ] = DEFAULT_FACTORY,
    metric: Annotated[Metric, typer.Option(help="knn: the distance.")] = DEFAULT_KNN_METRIC,
    rank: Annotated[
        int,
        typer.Option(help="gradient: projection rank per side of each linear layer; 0: none (tiny models)."),
    ] = DEFAULTS.rank or 0,
    projection: Annotated[
        ProjectionKind,
        typer.Option(
            help="gradient: kfac (top eigenvectors of each layer's Kronecker factors) or random (Gaussian)."
        ),
    ] = DEFAULTS.projection,
    fit_rows: Annotated[
        int, typer.Option(help="gradient, kfac: training rows the Kronecker factors are fitted on.")
    ] = DEFAULTS.fit_rows,
    preconditioner: Annotated[
        Preconditioner,
        typer.Option(help="gradient: fisher, identity, or hessian (small tracked sets)."),
    ] = DEFAULTS.preconditioner,
    damping: Annotated[float, typer.Option(help="gradient: lambda in (C + lambda I)^-1.")] = DEFAULTS.damping,
    seed: Annotated[
        int, typer.Option(help="gradient: seed of the random projections and of kfac's sample.")
    ] = DEFAULTS.seed,
    chunk_rows: Annotated[
        int, typer.Option(help="gradient: rows per shard (the resume grain).")
    ] = DEFAULTS.chunk_rows,
    workers: Annotated[
        int | None, typer.Option(help="Shard the work over N Ray workers (0: as many as fit).")
    ] = None,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
    trust_remote_code: TrustRemoteCode = False,
    train_max_examples: TrainMaxExamples = None,
    id_column: IdColumn = None,
) -> None:
    """Store a FAISS index + manifest of the training set: its kNN features, or its gradients."""
    from engine.builds import build_gradient_index, build_knn_index
    from engine.pipeline import local_engine, pooled_engine

    config = None
    if kind == "gradient":  # checked before the model loads
        config = GradientIndexConfig(
            rank=rank or None,
            projection=projection,
            fit_rows=fit_rows,
            seed=seed,
            preconditioner=preconditioner,
            damping=damping,
            factory=factory,
            chunk_rows=chunk_rows,
        )
    spec = training_for(
        model,
        train_data,
        text_column,
        pair_column,
        label_column,
        train_max_examples,
        id_column,
        needs=f"a {kind} index",
    )
    if workers is None:
        engine = local_engine(model, spec, trust_remote_code=trust_remote_code)
    else:
        from workers import PoolSettings

        engine = pooled_engine(
            model,
            spec,
            settings=PoolSettings(num_workers=workers or None),
            trust_remote_code=trust_remote_code,
        )
    try:
        if config is not None:  # kind == "gradient"
            out = out or ARTIFACTS / "gradient-index"
            bar, progress = _progress_bar("gradients")
            with bar:
                gradients = build_gradient_index(engine, out, config, progress)
            console.print(
                f"indexed {gradients.count:,} gradients x {gradients.dim} ({config.projection} rank "
                f"{config.rank}, {gradients.spec['preconditioner']}, damping {config.damping}) in {out}"
            )
            return
        out = out or ARTIFACTS / "index"
        bar, progress = _progress_bar("encode")
        with bar:
            manifest = build_knn_index(engine, out, factory, metric, progress)
        console.print(
            f"indexed {manifest.count:,} x {manifest.dim} ({manifest.factory}, {manifest.metric}) in {out}"
        )
    finally:
        engine.shutdown()
