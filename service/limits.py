"""The operator's request limits (``Settings.max_*``) and what only the loaded model can tell (its labels,
whether it takes sentence pairs): each violation is a 422 naming the field and the limit or the fix.

Types, defaults and always-wrong values are refused earlier, by the strict request schemas.
"""

from __future__ import annotations

from interpret.config import (
    ATTACK_PARAMETERS,
    TRIGGER_BATCH_SIZE,
    Config,
    QueryMethod,
    Solver,
    resolve_label,
    solves_s_test,
)
from interpret.data import require_words
from interpret.explainer import Identity
from service.errors import LimitExceededError
from service.settings import Settings


def _at_most(field: str, value: int, limit: int, setting: str) -> None:
    if value > limit:
        raise LimitExceededError(
            f"{field}={value} exceeds this server's limit of {limit} ({setting}); lower {field}",
            {"field": field, "limit": limit, "value": value},
        )


def _bounded(field: str, value: int, parameter: str, settings: Settings) -> None:
    """``_at_most`` the setting :data:`PARAMETER_LIMITS` names for ``parameter``."""
    limit = PARAMETER_LIMITS[parameter]
    _at_most(field, value, getattr(settings, limit), f"INFLUENCE_{limit.upper()}")


def check_inputs(inputs, settings: Settings, tokenizer, identity: Identity) -> None:
    """Batch size, then each input."""
    _at_most("inputs", len(inputs), settings.max_batch, "INFLUENCE_MAX_BATCH")
    for position, item in enumerate(inputs):
        check_text(item, settings, tokenizer, identity, f"inputs[{position}]")


def check_text(item, settings: Settings, tokenizer, identity: Identity, where: str = "") -> None:
    """Pairs only for pair models, tokens per input (special tokens included, before truncation), label;
    a label (and an attack's target) given by name is replaced by its index here, once for every route."""
    prefix = f"{where}." if where else ""
    for name in ("text", "text_pair"):  # before any tokenizer: a megabyte of text is refused in microseconds
        value = getattr(item, name)
        if value is not None:
            _at_most(
                f"{prefix}{name} characters",
                len(value),
                settings.max_input_chars,
                "INFLUENCE_MAX_INPUT_CHARS",
            )
        try:
            require_words(value, f"{prefix}{name}")
        except ValueError as error:
            raise LimitExceededError(str(error), {"field": f"{prefix}{name}"}) from None
    if item.text_pair is not None and not identity.takes_pairs:
        raise LimitExceededError(
            f"{prefix}text_pair: this model was trained on single sentences; leave text_pair out",
            {"field": f"{prefix}text_pair"},
        )
    pair = [item.text_pair] if item.text_pair is not None else None
    tokens = len(tokenizer([item.text], pair, truncation=False)["input_ids"][0])
    field = f"{prefix}text" + ("+text_pair" if pair else "")
    _at_most(f"{field} tokens", tokens, settings.max_input_tokens, "INFLUENCE_MAX_INPUT_TOKENS")
    for name in ("label", "target"):
        if hasattr(item, name):
            setattr(item, name, _label(getattr(item, name), identity, f"{prefix}{name}"))


def _label(value: int | str | None, identity: Identity, field: str) -> int | None:
    try:
        return resolve_label(value, identity.label_names, field)
    except ValueError as error:
        detail = {"field": field, "limit": identity.num_labels - 1, "value": value}
        raise LimitExceededError(str(error), detail) from None


def check_influence(
    request,
    settings: Settings,
    tokenizer,
    identity: Identity,
    num_examples: int,
    method: QueryMethod,
    solver: Solver,
) -> None:
    """Sizes of an influence request that ``method`` and ``solver`` (already resolved) will run: a knob
    neither reads is refused before (``unused_knobs``), and bounds only what runs."""
    check_inputs(request.inputs, settings, tokenizer, identity)
    if method == "fastif":  # k means nothing to the other methods
        _bounded("k", request.k, "k", settings)
    if method == "full":
        check_full_scan(settings, num_examples, "k" if request.method is None else "method")
    if request.rerank is not None:
        _bounded("rerank", request.rerank, "rerank", settings)
    if request.solver == "cg" and request.cg_rows is None and num_examples > settings.max_cg_rows:
        raise LimitExceededError(
            f"cg_rows=null takes the Hessian over all {num_examples} training examples, above this "
            f"server's limit of {settings.max_cg_rows} (INFLUENCE_MAX_CG_ROWS); give cg_rows",
            {"field": "cg_rows", "limit": settings.max_cg_rows, "value": None},
        )
    if request.solver == "cg" and request.cg_rows is not None:
        _bounded("cg_rows", request.cg_rows, "cg_rows", settings)
    _bounded("top", request.top, "top", settings)
    if not solves_s_test(method, request.rerank) or solver != "lissa" or request.exact:
        return
    lissa = request.lissa
    _bounded("lissa.recursion_depth", lissa.recursion_depth, "recursion_depth", settings)
    _bounded("lissa.num_repetitions", lissa.num_repetitions, "num_repetitions", settings)


