"""The gradient index against exact answers: projection, preconditioner, build, query, manifest."""

import json

import numpy as np
import pytest
import torch

from engine.builds import build_gradient_index
from engine.pipeline import answer_query, local_engine
from index import IndexMismatchError
from index.gradient import load_gradient_index, shard_folder
from interpret.cancellation import RequestCancelled
from interpret.config import GradientIndexConfig, MethodUnavailableError, QueryConfig
from interpret.influence import ExampleStates, LissaConfig, exact_s_test, training_hessian
from interpret.influence.objective import loss_gradient, per_example_gradients
from interpret.influence.preconditioner import (
    gradient_index_scores,
    inverse_damped,
    precondition,
    projected_hessian,
    subspace_s_test,
)
from interpret.influence.projection import Projection, Projector, eigen_bases
from interpret.models import TrackedModel
from tests.exactness import (
    assert_equal_up_to_rounding,
    assert_same_solution,
    assert_solves,
    map_amplification,
    solve_tolerance,
)

QUERY = "the plot was good and fun"


@pytest.fixture
def tracked_one(tiny64):
    """The tiny model in float64 with its last encoder layer, pooler and classifier tracked."""
    return TrackedModel(*tiny64, tracked_layers=1)


def _gradients(tracked, train_set, rows):
    train = ExampleStates(tracked, train_set)
    states, labels = train.load(rows)
    return states, labels, per_example_gradients(tracked, tracked.parameters(), states, labels)


def _kfac_bases(tracked, train_set, rank, rows=range(40)):
    states, labels = ExampleStates(tracked, train_set).load(rows)
    return eigen_bases(Projector(tracked, rank).factors(tracked.parameters(), states, labels), rank)


@pytest.mark.parametrize("layer_norms", [False, True])
@pytest.mark.parametrize(("rank", "kind"), [(None, "random"), (3, "random"), (3, "kfac")])
def test_factored_projection_equals_projecting_the_materialised_gradient(
    tracked_one, train_set, rank, layer_norms, kind
):
    states, labels, full = _gradients(tracked_one, train_set, range(12))
    bases = _kfac_bases(tracked_one, train_set, rank) if kind == "kfac" else None
    projector = Projector(tracked_one, rank, seed=4, layer_norms=layer_norms, bases=bases)
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


