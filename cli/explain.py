"""``influence predict``, ``saliency`` and ``attack``: in this process or on a service (--url). None of them
needs training data, except a trigger search, which takes its examples from ``--examples`` (or the card)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import (
    ARTIFACTS,
    LabelColumn,
    PairColumn,
    TextColumn,
    TrustRemoteCode,
    app,
    console,
    label_value,
    train_spec_of,
)
from interpret.config import AttackMethod, SaliencyMethod


def _parameters(values: list[str]) -> dict:
    """``--param name=value`` pairs: integers, floats and true/false are parsed as such."""
    out: dict[str, bool | int | float] = {}
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
ModelFolder = Annotated[
    Path, typer.Option(help="Any sequence-classification folder (save_pretrained), or hub:NAME.")
]
Label = Annotated[
    str | None, typer.Option(help="Label to explain, by index or name; default: the predicted one.")
]


def _resolved(explainer, value: str | None, field: str) -> int | None:
    """A ``--label`` / ``--target`` given by index or by the model's own name, as an index."""
    from interpret.config import resolve_label
    from interpret.models import label_names

    return resolve_label(label_value(value), label_names(explainer.tracked.model.config), field)


@app.command("predict")
def predict_command(
    text: Annotated[list[str], typer.Option(help="A sentence to classify (repeatable).")],
    pair: Annotated[
        list[str] | None, typer.Option(help="Its second sentence (repeatable, one per --text).")
    ] = None,
    model: ModelFolder = ARTIFACTS / "model",
    trust_remote_code: TrustRemoteCode = False,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What the model says: each label's probability, under the model's own label names."""
    if pair and len(pair) != len(text):
        raise typer.BadParameter(
            f"{len(pair)} pairs for {len(text)} texts: give one per --text", param_hint="--pair"
        )
    if url is not None:
        from clients import InfluenceClient

        pairs: list[str | None] = list(pair) if pair else [None] * len(text)
        inputs = [{"text": t, "text_pair": p} for t, p in zip(text, pairs, strict=True)]
        with InfluenceClient(url, api_key=api_key) as client:
            result = client.predict(inputs).model_dump()
            names = client.models().models[0].labels
    else:
        from interpret.explainer import Explainer
        from interpret.models import label_names
        from service.responses import prediction
        from service.schemas import PredictResponse

        explainer = Explainer.load(model, trust_remote_code=trust_remote_code)
        names = label_names(explainer.tracked.model.config)
        rows = explainer.predict(list(text), list(pair) if pair else None)
        result = PredictResponse(predictions=[prediction(row, names) for row in rows]).model_dump()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table()
    for column in ("text", "predicted", *(f"p({name})" for name in names)):
        table.add_column(column)
    for sentence, found in zip(text, result["predictions"], strict=True):
        table.add_row(sentence, found["label_name"], *(f"{p:.3f}" for p in found["probabilities"]))
    console.print(table)


@app.command("saliency")
def saliency_command(
    text: Annotated[str, typer.Option(help="The sentence to explain.")],
    method: Annotated[SaliencyMethod, typer.Option(help="The saliency method.")] = "integrated_gradients",
    pair: str | None = None,
    label: Label = None,
    param: Param = None,
    model: ModelFolder = ARTIFACTS / "model",
    trust_remote_code: TrustRemoteCode = False,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which words mattered: a saliency map over word-pieces (AllenNLP Interpret semantics)."""
    parameters = _parameters(param or [])
    if url is not None:
        from clients import InfluenceClient

        with InfluenceClient(url, api_key=api_key) as client:
            result = client.saliency(text, method, pair, label_value(label), **parameters).model_dump()
    else:
        from interpret.config import SALIENCY_PARAMETERS, method_parameters
        from interpret.explainer import Explainer
        from interpret.models import label_names
        from service.responses import saliency_response

        params = method_parameters("saliency method", SALIENCY_PARAMETERS, method, parameters)
        explainer = Explainer.load(model, trust_remote_code=trust_remote_code)
        found = explainer.saliency(text, pair, method, _resolved(explainer, label, "--label"), params)
        result = saliency_response(found, label_names(explainer.tracked.model.config)).model_dump()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"{result['method']}: explaining {result['label_explained_name']}")
    for column in ("piece", "word", "score", "raw"):
        table.add_column(column)
    shown = [p or t for p, t in zip(result["pieces"] or result["tokens"], result["tokens"], strict=True)]
    for piece, word, score, raw in zip(
        shown, result["word_ids"], result["scores"], result["raw_scores"], strict=True
    ):
        table.add_row(
            piece, "" if word is None else str(word), f"{score:.3f} " + "#" * round(40 * score), f"{raw:.3g}"
        )
    console.print(table)
    if result["extra"]:
        console.print(
            ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result["extra"].items()
            )
        )
    for warning in result.get("warnings", []):
        console.print(f"[bold yellow]warning:[/] {warning}")


