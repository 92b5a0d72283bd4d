"""Quality of an approximate influence answer against a reference (the full scan)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import stats

RecallMode = Literal["harmful", "helpful", "unsigned"]


def top_rows(scores: np.ndarray, m: int, mode: RecallMode) -> np.ndarray:
    """Positions of the m most harmful (largest), most helpful (smallest) or largest-|score| entries."""
    key = {"harmful": -scores, "helpful": scores, "unsigned": -np.abs(scores)}[mode]
    return np.argsort(key, kind="stable")[:m]


def recall_at_m(candidates: np.ndarray, reference_scores: np.ndarray, m: int, mode: RecallMode) -> float:
    """Share of the reference top-m (over all rows) found among ``candidates`` (row numbers)."""
    wanted = top_rows(reference_scores, m, mode)
    return float(np.isin(wanted, candidates).mean())


def correlations(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Pearson, Spearman and Kendall correlations of two score vectors over the same rows."""
    return {
        "pearson": float(stats.pearsonr(a, b).statistic),
        "spearman": float(stats.spearmanr(a, b).statistic),
        "kendall": float(stats.kendalltau(a, b).statistic),
    }
