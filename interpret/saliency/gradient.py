"""Gradient saliency maps through Captum, with AllenNLP Interpret's semantics on top.

* ``simple_gradient``: Captum ``InputXGradient`` (``x_t * df/dx_t``) on the word-piece embeddings.
* ``integrated_gradients``: Captum ``IntegratedGradients``, ``steps`` points (10 by default, as AllenNLP),
  batched under a token budget. AllenNLP takes the left Riemann points (0, 1/m, ...); we take Captum's
  Gauss-Legendre points: the same cost, and the sum of attributions meets ``f(x) - f(baseline)`` far more
  closely (the completeness gap, reported). The baseline is AllenNLP's all-zero embedding where that
  works. Under a scale-invariant norm on the embeddings (pre-norm decoders' RMSNorm, ModernBERT) it does
  not: ``f(alpha x)`` is flat for every ``alpha > 0`` and jumps at 0, so no quadrature completes the path
  (the tests' tiny Qwen2 kept a gap near 11 at 50 steps). ``baseline="mask"`` starts instead from the
  mask token's embedding at every word-piece (special tokens kept, so they get none), which never passes
  through zero; ``auto`` (the default) takes zero, and mask when zero's gap exceeds :data:`AUTO_GAP`. A
  gap above :data:`FLAG_GAP` is flagged in the map's ``warnings``.
* ``smooth_gradient``: Captum ``NoiseTunnel`` (smoothgrad) over ``InputXGradient``; the noise stdev is
  ``stdev * (max - min)`` of the input's embeddings, as AllenNLP scales it, drawn from a generator seeded
  by ``seed`` so the same request gives the same map.
"""

from __future__ import annotations

from functools import partial

import torch
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel

from interpret.config import IntegratedGradientsBaseline, IntegratedGradientsParams, SmoothGradientParams
from interpret.saliency.base import (
    SaliencyMap,
    TextClassifier,
    embed_tokens,
    encode_text,
    explained_label,
    forward_arguments,
    log_probabilities,
    predict_probabilities,
    token_map,
)

TOKEN_BUDGET = 16384
"""Word-pieces per forward batch when steps or samples are batched: bounds activation memory."""
AUTO_GAP = 0.05
"""``baseline="auto"`` leaves the zero baseline above this completeness gap."""
FLAG_GAP = 0.1
"""A completeness gap above this is a warning in the map (and on the page)."""


def _prepared(classifier: TextClassifier, text: str, pair: str | None, label: int | None):
    encoded = encode_text(classifier, text, pair)
    probabilities = predict_probabilities(classifier, encoded)
    label = explained_label(classifier, probabilities, label)
    forward = partial(log_probabilities, classifier)
    return (
        encoded,
        probabilities,
        label,
        forward,
        embed_tokens(classifier, encoded.input_ids).requires_grad_(),
    )


def simple_gradient(
    classifier: TextClassifier, text: str, pair: str | None = None, label: int | None = None
) -> SaliencyMap:
    encoded, probabilities, label, forward, embeddings = _prepared(classifier, text, pair, label)
    extra = forward_arguments(encoded)
    attributions = InputXGradient(forward).attribute(embeddings, target=label, additional_forward_args=extra)
    return token_map("simple_gradient", encoded, attributions[0], label, probabilities)


