"""The numbers ``influence evaluate`` reports: leave-one-out agreement, the linear datamodeling score
(LDS) with a bootstrap interval, and the pieces they are made of. Pure functions on arrays.

Sign convention as everywhere (``interpret.influence.scoring``): a score ``I(z, t)`` approximates
``d L(t) / d eps`` for up-weighting row ``z`` by ``eps``, positive = harmful.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def random_subsets(num_rows: int, count: int, fraction: float, seed: int) -> np.ndarray:
    """``count`` seeded subsets of exactly ``round(fraction * num_rows)`` rows each, as a boolean
    ``[count, num_rows]`` mask (TRAK's and dattri's LDS protocol: fixed size, drawn without replacement)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    size = max(1, round(fraction * num_rows))
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, num_rows), dtype=bool)
    for subset in masks:
        subset[rng.choice(num_rows, size, replace=False)] = True
    return masks


def subset_effects(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Predicted effect of training on each subset, ``[S, T]``: ``sum_{z in S} I(z, t)``.

    Training on ``S`` (mean loss over ``|S|`` rows, ``|S|`` fixed) up-weights its rows by
    ``1/|S| - 1/N`` and the rest by ``-1/N`` relative to the full set, so the first-order change of the
    test loss is ``sum_{z in S} I(z, t) / |S|`` minus a constant: ranking subsets by the sum is ranking
    them by the predicted test loss."""
    return masks.astype(np.float64) @ np.asarray(scores, dtype=np.float64).T


def per_test_spearman(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Spearman correlation over subsets for each test point (columns); NaN where either is constant."""
    values = np.full(predicted.shape[1], np.nan)
    for column in range(predicted.shape[1]):
        a, b = predicted[:, column], measured[:, column]
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            values[column] = stats.spearmanr(a, b).statistic
    return values


def bootstrap_interval(
    values: np.ndarray, seed: int = 0, resamples: int = 2000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over test points (NaNs dropped)."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def predicted_removal_effect(scores: np.ndarray, num_rows: int) -> np.ndarray:
    """First-order change of a test loss when a row is removed: up-weighting by ``eps = -1/N`` gives
    ``Delta L = -I(z, t) / N``."""
    return -np.asarray(scores, dtype=np.float64) / num_rows


def most_influential(scores: np.ndarray, m: int) -> np.ndarray:
    """Rows of the ``m`` largest ``|I(z, t)|``, largest first (both signs: LOO checks those that matter)."""
    return np.argsort(-np.abs(scores), kind="stable")[:m]


def pearson_spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return float(stats.pearsonr(a, b).statistic), float(stats.spearmanr(a, b).statistic)
