"""LiSSA, exact solves, HVPs and scoring against exact answers, in float64 on the tiny model."""

import numpy as np
import pytest
import torch
from torch.func import hessian

from interpret.influence import (
    ExampleStates,
    LissaConfig,
    LissaDivergenceError,
    exact_s_test,
    influence_scores,
    lissa_s_test,
    score_rows,
    training_hessian,
)
from interpret.influence.exact import block_hessian
from interpret.influence.lissa import lissa_repetition
from interpret.influence.objective import hessian_vector_product, loss_gradient, mean_loss
from interpret.models import TrackedModel
from tests.exactness import condition_number, finite_difference_hvp, same_solution_tolerance, solve_tolerance


@pytest.fixture
def head(tiny64, train_set):
    """Tracked: the final linear layer of the tiny model (a convex loss), with the training states."""
    tracked = TrackedModel(*tiny64, tracked_layers="classifier")
    return tracked, tracked.parameters(), ExampleStates(tracked, train_set, block_size=32)


def test_state_of_arbitrary_rows_matches_a_direct_forward(head):
    tracked, theta, train = head
    rows = [5, 0, 5, 77]
    tracked = TrackedModel(tracked.model, tracked.tokenizer, tracked_layers=1)
    theta, train = tracked.parameters(), ExampleStates(tracked, train.examples, block_size=2)
    states, labels = train.load(rows)
    direct = tracked.frozen(tracked.encode([train.examples.texts[i] for i in rows]))
    torch.testing.assert_close(
        tracked.logits(theta, states), tracked.logits(theta, direct), rtol=0, atol=1e-12
    )
    assert labels.tolist() == [int(train.examples.labels[i]) for i in rows]


