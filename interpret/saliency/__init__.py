"""Saliency maps with AllenNLP Interpret's semantics, for any Hugging Face sequence classifier.

``saliency(classifier, text, method, pair=None, label=None, params=None)`` dispatches by name, with the
method's parameters as its ``interpret.config`` dataclass; every method returns a :class:`SaliencyMap`
(word-pieces, their words, raw signed and normalised scores).
"""

from __future__ import annotations

from interpret.classifier import TextClassifier
from interpret.config import SALIENCY_PARAMETERS, Config, method_parameters
from interpret.data import require_words
from interpret.saliency.base import SaliencyMap, encode_text
from interpret.saliency.black_box import leave_one_out, lime
from interpret.saliency.gradient import integrated_gradients, simple_gradient, smooth_gradient

SALIENCY_METHODS = {
    "simple_gradient": simple_gradient,
    "integrated_gradients": integrated_gradients,
    "smooth_gradient": smooth_gradient,
    "leave_one_out": leave_one_out,
    "lime": lime,
}
assert SALIENCY_METHODS.keys() == SALIENCY_PARAMETERS.keys()


def saliency(
    classifier: TextClassifier,
    text: str,
    method: str,
    pair: str | None = None,
    label: int | None = None,
    params: Config | None = None,
    **parameters,
) -> SaliencyMap:
    """The named method's map; its parameters as their ``interpret.config`` dataclass, or by name."""
    require_words(text)
    require_words(pair, "text_pair")
    if params is None:
        params = method_parameters("saliency method", SALIENCY_PARAMETERS, method, parameters)
    return SALIENCY_METHODS[method](classifier, text, pair, label, **params.model_dump())


__all__ = [
    "SALIENCY_METHODS",
    "SaliencyMap",
    "TextClassifier",
    "encode_text",
    "integrated_gradients",
    "leave_one_out",
    "lime",
    "saliency",
    "simple_gradient",
    "smooth_gradient",
]
