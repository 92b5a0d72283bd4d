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
