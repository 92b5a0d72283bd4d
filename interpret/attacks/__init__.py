"""Attacks on word-pieces of real models, with AllenNLP Interpret's output shape: HotFlip, Input Reduction
(one input each) and universal triggers (a class of inputs)."""

from interpret.attacks.base import DEFAULT_IGNORE_TOKENS, AttackResult, WordEdit
from interpret.attacks.hotflip import hotflip
from interpret.attacks.input_reduction import input_reduction
from interpret.attacks.triggers import TriggerResult, flip_rate, search_trigger, trigger_attack, with_trigger
from interpret.saliency import check_parameters
from interpret.saliency.base import TextClassifier

ATTACK_METHODS = {"hotflip": hotflip, "input_reduction": input_reduction, "triggers": trigger_attack}


def attack(
    classifier: TextClassifier,
    text: str,
    method: str,
    pair: str | None = None,
    label: int | None = None,
    target: int | None = None,
    examples=None,
    **parameters,
) -> AttackResult:
    """Run an attack by name; ``triggers`` searches over ``examples`` (the training set) of the class."""
    if method not in ATTACK_METHODS:
        raise ValueError(f"method must be one of {sorted(ATTACK_METHODS)}, got {method!r}")
    function = ATTACK_METHODS[method]
    given = {**parameters, **({"target": target} if target is not None else {})}
    check_parameters("attack", method, function, given)  # input_reduction keeps the label: no target
    if method == "triggers":
        if examples is None:
            raise ValueError("triggers need the training examples to search over")
        return trigger_attack(classifier, text, pair, label, examples, target, **parameters)
    if method == "input_reduction":
        return input_reduction(classifier, text, pair, label, **parameters)
    return hotflip(classifier, text, pair, label, target, **parameters)


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
