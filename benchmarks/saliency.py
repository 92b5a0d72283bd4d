"""Saliency and attack latency on the default model, and ours against Captum's stock recipes.

    python benchmarks/saliency.py [--model artifacts/model] [--repeats 5]

On one 20-word sentence: the median latency of every saliency method and attack; then, where a library
recipe exists, ours vs the library's on the same input: time ratio and Spearman correlation of the
normalised token scores. The library side is what a Captum user writes by default:
``LayerIntegratedGradients`` on the embedding layer (Gauss-Legendre, 50 steps, [PAD] baseline),
``NoiseTunnel(Saliency)``, ``FeatureAblation`` and ``Lime`` over word masks (word embeddings set to 0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from captum.attr import FeatureAblation, LayerIntegratedGradients, Lime, NoiseTunnel, Saliency
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result
from interpret.attacks import hotflip, input_reduction
from interpret.models import load_classifier
from interpret.saliency import SALIENCY_METHODS, TextClassifier, encode_text, saliency
from interpret.saliency.base import embed_tokens, log_probabilities

SENTENCE = (
    "the acting is superb and the score is gorgeous , but the plot drags badly and the ending feels "
    "cheap and rushed"
)


def median_seconds(function, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def token_scores(attributions: torch.Tensor) -> np.ndarray:
    magnitude = attributions.detach().abs().sum(-1)[0].double().numpy()
    return magnitude / magnitude.sum()


def word_scores(per_token: np.ndarray, word_ids: list[int | None]) -> np.ndarray:
    words = np.zeros(1 + max(w for w in word_ids if w is not None))
    for value, word in zip(per_token, word_ids, strict=True):
        if word is not None:
            words[word] += value
    return np.abs(words) / np.abs(words).sum()


def captum_recipes(classifier: TextClassifier, label: int) -> dict:
    """The library's default way to get each map (each returns per-token or per-word scores)."""
    encoded = encode_text(classifier, SENTENCE)
    embeddings = embed_tokens(classifier, encoded.input_ids).requires_grad_()
    extra = (encoded.attention_mask, encoded.token_type_ids)
    forward = partial(log_probabilities, classifier)
    mask = torch.tensor([[w + 1 if w is not None else 0 for w in encoded.word_ids]])  # 0: special tokens
    mask = mask[..., None].expand_as(embeddings)

    def ids_forward(input_ids):
        return torch.log_softmax(
            classifier.model(
                input_ids=input_ids, attention_mask=encoded.attention_mask.expand(len(input_ids), -1)
            ).logits,
            dim=-1,
        )

    def integrated():
        baseline = torch.full_like(encoded.input_ids, classifier.tokenizer.pad_token_id)
        baseline[0, 0], baseline[0, -1] = encoded.input_ids[0, 0], encoded.input_ids[0, -1]
        layer = LayerIntegratedGradients(ids_forward, classifier.embeddings)
        return token_scores(layer.attribute(encoded.input_ids, baseline, target=label))

    def smooth():
        torch.manual_seed(0)
        tunnel = NoiseTunnel(Saliency(forward))
        stdev = 0.01 * float(embeddings.detach().max() - embeddings.detach().min())
        return token_scores(
            tunnel.attribute(
                embeddings,
                nt_type="smoothgrad",
                nt_samples=10,
                stdevs=stdev,
                target=label,
                additional_forward_args=extra,
            )
        )

    def ablation():
        scores = FeatureAblation(forward).attribute(
            embeddings, baselines=0.0, target=label, additional_forward_args=extra, feature_mask=mask
        )
        return _per_word(scores, encoded.word_ids)

    def lime():
        torch.manual_seed(0)
        scores = Lime(forward).attribute(
            embeddings,
            baselines=0.0,
            target=label,
            additional_forward_args=extra,
            feature_mask=mask,
            n_samples=200,
        )
        return _per_word(scores, encoded.word_ids)

    return {
        "integrated_gradients": integrated,
        "smooth_gradient": smooth,
        "leave_one_out": ablation,
        "lime": lime,
    }


def _per_word(scores: torch.Tensor, word_ids: list[int | None]) -> np.ndarray:
    """Feature-mask methods give every dimension of every piece of a word the word's score: keep one."""
    per_token = scores[0, :, 0].detach().double().numpy()
    words = np.zeros(1 + max(w for w in word_ids if w is not None))
    for value, word in zip(per_token, word_ids, strict=True):
        if word is not None:
            words[word] = value
    return np.abs(words) / np.abs(words).sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/model"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    classifier = TextClassifier(*load_classifier(str(args.model)))
    saliency(classifier, SENTENCE, "simple_gradient")  # warm-up

    ours, latency = {}, {}
    for method in SALIENCY_METHODS:
        latency[method], ours[method] = median_seconds(
            partial(saliency, classifier, SENTENCE, method), args.repeats
        )
    label = ours["simple_gradient"].label
    for name, attack in (("hotflip", hotflip), ("input_reduction", input_reduction)):
        latency[name], result = median_seconds(partial(attack, classifier, SENTENCE), args.repeats)
        latency[f"{name}_success"] = bool(result.success)

    comparison = {}
    for method, recipe in captum_recipes(classifier, label).items():
        seconds, theirs = median_seconds(recipe, args.repeats)
        mine = np.asarray(ours[method].scores)
        if len(theirs) != len(mine):  # per-word library scores: compare per word
            mine = word_scores(np.asarray(ours[method].raw_scores), ours[method].word_ids)
        comparison[method] = {
            "ours_seconds": latency[method],
            "captum_seconds": seconds,
            "time_ratio_ours_over_captum": latency[method] / seconds,
            "spearman": float(spearmanr(mine, theirs).statistic),
        }
    write_result(
        "saliency",
        {
            "model": str(args.model),
            "sentence_words": len(SENTENCE.split()),
            "word_pieces": len(ours["simple_gradient"].tokens),
            "median_seconds": latency,
            "integrated_gradients_completeness_gap_m10": ours["integrated_gradients"].extra[
                "completeness_gap"
            ],
            "vs_captum_defaults": comparison,
        },
    )


if __name__ == "__main__":
    main()
