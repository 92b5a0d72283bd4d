"""Influence functions made fast the FastIF way: LiSSA ``s_test``, kNN candidates, forward-mode scoring."""

from interpret.config import FASTIF_PRESET, LissaConfig, QueryConfig
from interpret.influence.batches import ExampleStates
from interpret.influence.exact import exact_s_test, training_hessian
from interpret.influence.lissa import LissaDivergenceError, LissaReport, STestResult, lissa_s_test
from interpret.influence.query import InfluenceAnswer, InfluentialExample, TestPoint, prepare_test_point, rank
from interpret.influence.scoring import influence_scores, score_rows

__all__ = [
    "FASTIF_PRESET",
    "ExampleStates",
    "InfluenceAnswer",
    "InfluentialExample",
    "LissaConfig",
    "LissaDivergenceError",
    "LissaReport",
    "QueryConfig",
    "STestResult",
    "TestPoint",
    "exact_s_test",
    "influence_scores",
    "lissa_s_test",
    "prepare_test_point",
    "rank",
    "score_rows",
    "training_hessian",
]