def test_kfac_factors_of_the_one_position_layers_are_their_exact_sums(tracked_one, train_set):
    """Pooler and classifier see one position per example, so their per-example gradient is
    ``delta [a; 1]^T``: its bias part is ``delta`` and ``[a; 1] = G^T delta / |delta|^2``. The factors are
    then ``sum delta delta^T`` and ``sum [a; 1][a; 1]^T`` from autograd's per-example gradients."""
    rows = range(20)
    states, labels, full = _gradients(tracked_one, train_set, rows)
    projector = Projector(tracked_one, 1)
    factors = projector.factors(tracked_one.parameters(), states, labels)
    for slot in projector.slots:
        if slot.name not in ("bert.pooler.dense", "classifier"):
            continue
        d_out, d_in = slot.module.out_features, slot.module.in_features
        weight = full[:, slot.weight_offset : slot.weight_offset + d_out * d_in].view(-1, d_out, d_in)
        delta = full[:, slot.bias_offset : slot.bias_offset + d_out]
        gradient = torch.cat([weight, delta[:, :, None]], dim=2)  # [B, d_out, d_in + 1]
        inputs = torch.einsum("bo,boi->bi", delta, gradient) / (delta**2).sum(1, keepdim=True)
        torch.testing.assert_close(factors[f"{slot.name}:out"], delta.T @ delta, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(factors[f"{slot.name}:in"], inputs.T @ inputs, rtol=1e-7, atol=1e-10)


def test_kfac_factors_skip_padding_and_add_up_over_blocks(tracked_one, train_set):
    """A padded batch's factors equal the sum of its examples' factors taken one by one (no padding)."""
    train, theta = ExampleStates(tracked_one, train_set), tracked_one.parameters()
    projector = Projector(tracked_one, 1)
    rows = [0, 3, 5, 8, 13]
    states, labels = train.load(rows)
    assert states.mask is not None and not bool(states.mask.bool().all())  # the batch is padded
    batch = projector.factors(theta, states, labels)
    singles = [projector.factors(theta, *train.load([row])) for row in rows]
    assert set(batch) == {name for name, _ in projector.projected_sides()}
    for name, factor in batch.items():
        torch.testing.assert_close(factor, sum(single[name] for single in singles), rtol=1e-9, atol=1e-11)


def test_eigen_bases_are_the_orthonormal_top_eigenvectors_largest_first():
    generator = torch.Generator().manual_seed(0)
    vectors, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64, generator=generator))
    values = torch.arange(12, 0, -1, dtype=torch.float64)
    factor = vectors @ torch.diag(values) @ vectors.T
    basis = torch.from_numpy(eigen_bases({"layer:in": factor}, 4)["layer:in"]).double()
    assert basis.shape == (4, 12)
    torch.testing.assert_close(basis @ basis.T, torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        (basis @ vectors[:, :4]).abs(), torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_a_kfac_projection_has_orthonormal_rows_and_unproject_is_its_transpose(tracked_one, train_set):
    projector = Projector(tracked_one, 3, bases=_kfac_bases(tracked_one, train_set, 3), layer_norms=True)
    dense = projector.dense_matrix()
    torch.testing.assert_close(dense @ dense.T, torch.eye(len(dense), dtype=dense.dtype), atol=1e-6, rtol=0)
    projected = torch.randn(projector.dim, dtype=torch.float64)
    torch.testing.assert_close(projector.unproject(projected), dense.T @ projected, rtol=1e-9, atol=1e-11)


def _orthonormal_in_float64(bases):
    """The fitted bases re-orthonormalised in float64 (QR): ``R R^T = I`` to float64 rounding, where the
    stored float32 rows are orthonormal only to float32 rounding."""
    return {
        name: torch.linalg.qr(torch.from_numpy(rows).double().T).Q.T.numpy() for name, rows in bases.items()
    }


def _subspace_system(tracked, train_set, bases, damping):
    """``(s, A, v, R, C)`` for the subspace s_test of row 7's gradient, with the dense curvature
    ``A = R^T C R + damping I`` that defines it."""
    *_, full = _gradients(tracked, train_set, range(len(train_set)))
    projector = Projector(tracked, 3, bases=bases)
    dense = projector.dense_matrix()
    projected = full @ dense.T
    fisher = projected.T @ projected / len(projected)
    v = full[7]
    s_test = subspace_s_test(v, projector, inverse_damped(fisher, damping), damping)
    curvature = dense.T @ fisher @ dense + damping * torch.eye(tracked.num_parameters, dtype=torch.float64)
    return s_test, curvature, v, dense, fisher, full, projected


def test_the_subspace_s_test_inverts_the_index_curvature_exactly(tracked_one, train_set):
    """``s = v/lambda + R^T[(C + lambda I)^-1 - I/lambda] R v`` solves ``(R^T C R + lambda I) s = v`` when
    ``R R^T = I`` (kfac): checked by its backward error against the dense 2,530-row system, which a
    float64 solve meets on any CPU (``tests/exactness.py``)."""
    damping = 0.3
    bases = _orthonormal_in_float64(_kfac_bases(tracked_one, train_set, 3))
    s_test, curvature, v, *_ = _subspace_system(tracked_one, train_set, bases, damping)
    assert_solves(curvature, s_test, v, "the subspace s_test")
    with pytest.raises(AssertionError, match="backward error"):  # not vacuous: a 1e-6 perturbation fails
        assert_solves(curvature, s_test * (1 + 1e-6 * torch.randn_like(s_test)), v)
    assert_same_solution(s_test, torch.linalg.solve(curvature, v), curvature, "s_test against a full solve")


def test_the_subspace_s_test_with_stored_float32_bases_is_off_by_their_orthonormality(tracked_one, train_set):
    """The index stores its bases in float32, so ``R R^T = I + E`` with ``||E||`` near float32's epsilon,
    and then ``A s - v = R^T C E M R v`` with ``||M|| <= 1 / lambda``: the relative residual is at most
    ``||C|| ||E|| (1 + ||E||) / lambda``, computed and stated here. The score identity holds for any ``R``."""
    damping = 0.3
    s_test, curvature, v, dense, fisher, full, projected = _subspace_system(
        tracked_one, train_set, _kfac_bases(tracked_one, train_set, 3), damping
    )
    departure = float(
        torch.linalg.matrix_norm(dense @ dense.T - torch.eye(len(dense), dtype=torch.float64), 2)
    )
    bound = float(torch.linalg.matrix_norm(fisher, 2)) * departure * (1 + departure) / damping
    relative_residual = float((curvature @ s_test - v).norm() / v.norm())
    assert 0 < departure < 1e-6
    assert relative_residual <= bound + solve_tolerance(len(v)), (relative_residual, bound)
    # the rerank's s_test scores rows as the index does inside the subspace; outside it adds g.v / lambda
    index_scores = -(projected @ (inverse_damped(fisher, damping) @ projected[7]))
    residual = full - projected @ dense
    inside = inverse_damped(fisher, damping) @ projected[7]
    index_scores = -(projected @ inside)
    residual = full - projected @ dense
    magnitude = (
        full.abs() @ s_test.abs() + projected.abs() @ inside.abs() + residual.abs() @ v.abs() / damping
    )
    assert_equal_up_to_rounding(
        -(full @ s_test), index_scores - residual @ v / damping, magnitude, len(v), "the rerank's scores"
    )


def test_a_projection_is_told_apart_by_its_bases():
    bases = {"layer:in": np.eye(2, 3, dtype=np.float32)}
    assert Projection(4, 0).kind == "random" and Projection(4, 0, bases).kind == "kfac"
    other = {"layer:in": np.eye(2, 3, dtype=np.float32)[::-1].copy()}
    assert Projection(4, 0, bases).key != Projection(4, 0, other).key
    assert Projection(4, 0, bases).key == Projection(4, 0, {k: v.copy() for k, v in bases.items()}).key


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
    ``-g_test^T (H + damping I)^-1 g_z`` restricted to those coordinates: two solves of one system, equal
    within its stated conditioning (``tests/exactness.py``)."""
    tracked = TrackedModel(*tiny64, tracked_layers=scope)
    theta, train = tracked.parameters(), ExampleStates(tracked, train_set)
    damping = 0.05
    projector = Projector(tracked, None)
    selection = projector.dense_matrix()
    hessian = training_hessian(tracked, theta, train)
    inverse = inverse_damped(projected_hessian(hessian, selection), damping)
    rows = np.arange(len(train_set))
    states, labels = train.load(rows)
    projected = projector.gradients(theta, states, labels)
    stored = precondition(projected, inverse)
    # what defines the index: each stored row u_z solves (R H R^T + damping I) u_z = g~_z
    damped_projected = projected_hessian(hessian, selection) + damping * torch.eye(
        len(inverse), dtype=torch.float64
    )
    assert_solves(damped_projected, stored.T, projected.T, "the stored rows")
    test_states, test_labels = train.load([7])
    test_gradient = projector.gradients(theta, test_states, test_labels)[0]
    scores = gradient_index_scores(test_gradient, stored)

    kept = selection.abs().sum(0) > 0
    full = per_example_gradients(tracked, theta, states, labels)[:, kept]
    v = loss_gradient(tracked, theta, test_states, test_labels)[kept]
    s_test = exact_s_test(hessian[kept][:, kept], v, damping)
    expected = -(full @ s_test)
    damped = hessian[kept][:, kept] + damping * torch.eye(int(kept.sum()), dtype=torch.float64)
    assert_solves(damped, s_test, v, "the exact s_test")
    assert_same_solution(scores, expected, damped, "index scores", map_amplification(full, s_test))
    assert bool(kept.all()) == (scope != 1)  # no LayerNorm below the encoder layers: nothing dropped


def test_fisher_preconditioned_inner_product_is_explicit(tracked_one, train_set):
    """A rank-deficient Fisher (more coordinates than rows) made definite by the damping: the index's
    preconditioned inner products equal an explicit solve within the damped system's conditioning."""
    *_, full = _gradients(tracked_one, train_set, range(len(train_set)))
    projector = Projector(tracked_one, 3, seed=1)
    projected = full @ projector.dense_matrix().T
    fisher = projected.T @ projected / len(projected)
    damping = 0.3
    stored = precondition(projected, inverse_damped(fisher, damping))
    test_gradient = projected[5]
    damped = fisher + damping * torch.eye(len(fisher), dtype=torch.float64)
    solution = torch.linalg.solve(damped, test_gradient)
    scores = gradient_index_scores(test_gradient, stored)
    amplification = map_amplification(projected, solution)
    assert_same_solution(scores, -(projected @ solution), damped, "index scores", amplification)


# ------------------------------------------------------------------------------------------ build


def _build(engine, folder, **settings):
    config = GradientIndexConfig(**{"rank": 4, "damping": 0.1, **settings})
    return build_gradient_index(engine, folder, config)


def _vectors(folder, engine):
    identity = engine.identity
    index = load_gradient_index(folder, identity.model_fingerprint, identity.data_fingerprint, 1)
    return index.index.reconstruct_n(0, index.manifest.count)


@pytest.mark.parametrize("projection", ["kfac", "random"])
def test_shard_size_never_changes_the_index(engine_dirs, tmp_path, projection):
    """Same arithmetic in another order (rows projected in 1, 2 or 3 shards; float32 storage sets the
    tolerance), so the element-wise tolerance stays tight: it is not a solve compared across BLAS
    kernels."""
    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    built = []
    for chunk_rows in (96, 48, 32):  # 1, 2 and 3 shards
        _build(engine, tmp_path / f"c{chunk_rows}", chunk_rows=chunk_rows, projection=projection)
        built.append(_vectors(tmp_path / f"c{chunk_rows}", engine))
        assert not shard_folder(tmp_path / f"c{chunk_rows}").exists()  # shards dropped once indexed
    np.testing.assert_allclose(built[0], built[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(built[0], built[2], rtol=1e-6, atol=1e-7)


def test_the_peak_memory_formula_counts_gradients_curvature_and_the_hessian():
    from engine.builds import build_peak_bytes

    assert build_peak_bytes(1000, 64, 500, "fisher") == 2 * 4 * 1000 * 64 + 4 * 8 * 64 * 64
    assert build_peak_bytes(1000, 64, 500, "hessian") - build_peak_bytes(1000, 64, 500, "fisher") == (
        2 * 8 * 500 * 500
    )


def test_a_build_the_machine_cannot_hold_is_refused_before_any_work_naming_a_rank_that_fits(
    engine_dirs, tmp_path, monkeypatch
):
    """The estimate at the asked rank exceeds what is available, the one at half the rank does not: the
    error names both sizes and that rank, and nothing was computed or written."""
    from engine import builds

    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    rows, tracked = len(engine.examples), engine.identity.num_parameters
    peaks = {
        rank: builds.build_peak_bytes(rows, builds.projected_dim(engine, rank, 0), tracked, "fisher")
        for rank in (4, 8)
    }
    assert peaks[4] < peaks[8]
    monkeypatch.setattr(builds, "available_memory", lambda: (peaks[4] + peaks[8]) // 2)
    monkeypatch.setattr(engine.backend.explainer, "kfac_factors", lambda *a: pytest.fail("work was done"))
    with pytest.raises(builds.IndexTooLargeError, match=r"--rank 4\b") as refused:
        _build(engine, tmp_path / "big", rank=8)
    assert builds.readable_bytes(peaks[8]) in str(refused.value)
    assert not (tmp_path / "big").exists() and not shard_folder(tmp_path / "big").exists()
    monkeypatch.undo()
    assert _build(engine, tmp_path / "fits", rank=8).count == rows


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
    assert (shard_folder(tmp_path / "resumed") / "bases.safetensors").is_file()  # the kfac fit, kept
    assert not (tmp_path / "resumed").exists()  # nothing half-written where the index goes
    calls.clear()
    monkeypatch.setattr(
        explainer, "gradient_shard", lambda rows, *a: calls.append(len(rows)) or real(rows, *a)
    )
    monkeypatch.setattr(explainer, "kfac_factors", lambda *a: pytest.fail("the fit was redone"))
    _build(engine, tmp_path / "resumed", chunk_rows=20)
    assert calls == [19, 19, 19]  # 96 rows in 5 shards: only the 3 not finished before
    np.testing.assert_allclose(
        _vectors(tmp_path / "resumed", engine), _vectors(tmp_path / "reference", engine)
    )


def test_a_build_given_a_scratch_folder_keeps_its_shards_there(engine_dirs, tmp_path, monkeypatch):
    """Issue 23: the service's builds keep their shards in its scratch folder, never beside the index it
    serves; a cancelled one leaves only whole shards there, and the rerun resumes from them."""
    engine, scratch = local_engine(engine_dirs[0]), tmp_path / "scratch"
    served = tmp_path / "served" / "gradient-index"
    explainer, real = engine.backend.explainer, engine.backend.explainer.gradient_shard

    def cancelled_after_two(rows, *args, done=[]):  # noqa: B006 (the count of shards computed)
        if len(done) == 2:
            raise RequestCancelled("the job was deleted")
        done.append(rows)
        return real(rows, *args)

    monkeypatch.setattr(explainer, "gradient_shard", cancelled_after_two)
    config = GradientIndexConfig(rank=4, damping=0.1, chunk_rows=20)
    with pytest.raises(RequestCancelled):
        build_gradient_index(engine, served, config, scratch=scratch)
    assert len(list(shard_folder(scratch / "gradient-index").glob("shard-*.npy"))) == 2
    assert not list(shard_folder(scratch / "gradient-index").glob("tmp*"))  # nothing half-written
    assert not served.parent.exists()  # nothing beside the served index
    rerun = []
    monkeypatch.setattr(explainer, "gradient_shard", lambda rows, *a: rerun.append(rows) or real(rows, *a))
    assert build_gradient_index(engine, served, config, scratch=scratch).count == 96
    assert len(rerun) == 3  # 96 rows in 5 shards: only the 3 not finished before
    assert sorted(path.name for path in served.parent.iterdir()) == ["gradient-index"]
    assert not shard_folder(scratch / "gradient-index").exists()  # dropped once the index is written


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
        "projection": "kfac",
        "fit_rows": 96,  # 2,000 asked, the tiny set has 96
    }
    with pytest.raises(IndexMismatchError, match="not a gradient index"):
        local_engine(engine_dirs[0], gradient_index_dir=engine_dirs[1])


def test_the_same_bases_with_another_damping_are_another_curvature(engine_dirs, tmp_path):
    """The pool and the s_test cache key the index solver's inverse by the curvature's digest: the bases
    alone would hand a rebuilt index (same sample, new damping) the old inverse."""
    engine = local_engine(engine_dirs[0])
    identity = engine.identity
    fingerprints = (identity.model_fingerprint, identity.data_fingerprint, 1)
    loaded = []
    for damping in (0.1, 0.2):
        _build(engine, tmp_path / f"d{damping}", damping=damping)
        loaded.append(load_gradient_index(tmp_path / f"d{damping}", *fingerprints).curvature)
    assert loaded[0].projection == loaded[1].projection
    assert loaded[0].digest != loaded[1].digest and loaded[1].damping == 0.2


def test_swapped_kfac_bases_are_refused_and_an_older_manifest_reads_as_random(engine_dirs, tmp_path):
    from safetensors.numpy import load_file, save_file

    engine = local_engine(engine_dirs[0])
    identity = engine.identity
    fingerprints = (identity.model_fingerprint, identity.data_fingerprint, 1)
    _build(engine, tmp_path / "g")
    bases = load_file(str(tmp_path / "g" / "projection.safetensors"))
    assert load_gradient_index(tmp_path / "g", *fingerprints).projection.kind == "kfac"
    save_file({k: v[::-1].copy() for k, v in bases.items()}, str(tmp_path / "g" / "projection.safetensors"))
    with pytest.raises(IndexMismatchError, match="SHA-256"):
        load_gradient_index(tmp_path / "g", *fingerprints)

    _build(engine, tmp_path / "r", projection="random")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    for key in ("projection", "fit_rows"):  # what an index built before kfac existed lacks
        manifest["spec"].pop(key)
    manifest.pop("projection_sha256")
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(manifest))
    older = load_gradient_index(tmp_path / "r", *fingerprints)
    assert older.projection == Projection(4, 0) and older.spec.projection == "random"


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
    point = explainer._point(QUERY, None, None)
    inverse = torch.from_numpy(curvature.inverse).double()
    s_test = subspace_s_test(point.v, explainer.projector(curvature.projection), inverse, 0.1)
    tracked, train = explainer.tracked, explainer.checkpoint.train
    states, labels = train.load(answer.candidate_rows)
    expected = -(per_example_gradients(tracked, explainer.theta, states, labels) @ s_test).numpy()
    np.testing.assert_allclose(answer.candidate_scores, expected, rtol=1e-6, atol=1e-10)
    lissa = LissaConfig(recursion_depth=20, batch_size=4, damping=0.1, scale=20.0)
    chosen = answer_query(
        kfac_engine, QUERY, config=QueryConfig(top=3, rerank=10, solver="lissa", lissa=lissa)
    )
    assert chosen.lissa is not None


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
    with pytest.raises(ValueError, match="method must be one of"):
        QueryConfig(method="fast")
    with pytest.raises(ValueError, match="rerank must be >= 1"):
        QueryConfig(rerank=0)
