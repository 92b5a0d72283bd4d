"""Attacks on word-pieces of real models, with AllenNLP Interpret's output shape: HotFlip, Input Reduction
(one input each) and universal triggers (a class of inputs)."""

from interpret.attacks.base import DEFAULT_IGNORE_TOKENS, AttackResult, WordEdit
from interpret.attacks.hotflip import hotflip
from interpret.attacks.input_reduction import input_reduction
from interpret.attacks.triggers import TriggerResult, flip_rate, search_trigger, with_trigger

ATTACK_METHODS = {"hotflip": hotflip, "input_reduction": input_reduction}
"""Per-input attacks by name; ``triggers`` needs a set of inputs and is called on its own."""

__all__ = [
    "ATTACK_METHODS",
    "DEFAULT_IGNORE_TOKENS",
    "AttackResult",
    "TriggerResult",
    "WordEdit",
    "flip_rate",
    "hotflip",
    "input_reduction",
    "search_trigger",
    "with_trigger",
]