def test_hvp_equals_explicit_hessian_product(head):
    tracked, theta, train = head
    states, labels = train.load(range(20))
    explicit = block_hessian(lambda t: mean_loss(tracked, t, states, labels), theta)
    vector = torch.randn_like(theta)
    torch.testing.assert_close(
        hessian_vector_product(tracked, theta, states, labels, vector),
        explicit @ vector,
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("scope", ["classifier", 1])
def test_the_explicit_hessian_matches_finite_differences(tiny64, train_set, scope):
    """Scope 1 has LayerNorms whose weights and inputs both move with ``theta``: there ``torch.func.hessian``
    (vmap over tangents) gives wrong cross terms on torch 2.13, so ``block_hessian`` double-backwards one
    column at a time. Central differences of the gradient are the independent reference."""
    tracked = TrackedModel(*tiny64, tracked_layers=scope)
    theta, train = tracked.parameters(), ExampleStates(tracked, train_set)
    states, labels = train.load(range(16))
    loss = lambda t: mean_loss(tracked, t, states, labels)  # noqa: E731
    explicit = block_hessian(loss, theta)
    for seed in range(2):
        vector = torch.randn(len(theta), generator=torch.Generator().manual_seed(seed), dtype=theta.dtype)
        reference = finite_difference_hvp(loss, theta, vector)
        assert float((explicit @ vector - reference).norm() / reference.norm()) < 1e-6


def _well_conditioned(hessian_matrix):
    """Damping and scale that make H + damping*I positive definite with condition number about 20."""
    eigenvalues = torch.linalg.eigvalsh(hessian_matrix)
    damping = float(eigenvalues[-1]) / 20 + max(0.0, -float(eigenvalues[0]))
    return damping, float(eigenvalues[-1]) + damping


@pytest.mark.slow  # long LiSSA runs against the exact solve
@pytest.mark.parametrize("scope", ["classifier", 0])
def test_full_batch_lissa_converges_to_the_exact_solve(tiny64, train_set, scope):
    tracked = TrackedModel(*tiny64, tracked_layers=scope)
    theta, train = tracked.parameters(), ExampleStates(tracked, train_set)
    v = loss_gradient(tracked, theta, *train.load([3]))
    full_hessian = training_hessian(tracked, theta, train)
    damping, scale = _well_conditioned(full_hessian)
    exact = exact_s_test(full_hessian, v, damping)
    config = LissaConfig(recursion_depth=800, batch_size=len(train), damping=damping, scale=scale)
    result = lissa_s_test(tracked, theta, v, train, config)
    # The recursion contracts by rho = 1 - lambda_min(H + damping I) / scale a step, so it stops rho^800
    # from its fixed point, the exact solve, and each step's rounding is carried on 1 / (1 - rho) times.
    damped = full_hessian + damping * torch.eye(len(v), dtype=torch.float64)
    contraction = 1 - float(torch.linalg.eigvalsh(damped)[0]) / scale
    truncation = contraction**800
    gap = float((result.s_test - exact).norm() / exact.norm())
    rounding = same_solution_tolerance(damped) / (1 - contraction)
    assert gap <= truncation + rounding, (gap, truncation, rounding)
    assert result.norm_traces.shape == (1, 800)
    assert abs(result.norm_traces[0, -1] - float(exact.norm())) <= (truncation + rounding) * float(
        exact.norm()
    )


@pytest.mark.slow  # long LiSSA runs against the exact solve
def test_stochastic_lissa_is_close_to_the_exact_solve(head):
    tracked, theta, train = head
    v = loss_gradient(tracked, theta, *train.load([3]))
    full_hessian = training_hessian(tracked, theta, train)
    damping, scale = _well_conditioned(full_hessian)
    exact = exact_s_test(full_hessian, v, damping)
    # Single small batches have larger curvature than the mean: give the recursion room (scale x2).
    config = LissaConfig(
        recursion_depth=1500, batch_size=8, num_repetitions=4, damping=damping, scale=2 * scale, seed=3
    )
    result = lissa_s_test(tracked, theta, v, train, config)
    relative_error = float((result.s_test - exact).norm() / exact.norm())
    assert relative_error < 0.1
    assert 0 < result.relative_spread < 0.5


def test_a_repetition_depends_only_on_seed_and_index(head):
    """Same arithmetic in another order (one repetition alone against the same one among three), so the
    element-wise tolerance stays tight: it is not a solve compared across BLAS kernels."""
    tracked, theta, train = head
    v = loss_gradient(tracked, theta, *train.load([1]))
    config = LissaConfig(recursion_depth=30, batch_size=4, num_repetitions=3, damping=0.05, scale=5.0, seed=9)
    together = lissa_s_test(tracked, theta, v, train, config)
    alone, trace, _ = lissa_repetition(tracked, theta, v, train, config, repetition=2)
    torch.testing.assert_close(together.repetitions[2], alone, rtol=0, atol=0)
    np.testing.assert_array_equal(together.norm_traces[2], trace)
    torch.testing.assert_close(together.s_test, torch.stack(together.repetitions).mean(0))


def test_the_measured_scale_is_the_largest_sampled_top_eigenvalue_plus_damping(head):
    """Power iteration against the explicit Hessian of the same sampled batches (the draws are
    ``curvature_scale``'s own), and a measured-scale run converges where it reports the scale it used."""
    from interpret.influence.lissa import POWER_STEPS, SCALE_BATCHES, curvature_scale, top_eigenvalue

    tracked, theta, train = head
    states, labels = train.load(range(16))
    explicit = block_hessian(lambda t: mean_loss(tracked, t, states, labels), theta)
    largest = float(torch.linalg.eigvalsh(explicit).abs().max())
    assert top_eigenvalue(tracked, theta, states, labels, 300, seed=0) == pytest.approx(largest, rel=1e-4)
    config = LissaConfig(recursion_depth=200, batch_size=8, damping=0.05)
    assert config.scale is None  # measured by default
    rng = np.random.default_rng([config.seed, 1 << 20])
    batches = [train.load(rng.choice(len(train), size=8, replace=False)) for _ in range(SCALE_BATCHES)]
    tops = [
        float(
            torch.linalg.eigvalsh(block_hessian(lambda t, b=b: mean_loss(tracked, t, *b), theta)).abs().max()
        )
        for b in batches
    ]
    measured = curvature_scale(tracked, theta, train, config)
    assert max(tops) * 0.9 + 0.05 <= measured <= max(tops) + 0.05 + 1e-9  # power iteration: from below
    assert POWER_STEPS >= 5
    v = loss_gradient(tracked, theta, *train.load([1]))
    report = lissa_s_test(tracked, theta, v, train, config).report()
    assert report.scale_measured and report.scales == [measured] and report.config.scale == measured


def test_a_measured_scale_that_diverges_is_doubled_and_a_given_one_is_an_error(head, monkeypatch):
    from interpret.influence import lissa

    tracked, theta, train = head
    v = loss_gradient(tracked, theta, *train.load([1]))
    config = LissaConfig(recursion_depth=300, batch_size=len(train), damping=0.05)
    honest = lissa.curvature_scale(tracked, theta, train, config)
    monkeypatch.setattr(lissa, "curvature_scale", lambda *_: honest / 5)  # too small: diverges twice
    result = lissa.lissa_s_test(tracked, theta, v, train, config)
    assert result.scales == [pytest.approx(honest * 4 / 5)]
    assert np.isfinite(result.s_test.numpy()).all()
    given = LissaConfig(recursion_depth=300, batch_size=len(train), damping=0.05, scale=honest / 5)
    with pytest.raises(LissaDivergenceError, match="increase scale"):
        lissa.lissa_s_test(tracked, theta, v, train, given)


def test_divergence_names_the_knob(head):
    tracked, theta, train = head
    v = loss_gradient(tracked, theta, *train.load([1]))
    with pytest.raises(LissaDivergenceError, match="increase scale"):
        lissa_s_test(tracked, theta, v, train, LissaConfig(recursion_depth=500, damping=0.01, scale=1e-3))


@pytest.mark.parametrize("scope", [1, "classifier"])
def test_forward_mode_scores_equal_per_example_gradient_scores(tiny64, train_set, scope):
    tracked = TrackedModel(*tiny64, tracked_layers=scope)
    theta = tracked.parameters()
    states, labels = ExampleStates(tracked, train_set).load(range(24))
    s_tests = torch.randn(3, tracked.num_parameters, dtype=theta.dtype)
    forward = influence_scores(tracked, theta, s_tests, states, labels, method="jvp")
    reverse = influence_scores(tracked, theta, s_tests, states, labels, method="per_example")
    torch.testing.assert_close(forward, reverse, rtol=1e-10, atol=1e-12)
    single = influence_scores(tracked, theta, s_tests[1], states, labels)
    torch.testing.assert_close(single, forward[1], rtol=1e-12, atol=1e-14)


def test_scores_do_not_depend_on_block_size(tiny64, train_set):
    """Same arithmetic in another order (rows scored in blocks of 1, 7, 50 and 64), so the element-wise
    tolerance stays tight: it is not a solve compared across BLAS kernels."""
    tracked = TrackedModel(*tiny64, tracked_layers=1)
    theta = tracked.parameters()
    train = ExampleStates(tracked, train_set)
    s_test = torch.randn(tracked.num_parameters, dtype=theta.dtype)
    rows = np.random.default_rng(0).permutation(len(train_set))[:50]
    reference = score_rows(tracked, theta, s_test, train, rows, block_size=50)
    for block_size in (1, 7, 64):
        np.testing.assert_allclose(
            score_rows(tracked, theta, s_test, train, rows, block_size), reference, atol=1e-12
        )


def _newton_fit(tracked, states, labels, weights, l2, theta, steps=30):
    """Minimise sum_i w_i loss_i + l2/2 |theta|^2 exactly (convex head: Newton converges quadratically)."""

    def objective(t):
        losses = torch.nn.functional.cross_entropy(tracked.logits(t, states), labels, reduction="none")
        return (weights * losses).sum() + 0.5 * l2 * t.dot(t)

    for _ in range(steps):
        gradient = torch.func.grad(objective)(theta)
        theta = theta - torch.linalg.solve(hessian(objective)(theta), gradient)
    assert float(torch.func.grad(objective)(theta).norm()) < 1e-10
    return theta


def test_influence_predicts_leave_one_out_retraining_on_a_convex_head(tiny64, train_set):
    """Koh & Liang's check: removing z changes the test loss by about -score(z) / n."""
    tracked = TrackedModel(*tiny64, tracked_layers="classifier")
    train = ExampleStates(tracked, train_set)
    n, l2 = len(train), 0.01
    states, labels = train.load(range(n))
    theta = _newton_fit(
        tracked, states, labels, torch.full((n,), 1.0 / n, dtype=torch.float64), l2, tracked.parameters()
    )
    test_states, test_labels = train.load([0])  # any point; a training one keeps the fixture small
    test_loss = lambda t: mean_loss(tracked, t, test_states, test_labels)  # noqa: E731
    s_test = exact_s_test(training_hessian(tracked, theta, train), torch.func.grad(test_loss)(theta), l2)
    scores = score_rows(tracked, theta, s_test, train, range(n))
    removed = np.argsort(-np.abs(scores))[:8]
    actual = []
    for z in removed:
        weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
        weights[z] = 0
        refit = _newton_fit(tracked, states, labels, weights, l2, theta)
        actual.append(float(test_loss(refit) - test_loss(theta)))
    predicted = -scores[removed] / n
    assert np.corrcoef(actual, predicted)[0, 1] > 0.99
    np.testing.assert_allclose(predicted, actual, rtol=0.1, atol=1e-6)


@pytest.mark.parametrize("scope", ["classifier", 0])
def test_conjugate_gradient_reaches_the_exact_solve_and_reports_its_residual(tiny64, train_set, scope):
    from interpret.influence.cg import cg_rows, cg_s_test

    tracked = TrackedModel(*tiny64, tracked_layers=scope)
    theta, train = tracked.parameters(), ExampleStates(tracked, train_set)
    v = loss_gradient(tracked, theta, *train.load([3]))
    rows = cg_rows(len(train), 60, seed=1)  # a seeded subset: the Hessian is over these rows only
    subset_hessian = training_hessian(tracked, theta, ExampleStates(tracked, train_set.subset(rows)))
    exact = exact_s_test(subset_hessian, v, 0.05)
    result = cg_s_test(tracked, theta, v, train, damping=0.05, num_rows=60, tolerance=1e-10, seed=1)
    assert np.array_equal(result.rows, rows) and result.relative_residual < 1e-9
    # CG stops on its residual, so that is what is checked, recomputed here; the forward error then
    # follows: ||s - exact|| / ||exact|| <= kappa * ||A s - v|| / ||v||
    damped = subset_hessian + 0.05 * torch.eye(len(v), dtype=torch.float64)
    relative_residual = float((damped @ result.s_test - v).norm() / v.norm())
    kappa = condition_number(damped)  # the true residual drifts from CG's updated one by up to kappa * tol
    assert relative_residual <= 1e-10 + kappa * solve_tolerance(len(v)), relative_residual
    gap = float((result.s_test - exact).norm() / exact.norm())
    assert gap <= kappa * relative_residual + same_solution_tolerance(damped), (gap, kappa)
    coarse = cg_s_test(tracked, theta, v, train, damping=0.05, num_rows=60, tolerance=1e-2, seed=1)
    assert coarse.iterations < result.iterations and 0 < coarse.relative_residual < 1e-2


@pytest.mark.parametrize("tracked_layers", [1, "classifier"])
def test_cached_states_give_the_scores_of_fresh_ones_within_the_budget(tiny64, train_set, tracked_layers):
    """Candidates scored again take their frozen states from the cache (unpadded rows, padded again with
    zeros): the scores of a fresh forward, with hits and misses in one block, and with a budget too small
    for every row (least recently used out)."""
    tracked = TrackedModel(*tiny64, tracked_layers=tracked_layers)
    theta = tracked.parameters()
    fresh = ExampleStates(tracked, train_set, cache_bytes=0)
    assert fresh.cache is None
    rows = np.random.default_rng(1).permutation(len(train_set))[:40]
    s_test = torch.randn(tracked.num_parameters, dtype=theta.dtype)
    reference = score_rows(tracked, theta, s_test, fresh, rows, block_size=16)

    cached = ExampleStates(tracked, train_set)
    first = score_rows(tracked, theta, s_test, cached, rows[:25], block_size=16)
    assert len(cached.cache) == 25
    again = score_rows(tracked, theta, s_test, cached, rows, block_size=16)  # 25 hits, 15 misses
    assert len(cached.cache) == 40
    np.testing.assert_allclose(first, reference[:25], rtol=0, atol=1e-12)
    np.testing.assert_allclose(again, reference, rtol=0, atol=1e-12)

    small = ExampleStates(tracked, train_set, cache_bytes=cached.cache.nbytes // 4)
    for _ in range(2):
        np.testing.assert_allclose(
            score_rows(tracked, theta, s_test, small, rows, block_size=16), reference, rtol=0, atol=1e-12
        )
    assert 0 < len(small.cache) < 40 and small.cache.nbytes <= small.cache.max_bytes


def test_a_full_scan_and_the_generic_path_leave_the_cache_alone(tiny64, train_set, monkeypatch):
    from interpret.influence import scoring

    tracked = TrackedModel(*tiny64, tracked_layers=1)
    theta, train = tracked.parameters(), ExampleStates(tracked, train_set)
    s_test = torch.randn(tracked.num_parameters, dtype=theta.dtype)
    monkeypatch.setattr(scoring, "MAX_CACHED_SCORING_ROWS", 10)
    score_rows(tracked, theta, s_test, train, np.arange(20))  # a "full scan": more rows than the cap
    assert train.cache is not None and len(train.cache) == 0
    score_rows(tracked, theta, s_test, train, np.arange(5))
    assert len(train.cache) == 5
    generic = TrackedModel(*tiny64, tracked_layers=1, generic=True)
    assert ExampleStates(generic, train_set).cache is None  # its state is the ids: nothing frozen to keep


@pytest.mark.parametrize("curvature", ["gauss_newton", "empirical_fisher"])
def test_exact_curvature_scores_from_one_gram_equal_the_explicit_solve(tiny64, train_set, curvature):
    """``benchmarks/exact_curvature.py``: every row's influence at several dampings from the Gram of the
    ``u = g_1 - g_0`` directions equals ``-g_z . (C + d I)^-1 g_t`` with ``C`` built explicitly: the
    Gauss-Newton matrix from the logits' Jacobian (``J^T (diag p - p p^T) J``), the empirical Fisher from the
    true-label gradients, each over every training row and over a few of them (a sampled curvature)."""
    from torch.func import jacrev

    from benchmarks.exact_curvature import coefficients, curvature_weights, woodbury_scores
    from interpret.influence.objective import per_example_gradients

    tracked = TrackedModel(*tiny64, tracked_layers=1)
    theta, train = tracked.parameters(), ExampleStates(tracked, train_set, block_size=32)
    states, labels = train.load(range(40))
    tests, test_labels = train.load(range(40, 46))
    gradients = {c: per_example_gradients(tracked, theta, states, torch.full_like(labels, c)) for c in (0, 1)}
    test_gradients = {
        c: per_example_gradients(tracked, theta, tests, torch.full_like(test_labels, c)) for c in (0, 1)
    }
    directions = torch.cat([gradients[1] - gradients[0], test_gradients[1] - test_gradients[0]])
    probabilities = torch.softmax(tracked.logits(theta, states), -1)
    test_probabilities = torch.softmax(tracked.logits(theta, tests), -1)
    a_train = coefficients(probabilities.detach().numpy(), labels.numpy())
    a_test = coefficients(test_probabilities.detach().numpy(), test_labels.numpy())
    true_label = gradients[1] * (labels[:, None] == 1) + gradients[0] * (labels[:, None] == 0)
    torch.testing.assert_close(torch.from_numpy(a_train)[:, None] * directions[:40], true_label)

    test_true = test_gradients[1] * (test_labels[:, None] == 1) + test_gradients[0] * (
        test_labels[:, None] == 0
    )
    weights = curvature_weights(probabilities.detach().numpy(), labels.numpy())[curvature]
    gram = (directions @ directions.T).numpy()
    for rows in (np.arange(40), np.array([3, 5, 8, 13, 21, 34, 2, 30])):  # every row, then a few
        if curvature == "gauss_newton":
            jacobian = jacrev(lambda t, rows=rows: tracked.logits(t, states.select(list(rows))))(theta)
            p = probabilities.detach()[rows]
            output_hessian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
            explicit = torch.einsum("nap,nab,nbq->pq", jacobian, output_hessian, jacobian) / len(rows)
        else:
            explicit = true_label[rows].T @ true_label[rows] / len(rows)
        found = woodbury_scores(gram, a_train, a_test, weights, [0.1, 5.0], curvature_rows=rows)
        for damping, scores in found.items():
            eye = torch.eye(len(theta), dtype=theta.dtype)
            expected = -(true_label @ torch.linalg.solve(explicit + damping * eye, test_true.T)).T
            np.testing.assert_allclose(
                scores, expected.numpy(), rtol=1e-7, atol=1e-12 * float(expected.abs().max())
            )


def test_exact_curvature_directions_are_the_exact_gradients_difference(tiny64, train_set):
    """``write_directions`` (the exact projector's per-example gradients, arranged) gives ``g_1 - g_0`` of
    each row, the per-example gradients of the loss under each label, and the rows' probabilities."""
    import math

    from benchmarks.exact_curvature import write_directions
    from interpret.influence.objective import per_example_gradients
    from interpret.influence.projection import Projector

    tracked = TrackedModel(*tiny64, tracked_layers=1)
    theta, train = tracked.parameters(), ExampleStates(tracked, train_set, block_size=32)
    exact = Projector(tracked, None, layer_norms=True, max_identity_dim=math.inf)
    assert exact.dim == tracked.num_parameters  # a permutation of the tracked coordinates
    rows = np.arange(12)
    out = np.zeros((len(rows), exact.dim))
    blocks = [(positions, state) for positions, state, _ in train.iter_blocks(rows, 5)]
    probabilities, worst = write_directions(exact, theta, blocks, out)
    states, _ = train.load(rows)
    difference = [
        per_example_gradients(tracked, theta, states, torch.full((len(rows),), c, dtype=torch.long))
        for c in (0, 1)
    ]
    arranged = torch.stack([exact.project_vector(row) for row in difference[1] - difference[0]])
    np.testing.assert_allclose(out, arranged.numpy(), rtol=1e-8, atol=1e-12)
    expected = torch.softmax(tracked.logits(theta, states), -1).detach().numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-10)
    assert worst < 1e-8


def test_rerank_scores_equal_the_index_solvers_s_test_and_the_explicit_solve():
    """``benchmarks/exact_curvature.py``'s ``rerank_scores`` (every row's rerank score from the Gram's inner
    products and the projected gradients) equals exact gradients dotted with the product's
    ``subspace_s_test``, and both equal ``-g_z . (R^T C R + d I)^-1 g_t`` solved explicitly, with ``C`` the
    projected rows' Fisher and ``R`` orthonormal rows (as the ``kfac`` projection has)."""
    from benchmarks.exact_curvature import rerank_scores
    from interpret.influence.preconditioner import inverse_damped, subspace_s_test

    generator = torch.Generator().manual_seed(0)
    parameters, dim, count = 30, 6, 50
    basis = torch.linalg.qr(torch.randn(parameters, dim, generator=generator, dtype=torch.float64))[0].T
    rows = torch.randn(count, parameters, generator=generator, dtype=torch.float64)
    points = torch.randn(4, parameters, generator=generator, dtype=torch.float64)

    class Subspace:  # the projector's two maps, R and R^T
        def project_vector(self, vector):
            return basis @ vector

        def unproject(self, coordinates):
            return basis.T @ coordinates

    projected = rows @ basis.T
    fisher = projected.T @ projected / count
    for damping in (0.1, 5.0):
        system = basis.T @ fisher @ basis + damping * torch.eye(parameters, dtype=torch.float64)
        explicit = torch.linalg.solve(system, points.T).T
        inverse = inverse_damped(fisher, damping)
        product = torch.stack([subspace_s_test(point, Subspace(), inverse, damping) for point in points])
        torch.testing.assert_close(product, explicit, rtol=1e-9, atol=1e-12)
        scores = rerank_scores((points @ rows.T).numpy(), projected, points @ basis.T, damping)
        np.testing.assert_allclose(scores, -(explicit @ rows.T).numpy(), rtol=1e-9, atol=1e-12)


def test_candidate_agreement_reads_only_the_shortlists_rows():
    """A rerank that rescores rows with the reference's own scores finds everything its shortlist holds and
    nothing it left out."""
    from benchmarks.exact_curvature import candidate_agreement

    reference = np.random.default_rng(0).standard_normal((2, 400))
    assert candidate_agreement(reference, reference, reference, 100)["recall_at_100_helpful"] == 1.0
    shortlist = reference.copy()
    shortlist[0, np.argsort(reference[0])[:50]] = 0.0  # point 0's 50 most helpful rows (lowest) drop out
    found = candidate_agreement(reference, reference, shortlist, 100)
    assert found["recall_at_100_helpful"] == pytest.approx((0.5 + 1.0) / 2)
    assert found["recall_at_100_harmful"] == 1.0
