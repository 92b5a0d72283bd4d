"""Black-box views (EMNLP 2020 interpretability tutorial): leave-one-out and LIME, over words.

Both delete words from the text, as LIME's text explainer does, instead of replacing their embeddings by
a baseline as Captum's ``FeatureAblation`` and ``Lime`` do on a fixed-shape tensor: deleting is what the
tutorial (and a reader) means by "without this word", and the later words shift left as they would. So
these two are ours, on one batched forward per chunk of perturbed texts; ``benchmarks/saliency.py``
compares them with Captum's replacement-based versions.
"""

from __future__ import annotations

import numpy as np
import torch

from interpret.cancellation import checkpoint
from interpret.config import LimeParams
from interpret.saliency.base import (
    EncodedText,
    SaliencyMap,
    TextClassifier,
    encode_text,
    explained_label,
    predict_probabilities,
    word_map,
)

BATCH = 64


def batch_probabilities(
    classifier: TextClassifier,
    texts: list[str],
    pairs: list[str | None] | None = None,
    batch_size: int = BATCH,
) -> np.ndarray:
    """``[N, C]`` class probabilities of many texts, in padded batches."""
    out = []
    for start in range(0, len(texts), batch_size):
        checkpoint()
        chunk = texts[start : start + batch_size]
        chunk_pairs = pairs[start : start + batch_size] if pairs is not None else None
        encoded = classifier.tokenizer(
            chunk,
            chunk_pairs,
            padding=True,
            truncation=True,
            max_length=classifier.max_length,
            return_tensors="pt",
        ).to(classifier.device)
        with torch.no_grad():
            out.append(torch.softmax(classifier.logits(**encoded).double(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, classifier.num_labels))


def _perturbed(classifier: TextClassifier, encoded: EncodedText, removals: list[set[int]]) -> np.ndarray:
    variants = [encoded.without_words(removed) for removed in removals]
    pairs = [v[1] for v in variants] if encoded.pair is not None else None
    return batch_probabilities(classifier, [v[0] for v in variants], pairs)


def _prepared(classifier: TextClassifier, text: str, pair: str | None, label: int | None):
    encoded = encode_text(classifier, text, pair)
    probabilities = predict_probabilities(classifier, encoded)
    return encoded, probabilities, explained_label(classifier, probabilities, label)


def leave_one_out(
    classifier: TextClassifier, text: str, pair: str | None = None, label: int | None = None
) -> SaliencyMap:
    """Score of word w: ``p(label | x) - p(label | x without w)`` (positive: the word supported it)."""
    encoded, probabilities, label = _prepared(classifier, text, pair, label)
    without = _perturbed(classifier, encoded, [{w} for w in range(len(encoded.words))])
    scores = probabilities[label] - without[:, label]
    return word_map("leave_one_out", encoded, scores, label, probabilities)


def lime(
    classifier: TextClassifier,
    text: str,
    pair: str | None = None,
    label: int | None = None,
    num_samples: int = LimeParams.default("num_samples"),
    kernel_width: float = LimeParams.default("kernel_width"),
    ridge: float = LimeParams.default("ridge"),
    seed: int = LimeParams.default("seed"),
) -> SaliencyMap:
    """LIME (Ribeiro et al. 2016) over words: a weighted ridge fit of ``p(label)`` on word-presence masks.

    Samples as LIME's text explainer: the original, then for each sample a uniform number of words to
    delete, chosen uniformly; weights ``sqrt(exp(-d^2 / kernel_width^2))`` with ``d`` the cosine distance
    of the mask to all-ones (LIME's distance x100 with width 25 is the same kernel).
    """
    LimeParams(
        num_samples=num_samples, kernel_width=kernel_width, ridge=ridge, seed=seed
    )  # the one check of the values
    encoded, probabilities, label = _prepared(classifier, text, pair, label)
    words = len(encoded.words)
    rng = np.random.default_rng(seed)
    masks = np.ones((num_samples, words))
    for row in range(1, num_samples):
        masks[row, rng.choice(words, size=rng.integers(1, words + 1), replace=False)] = 0
    removals = [set(np.flatnonzero(mask == 0).tolist()) for mask in masks]
    targets = _perturbed(classifier, encoded, removals)[:, label]
    distance = 1 - masks.sum(axis=1) / (np.sqrt(masks.sum(axis=1)) * np.sqrt(words) + 1e-12)
    weights = np.sqrt(np.exp(-(distance**2) / kernel_width**2))
    coefficients, intercept, r2 = _weighted_ridge(masks, targets, weights, ridge)
    report = {"intercept": intercept, "weighted_r2": r2, "num_samples": float(num_samples)}
    return word_map("lime", encoded, coefficients, label, probabilities, report)


def _weighted_ridge(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float
) -> tuple[np.ndarray, float, float]:
    """Minimise ``sum_i w_i (y_i - b - x_i.beta)^2 + ridge ||beta||^2`` (intercept not penalised)."""
    x_mean, y_mean = np.average(x, axis=0, weights=w), np.average(y, weights=w)
    xc, yc = x - x_mean, y - y_mean
    gram = (xc * w[:, None]).T @ xc + ridge * np.eye(x.shape[1])
    beta = np.linalg.solve(gram, (xc * w[:, None]).T @ yc)
    residual = yc - xc @ beta
    total = float(np.sum(w * yc**2))
    r2 = 1 - float(np.sum(w * residual**2)) / total if total > 0 else 1.0
    return beta, float(y_mean - x_mean @ beta), r2
