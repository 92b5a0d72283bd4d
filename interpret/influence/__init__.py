"""Influence functions made fast the FastIF way: LiSSA ``s_test``, kNN candidates, forward-mode scoring."""

from interpret.influence.batches import ExampleStates
from interpret.influence.config import FASTIF_PRESET, LissaConfig, QueryConfig
from interpret.influence.exact import exact_s_test, training_hessian
from interpret.influence.lissa import LissaDivergenceError, STestResult, lissa_s_test
from interpret.influence.query import InfluenceAnswer, InfluentialExample, influence_query
from interpret.influence.scoring import influence_scores, score_rows

__all__ = [
    "FASTIF_PRESET",
    "ExampleStates",
    "InfluenceAnswer",
    "InfluentialExample",
    "LissaConfig",
    "LissaDivergenceError",
    "QueryConfig",
    "STestResult",
    "exact_s_test",
    "influence_query",
    "influence_scores",
    "lissa_s_test",
    "score_rows",
    "training_hessian",
]
