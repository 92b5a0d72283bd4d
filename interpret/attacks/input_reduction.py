"""Input Reduction (Feng et al. 2018), as AllenNLP Interpret runs it, on whole words of any tokenizer.

Repeatedly remove the least important word, all of its pieces (smallest gradient norm of the loss of the
original label at its pieces' embeddings, as AllenNLP ranks word-pieces) while the prediction stays the same,
keeping a beam of ``max(1, min(beam_size, L - 3))`` candidates (``L``: the current length in word-pieces);
return the shortest reduced input found. Special tokens and words holding an ``ignore_tokens`` entry are never
removed; one ``WordEdit`` is reported per removed piece.
"""

from __future__ import annotations

import numpy as np

from interpret.attacks.base import (
    DEFAULT_IGNORE_TOKENS,
    AttackResult,
    WordEdit,
    editable_words,
    encode_ids,
    loss_gradients,
    probabilities,
    tokens_of,
    without_positions,
    word_gradient_norms,
)
from interpret.cancellation import checkpoint
from interpret.classifier import TextClassifier
from interpret.config import InputReductionParams


def input_reduction(
    classifier: TextClassifier,
    text: str,
    pair: str | None = None,
    label: int | None = None,
    beam_size: int = InputReductionParams.default("beam_size"),
    ignore_tokens: tuple[str, ...] = DEFAULT_IGNORE_TOKENS,
) -> AttackResult:
    """The shortest input (word-pieces removed) that keeps the prediction ``label`` (default: predicted)."""
    InputReductionParams(beam_size=beam_size)  # the one check of the values
    start = encode_ids(classifier, text, pair)
    before = probabilities(classifier, [start])[0]
    label = int(before.argmax()) if label is None else label
    # each beam entry: (row, original positions still present, its words' current positions)
    words = editable_words(classifier, text, pair, tuple(ignore_tokens))
    beam = [(start, list(range(len(start["input_ids"]))), words)]
    best, best_probabilities = beam[0], before
    while beam:
        checkpoint()
        candidates = []
        for row, kept, words in beam:
            candidates += _reductions(classifier, row, kept, words, label, beam_size)
        if not candidates:
            break
        outputs = probabilities(classifier, [row for row, *_ in candidates])
        keeps = outputs.argmax(axis=1) == label
        order = [i for i in np.argsort(-outputs[:, label], kind="stable") if keeps[i]]
        width = max(1, min(beam_size, len(candidates[0][0]["input_ids"]) - 3))
        beam = [candidates[i] for i in order[:width]]
        if beam:
            best, best_probabilities = beam[0], outputs[order[0]]
    original = tokens_of(classifier, start["input_ids"])
    final = tokens_of(classifier, best[0]["input_ids"])
    removed = sorted(set(range(len(original))) - set(best[1]))
    return AttackResult(
        "input_reduction",
        original,
        [final],
        before.tolist(),
        [best_probabilities.tolist()],
        [WordEdit(p, original[p], None) for p in removed],
        len(removed) > 0,
        {"label": float(label), "removed": float(len(removed))},
    )


def _reductions(classifier, row, kept, words, label: int, beam_size: int) -> list:
    """Up to ``beam_size`` one-word-shorter inputs, removing the least important words first."""
    if len(words) <= 1:
        return []
    _, gradient, _ = loss_gradients(classifier, [row], [label])
    importance = word_gradient_norms(gradient[0], words)
    ranked = sorted(range(len(words)), key=lambda w: importance[w])[:beam_size]
    return [_remove(row, kept, words, w) for w in ranked]


def _remove(row, kept, words, word: int):
    """``(row, kept, words)`` with ``word`` removed and the later words' positions shifted."""
    gone = words[word]
    shifted = [[p - len(gone) if p > gone[-1] else p for p in positions] for positions in words]
    left = kept[: gone[0]] + kept[gone[-1] + 1 :]  # a word's pieces are contiguous
    return without_positions(row, gone), left, shifted[:word] + shifted[word + 1 :]
