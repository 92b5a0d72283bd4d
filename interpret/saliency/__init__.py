"""Saliency maps with AllenNLP Interpret's semantics, for any Hugging Face sequence classifier.

``saliency(classifier, text, method, pair=None, label=None, **parameters)`` dispatches by name; every
method returns a :class:`SaliencyMap` (word-pieces, their words, raw signed and normalised scores).
"""

from __future__ import annotations

import inspect

from interpret.saliency.base import SaliencyMap, TextClassifier, encode_text
from interpret.saliency.black_box import leave_one_out, lime
from interpret.saliency.gradient import integrated_gradients, simple_gradient, smooth_gradient

SALIENCY_METHODS = {
    "simple_gradient": simple_gradient,
    "integrated_gradients": integrated_gradients,
    "smooth_gradient": smooth_gradient,
    "leave_one_out": leave_one_out,
    "lime": lime,
}


def method_parameters(function) -> dict[str, object]:
    """The tunable keyword parameters of a method and their defaults."""
    fixed = {"classifier", "text", "pair", "label", "examples"}
    return {
        name: p.default for name, p in inspect.signature(function).parameters.items() if name not in fixed
    }


def check_parameters(kind: str, name: str, function, parameters: dict) -> None:
    allowed = method_parameters(function)
    unknown = sorted(set(parameters) - set(allowed))
    if unknown:
        raise ValueError(
            f"parameters {unknown} are not parameters of {kind} {name!r}; "
            f"it takes {sorted(allowed) or 'none'}"
        )


def saliency(
    classifier: TextClassifier,
    text: str,
    method: str,
    pair: str | None = None,
    label: int | None = None,
    **parameters,
) -> SaliencyMap:
    if method not in SALIENCY_METHODS:
        raise ValueError(f"method must be one of {sorted(SALIENCY_METHODS)}, got {method!r}")
    function = SALIENCY_METHODS[method]
    check_parameters("saliency method", method, function, parameters)
    return function(classifier, text, pair, label, **parameters)


__all__ = [
    "SALIENCY_METHODS",
    "SaliencyMap",
    "TextClassifier",
    "check_parameters",
    "encode_text",
    "integrated_gradients",
    "leave_one_out",
    "lime",
    "method_parameters",
    "saliency",
    "simple_gradient",
    "smooth_gradient",
]
