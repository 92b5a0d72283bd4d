"""What every ``influence`` command module shares: the app, the console, the artifacts folder, the data
options (so the command modules import this, never each other)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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


def tracked_scope(value: str) -> int | str:
    if value == "classifier":
        return value
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter("an integer number of layers, or 'classifier'") from None


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
    columns = {"text_column": text_column, "pair_column": pair_column, "label_column": label_column}
    return DataSpec(source, **columns, max_examples=max_examples)


TextColumn = Annotated[str, typer.Option(help="Column holding the text.")]
PairColumn = Annotated[str | None, typer.Option(help="Column holding the second text of a pair (NLI).")]
LabelColumn = Annotated[str, typer.Option(help="Column holding integer labels 0..C-1.")]


def engine_for(
    model: Path,
    index: Path | None,
    gradient_index: Path | None,
    workers: int | None,
    deadline: float,
    gradient_optional: bool = False,
):
    """The engine a local query runs on, with whichever indexes exist."""
    from service.pipeline import local_engine, pooled_engine

    index_dir = index if index is not None and index.exists() else None
    gradient = {
        "gradient_index_dir": gradient_index
        if gradient_index is not None and gradient_index.exists()
        else None,
        "gradient_index_optional": gradient_optional,
    }
    if workers is None:
        return local_engine(model, index_dir=index_dir, **gradient)
    from workers import PoolSettings

    if workers < 0:
        raise typer.BadParameter("0 (as many as fit) or a positive count", param_hint="--workers")
    settings = PoolSettings(num_workers=workers or None, deadline_s=deadline)
    return pooled_engine(model, index_dir=index_dir, settings=settings, **gradient)


def checked_options(config_class, **values):
    """A library config built from command options; a bad value is a usage error naming its flag (the
    library's message starts with the field's name)."""
    try:
        return config_class(**values)
    except ValueError as error:
        name = str(error).split(" ", 1)[0].rsplit(".", 1)[-1]
        flag = f"--{name.replace('_', '-')}" if name in values else None
        raise typer.BadParameter(str(error), param_hint=flag) from None


ModelDir = Annotated[Path, typer.Option(help="Fine-tuned model folder.")]
EvalData = Annotated[str | None, typer.Option("--eval", help="Test points' data [SST-2 dev].")]
ReportFolder = Annotated[Path, typer.Option(help="Folder for the JSON and the PNG.")]


def write_and_show(report, out: Path, name: str) -> None:
    """An evaluation's or application's report as JSON + PNG in ``out``; its summary on the console."""
    from service.evaluation import write_report

    json_path, png_path = write_report(report, out, name)
    if report.summary:
        console.print(", ".join(f"{k} {v:.4g}" for k, v in report.summary.items()))
    console.print(f"wrote {json_path} and {png_path}")


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
