"""What every ``influence`` command module shares: the app, the console, the artifacts folder, the data
options (so the command modules import this, never each other)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from interpret.cancellation import DEFAULT_DEADLINE_S
from interpret.config import Config

C = TypeVar("C", bound=Config)

# Help texts name data sources like hub:NAME[/CONFIG]:SPLIT: plain text, never Rich markup.
app = typer.Typer(
    help="FastIF-style influence functions for Hugging Face text classifiers.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
index_app = typer.Typer(
    help="Build the kNN index or the gradient index over the training set.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(index_app, name="index")
console = Console()

ARTIFACTS = Path(os.environ.get("INFLUENCE_ARTIFACTS", "artifacts"))
DEMO_SENTENCE = "a gorgeous, witty, seductive movie."


def tracked_scope(value: str | None, modules: str | None = None, default: int | str = 2) -> int | str:
    """``--tracked-layers`` / ``--tracked-modules`` as one tracked set (``interpret.models.parse_scope``),
    or a usage error; ``default`` when neither is given."""
    from interpret.models import MODULES_PREFIX, parse_scope

    if value is not None and modules is not None:
        raise typer.BadParameter("give --tracked-layers or --tracked-modules, not both")
    try:
        if modules is not None:
            return parse_scope(MODULES_PREFIX + modules)
        return parse_scope(value) if value is not None else default
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--tracked-modules" if modules else None) from None


TrackedLayers = Annotated[
    str | None,
    typer.Option(
        help="What influence is taken over: the last N blocks + head (2), 'classifier' (the final linear "
        "layer), 'lora' (a PEFT adapter's weights), or 'modules:PATTERN,...'."
    ),
]
TrackedModules = Annotated[
    str | None,
    typer.Option(
        help="Track the parameters of these modules: comma-separated fnmatch patterns of module names, "
        "e.g. '*.layer.5.attention.*,classifier' (same as --tracked-layers modules:...)."
    ),
]


def data_spec(
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
    return DataSpec(
        source,
        text_column=text_column,
        pair_column=pair_column,
        label_column=label_column,
        max_examples=max_examples,
    )


def evaluation_set(source: str | None, text_column: str, pair_column: str | None, label_column: str):
    """Rows a command reads beside its training data (``--eval-data``, augment's anchors and pool), from
    ``source``; SST-2's dev split when it is omitted."""
    from interpret.data import load_examples

    return load_examples(data_spec(source, "eval", text_column, pair_column, label_column))


def train_spec_of(
    train_data: str | None,
    text_column: str = "text",
    pair_column: str | None = None,
    label_column: str = "label",
    max_examples: int | None = None,
    id_column: str | None = None,
):
    """``--train`` and its data options as a data spec (the one the card, ``influence train`` and the
    service's ``INFLUENCE_TRAIN_*`` settings also write); ``None`` (not given): the model card's."""
    from interpret.data import DataSpec

    if train_data is None:
        return None
    return DataSpec(
        train_data,
        text_column=text_column,
        pair_column=pair_column,
        label_column=label_column,
        id_column=id_column,
        max_examples=max_examples,
    )


def training_for(model: Path, train_data: str | None, *columns, needs: str = "influence"):
    """``--train`` as a data spec, refused at once (before any model or data loads) when neither it nor
    the model's card names the training data that ``needs`` it."""
    from interpret.checkpoint import require_training_data

    spec = train_spec_of(train_data, *columns)
    require_training_data(model, spec, needs)
    return spec


TrainData = Annotated[
    str | None,
    typer.Option(
        "--train",
        help="The model's training data (file or hub:NAME[/CFG]:SPLIT); default: the one its card.json names "
        "(`influence card` writes one).",
    ),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        envvar="INFLUENCE_TRUST_REMOTE_CODE",
        help="Run code shipped in the model folder (auto_map); only for folders you trust.",
    ),
]


def label_value(value: str | None) -> int | str | None:
    """A ``--label`` as the CLI reads it: digits are an index, anything else a label name."""
    if value is None:
        return None
    return int(value) if value.strip().isdigit() else value


