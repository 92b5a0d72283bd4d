"""The operator's request limits (``Settings.max_*``): each violation names the field and the limit."""

from __future__ import annotations

from service.errors import LimitExceededError
from service.schemas import InfluenceRequest, TextInput
from service.settings import Settings


def _at_most(field: str, value: int, limit: int, setting: str) -> None:
    if value > limit:
        raise LimitExceededError(
            f"{field}={value} exceeds this server's limit of {limit} ({setting}); lower {field}",
            {"field": field, "limit": limit, "value": value},
        )


def check_inputs(inputs: list[TextInput], settings: Settings, tokenizer, num_labels: int) -> None:
    """Batch size, tokens per input (special tokens included, before truncation), label range."""
    _at_most("inputs", len(inputs), settings.max_batch, "INFLUENCE_MAX_BATCH")
    for position, item in enumerate(inputs):
        check_text(item, settings, tokenizer, num_labels, f"inputs[{position}]")


def check_text(item: TextInput, settings: Settings, tokenizer, num_labels: int, where: str = "") -> None:
    prefix = f"{where}." if where else ""
    pair = [item.text_pair] if item.text_pair is not None else None
    tokens = len(tokenizer([item.text], pair, truncation=False)["input_ids"][0])
    field = f"{prefix}text" + ("+text_pair" if pair else "")
    _at_most(f"{field} tokens", tokens, settings.max_input_tokens, "INFLUENCE_MAX_INPUT_TOKENS")
    if item.label is not None and item.label >= num_labels:
        raise LimitExceededError(
            f"{prefix}label={item.label} is not a label of this model: use 0..{num_labels - 1}",
            {"field": f"{prefix}label", "limit": num_labels - 1, "value": item.label},
        )


def check_influence(
    request: InfluenceRequest, settings: Settings, tokenizer, num_labels: int, num_examples: int
) -> None:
    check_inputs(request.inputs, settings, tokenizer, num_labels)
    if request.k is not None:
        _at_most("k", request.k, settings.max_k, "INFLUENCE_MAX_K")
    elif num_examples > settings.max_k:
        raise LimitExceededError(
            f"k=null scores all {num_examples} training examples, above this server's limit of "
            f"{settings.max_k} (INFLUENCE_MAX_K); give k",
            {"field": "k", "limit": settings.max_k, "value": None},
        )
    _at_most("top", request.top, settings.max_top, "INFLUENCE_MAX_TOP")
    lissa = request.lissa
    depth = settings.max_recursion_depth
    _at_most("lissa.recursion_depth", lissa.recursion_depth, depth, "INFLUENCE_MAX_RECURSION_DEPTH")
    repetitions = settings.max_repetitions
    _at_most("lissa.num_repetitions", lissa.num_repetitions, repetitions, "INFLUENCE_MAX_REPETITIONS")


SAMPLE_PARAMETERS = ("steps", "num_samples")
SEARCH_PARAMETERS = ("candidates", "max_flips", "beam_size", "num_tokens", "iterations")
EXAMPLE_PARAMETERS = ("num_examples", "held_out")


def check_method_parameters(kind: str, method: str, function, parameters: dict, settings: Settings) -> None:
    """Known names, the defaults' types, and the operator's size limits; each error names the field."""
    from interpret.saliency import check_parameters, method_parameters

    try:
        check_parameters(kind, method, function, parameters)
    except ValueError as error:
        raise LimitExceededError(str(error), {"field": "parameters"}) from None
    defaults = method_parameters(function)
    for name, value in parameters.items():
        field = f"parameters.{name}"
        expected = type(defaults[name]) if defaults[name] is not None else int
        if expected in (tuple, list, str):
            raise LimitExceededError(f"{field} cannot be set over HTTP", {"field": field})
        if (expected is int and (isinstance(value, bool) or not isinstance(value, int))) or (
            expected is float and isinstance(value, bool)
        ):
            raise LimitExceededError(f"{field} must be {expected.__name__}, got {value!r}", {"field": field})
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise LimitExceededError(f"{field} must be >= 0, got {value}", {"field": field})
        _bounded(field, name, value, settings)
    examples = sum(int(parameters.get(n, defaults.get(n) or 0)) for n in EXAMPLE_PARAMETERS if n in defaults)
    _at_most(
        "parameters.num_examples+held_out",
        examples,
        settings.max_trigger_examples,
        "INFLUENCE_MAX_TRIGGER_EXAMPLES",
    )


def _bounded(field: str, name: str, value, settings: Settings) -> None:
    if name in SAMPLE_PARAMETERS:
        _at_most(field, value, settings.max_samples, "INFLUENCE_MAX_SAMPLES")
    elif name in SEARCH_PARAMETERS:
        _at_most(field, value, settings.max_attack_search, "INFLUENCE_MAX_ATTACK_SEARCH")
