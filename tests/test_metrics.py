import numpy as np
import pytest

from interpret.influence.metrics import correlations, recall_at_m, top_rows


def test_recall_at_m_by_mode():
    scores = np.array([5.0, -4.0, 0.1, 3.0, -0.2, -6.0])
    candidates = np.array([0, 1, 2])
    assert recall_at_m(candidates, scores, 2, "harmful") == 0.5  # top harmful: rows 0, 3
    assert recall_at_m(candidates, scores, 2, "helpful") == 0.5  # top helpful: rows 5, 1
    assert recall_at_m(candidates, scores, 3, "unsigned") == pytest.approx(2 / 3)  # rows 5, 0, 1
    assert top_rows(scores, 1, "unsigned").tolist() == [5]


def test_correlations_of_monotone_and_reversed_vectors():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert correlations(a, a**3) == pytest.approx(
        {"pearson": np.corrcoef(a, a**3)[0, 1], "spearman": 1.0, "kendall": 1.0}
    )
    assert correlations(a, -a)["kendall"] == pytest.approx(-1.0)
