"""The FastIF query: kNN candidates, one ``s_test``, scores of the candidates only, top helpful/harmful.

``interpret`` knows nothing of FAISS: the caller passes ``search(features, k) -> (rows, distances)``
(``index.FeatureIndex.search``), or no search for the full-scan reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from interpret.influence.batches import ExampleStates
from interpret.influence.config import QueryConfig
from interpret.influence.exact import exact_s_test
from interpret.influence.lissa import STestResult, lissa_s_test
from interpret.influence.objective import loss_gradient
from interpret.influence.scoring import score_rows
from interpret.models import TrackedModel

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


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
    s_test: STestResult | None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class TestPoint:
    """A query encoded once: its prediction, the label explained, ``v = grad L(z_test)`` and its features."""

    predicted_label: int
    probabilities: list[float]
    label: int
    v: torch.Tensor
    features: np.ndarray


def prepare_test_point(
    tracked: TrackedModel, theta: torch.Tensor, text: str, pair: str | None, label: int | None
):
    encoded = tracked.encode([text], [pair] if pair is not None else None)
    state = tracked.frozen(encoded)
    with torch.no_grad():
        probabilities = torch.softmax(tracked.logits(theta, state), dim=-1)[0]
    predicted = int(probabilities.argmax())
    num_labels = probabilities.shape[0]
    if label is not None and not 0 <= label < num_labels:
        raise ValueError(f"label must be in [0, {num_labels - 1}], got {label}")
    used = predicted if label is None else int(label)
    v = loss_gradient(tracked, theta, state, torch.tensor([used], device=tracked.device))
    features = tracked.features(encoded).float().cpu().numpy()
    return TestPoint(predicted, probabilities.tolist(), used, v, features)


def rank(
    train: ExampleStates, rows: np.ndarray, scores: np.ndarray, distances: np.ndarray | None, top: int
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
            example = train.examples.example(int(rows[p]))
            distance = None if distances is None else float(distances[p])
            out.append(InfluentialExample(int(rows[p]), score=float(scores[p]), distance=distance, **example))
        return out

    return pick(negative[:top]), pick(positive[:top])


def influence_query(
    tracked: TrackedModel,
    train: ExampleStates,
    text: str,
    pair: str | None = None,
    label: int | None = None,
    config: QueryConfig | None = None,
    search: SearchFn | None = None,
    hessian: torch.Tensor | None = None,
    progress: bool = False,
) -> InfluenceAnswer:
    """Answer "which training examples made this prediction?" the FastIF way.

    With ``config.k`` and a ``search``, only the k nearest training examples in feature space are scored;
    with ``config.k=None`` (or no search) every training example is (the full-scan reference).
    ``config.exact`` solves with the explicit ``hessian`` (see ``interpret.influence.exact``).
    """
    config = config or QueryConfig()
    timings: dict[str, float] = {}
    theta = tracked.parameters()
    clock = time.perf_counter()
    point = prepare_test_point(tracked, theta, text, pair, label)
    timings["encode"] = time.perf_counter() - clock

    clock = time.perf_counter()
    result = None
    if config.exact:
        if hessian is None:
            raise ValueError(
                "exact=True needs the training Hessian (interpret.influence.exact.training_hessian)"
            )
        s_test = exact_s_test(hessian, point.v, config.lissa.damping)
    else:
        result = lissa_s_test(tracked, theta, point.v, train, config.lissa, progress)
        s_test = result.s_test
    timings["s_test"] = time.perf_counter() - clock

    clock = time.perf_counter()
    distances = None
    if config.k is not None and search is not None:
        rows, distances = search(point.features, min(config.k, len(train)))
    else:
        rows = np.arange(len(train))
    timings["search"] = time.perf_counter() - clock

    clock = time.perf_counter()
    scores = score_rows(tracked, theta, s_test, train, rows, config.score_batch_size, progress=progress)
    timings["score"] = time.perf_counter() - clock
    helpful, harmful = rank(train, rows, scores, distances, config.top)
    return InfluenceAnswer(
        point.predicted_label,
        point.probabilities,
        point.label,
        helpful,
        harmful,
        rows,
        scores,
        distances,
        result,
        timings,
    )
