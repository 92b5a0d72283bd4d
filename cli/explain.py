"""``influence saliency`` and ``influence attack``: one sentence, in this process or on a service (--url)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import ARTIFACTS, app, console


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
        from interpret.config import SALIENCY_PARAMETERS, method_parameters
        from interpret.explainer import Explainer
        from service.responses import saliency_response

        params = method_parameters("saliency method", SALIENCY_PARAMETERS, method, parameters)
        explainer = Explainer.load(model)
        result = saliency_response(explainer.saliency(text, pair, method, label, params)).model_dump()
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
        from interpret.config import ATTACK_PARAMETERS, method_parameters
        from interpret.explainer import Explainer
        from service.responses import attack_response

        params = method_parameters("attack", ATTACK_PARAMETERS, method, parameters)
        explainer = Explainer.load(model)
        result = attack_response(explainer.attack(text, pair, method, label, target, params)).model_dump()
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
