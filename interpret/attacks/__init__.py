"""Attacks on word-pieces of real models, with AllenNLP Interpret's output shape: HotFlip, Input Reduction
(one input each) and universal triggers (a class of inputs)."""

from __future__ import annotations

from interpret.attacks.base import DEFAULT_IGNORE_TOKENS, AttackResult, WordEdit
from interpret.attacks.hotflip import hotflip
from interpret.attacks.input_reduction import input_reduction
from interpret.attacks.triggers import TriggerResult, flip_rate, search_trigger, trigger_attack, with_trigger
from interpret.classifier import TextClassifier
from interpret.config import ATTACK_PARAMETERS, TARGETED_ATTACKS, Config, method_parameters
from interpret.data import require_words

ATTACK_METHODS = {"hotflip": hotflip, "input_reduction": input_reduction, "triggers": trigger_attack}
assert ATTACK_METHODS.keys() == ATTACK_PARAMETERS.keys()


def attack(
    classifier: TextClassifier,
    text: str,
    method: str,
    pair: str | None = None,
    label: int | None = None,
    target: int | None = None,
    examples=None,
    params: Config | None = None,
    **parameters,
) -> AttackResult:
    """Run an attack by name (parameters as their ``interpret.config`` dataclass, or by name);
    ``triggers`` searches over ``examples`` (the training set) of the class."""
    require_words(text)
    require_words(pair, "text_pair")
    if params is None:
        params = method_parameters("attack", ATTACK_PARAMETERS, method, parameters)
    if target is not None and method not in TARGETED_ATTACKS:
        raise ValueError(f"{method} keeps the label it starts from: it takes no target")
    if method == "triggers":
        if examples is None:
            raise ValueError("triggers need the training examples to search over")
        return trigger_attack(classifier, text, pair, label, examples, target, **params.model_dump())
    if method == "input_reduction":
        return input_reduction(classifier, text, pair, label, **params.model_dump())
    return hotflip(classifier, text, pair, label, target, **params.model_dump())


__all__ = [
    "ATTACK_METHODS",
    "DEFAULT_IGNORE_TOKENS",
    "AttackResult",
    "TriggerResult",
    "WordEdit",
    "attack",
    "flip_rate",
    "hotflip",
    "input_reduction",
    "search_trigger",
    "trigger_attack",
    "with_trigger",
]
