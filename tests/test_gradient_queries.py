"""Queries through a gradient index (engine.pipeline): the default method, its scores against an exact
full scan, rerank with each solver, and methods refused by name when their index is missing."""

import numpy as np
import pytest
import torch

from engine.builds import build_gradient_index
from engine.pipeline import answer_query, local_engine
from interpret.config import GradientIndexConfig, MethodUnavailableError, QueryConfig
from interpret.influence import LissaConfig, exact_s_test, training_hessian
from interpret.influence.objective import per_example_gradients
from interpret.influence.preconditioner import (
    subspace_s_test,
)
from interpret.influence.query import prepare_test_point

QUERY = "the plot was good and fun"


@pytest.fixture(scope="module")
def gradient_engine(engine_dirs, tmp_path_factory):
    """Pooler + classifier tracked (no LayerNorm: nothing dropped), unprojected, Hessian-preconditioned."""
    folder = tmp_path_factory.mktemp("gradient-index")
    dirs = {"tracked_layers": 0, "dtype": torch.float64}
    engine = local_engine(engine_dirs[0], **dirs)
    build_gradient_index(
        engine, folder, GradientIndexConfig(rank=None, preconditioner="hessian", damping=0.1)
    )
    return local_engine(engine_dirs[0], gradient_index_dir=folder, **dirs)


def test_gradient_is_the_default_method_and_ranks_the_whole_set(gradient_engine):
    answer = answer_query(gradient_engine, QUERY, config=QueryConfig(top=4))
    assert answer.method == "gradient" and answer.lissa is None
    assert set(answer.timings) == {"encode", "test_gradient", "search", "total"}
    helpful = [e.score for e in answer.helpful]
    harmful = [e.score for e in answer.harmful]
    assert helpful == sorted(helpful) and harmful == sorted(harmful, reverse=True)
    assert all(s < 0 for s in helpful) and all(s > 0 for s in harmful)
    assert answer.gradient_index["preconditioner"] == "hessian" and answer.gradient_index["rank"] is None


def test_gradient_scores_equal_an_exact_full_scan(gradient_engine):
    """Unprojected + Hessian preconditioner: the index's top lists are the exact influence's."""
    n = len(gradient_engine.examples)
    answer = answer_query(gradient_engine, QUERY, config=QueryConfig(top=n))
    explainer = gradient_engine.backend.explainer
    tracked, theta, train = explainer.tracked, explainer.theta, explainer.checkpoint.train
    states, labels = train.load(np.arange(n))
    v = prepare_test_point(tracked, theta, QUERY, None, None).v
    s_test = exact_s_test(training_hessian(tracked, theta, train), v, 0.1)
    expected = -(per_example_gradients(tracked, theta, states, labels) @ s_test).numpy()
    got = {e.row: e.score for e in answer.helpful + answer.harmful}
    rows = np.array(sorted(got))
    # FAISS stores float32: exact to its precision (the float64 math is checked to 1e-8 above)
    np.testing.assert_allclose([got[r] for r in rows], expected[rows], rtol=1e-5, atol=1e-8)


def test_rerank_rescores_the_index_candidates_with_s_test(gradient_engine):
    lissa = LissaConfig(recursion_depth=50, batch_size=4, damping=0.1, scale=20.0)
    config = QueryConfig(top=3, rerank=10, lissa=lissa)
    answer = answer_query(gradient_engine, QUERY, config=config)
    assert answer.method == "gradient" and answer.lissa is not None
    assert len(answer.candidate_rows) <= 20 and "s_test" in answer.timings
    scan = answer_query(gradient_engine, QUERY, config=QueryConfig(method="full", top=3, lissa=lissa))
    by_row = dict(zip(scan.candidate_rows.tolist(), scan.candidate_scores, strict=True))
    np.testing.assert_allclose(answer.candidate_scores, [by_row[r] for r in answer.candidate_rows.tolist()])


