"""The gradient index against exact answers: projection, preconditioner, build, query, manifest."""

import json

import numpy as np
import pytest
import torch

from index import IndexMismatchError
from index.gradient import load_gradient_index, shard_folder
from interpret.config import GradientIndexConfig, MethodUnavailableError, QueryConfig
from interpret.influence import ExampleStates, LissaConfig, exact_s_test, training_hessian
from interpret.influence.objective import loss_gradient, per_example_gradients
from interpret.influence.preconditioner import (
    gradient_index_scores,
    inverse_damped,
    precondition,
    projected_hessian,
)
from interpret.influence.projection import Projector
from interpret.models import TrackedModel
from service.builds import build_gradient_index
from service.pipeline import answer_query, local_engine

QUERY = "the plot was good and fun"


@pytest.fixture
def tracked_one(tiny64):
    """The tiny model in float64 with its last encoder layer, pooler and classifier tracked."""
    return TrackedModel(*tiny64, tracked_layers=1)


def _gradients(tracked, train_set, rows):
    train = ExampleStates(tracked, train_set)
    states, labels = train.load(rows)
    return states, labels, per_example_gradients(tracked, tracked.parameters(), states, labels)


@pytest.mark.parametrize("layer_norms", [False, True])
@pytest.mark.parametrize("rank", [None, 3])
def test_factored_projection_equals_projecting_the_materialised_gradient(
    tracked_one, train_set, rank, layer_norms
):
    states, labels, full = _gradients(tracked_one, train_set, range(12))
    projector = Projector(tracked_one, rank, seed=4, layer_norms=layer_norms)
    dense = projector.dense_matrix()
    factored = projector.gradients(tracked_one.parameters(), states, labels)
    torch.testing.assert_close(factored, full @ dense.T, rtol=1e-9, atol=1e-11)
    vector = torch.randn(tracked_one.num_parameters, dtype=torch.float64)
    torch.testing.assert_close(projector.project_vector(vector), dense @ vector, rtol=1e-9, atol=1e-11)


def test_unprojected_with_layer_norms_is_a_permutation_of_the_full_gradient(tracked_one):
    """The reference full scan's per-example gradients: every tracked coordinate exactly once."""
    dense = Projector(tracked_one, None, layer_norms=True).dense_matrix()
    assert dense.shape == (tracked_one.num_parameters, tracked_one.num_parameters)
    assert bool(
        (dense.sum(0) == 1).all() and (dense.sum(1) == 1).all() and ((dense == 0) | (dense == 1)).all()
    )


def test_only_layer_norms_are_dropped(tracked_one):
    projector = Projector(tracked_one, None)
    kept = projector.dense_matrix().abs().sum(0) > 0
    names = np.repeat(tracked_one.parameter_names, tracked_one.parameter_sizes)
    assert all("LayerNorm" in n for n in names[~kept.numpy()])
    assert all("LayerNorm" not in n for n in names[kept.numpy()])


def test_projection_preserves_inner_products_in_expectation(tracked_one, train_set):
    _, _, full = _gradients(tracked_one, train_set, range(6))
    kept = Projector(tracked_one, None).dense_matrix()
    exact = (full @ kept.T) @ (full @ kept.T).T
    estimates = []
    for seed in range(300):
        projected = full @ Projector(tracked_one, 4, seed).dense_matrix().T
        estimates.append(projected @ projected.T)
    mean = torch.stack(estimates).mean(0)
    single = (estimates[0] - exact).norm() / exact.norm()
    averaged = (mean - exact).norm() / exact.norm()
    assert averaged < 0.1 and averaged < single / 4  # unbiased: the error shrinks as seeds are averaged


@pytest.mark.parametrize("scope", ["classifier", 0, pytest.param(1, marks=pytest.mark.slow)])
def test_unprojected_hessian_preconditioned_scores_are_the_exact_influence(tiny64, train_set, scope):
    """R = I on the indexed coordinates (everything but LayerNorms): the index's scores equal
    ``-g_test^T (H + damping I)^-1 g_z`` restricted to those coordinates, to 1e-8."""
    tracked = TrackedModel(*tiny64, tracked_layers=scope)
    theta, train = tracked.parameters(), ExampleStates(tracked, train_set)
    damping = 0.05
    projector = Projector(tracked, None)
    selection = projector.dense_matrix()
    hessian = training_hessian(tracked, theta, train)
    inverse = inverse_damped(projected_hessian(hessian, selection), damping)
    rows = np.arange(len(train_set))
    states, labels = train.load(rows)
    stored = precondition(projector.gradients(theta, states, labels), inverse)
    test_states, test_labels = train.load([7])
    test_gradient = projector.gradients(theta, test_states, test_labels)[0]
    scores = gradient_index_scores(test_gradient, stored)

    kept = selection.abs().sum(0) > 0
    full = per_example_gradients(tracked, theta, states, labels)[:, kept]
    v = loss_gradient(tracked, theta, test_states, test_labels)[kept]
    s_test = exact_s_test(hessian[kept][:, kept], v, damping)
    expected = -(full @ s_test)
    torch.testing.assert_close(scores, expected, rtol=1e-8, atol=1e-10)
    assert bool(kept.all()) == (scope != 1)  # no LayerNorm below the encoder layers: nothing dropped


