"""The gradient index's math against exact answers: the factored projection (random and kfac bases),
the Kronecker factors, the subspace s_test and the preconditioners (interpret.influence.projection and
.preconditioner)."""

import numpy as np
import pytest
import torch

from interpret.influence import ExampleStates, exact_s_test, training_hessian
from interpret.influence.objective import loss_gradient, per_example_gradients
from interpret.influence.preconditioner import (
    gradient_index_scores,
    inverse_damped,
    precondition,
    projected_hessian,
    subspace_s_test,
)
from interpret.influence.projection import KEEP_SUFFIX, Projection, Projector, eigen_bases, top_coordinates
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


def _kept_bases(tracked, train_set, rank, dim, rows=range(40)):
    """kfac bases of ``rank`` keeping the ``dim`` grid coordinates of largest second moment over ``rows``,
    as a build fits them, with the whole grids' projector and those rows' gradients on it."""
    bases = _kfac_bases(tracked, train_set, rank, rows)
    states, labels = ExampleStates(tracked, train_set).load(rows)
    grids = Projector(tracked, rank, bases=bases)
    gradients = grids.gradients(tracked.parameters(), states, labels)
    cells = {slot.name: slot.dim for slot in grids.slots}
    return bases | top_coordinates((gradients**2).mean(0).numpy(), cells, dim), grids


@pytest.mark.parametrize("layer_norms", [False, True])
@pytest.mark.parametrize(
    ("rank", "kind"), [(None, "random"), (3, "random"), (3, "kfac"), (3, "kfac, 20 coordinates kept")]
)
def test_factored_projection_equals_projecting_the_materialised_gradient(
    tracked_one, train_set, rank, layer_norms, kind
):
    states, labels, full = _gradients(tracked_one, train_set, range(12))
    bases = None
    if kind == "kfac":
        bases = _kfac_bases(tracked_one, train_set, rank)
    elif kind.startswith("kfac,"):
        bases = _kept_bases(tracked_one, train_set, rank, 20)[0]
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


def test_top_coordinates_take_the_largest_second_moments_across_layers():
    moments, cells = np.array([1.0, 5.0, 3.0, 4.0, 2.0, 0.5]), {"a": 3, "b": 2, "c": 1}
    kept = top_coordinates(moments, cells, 3)
    assert {name: list(indices) for name, indices in kept.items()} == {
        "a" + KEEP_SUFFIX: [1, 2],
        "b" + KEEP_SUFFIX: [0],
        "c" + KEEP_SUFFIX: [],  # a layer with nothing kept is still named
    }
    tied = top_coordinates(np.array([2.0, 1.0, 2.0]), {"a": 2, "b": 1}, 1)
    assert list(tied["a" + KEEP_SUFFIX]) == [0] and list(tied["b" + KEEP_SUFFIX]) == []
    for dim in (0, 7):
        with pytest.raises(ValueError, match="between 1 and 6"):
            top_coordinates(moments, cells, dim)
    with pytest.raises(ValueError, match="5 second moments for grids of 6 cells"):
        top_coordinates(moments[:5], cells, 3)


def test_kept_coordinates_are_the_whole_grids_columns_and_stay_orthonormal(tracked_one, train_set):
    """A projection keeping some grid coordinates is the whole-grid projection's rows at those coordinates:
    its gradients are the grid's columns there, its rows stay orthonormal and ``unproject`` is its
    transpose; the kept ones are the largest ``E[g_c^2]`` over the fit rows, whichever layer."""
    bases, grids = _kept_bases(tracked_one, train_set, 3, 25)
    kept = Projector(tracked_one, 3, bases=bases)
    assert kept.dim == 25 and [s.keep is not None for s in kept.slots] == [True] * len(kept.slots)
    states, labels = ExampleStates(tracked_one, train_set).load(range(40))
    whole = grids.gradients(tracked_one.parameters(), states, labels)
    columns, start = [], 0
    for slot, kept_slot in zip(grids.slots, kept.slots, strict=True):
        columns.append(start + kept_slot.keep.numpy())
        start += slot.dim
    columns = np.concatenate(columns)
    moments = (whole**2).mean(0).numpy()
    assert set(columns) == set(np.argsort(-moments, kind="stable")[:25])
    torch.testing.assert_close(
        kept.gradients(tracked_one.parameters(), states, labels), whole[:, columns], rtol=0, atol=0
    )
    dense = kept.dense_matrix()
    torch.testing.assert_close(dense, grids.dense_matrix()[columns], rtol=0, atol=0)
    torch.testing.assert_close(dense @ dense.T, torch.eye(25, dtype=dense.dtype), atol=1e-6, rtol=0)
    projected = torch.randn(25, dtype=torch.float64)
    torch.testing.assert_close(kept.unproject(projected), dense.T @ projected, rtol=1e-9, atol=1e-11)
    assert sum(layer.get("kept", 0) for layer in kept.describe()) == 25


def test_kept_coordinates_outside_the_grid_or_missing_are_refused(tracked_one, train_set):
    bases, grids = _kept_bases(tracked_one, train_set, 3, 10)
    first = grids.slots[0].name + KEEP_SUFFIX
    with pytest.raises(ValueError, match="ascend within"):
        Projector(tracked_one, 3, bases=bases | {first: np.array([0, grids.slots[0].grid])})
    with pytest.raises(ValueError, match="name none for"):
        Projector(tracked_one, 3, bases={k: v for k, v in bases.items() if k != first})


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