@pytest.fixture(scope="module")
def kfac_engine(engine_dirs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kfac-index")
    dirs = {"dtype": torch.float64}
    build_gradient_index(
        local_engine(engine_dirs[0], **dirs), folder, GradientIndexConfig(rank=4, damping=0.1)
    )
    return local_engine(engine_dirs[0], gradient_index_dir=folder, **dirs)


def test_a_rerank_on_a_kfac_index_solves_with_its_curvature(kfac_engine):
    """The default rerank solver is ``index``; its scores are the candidates' exact gradients against
    ``subspace_s_test`` (the forward-mode scorer), and an explicit solver still wins."""
    answer = answer_query(kfac_engine, QUERY, config=QueryConfig(top=3, rerank=10))
    assert answer.method == "gradient" and answer.lissa is None and answer.cg is None
    explainer, curvature = kfac_engine.backend.explainer, kfac_engine.gradient_index.curvature
    v = prepare_test_point(explainer.tracked, explainer.theta, QUERY, None, None).v
    inverse = torch.from_numpy(curvature.inverse).double()
    s_test = subspace_s_test(v, explainer.projector(curvature.projection), inverse, 0.1)
    tracked, train = explainer.tracked, explainer.checkpoint.train
    states, labels = train.load(answer.candidate_rows)
    expected = -(per_example_gradients(tracked, explainer.theta, states, labels) @ s_test).numpy()
    np.testing.assert_allclose(answer.candidate_scores, expected, rtol=1e-6, atol=1e-10)
    lissa = LissaConfig(recursion_depth=20, batch_size=4, damping=0.1, scale=20.0)
    chosen = answer_query(
        kfac_engine, QUERY, config=QueryConfig(top=3, rerank=10, solver="lissa", lissa=lissa)
    )
    assert chosen.lissa is not None


def test_evaluations_measure_the_rerank_as_a_method(kfac_engine):
    """``gradient_rerank`` scores every row: the rerank's 2K rows by its ``s_test`` (the answer's own
    scores), every other row by the index; the fast rerank's K when none is given."""
    from interpret.config import FAST_RERANK, evaluated_query
    from tasks.evaluation import method_scores

    examples = kfac_engine.examples
    label = int(examples.labels[3])
    config = QueryConfig(rerank=5)
    scores = method_scores(kfac_engine, examples, np.array([3]), "gradient_rerank", config)[0]
    index = method_scores(kfac_engine, examples, np.array([3]), "gradient")[0]
    answer = answer_query(kfac_engine, examples.texts[3], label=label, config=config)
    reranked = answer.candidate_rows
    assert 5 < len(reranked) <= 10
    np.testing.assert_allclose(scores[reranked], answer.candidate_scores, rtol=1e-6)
    others = np.setdiff1d(np.arange(len(examples)), reranked)
    np.testing.assert_allclose(scores[others], index[others], rtol=1e-6)
    assert not np.allclose(scores[reranked], index[reranked], rtol=1e-3)  # rescored, not the index's
    assert evaluated_query(QueryConfig(), "gradient_rerank").rerank == FAST_RERANK


def test_the_index_solver_needs_a_kfac_index(gradient_engine):
    with pytest.raises(MethodUnavailableError, match="projection='kfac'") as raised:
        answer_query(gradient_engine, QUERY, config=QueryConfig(top=3, rerank=5, solver="index"))
    assert raised.value.field == "solver"
    answer = answer_query(
        gradient_engine, QUERY, config=QueryConfig(top=3, rerank=5, lissa=LissaConfig(recursion_depth=5))
    )
    assert answer.lissa is not None  # no curvature stored (not kfac): the default stays lissa


def test_cg_solver_answers_and_reports_its_residual(gradient_engine):
    config = QueryConfig(method="full", top=3, solver="cg", cg_rows=40, lissa=LissaConfig(damping=0.1))
    answer = answer_query(gradient_engine, QUERY, config=config)
    assert answer.cg.relative_residual <= 1e-4 and answer.cg.rows == 40 and answer.cg.iterations >= 1
    assert answer.lissa is None


def test_a_method_without_its_index_is_refused_by_name(engine_dirs):
    engine = local_engine(engine_dirs[0])
    with pytest.raises(MethodUnavailableError, match="needs a gradient index") as raised:
        answer_query(engine, QUERY, config=QueryConfig(method="gradient"))
    assert raised.value.field == "method"
    with pytest.raises(ValueError, match=r"\nmethod\n  Input should be 'gradient', 'fastif' or 'full'"):
        QueryConfig(method="fast")
    with pytest.raises(ValueError, match=r"\nrerank\n  Input should be greater than or equal to 1"):
        QueryConfig(rerank=0)


def test_the_normalised_view_is_the_exact_cosine_in_the_preconditioned_space(gradient_engine):
    """Unprojected + Hessian preconditioner: every normalised score is the cosine of the test and training
    gradients under ``(H + damping I)^-1``, computed here from the explicit Hessian; the ranking is
    RelatIF's ``I(z, test) / sqrt(|I(z, z)|)``."""
    n = len(gradient_engine.examples)
    answer = answer_query(gradient_engine, QUERY, config=QueryConfig(top=n, normalize=True))
    explainer = gradient_engine.backend.explainer
    tracked, theta, train = explainer.tracked, explainer.theta, explainer.checkpoint.train
    states, labels = train.load(np.arange(n))
    v = prepare_test_point(tracked, theta, QUERY, None, None).v
    damped = training_hessian(tracked, theta, train) + 0.1 * torch.eye(len(v), dtype=torch.float64)
    gradients = per_example_gradients(tracked, theta, states, labels)
    solved = torch.linalg.solve(damped, gradients.T).T  # (H + damping I)^-1 g_z, row by row
    relative = -(solved @ v) / torch.sqrt((solved * gradients).sum(1).abs())
    expected = (relative / torch.sqrt((v @ torch.linalg.solve(damped, v)).abs())).numpy()
    got = {e.row: e.score for e in answer.helpful + answer.harmful}
    rows = np.array(sorted(got))
    np.testing.assert_allclose([got[r] for r in rows], expected[rows], rtol=1e-4, atol=1e-6)
    assert np.abs(expected).max() <= 1  # (H + damping I) is positive definite here: true cosines
    best = np.argsort(expected, kind="stable")[: len(answer.helpful)]
    assert [e.row for e in answer.helpful] == best.tolist()


def test_the_normalised_view_is_refused_where_no_index_scores(gradient_engine):
    for config in (QueryConfig(normalize=True, rerank=5), QueryConfig(normalize=True, method="full")):
        with pytest.raises(
            MethodUnavailableError, match=r"normalize=true .* method='gradient' without rerank"
        ):
            answer_query(gradient_engine, QUERY, config=config)


def test_evaluations_measure_the_normalised_view_as_a_method(gradient_engine):
    """``gradient_normalized`` (an ``influence evaluate`` method) scores every row as the query does."""
    from tasks.evaluation import method_scores

    examples = gradient_engine.examples
    scores = method_scores(gradient_engine, examples, np.array([3]), "gradient_normalized")[0]
    label = int(examples.labels[3])
    config = QueryConfig(top=len(examples), normalize=True)
    answer = answer_query(gradient_engine, examples.texts[3], label=label, config=config)
    np.testing.assert_allclose(scores[answer.candidate_rows], answer.candidate_scores, rtol=1e-6)
    raw = method_scores(gradient_engine, examples, np.array([3]), "gradient")[0]
    assert scores[3] == pytest.approx(-1, abs=1e-6)  # the row itself: the same gradient
    assert np.abs(scores).max() <= 1 + 1e-6  # cosines
    assert np.argsort(raw).tolist() != np.argsort(scores).tolist()  # a view of its own, not a rescaling
