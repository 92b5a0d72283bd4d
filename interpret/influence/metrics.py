"""Quality of an approximate influence answer against a reference (the full scan)."""

from __future__ import annotations

from collections.abc import Sequence
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


def top_lists_recall(
    reference_scores: np.ndarray, scores: np.ndarray, rows: np.ndarray, ms: Sequence[int] = (10, 100)
) -> dict[str, float]:
    """recall@m of a method's own top-m lists, per side, against the reference over all rows: the method
    scored ``rows`` with ``scores``; keys ``recall_at_{m}_{side}``. ``influence evaluate recall`` and
    ``benchmarks/gradient_index.py`` both report this."""
    out = {}
    for side in ("helpful", "harmful"):
        for m in ms:
            out[f"recall_at_{m}_{side}"] = recall_at_m(
                rows[top_rows(scores, m, side)], reference_scores, m, side
            )
    return out


def correlations(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Pearson, Spearman and Kendall correlations of two score vectors over the same rows."""
    return {
        "pearson": float(stats.pearsonr(a, b).statistic),
        "spearman": float(stats.spearmanr(a, b).statistic),
        "kendall": float(stats.kendalltau(a, b).statistic),
    }
