"""Input Reduction (Feng et al. 2018), as AllenNLP Interpret runs it, on word-pieces.

Repeatedly remove the least important word-piece (smallest gradient norm of the loss of the original
label at its embedding, as AllenNLP ranks them) while the prediction stays the same, keeping a beam of
``max(1, min(beam_size, L - 3))`` candidates (``L``: the current length in word-pieces); return the
shortest reduced input found. Special tokens and ``ignore_tokens`` are never removed.
"""

from __future__ import annotations

import numpy as np
import torch

from interpret.attacks.base import (
    DEFAULT_IGNORE_TOKENS,
    AttackResult,
    WordEdit,
    editable_positions,
    encode_ids,
    loss_gradients,
    probabilities,
    tokens_of,
)
from interpret.cancellation import checkpoint
from interpret.classifier import TextClassifier
from interpret.config import InputReductionParams


def _without(row: dict[str, torch.Tensor], position: int) -> dict[str, torch.Tensor]:
    return {k: torch.cat([v[:position], v[position + 1 :]]) for k, v in row.items()}


def input_reduction(
    classifier: TextClassifier,
    text: str,
    pair: str | None = None,
    label: int | None = None,
    beam_size: int = InputReductionParams.beam_size,
    ignore_tokens: tuple[str, ...] = DEFAULT_IGNORE_TOKENS,
) -> AttackResult:
    """The shortest input (word-pieces removed) that keeps the prediction ``label`` (default: predicted)."""
    InputReductionParams(beam_size)  # the one check of the values
    start = encode_ids(classifier, text, pair)
    before = probabilities(classifier, [start])[0]
    label = int(before.argmax()) if label is None else label
    # each beam entry: (row, original positions still present)
    beam = [(start, list(range(len(start["input_ids"]))))]
    best, best_probabilities = beam[0], before
    while beam:
        checkpoint()
        candidates = []
        for row, kept in beam:
            candidates += _reductions(classifier, row, kept, label, beam_size, tuple(ignore_tokens))
        if not candidates:
            break
        outputs = probabilities(classifier, [row for row, _ in candidates])
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


def _reductions(classifier, row, kept, label: int, beam_size: int, ignore_tokens) -> list:
    """Up to ``beam_size`` one-piece-shorter inputs, removing the least important pieces first."""
    positions = editable_positions(classifier, row["input_ids"], ignore_tokens)
    if len(positions) <= 1:
        return []
    _, gradient, _ = loss_gradients(classifier, [row], [label])
    importance = gradient[0].norm(dim=-1)
    ranked = sorted(positions, key=lambda p: float(importance[p]))[:beam_size]
    return [(_without(row, p), kept[:p] + kept[p + 1 :]) for p in ranked]