def integrated_gradients(
    classifier: TextClassifier,
    text: str,
    pair: str | None = None,
    label: int | None = None,
    steps: int = IntegratedGradientsParams.default("steps"),
    baseline: IntegratedGradientsBaseline = IntegratedGradientsParams.default("baseline"),  # noqa: B008 (a str)
) -> SaliencyMap:
    IntegratedGradientsParams(steps=steps, baseline=baseline)  # the one check of the values
    encoded, probabilities, label, forward, embeddings = _prepared(classifier, text, pair, label)
    gaps: dict[str, float] = {}
    for start in ("zero", "mask") if baseline == "auto" else (baseline,):
        attributions, report = _integrate(classifier, encoded, forward, embeddings, label, steps, start)
        gaps[start] = float(report["completeness_gap"])
        if gaps[start] <= AUTO_GAP:
            break
    report["baseline"] = start
    if baseline == "auto" and start == "mask":
        report["zero_baseline_gap"] = gaps["zero"]
    warnings = []
    if gaps[start] > FLAG_GAP:
        warnings.append(
            f"completeness gap {gaps[start]:.3g}: the attributions do not add up to f(input) - "
            f"f(baseline) along this path ({start} baseline, {steps} steps); read them with care"
            + ("" if start == "mask" else " or try baseline=mask")
        )
    return token_map("integrated_gradients", encoded, attributions[0], label, probabilities, report, warnings)


def baseline_embeddings(
    classifier: TextClassifier, encoded, embeddings: torch.Tensor, kind: str
) -> torch.Tensor:
    """The path's start: all zeros, or the mask token's embedding at every word-piece with the special
    tokens kept (the unknown token's, else the pad token's, where the tokenizer has no mask token)."""
    if kind == "zero":
        return torch.zeros_like(embeddings).detach()
    tokenizer = classifier.tokenizer
    token = next(
        (
            t
            for t in (tokenizer.mask_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id)
            if t is not None
        ),
        None,
    )
    if token is None:
        raise ValueError("baseline='mask' needs a mask, unknown or pad token; this tokenizer has none")
    reference = embed_tokens(classifier, torch.full_like(encoded.input_ids, token))
    special = torch.tensor(encoded.special, device=embeddings.device)[None, :, None]
    return torch.where(special, embeddings.detach(), reference)


def _integrate(classifier, encoded, forward, embeddings, label: int, steps: int, kind: str):
    """Captum's Gauss-Legendre integrated gradients from one baseline, with its completeness report."""
    extra = forward_arguments(encoded)
    baseline = baseline_embeddings(classifier, encoded, embeddings, kind)
    attributions = IntegratedGradients(forward).attribute(
        embeddings,
        baselines=baseline,
        target=label,
        additional_forward_args=extra,
        n_steps=steps,
        method="gausslegendre",
        internal_batch_size=max(1, TOKEN_BUDGET // len(encoded)),
    )
    with torch.no_grad():
        ends = forward(torch.cat([embeddings, baseline]), *extra)[:, label].double().cpu()
    difference = float(ends[0] - ends[1])
    total = float(attributions.detach().sum())
    gap = abs(total - difference) / abs(difference) if difference else abs(total)
    report = {"completeness_gap": gap, "sum_of_attributions": total, "f_input_minus_f_baseline": difference}
    return attributions, report


def smooth_gradient(
    classifier: TextClassifier,
    text: str,
    pair: str | None = None,
    label: int | None = None,
    num_samples: int = SmoothGradientParams.default("num_samples"),
    stdev: float = SmoothGradientParams.default("stdev"),
    seed: int = SmoothGradientParams.default("seed"),
) -> SaliencyMap:
    SmoothGradientParams(num_samples=num_samples, stdev=stdev, seed=seed)  # the one check of the values
    encoded, probabilities, label, forward, embeddings = _prepared(classifier, text, pair, label)
    extra = forward_arguments(encoded)
    scale = float(stdev * (embeddings.detach().max() - embeddings.detach().min()))
    devices = [classifier.device] if classifier.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # Captum draws with torch's global generator
        torch.manual_seed(seed)
        attributions = NoiseTunnel(InputXGradient(forward)).attribute(
            embeddings,
            nt_type="smoothgrad",
            nt_samples=num_samples,
            nt_samples_batch_size=max(1, TOKEN_BUDGET // len(encoded)),
            stdevs=scale,
            target=label,
            additional_forward_args=extra,
        )
    report: dict[str, float | str] = {"noise_stdev": scale, "num_samples": float(num_samples)}
    return token_map("smooth_gradient", encoded, attributions[0], label, probabilities, report)