def test_fisher_preconditioned_inner_product_is_explicit(tracked_one, train_set):
    *_, full = _gradients(tracked_one, train_set, range(len(train_set)))
    projector = Projector(tracked_one, 3, seed=1)
    projected = full @ projector.dense_matrix().T
    fisher = projected.T @ projected / len(projected)
    damping = 0.3
    stored = precondition(projected, inverse_damped(fisher, damping))
    test_gradient = projected[5]
    explicit = -(projected @ torch.linalg.solve(fisher + damping * torch.eye(len(fisher)), test_gradient))
    scores = gradient_index_scores(test_gradient, stored)
    torch.testing.assert_close(scores, explicit, rtol=1e-6, atol=1e-9)  # a rank-deficient Fisher


# ------------------------------------------------------------------------------------------ build


def _build(engine, folder, **settings):
    config = GradientIndexConfig(**{"rank": 4, "damping": 0.1, **settings})
    return build_gradient_index(engine, folder, config)


def _vectors(folder, engine):
    identity = engine.identity
    index = load_gradient_index(folder, identity.model_fingerprint, identity.data_fingerprint, 1)
    return index.index.reconstruct_n(0, index.manifest.count)


def test_shard_size_never_changes_the_index(engine_dirs, tmp_path):
    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    built = []
    for chunk_rows in (96, 48, 32):  # 1, 2 and 3 shards
        _build(engine, tmp_path / f"c{chunk_rows}", chunk_rows=chunk_rows)
        built.append(_vectors(tmp_path / f"c{chunk_rows}", engine))
        assert not shard_folder(tmp_path / f"c{chunk_rows}").exists()  # shards dropped once indexed
    np.testing.assert_allclose(built[0], built[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(built[0], built[2], rtol=1e-6, atol=1e-7)


def test_an_interrupted_build_resumes_from_its_shards(engine_dirs, tmp_path, monkeypatch):
    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    _build(engine, tmp_path / "reference", chunk_rows=20)
    explainer, calls = engine.backend.explainer, []
    real = explainer.gradient_shard

    def failing(rows, *args):
        if len(calls) == 2:
            raise KeyboardInterrupt("interrupted")
        calls.append(len(rows))
        return real(rows, *args)

    monkeypatch.setattr(explainer, "gradient_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        _build(engine, tmp_path / "resumed", chunk_rows=20)
    assert calls == [20, 19] and len(list(shard_folder(tmp_path / "resumed").glob("*.npy"))) == 2
    assert not (tmp_path / "resumed").exists()  # nothing half-written where the index goes
    calls.clear()
    monkeypatch.setattr(
        explainer, "gradient_shard", lambda rows, *a: calls.append(len(rows)) or real(rows, *a)
    )
    _build(engine, tmp_path / "resumed", chunk_rows=20)
    assert calls == [19, 19, 19]  # 96 rows in 5 shards: only the 3 not finished before
    np.testing.assert_allclose(
        _vectors(tmp_path / "resumed", engine), _vectors(tmp_path / "reference", engine)
    )


def test_a_bad_factory_fails_before_any_gradient(engine_dirs, tmp_path, monkeypatch):
    engine = local_engine(engine_dirs[0])
    monkeypatch.setattr(engine.backend.explainer, "gradient_shard", lambda *a: pytest.fail("computed"))
    with pytest.raises(ValueError, match="factory"):
        _build(engine, tmp_path / "bad", factory="IVF-nope")


def test_the_manifest_refuses_other_weights_data_or_tracked_set(engine_dirs, tmp_path):
    engine = local_engine(engine_dirs[0])
    _build(engine, tmp_path / "g")
    identity = engine.identity
    with pytest.raises(IndexMismatchError, match="model fingerprint"):
        load_gradient_index(tmp_path / "g", "0" * 64, identity.data_fingerprint, 1)
    with pytest.raises(IndexMismatchError, match="data fingerprint"):
        load_gradient_index(tmp_path / "g", identity.model_fingerprint, "0" * 64, 1)
    with pytest.raises(IndexMismatchError, match="tracked_layers"):
        load_gradient_index(tmp_path / "g", identity.model_fingerprint, identity.data_fingerprint, 2)
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["spec"] == {
        "rank": 4,
        "seed": 0,
        "preconditioner": "fisher",
        "damping": 0.1,
        "tracked_layers": 1,
    }
    with pytest.raises(IndexMismatchError, match="not a gradient index"):
        local_engine(engine_dirs[0], gradient_index_dir=engine_dirs[1])


def test_a_stale_default_folder_is_passed_over_but_an_explicit_one_is_not(engine_dirs, tmp_path, caplog):
    engine = local_engine(engine_dirs[0])
    _build(engine, tmp_path / "g")
    assert local_engine(engine_dirs[0], gradient_index_dir=tmp_path / "g").gradient_index is not None
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    (tmp_path / "g" / "manifest.json").write_text(json.dumps({**manifest, "model_fingerprint": "0" * 64}))
    passed_over = local_engine(
        engine_dirs[0], gradient_index_dir=tmp_path / "g", gradient_index_optional=True
    )
    assert passed_over.gradient_index is None and "answering without a gradient index" in caplog.text
    with pytest.raises(IndexMismatchError, match="model fingerprint"):
        local_engine(engine_dirs[0], gradient_index_dir=tmp_path / "g")


# ------------------------------------------------------------------------------------------ query


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
    point = explainer._point(QUERY, None, None)
    s_test = exact_s_test(training_hessian(tracked, theta, train), point.v, 0.1)
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
    with pytest.raises(ValueError, match="method must be one of"):
        QueryConfig(method="fast")
    with pytest.raises(ValueError, match="rerank must be >= 1"):
        QueryConfig(rerank=0)