TrainMaxExamples = Annotated[
    int | None,
    typer.Option(
        "--max-examples", min=1, help="With --train: the seeded subset of N rows the model was trained on."
    ),
]
IdColumn = Annotated[str | None, typer.Option(help="Column holding example ids (default: row numbers).")]
TextColumn = Annotated[str, typer.Option(help="Column holding the text.")]
PairColumn = Annotated[str | None, typer.Option(help="Column holding the second text of a pair (NLI).")]
LabelColumn = Annotated[str, typer.Option(help="Column holding integer labels 0..C-1.")]


def engine_for(
    model: Path,
    index: Path | None,
    gradient_index: Path | None,
    workers: int | None = None,
    deadline: float = DEFAULT_DEADLINE_S,
    gradient_optional: bool = False,
    train=None,
    needs: str = "influence",
    trust_remote_code: bool = False,
):
    """The engine a local query or evaluation runs on, with whichever indexes exist; ``train`` is the
    ``--train`` data (``None``: the card's). Refused before the model loads when there is no data."""
    from engine.pipeline import local_engine, pooled_engine
    from interpret.checkpoint import require_training_data

    require_training_data(model, train, needs)
    index_dir = index if index is not None and index.exists() else None
    gradient_dir = gradient_index if gradient_index is not None and gradient_index.exists() else None
    if workers is None:
        return local_engine(
            model,
            train,
            index_dir=index_dir,
            gradient_index_dir=gradient_dir,
            gradient_index_optional=gradient_optional,
            trust_remote_code=trust_remote_code,
        )
    from workers import PoolSettings

    if workers < 0:
        raise typer.BadParameter("0 (as many as fit) or a positive count", param_hint="--workers")
    settings = PoolSettings(num_workers=workers or None, deadline_s=deadline)
    return pooled_engine(
        model,
        train,
        index_dir=index_dir,
        settings=settings,
        gradient_index_dir=gradient_dir,
        gradient_index_optional=gradient_optional,
        trust_remote_code=trust_remote_code,
    )


def require_finished_gradient_index(directory: Path, model: Path) -> None:
    """A gradient index the user named must be a finished one: answering with another method instead
    would hide it. An unfinished build (its shards beside it) is resumed by the same build command."""
    from index.gradient import shard_folder
    from index.store import MANIFEST_FILE

    if (directory / MANIFEST_FILE).is_file():
        return
    build = f"influence index build --kind gradient --model {model} --out {directory}"
    shards = shard_folder(directory)
    if shards.is_dir():
        raise ValueError(
            f"{directory}: the gradient index build there did not finish (its shards are in {shards}); "
            f"resume it with `{build}`"
        )
    raise ValueError(f"{directory}: no gradient index there; build it with `{build}`")


def checked_options(config_class: type[C], **values) -> C:
    """A library config built from command options; a bad value is a usage error naming its flag (the
    first field pydantic refused)."""
    from pydantic import ValidationError

    from interpret.config import describe_errors

    try:
        return config_class(**values)
    except ValidationError as error:
        errors = error.errors()
        name = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else ""
        flag = f"--{name.replace('_', '-')}" if name in values else None
        raise typer.BadParameter(describe_errors(errors), param_hint=flag) from None


ModelDir = Annotated[Path, typer.Option(help="Fine-tuned model folder.")]
EvalData = Annotated[str | None, typer.Option("--eval", help="Test points' data [SST-2 dev].")]
ReportFolder = Annotated[Path, typer.Option(help="Folder for the JSON and the PNG.")]


def write_and_show(report, out: Path, name: str) -> None:
    """An evaluation's or application's report as JSON + PNG in ``out``; its summary on the console."""
    from tasks.plots import write_report

    json_path, png_path = write_report(report, out, name)
    if report.summary:
        console.print(", ".join(f"{k} {v:.4g}" for k, v in report.summary.items()))
    console.print(f"wrote {json_path} and {png_path}")


def run_task(name: str, engine, out: Path, **inputs) -> None:
    """Task ``name`` of the registry (``tasks.registry``) on ``engine``, which is shut down after, with a
    bar per stage; its report written and shown. ``inputs``: the other ``TaskInputs`` fields."""
    from tasks.registry import TASKS, TaskInputs

    try:
        report = TASKS[name].run(TaskInputs(engine, progress=tqdm_progress, **inputs))
    finally:
        engine.shutdown()
    write_and_show(report, out, name)


def tqdm_progress(description: str):
    """A ``(done, total)`` callback that draws a tqdm bar: the progress of the long commands."""
    from tqdm.auto import tqdm

    bar = tqdm(desc=description, unit="step")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update