@app.command("attack")
def attack_command(
    text: Annotated[str, typer.Option(help="The sentence to attack.")],
    method: Annotated[AttackMethod, typer.Option(help="The attack.")] = "hotflip",
    pair: str | None = None,
    label: Annotated[
        str | None, typer.Option(help="Label attacked (index or name); default: predicted.")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Label to reach, index or name (hotflip, triggers).")
    ] = None,
    param: Param = None,
    model: ModelFolder = ARTIFACTS / "model",
    examples: Annotated[
        str | None,
        typer.Option(
            help="triggers: labelled examples the trigger must flip (file or hub:NAME[/CFG]:SPLIT; the "
            "training data is a good choice) [the card's training data]."
        ),
    ] = None,
    trust_remote_code: TrustRemoteCode = False,
    url: Url = None,
    api_key: ApiKey = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    text_column: TextColumn = "text",
    pair_column: PairColumn = None,
    label_column: LabelColumn = "label",
) -> None:
    """How fragile is it: HotFlip, Input Reduction or a universal trigger, on word-pieces."""
    parameters = _parameters(param or [])
    if url is not None:
        from clients import InfluenceClient

        with InfluenceClient(url, api_key=api_key) as client:
            result = client.attack(
                text, method, pair, label_value(label), label_value(target), **parameters
            ).model_dump()
    else:
        from interpret.config import ATTACK_PARAMETERS, method_parameters
        from interpret.explainer import Explainer
        from interpret.models import label_names
        from service.responses import attack_response

        params = method_parameters("attack", ATTACK_PARAMETERS, method, parameters)
        spec = train_spec_of(examples, text_column, pair_column, label_column)
        if method == "triggers":
            _require_examples(model, spec)
        explainer = Explainer.load(model, spec, trust_remote_code=trust_remote_code)
        label_index, target_index = (
            _resolved(explainer, v, f) for v, f in ((label, "--label"), (target, "--target"))
        )
        found = explainer.attack(text, pair, method, label_index, target_index, params)
        result = attack_response(found, label_names(explainer.tracked.model.config)).model_dump()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    before, after = result["outputs_before"], result["outputs_after"][-1]
    console.print(f"original: {' '.join(result['original'])}  ({before['label_name']})")
    console.print(f"final:    {' '.join(result['final'][-1])}  ({after['label_name']})")
    console.print(
        f"success: {result['success']}; edits: "
        + ", ".join(f"{e['position']}: {e['before']} -> {e['after']}" for e in result["edits"])
    )
    for key, value in result["extra"].items():
        console.print(f"{key}: {value}")


def _require_examples(model: Path, spec) -> None:
    """A trigger search needs labelled examples: ``--examples``, or the card's training data."""
    from interpret.checkpoint import require_training_data

    message = (
        f"a trigger search needs labelled examples to flip, and {model} has no card naming its training "
        "data: pass --examples FILE (tsv/csv/jsonl with text and label columns)"
    )
    require_training_data(model, spec, "a trigger search", message)
