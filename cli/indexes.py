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
    checked_options,
    console,
    engine_for,
    index_app,
    training_for,
)
from interpret.config import (
    DEFAULT_FACTORY,
    DEFAULT_INDEX_KIND,
    DEFAULT_KNN_METRIC,
    GradientIndexConfig,
    IndexKind,
    IndexStorage,
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
        typer.Option(
            help="gradient: the index's width, as many coordinates as rank x rank grids of the tracked "
            "linear layers hold; 0: none (tiny models)."
        ),
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
    grid_rank: Annotated[
        int | None,
        typer.Option(
            help="gradient, kfac: the eigenbasis rank per side whose grid coordinates of largest second "
            "moment, across layers, the index keeps; --grid-rank equal to --rank: every coordinate of "
            "uniform grids [4 x rank, at most 256]."
        ),
    ] = DEFAULTS.grid_rank,
    coordinates: Annotated[
        int | None,
        typer.Option(help="gradient, kfac: keep exactly N grid coordinates instead of --rank's width."),
    ] = DEFAULTS.coordinates,
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
    storage: Annotated[
        IndexStorage,
        typer.Option(
            help="gradient: how the vectors are held: float32 (exact, 4 bytes per dimension), float16, sq8, "
            "ivf-pq (product codes) or pca-sq8 (8-bit codes of the top principal directions: the least "
            "memory at recall 1.0 in benchmarks/scale.py); the last two re-score candidates against float16 "
            "vectors on disk."
        ),
    ] = DEFAULTS.storage,
    ivf_lists: Annotated[
        int | None, typer.Option(help="gradient, ivf-pq: coarse lists [sqrt(N), at most N/39].")
    ] = DEFAULTS.ivf_lists,
    pq_bytes: Annotated[
        int | None,
        typer.Option(help="gradient, ivf-pq: code bytes per row [a divisor of the width, ~width/8]."),
    ] = DEFAULTS.pq_bytes,
    nprobe: Annotated[
        int, typer.Option(help="gradient, ivf-pq: lists searched per query.")
    ] = DEFAULTS.nprobe,
    pca_dim: Annotated[
        int | None,
        typer.Option(
            help="gradient, pca-sq8: principal directions kept, one code byte each [256, at most the width]."
        ),
    ] = DEFAULTS.pca_dim,
    shards: Annotated[
        int | None,
        typer.Option(
            help="gradient: cut the index into N shards, searched alone and merged (the same answers); a "
            "Ray pool holds each on its own actor [1, or as many as fit --max-index-bytes each]."
        ),
    ] = DEFAULTS.shards,
    max_index_bytes: Annotated[
        int | None,
        typer.Option(
            envvar="INFLUENCE_MAX_INDEX_BYTES",
            help="gradient: refuse, before any work, an index or shard that would hold more bytes.",
        ),
    ] = None,
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

    config = None
    if kind == "gradient":  # checked before the model loads
        config = checked_options(
            GradientIndexConfig,
            rank=rank or None,
            projection=projection,
            fit_rows=fit_rows,
            grid_rank=grid_rank,
            coordinates=coordinates,
            seed=seed,
            preconditioner=preconditioner,
            damping=damping,
            factory=factory,
            chunk_rows=chunk_rows,
            storage=storage,
            ivf_lists=ivf_lists,
            pq_bytes=pq_bytes,
            nprobe=nprobe,
            pca_dim=pca_dim,
            shards=shards,
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
    engine = engine_for(
        model, None, None, workers, train=spec, needs=f"a {kind} index", trust_remote_code=trust_remote_code
    )
    try:
        if config is not None:  # kind == "gradient"
            out = out or ARTIFACTS / "gradient-index"
            bar, progress = _progress_bar("gradients")
            with bar:
                gradients = build_gradient_index(engine, out, config, progress, max_bytes=max_index_bytes)
            console.print(
                f"indexed {gradients.count:,} gradients x {gradients.dim} ({config.projection} rank "
                f"{config.rank}, {gradients.spec['preconditioner']}, damping {config.damping}, "
                f"{gradients.storage}) in {out}"
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


@index_app.command("info")
def index_info(
    index: Annotated[Path, typer.Option(help="Index folder (kNN or gradient).")] = ARTIFACTS
    / "gradient-index",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """What an index holds and costs: rows, width, storage, resident bytes (what a load will take, checked
    before it reads anything), its build's settings and measured fidelity."""
    import json

    from index.storage import readable_bytes
    from index.summary import index_summary

    summary = index_summary(index)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    resident = summary["resident_bytes"]
    console.print(
        f"{summary['kind']} index in {index}: {summary['count']:,} rows x {summary['dim']:,} "
        f"({summary['storage']}, {summary['factory']}); about {readable_bytes(resident)} in memory, "
        f"{resident / summary['count']:,.0f} bytes per row"
    )
    if summary.get("shards", 1) > 1:
        counts = ", ".join(f"{count:,}" for count in summary["shard_counts"])
        console.print(f"{summary['shards']} shards (one Ray actor each when served): {counts} rows")
    for added in summary.get("additions") or []:
        console.print(
            f"added {added['rows']:,} rows from row {added['first_row']:,}: {added['spec']['source']}"
        )
    if summary.get("removed_rows"):
        console.print(f"{len(summary['removed_rows']):,} rows removed from answers (influence index remove)")
    if summary["kind"] == "gradient":
        console.print(
            f"normalised view (--normalize): {summary['norms']} norms kept"
            if summary.get("norms")
            else "normalised view (--normalize): unavailable, built before norms were kept; rebuild to add it"
        )
    for key in ("storage_recall", "fidelity", "spec"):
        if summary.get(key):
            console.print(f"{key}: {json.dumps(summary[key])}")


@index_app.command("add")
def index_add(
    train_data: Annotated[
        str,
        typer.Option(
            "--train", help="The new rows (file or hub:NAME[/CFG]:SPLIT), with the training data's columns."
        ),
    ],
    index: Annotated[Path, typer.Option(help="Gradient index folder.")] = ARTIFACTS / "gradient-index",
    model: Annotated[Path, typer.Option(help="The model the index was built for.")] = ARTIFACTS / "model",
    chunk_rows: Annotated[
        int, typer.Option(help="Rows per gradient chunk (the resume grain).")
    ] = DEFAULTS.chunk_rows,
    workers: Annotated[
        int | None, typer.Option(help="Project the new rows on N Ray workers (0: as many as fit).")
    ] = None,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
    train_max_examples: TrainMaxExamples = None,
    id_column: IdColumn = None,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Append new training rows to a gradient index without touching its rows: projected with its own
    projection, preconditioned with its kept Fisher inverse (not refitted), written as one new shard in one
    atomic step (an interrupted add leaves the index as it was and resumes). Engines that load the index
    then load these rows after the training data; restart a server to serve them."""
    from engine.builds import add_to_gradient_index
    from interpret.data import DataSpec

    spec = DataSpec(train_data, text_column, pair_column, label_column, id_column, train_max_examples)
    engine = engine_for(model, None, None, workers, train=spec, trust_remote_code=trust_remote_code)
    try:
        bar, progress = _progress_bar("gradients")
        with bar:
            grown = add_to_gradient_index(engine, index, spec, chunk_rows, progress)
    except ValueError as error:  # the index cannot take these rows: named before any work
        raise typer.BadParameter(str(error)) from None
    finally:
        engine.shutdown()
    latest = (grown.history or [{}])[-1]
    console.print(
        f"added {latest.get('rows', 0):,} rows as shard {grown.shards - 1} in "
        f"{latest.get('seconds', 0):.1f} s: {index} now holds {grown.count:,} rows in {grown.shards} shards"
    )


@index_app.command("remove")
def index_remove(
    index: Annotated[Path, typer.Option(help="Gradient index folder.")] = ARTIFACTS / "gradient-index",
    rows: Annotated[
        str | None,
        typer.Option(help="Training rows to leave out of answers, comma-separated (an answer's row)."),
    ] = None,
    ids: Annotated[
        str | None,
        typer.Option(
            help="Training example ids to leave out, comma-separated (an answer's id; needs the data)."
        ),
    ] = None,
    model: Annotated[Path, typer.Option(help="Model folder whose card names the training data (--ids).")] = (
        ARTIFACTS / "model"
    ),
    train_data: TrainData = None,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
    train_max_examples: TrainMaxExamples = None,
    id_column: IdColumn = None,
) -> None:
    """Leave training rows out of every later answer of a gradient index (and of the kNN and full paths of
    a server that loads it). Recorded in its manifest at once; the vectors stay, so a rebuild brings the
    rows back. A running server sees it once the index is reloaded."""
    from index.gradient import read_gradient_manifest
    from index.growth import remove_gradient_rows
    from interpret.checkpoint import card_data_spec, read_card
    from interpret.data import load_examples

    if (rows is None) == (ids is None):
        raise typer.BadParameter("name the rows to remove with --rows or with --ids (one of them)")
    if rows is not None:
        try:
            chosen = [int(row) for row in rows.split(",") if row.strip()]
        except ValueError:
            raise typer.BadParameter(f"--rows takes row numbers, got {rows!r}") from None
    else:
        assert ids is not None
        columns = (text_column, pair_column, label_column, train_max_examples, id_column)
        spec = training_for(model, train_data, *columns, needs="--ids") or card_data_spec(read_card(model))
        assert spec is not None  # training_for refused a model whose card names no data
        examples = load_examples(spec)
        if examples.fingerprint != read_gradient_manifest(index).data_fingerprint:
            raise typer.BadParameter(
                f"--ids: the training data {examples.source} is not the data the index was built on; pass "
                "that data's --train"
            )
        named = [identifier.strip() for identifier in ids.split(",") if identifier.strip()]
        try:
            chosen = examples.rows_of(named).tolist()
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
    try:
        manifest = remove_gradient_rows(index, chosen)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    latest = (manifest.history or [{}])[-1]
    console.print(
        f"removed {latest.get('newly_removed', 0):,} rows ({len(chosen):,} named); "
        f"{len(manifest.removed_rows or []):,} of {manifest.count:,} rows are now left out of answers "
        f"from {index}"
    )
