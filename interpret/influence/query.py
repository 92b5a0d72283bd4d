"""The pieces of a FastIF query that are not LiSSA or scoring: the test point, the ranking, the answer.

The request path that strings them together (kNN search, ``s_test`` in-process or on Ray workers, scoring,
ranking) is ``engine.pipeline.answer_query``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from interpret.config import QueryMethod, check_label
from interpret.data import ExampleSet
from interpret.influence.cg import CGReport
from interpret.influence.lissa import LissaReport
from interpret.influence.objective import loss_gradient
from interpret.models import TrackedModel


@dataclass
class InfluentialExample:
    row: int
    id: str
    text: str
    text_pair: str | None
    label: int
    score: float
    distance: float | None


@dataclass
class InfluenceAnswer:
    """One query's answer; scores follow the sign convention of ``interpret.influence.scoring``."""

    predicted_label: int
    probabilities: list[float]
    label_used: int
    helpful: list[InfluentialExample]
    harmful: list[InfluentialExample]
    candidate_rows: np.ndarray
    candidate_scores: np.ndarray
    candidate_distances: np.ndarray | None
    lissa: LissaReport | None
    """``None`` for a solve (exact, CG) and for the gradient index without rerank."""
    method: QueryMethod
    """Which method answered: gradient, fastif or full."""
    timings: dict[str, float] = field(default_factory=dict)
    s_test_cached: bool = False
    cg: CGReport | None = None
    """The conjugate-gradient report when ``solver='cg'``."""
    gradient_index: dict[str, Any] | None = None
    """Settings and measured fidelity of the gradient index that answered."""
    solver: str | None = None
    """How ``s_test`` was solved (lissa, cg, index or exact); ``None`` when none was needed."""
    s_test_seconds: float | None = None
    """The solve's own wall time: this query's, or on a cache hit that of the query that made it."""


@dataclass
class TestPoint:
    """A query encoded once: its prediction, the label explained, its kNN features and ``v = grad L``."""

    predicted_label: int
    probabilities: list[float]
    label: int
    features: np.ndarray
    v: torch.Tensor | None = None


def prepare_test_point(
    tracked: TrackedModel,
    theta: torch.Tensor,
    text: str,
    pair: str | None,
    label: int | None,
    gradient: bool = True,
) -> TestPoint:
    """The query's prediction, the label explained (``label``, else the predicted one), its kNN features
    and, when ``gradient``, ``v = grad L(z_test)`` (one backward; ``None`` otherwise)."""
    encoded = tracked.encode([text], [pair] if pair is not None else None)
    state = tracked.frozen(encoded)
    with torch.no_grad():
        probabilities = torch.softmax(tracked.logits(theta, state), dim=-1)[0]
    predicted = int(probabilities.argmax())
    num_labels = probabilities.shape[0]
    check_label(label, num_labels)
    used = predicted if label is None else int(label)
    v = None
    if gradient:
        v = loss_gradient(tracked, theta, state, torch.tensor([used], device=tracked.device))
    features = tracked.features(encoded).float().cpu().numpy()
    return TestPoint(predicted, probabilities.tolist(), used, features, v)


def rank(
    examples: ExampleSet, rows: np.ndarray, scores: np.ndarray, distances: np.ndarray | None, top: int
) -> tuple[list[InfluentialExample], list[InfluentialExample]]:
    """Most helpful (negative scores, most negative first) and most harmful (positive, largest first).

    A side can hold fewer than ``top`` entries, or none: near neighbours of a confident prediction are
    often all helpful, and listing the least helpful of them as "harmful" would mislead.
    """
    order = np.argsort(scores, kind="stable")
    negative, positive = order[scores[order] < 0], order[scores[order] > 0][::-1]

    def pick(positions: np.ndarray) -> list[InfluentialExample]:
        out = []
        for p in positions:
            example = examples.example(int(rows[p]))
            distance = None if distances is None else float(distances[p])
            out.append(InfluentialExample(int(rows[p]), score=float(scores[p]), distance=distance, **example))
        return out

    return pick(negative[:top]), pick(positive[:top])