def check_full_scan(settings: Settings, num_examples: int, field: str) -> None:
    """A full scan needs the operator's consent (INFLUENCE_ALLOW_FULL_SCAN) and at most ``max_k`` rows."""
    if not settings.allow_full_scan:
        raise LimitExceededError(
            f"a full scan scores all {num_examples} training examples, which this server does not allow "
            "(INFLUENCE_ALLOW_FULL_SCAN); give k (fastif) or use method='gradient'",
            {"field": field, "value": None},
        )
    if num_examples > settings.max_k:
        raise LimitExceededError(
            f"a full scan scores all {num_examples} training examples, above this server's limit of "
            f"{settings.max_k} (INFLUENCE_MAX_K); give k, or use method='gradient'",
            {"field": field, "limit": settings.max_k, "value": None},
        )


EXAMPLE_PARAMETERS = ("num_examples", "held_out")
SEARCH_PARAMETERS = ("candidates", "max_flips", "beam_size", "num_tokens", "iterations")
PARAMETER_LIMITS: dict[str, str] = {
    "k": "max_k",
    "rerank": "max_k",
    "top": "max_top",
    "cg_rows": "max_cg_rows",
    "recursion_depth": "max_recursion_depth",
    "num_repetitions": "max_repetitions",
    **dict.fromkeys(("steps", "num_samples"), "max_samples"),
    **dict.fromkeys(
        ("candidates", "max_flips", "beam_size", "num_tokens", "iterations"), "max_attack_search"
    ),
    **dict.fromkeys(EXAMPLE_PARAMETERS, "max_trigger_examples"),
}
"""Request parameter (influence, LiSSA, saliency or attack) -> the operator's setting that bounds it: the
one map the checks here and the page's forms (``ModelInfo.parameter_limits``) read."""


def parameter_limits(settings: Settings) -> dict[str, int]:
    """Each bounded request parameter's largest value on this server."""
    return {name: getattr(settings, limit) for name, limit in PARAMETER_LIMITS.items()}


def check_method_parameters(params: Config, settings: Settings) -> None:
    """The operator's size limits on a saliency method's or an attack's parameters."""
    values = params.model_dump()
    for name, value in values.items():
        field = f"parameters.{name}"
        if value is None:
            continue
        if name in PARAMETER_LIMITS and name not in EXAMPLE_PARAMETERS:  # those two are bounded together
            _bounded(field, value, name, settings)
    if set(EXAMPLE_PARAMETERS) <= values.keys():
        examples = sum(values[name] for name in EXAMPLE_PARAMETERS)
        _at_most(
            "parameters.num_examples+held_out",
            examples,
            settings.max_trigger_examples,
            "INFLUENCE_MAX_TRIGGER_EXAMPLES",
        )


def forward_passes(method: str, params: Config) -> int:
    """Example forward passes a saliency method or an attack costs, roughly (what the synchronous budget
    counts): integrated gradients and SmoothGrad two per step or sample (forward and backward), LIME two
    per sample, a trigger search one batch per candidate per iteration plus the held-out evaluation,
    HotFlip and Input Reduction a few dozen."""
    values = params.model_dump()
    if method in ("integrated_gradients", "smooth_gradient", "lime"):
        return 2 * values.get("steps", values.get("num_samples", 1))
    if method == "triggers":
        batch = min(TRIGGER_BATCH_SIZE, values["num_examples"])
        searches = values["iterations"] * (values["num_tokens"] * values["candidates"] + 2) * batch
        return searches + 2 * values["held_out"]
    return 64


def check_sync_work(method: str, params: Config, settings: Settings) -> None:
    """A synchronous request must fit the budget; a costlier one is pointed to a job."""
    cost, budget = forward_passes(method, params), settings.max_sync_forward_passes
    if cost > budget:
        kind = "attack" if method in ATTACK_PARAMETERS else "saliency"
        raise LimitExceededError(
            f"{method} with these parameters costs about {cost} forward passes, over this server's budget "
            f"of {budget} for a synchronous request (INFLUENCE_MAX_SYNC_FORWARD_PASSES): submit it as a "
            f"job (POST /v1/jobs with kind={kind}) or lower its parameters",
            {"field": "parameters", "value": cost, "limit": budget},
        )
