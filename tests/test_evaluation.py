"""``influence evaluate`` and the applications against exact answers: the convex head's closed forms
against autograd, leave-one-out against retraining, LDS of exact and of random scores, retrain caching and
seeding, and the audit / map / correction runs on the tiny model."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from engine.pipeline import answer_query, local_engine
from interpret.evaluation.convex import ConvexHead, augment, fit, objective_gradient, objective_hessian
from interpret.evaluation.metrics import (
    bootstrap_interval,
    most_influential,
    pearson_spearman,
    per_test_spearman,
    predicted_removal_effect,
    random_subsets,
    subset_effects,
)
from interpret.evaluation.retraining import RetrainCache, RetrainSpec, retrain
from interpret.influence import ExampleStates, exact_s_test, training_hessian
from interpret.influence.objective import loss_gradient, per_example_gradients
from interpret.models import TrackedModel
from tasks.applications import (
    audit_report,
    average_ranks,
    error_correction,
    flip_auc,
    flip_recall,
    influence_map,
    noisy_training_file,
    rank_average,
    self_influence_and_loss,
)
from tasks.evaluation import lds_head, loo_head, recall_report, retrain_subsets
from tasks.plots import write_report
from tests.exactness import assert_same_solution, map_amplification


def _problem(n=300, d=6, k=3, seed=0):
    """Softmax-regression data with signal (labels drawn from a random linear model)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, d))
    logits = features @ rng.normal(size=(k, d)).T
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=p) for p in probabilities])
    return features, labels


def _torch_objective(flat, inputs, labels, row_weights, damping, k):
    weights = flat.view(k, -1)
    losses = F.cross_entropy(inputs @ weights.T, labels, reduction="none")
    return (row_weights * losses).sum() / len(inputs) + 0.5 * damping * (weights**2).sum()


def test_closed_form_gradient_and_hessian_equal_autograd():
    features, labels = _problem(n=40, d=4, k=3)
    inputs, damping = augment(features), 0.3
    rng = np.random.default_rng(1)
    weights, row_weights = rng.normal(size=(3, 5)), rng.random(40)
    args = (torch.tensor(inputs), torch.tensor(labels), torch.tensor(row_weights), damping, 3)
    flat = torch.tensor(weights.reshape(-1), requires_grad=True)
    expected_gradient = torch.autograd.grad(_torch_objective(flat, *args), flat)[0].numpy()
    expected_hessian = torch.autograd.functional.hessian(lambda t: _torch_objective(t, *args), flat).numpy()
    got_gradient = objective_gradient(weights, inputs, labels, row_weights, damping).reshape(-1)
    np.testing.assert_allclose(got_gradient, expected_gradient, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        objective_hessian(weights, inputs, row_weights, damping), expected_hessian, rtol=1e-10, atol=1e-12
    )


def test_influence_is_minus_test_gradient_through_the_inverse_hessian():
    features, labels = _problem()
    head = ConvexHead.train(features, labels, 3, damping=0.05)
    assert np.linalg.norm(objective_gradient(head.weights, head.inputs, labels, np.ones(300), 0.05)) < 1e-10
    test_features, test_labels = features[:4] + 0.1, labels[:4]
    inputs = augment(test_features)

    def gradient(x, y):
        residual = np.exp(head.weights @ x) / np.exp(head.weights @ x).sum()
        residual[y] -= 1
        return np.outer(residual, x).reshape(-1)

    train_gradients = np.stack([gradient(x, y) for x, y in zip(head.inputs, labels, strict=True)])
    hessian, gradients = torch.from_numpy(head.hessian), torch.from_numpy(train_gradients)
    influence = head.influence(test_features, test_labels)
    for t in range(4):
        solution = torch.linalg.solve(hessian, torch.from_numpy(gradient(inputs[t], test_labels[t])))
        amplification = map_amplification(gradients, solution)
        assert_same_solution(influence[t], -(gradients @ solution), hessian, f"influence {t}", amplification)
    # self-influence g_z^T H^-1 g_z: row z's map enlarges the error by ||g_z|| ||x_z|| / |g_z.x_z|
    solutions = torch.linalg.solve(hessian, gradients.T).T
    expected_self = (gradients * solutions).sum(1)
    amplification = max(map_amplification(g[None], x) for g, x in zip(gradients, solutions, strict=True))
    assert_same_solution(head.self_influence(), expected_self, hessian, "self-influence", amplification)


def test_the_head_matches_the_packages_exact_influence_on_the_classifier_scope(tiny64, train_set):
    """The convex head is the ``classifier`` tracked set: with the model's head set to the convex optimum,
    the package's explicit-Hessian influence (whose damping is the L2 term) gives the same scores."""
    tracked = TrackedModel(*tiny64, tracked_layers="classifier")
    train = ExampleStates(tracked, train_set)
    states, labels = train.load(np.arange(len(train_set)))
    features = states.hidden.numpy()
    damping = 0.1
    head = ConvexHead.train(features, train_set.labels, 2, damping)
    final = tracked.model.classifier
    with torch.no_grad():
        final.weight.copy_(torch.from_numpy(head.weights[:, :-1]))
        final.bias.copy_(torch.from_numpy(head.weights[:, -1]))
    theta = tracked.parameters()
    hessian = training_hessian(tracked, theta, train)
    s_test = exact_s_test(hessian, loss_gradient(tracked, theta, states.select([3]), labels[[3]]), damping)
    gradients = per_example_gradients(tracked, theta, states, labels)
    expected = -(gradients @ s_test).numpy()
    got = head.influence(features[[3]], train_set.labels[[3]])[0]
    # two Hessians of one objective (closed form and autograd), each solved: equal within its conditioning
    amplification = map_amplification(gradients, s_test)
    assert_same_solution(got, expected, torch.from_numpy(head.hessian), "head influence", amplification)


def test_warm_started_retrain_with_a_fixed_hessian_reaches_the_same_optimum():
    features, labels = _problem()
    head = ConvexHead.train(features, labels, 3, damping=0.05)
    weights = np.ones(300)
    weights[[3, 50, 200]] = 0.0
    cold, warm = fit(head.inputs, labels, 3, 0.05, weights), head.retrain(weights)
    # both minimise one 0.05-strongly convex objective: |a - b| <= (|grad a| + |grad b|) / 0.05
    residuals = [
        np.linalg.norm(objective_gradient(w, head.inputs, labels, weights, 0.05)) for w in (cold, warm)
    ]
    assert max(residuals) <= 1e-12  # fit's own stopping rule
    assert np.linalg.norm(warm - cold) <= sum(residuals) / 0.05 + 1e-14


def test_leave_one_out_predictions_match_retraining(train_set):
    features, labels = _problem(n=400)
    head = ConvexHead.train(features, labels, 3, damping=0.02)
    test = train_set.subset(range(5))
    test.labels = labels[:5]
    report = loo_head(head, features[:5] * 0.9, test, np.arange(5), m=8)
    assert len(report.points) == 5 and all(len(p.actual) == 8 for p in report.points)
    assert report.summary["loo_pearson_head"] > 0.99
    predicted = np.concatenate([p.predicted for p in report.points])
    actual = np.concatenate([p.actual for p in report.points])
    np.testing.assert_allclose(predicted, actual, rtol=0.2, atol=1e-3 * np.abs(actual).max())


def test_lds_of_exact_influence_is_high_and_of_random_scores_near_zero(train_set):
    features, labels = _problem(n=300)
    head = ConvexHead.train(features, labels, 3, damping=0.05)
    test = train_set.subset(range(10))
    test.labels = labels[:10]
    report = lds_head(head, features[:10] + 0.05, test, np.arange(10), subsets=40, fraction=0.5, seed=3)
    assert report.lds["exact"] > 0.9 and report.summary["lds_head"] == report.lds["exact"]
    interval = report.intervals["exact"]
    assert interval.low <= report.lds["exact"] <= interval.high
    masks = random_subsets(300, 40, 0.5, seed=3)
    measured = np.stack(
        [head.test_losses(head.retrain(m * 2.0), features[:10] + 0.05, labels[:10]) for m in masks]
    )
    noise = np.random.default_rng(0).normal(size=(10, 300))
    assert abs(np.nanmean(per_test_spearman(subset_effects(noise, masks), measured))) < 0.15


def test_metric_pieces():
    masks = random_subsets(50, 7, 0.3, seed=1)
    assert masks.shape == (7, 50) and (masks.sum(1) == 15).all()
    np.testing.assert_array_equal(masks, random_subsets(50, 7, 0.3, seed=1))
    assert not np.array_equal(masks, random_subsets(50, 7, 0.3, seed=2))
    with pytest.raises(ValueError, match="fraction"):
        random_subsets(50, 7, 1.0, seed=1)
    scores = np.arange(50.0)[None] - 25
    np.testing.assert_allclose(subset_effects(scores, masks)[:, 0], [scores[0, m].sum() for m in masks])
    assert list(most_influential(np.array([0.1, -3.0, 2.0]), 2)) == [1, 2]
    np.testing.assert_allclose(predicted_removal_effect(np.array([2.0]), 4), [-0.5])
    low, high = bootstrap_interval(np.array([0.1, 0.2, 0.3, np.nan]))
    assert low <= 0.2 <= high
    assert pearson_spearman(np.arange(5.0), np.arange(5.0) ** 3)[1] == pytest.approx(1.0)
    reference = np.random.default_rng(0).normal(size=(3, 40))
    shortlist = np.where(np.abs(reference) > np.sort(np.abs(reference), axis=1)[:, [20]], reference, 0.0)
    report = recall_report(
        {"same": reference, "shortlist": shortlist, "reversed": -reference}, reference, (5,)
    )
    assert report.summary["same_recall_at_5_helpful"] == 1.0
    assert report.summary["shortlist_recall_at_5_harmful"] == 1.0  # the top 5 are in its shortlist
    assert report.summary["reversed_recall_at_5_helpful"] == 0.0


# ----------------------------------------------------------------------------- retraining the tracked set
@pytest.fixture(scope="module")
def trained_tiny(tiny_dir, data_dir, tmp_path_factory):
    """The tiny model fine-tuned by ``influence train`` (so its card says how), plus both indexes."""
    from cli import app

    out = tmp_path_factory.mktemp("trained") / "model"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--base-model",
            str(tiny_dir),
            "--train",
            str(data_dir / "train.tsv"),
            "--eval",
            str(data_dir / "dev.tsv"),
            "--out",
            str(out),
            "--tracked-layers",
            "1",
            "--epochs",
            "2",
            "--learning-rate",
            "0.005",
            "--batch-size",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def indexed_tiny(trained_tiny, tmp_path_factory):
    """An engine over ``trained_tiny`` with a small gradient index (rank 4), built once for the module."""
    from engine.builds import build_gradient_index
    from interpret.config import GradientIndexConfig

    directory = tmp_path_factory.mktemp("gradient-index") / "gi"
    build_gradient_index(local_engine(trained_tiny), directory, GradientIndexConfig(rank=4, damping=0.1))
    return local_engine(trained_tiny, gradient_index_dir=directory)


def test_retraining_is_seeded_and_cached(trained_tiny, tmp_path):
    engine = local_engine(trained_tiny)
    spec = RetrainSpec.from_card(engine.card)
    rows = np.arange(0, 96, 2)
    first, second = retrain(spec, engine.examples, rows), retrain(spec, engine.examples, rows)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, retrain(spec, engine.examples, np.arange(1, 96, 2)))
    masks = random_subsets(len(engine.examples), 3, 0.5, seed=0)
    cache, calls = RetrainCache(tmp_path / "cache"), []

    def counting(spec, examples, rows_list):
        calls.append(len(rows_list))
        for position, rows in enumerate(rows_list):
            yield position, retrain(spec, examples, rows)

    thetas = retrain_subsets(spec, engine.examples, masks, cache, mapper=counting)
    again = retrain_subsets(spec, engine.examples, masks, cache, mapper=counting)
    assert calls == [3, 0]
    for a, b in zip(thetas, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="influence train"):
        RetrainSpec.from_card({"tracked_layers": 1})


def test_lds_tracked_cli_writes_json_and_plot(trained_tiny, data_dir, tmp_path):
    from cli import app

    out = tmp_path / "out"
    args = [
        "evaluate",
        "lds",
        "--scale",
        "tracked",
        "--model",
        str(trained_tiny),
        "--index",
        str(tmp_path / "none"),
    ]
    args += [
        "--eval",
        str(data_dir / "dev.tsv"),
        "--test-points",
        "6",
        "--subsets",
        "4",
        "--cache",
        str(tmp_path),
    ]
    args += ["--method", "gradient", "--method", "full", "--recursion-depth", "20", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "lds_tracked.json").read_text())
    assert set(report["lds"]) == {"gradient", "full"} and len(report["test_rows"]) == 6
    assert set(report["summary"]) >= {
        "lds_tracked_gradient",
        "lds_tracked_ci_halfwidth",
        "lds_small_scale_seconds",
    }
    assert (out / "lds_tracked.png").stat().st_size > 1000


def test_loo_cli_on_the_tiny_models_head(engine_dirs, data_dir, tmp_path):
    from cli import app

    model, index = engine_dirs
    args = [
        "evaluate",
        "loo",
        "--model",
        str(model),
        "--index",
        str(index),
        "--eval",
        str(data_dir / "dev.tsv"),
    ]
    result = CliRunner().invoke(
        app, [*args, "--test-points", "3", "--m", "4", "--damping", "0.05", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "loo.json").read_text())
    assert report["summary"]["loo_pearson_head"] > 0.95 and len(report["points"]) == 3


# ------------------------------------------------------------------------------------------ applications
def test_noisy_file_flips_exactly_the_share_and_recall_counts_them(train_set, tmp_path):
    from interpret.data import DataSpec, load_examples

    taken, flipped = noisy_training_file(train_set, tmp_path / "noisy.tsv", 50, 0.1, seed=2)
    noisy = load_examples(DataSpec(str(tmp_path / "noisy.tsv"), id_column="id"))
    assert len(noisy) == 50 and flipped.sum() == 5
    np.testing.assert_array_equal(noisy.labels != train_set.labels[taken], flipped)
    assert noisy.ids == [train_set.ids[r] for r in taken]
    scores = np.where(flipped, 10.0, 0.0)
    assert flip_recall(scores, flipped, 0.1) == 1.0 and flip_recall(-scores, flipped, 0.1) == 0.0


def test_the_audits_auc_and_rank_average_against_direct_counts():
    """AUC is the share of (flipped, kept) pairs the score orders right, ties half, counted pair by pair;
    the rank average puts a row high on both scores first, whatever their scales."""
    rng = np.random.default_rng(4)
    scores = np.round(rng.standard_normal(40), 1)  # rounded: ties happen
    flipped = rng.random(40) < 0.3
    pairs = scores[flipped][:, None] - scores[~flipped][None, :]
    direct = ((pairs > 0) + 0.5 * (pairs == 0)).mean()
    assert flip_auc(scores, flipped) == pytest.approx(direct, abs=1e-12)
    assert flip_auc(np.where(flipped, 1.0, 0.0), flipped) == 1.0
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    big, small = np.array([1e6, 1.0, 1e3, 10.0]), np.array([0.3, 0.2, 0.4, 0.1])
    np.testing.assert_allclose(rank_average(big, small), [(4 + 3) / 8, (1 + 2) / 8, (3 + 4) / 8, (2 + 1) / 8])


def test_self_influence_is_each_rows_score_against_itself(engine_dirs, tmp_path):
    from engine.builds import fit_projection, projected_gradients
    from interpret.config import GradientIndexConfig
    from interpret.influence.preconditioner import inverse_damped

    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    config = GradientIndexConfig(rank=4, damping=0.1)
    self_influence, loss = self_influence_and_loss(engine, tmp_path / "work", config)
    projection = fit_projection(engine, tmp_path / "work", config)
    gradients = projected_gradients(engine, tmp_path / "work", config, projection)
    gradients = torch.from_numpy(np.concatenate(list(gradients.blocks()))).double()
    inverse = inverse_damped(gradients.T @ gradients / len(gradients), 0.1)
    np.testing.assert_allclose(self_influence, ((gradients @ inverse) * gradients).sum(1).numpy(), rtol=1e-5)
    assert (self_influence > 0).all() and (loss > 0).all()
    flipped = np.zeros(len(loss), dtype=bool)
    flipped[np.argsort(-loss)[:5]] = True
    report = audit_report(engine.examples, self_influence, loss, flipped)
    assert report.summary["loss_auc"] == 1.0 and set(report.top10_recall) >= {"combined", "random"}
    assert report.top10_recall["loss"] == 1.0 and report.ranked[0].row == int(np.argmax(loss))
    by_self = audit_report(engine.examples, self_influence, loss, flipped, rank_by="self_influence")
    assert by_self.ranked[0].row == int(np.argmax(self_influence)) and by_self.summary == report.summary
    combined = audit_report(engine.examples, self_influence, loss, rank_by="combined")
    best = int(np.argmax(rank_average(self_influence, loss)))
    assert combined.ranked[0].row == best and combined.rank_by == "combined"
    write_report(report, tmp_path, "audit")
    assert (tmp_path / "audit.png").is_file()


def test_influence_map_links_test_points_to_their_top_rows(engine_dirs, data_dir, tmp_path):
    from interpret.config import LissaConfig, QueryConfig
    from interpret.data import DataSpec, load_examples

    engine = local_engine(engine_dirs[0], index_dir=engine_dirs[1])
    test = load_examples(DataSpec(str(data_dir / "dev.tsv")))
    config = QueryConfig(k=20, lissa=LissaConfig(recursion_depth=10, scale=50))
    report = influence_map(engine, test, np.arange(4), top=3, config=config)
    tests = [n for n in report.nodes if n.kind == "test"]
    trains = [n for n in report.nodes if n.kind == "train"]
    assert len(tests) == 4 and 4 <= len(report.edges) <= 4 * 6  # a side holds only scores of its sign
    assert all((e.score < 0) == (e.side == "helpful") for e in report.edges)
    assert [n.degree for n in trains] == sorted((n.degree for n in trains), reverse=True)
    degree = {n.id: 0 for n in trains}
    for edge in report.edges:
        degree[edge.target] += 1
    assert all(degree[n.id] == n.degree for n in trains)
    write_report(report, tmp_path, "map")
    assert (tmp_path / "map.png").is_file()


def test_error_correction_spends_the_same_budget_on_each_strategy(
    trained_tiny, indexed_tiny, data_dir, tmp_path
):
    from interpret.config import QueryConfig
    from interpret.data import DataSpec, load_examples
    from interpret.models import load_classifier

    engine = indexed_tiny
    copy = TrackedModel(*load_classifier(str(trained_tiny)), tracked_layers=1, max_length=32)
    before = copy.parameters().clone()
    test = load_examples(DataSpec(str(data_dir / "dev.tsv")))
    report = error_correction(engine, copy, test, [0, 1], top=3, config=QueryConfig())
    assert set(report.deltas) == {"helpful", "random", "harmful"}
    assert all(len(v) == 2 for v in report.deltas.values()) and len(report.budgets) == 2
    torch.testing.assert_close(copy.parameters(), before, rtol=0, atol=0)  # restored after every run
    write_report(report, tmp_path, "correction")


def test_simulatability_moves_the_simulator_by_the_rows_shown_and_restores_it(
    trained_tiny, indexed_tiny, data_dir, tmp_path
):
    """Each strategy's value is the simulator's ``p(model's label)`` after fine-tuning a fresh copy on that
    point's rows: redone here by hand for one point. The simulator learnt the model's labels, and is
    returned as it was."""
    from dataclasses import replace

    from interpret.config import QueryConfig
    from interpret.data import DataSpec, load_examples
    from interpret.training import fine_tune, predict_labels
    from tasks.applications import (
        label_probability,
        model_labelled,
        simulatability,
        simulation_training,
        train_simulator,
    )

    engine = indexed_tiny
    simulator, taken = train_simulator(engine, 40, seed=3)
    assert len(taken) == 40 and len(set(taken)) == 40
    learnt = model_labelled(engine, engine.training_examples().subset(taken))
    assert (learnt.labels == engine.backend.predict(learnt.texts, None).argmax(axis=1)).all()
    before = simulator.parameters().clone()
    test = load_examples(DataSpec(str(data_dir / "dev.tsv")))
    rows = np.array([0, 3, 5])
    training = simulation_training(1e-3, 3)
    report = simulatability(engine, simulator, test, rows, top=3, train_config=training, seed=1)
    torch.testing.assert_close(simulator.parameters(), before, rtol=0, atol=0)
    assert report.model_labels == model_labelled(engine, test.subset(rows)).labels.tolist()
    assert set(report.after) == {"helpful", "random", "same_label", "harmful"}
    assert all(len(values) == 3 for values in report.after.values())
    agreement = np.mean(
        predict_labels(simulator, model_labelled(engine, test.subset(rows))) == report.model_labels
    )
    assert report.summary["simulator_agreement"] == pytest.approx(agreement)

    point = model_labelled(engine, test.subset([rows[1]]))  # by hand: the second point's helpful rows
    answer = answer_query(engine, point.texts[0], None, int(point.labels[0]), QueryConfig(top=3))
    shown = engine.training_examples().subset([example.row for example in answer.helpful])
    copy, _ = train_simulator(engine, 40, seed=3)
    assert label_probability(copy, point)[0] == pytest.approx(report.before[1], abs=1e-6)
    fine_tune(copy, shown, None, replace(training, seed=1 + 1), progress=False)
    assert label_probability(copy, point)[0] == pytest.approx(report.after["helpful"][1], abs=1e-6)
    expected = np.mean(np.asarray(report.after["helpful"]) - report.before)
    assert report.summary["simulatability_delta_helpful"] == pytest.approx(expected)

    modelled = simulatability(engine, simulator, test, rows, 3, training, seed=1, labels="model")
    assert modelled.before == report.before and modelled.config["labels"] == "model"
    write_report(report, tmp_path, "simulatability")
    assert (tmp_path / "simulatability.png").stat().st_size > 0


def test_pool_rows_score_as_the_index_scores_the_rows_it_holds(indexed_tiny, data_dir):
    """A pool row's score is the index's own score for it: with training rows as the pool, ``pool_scores``
    gives ``g~_test . u_z`` of the stored vectors (the index answers ``-ip``), for each anchor; normalised,
    the normalised view's cosine times the anchor's norm."""
    from interpret.data import DataSpec, load_examples
    from tasks.applications import pool_scores

    engine = indexed_tiny
    index = engine.gradient_index
    anchors = load_examples(DataSpec(str(data_dir / "dev.tsv"))).subset([0, 1, 2])
    rows = np.array([4, 17, 30, 55])
    scores = pool_scores(engine, anchors, engine.training_examples().subset(rows))
    normalized = pool_scores(engine, anchors, engine.training_examples().subset(rows), normalize=True)
    assert scores.shape == normalized.shape == (4, 3)
    for column in range(3):
        test = engine.backend.projected_test_gradient(
            anchors.texts[column], None, int(anchors.labels[column]), index.projection
        )
        expected = index.vectors()[rows].astype(np.float64) @ test.astype(np.float64)
        np.testing.assert_allclose(scores[:, column], expected, rtol=1e-4, atol=1e-6)
        (helpful, helpful_scores), _ = index.search(test, len(engine.training_examples()))
        by_row = dict(zip(helpful.tolist(), (-helpful_scores).tolist(), strict=True))
        np.testing.assert_allclose(scores[:, column], [by_row[row] for row in rows], rtol=1e-4, atol=1e-6)
        (helpful, cosines), _ = index.search(test, len(engine.training_examples()), normalize=True)
        by_row = dict(zip(helpful.tolist(), (-cosines).tolist(), strict=True))
        expected = np.array([by_row[row] for row in rows]) * index.test_norm(test)  # the view's order
        np.testing.assert_allclose(normalized[:, column], expected, rtol=1e-4, atol=1e-6)


def test_augmentation_spends_one_budget_on_helpful_and_random_rows(
    trained_tiny, indexed_tiny, data_dir, tmp_path
):
    """Per seed: each anchor's top pool rows (their union) set the budget, random pool rows match it, the
    anchors are drawn as the seed says; the share of chosen rows the model got wrong is theirs; the model
    copy is restored after every run."""
    from interpret.data import DataSpec, load_examples
    from interpret.models import load_classifier
    from interpret.training import accuracy, predict_labels
    from tasks.applications import augmentation, pool_scores

    engine = indexed_tiny
    copy = TrackedModel(*load_classifier(str(trained_tiny)), tracked_layers=1, max_length=32)
    before = copy.parameters().clone()
    dev = load_examples(DataSpec(str(data_dir / "dev.tsv")))
    anchors, test = dev.subset(range(16)), dev.subset(range(16, 48))
    pool = engine.training_examples()
    report = augmentation(engine, copy, anchors, pool, test, [0, 1], anchor_count=5, top=3)
    torch.testing.assert_close(copy.parameters(), before, rtol=0, atol=0)
    scores = pool_scores(engine, anchors, pool)
    wrong = []
    for seed, drawn, budget in zip(report.seeds, report.anchors, report.budgets, strict=True):
        expected = np.sort(np.random.default_rng(seed).choice(16, 5, replace=False))
        assert drawn == expected.tolist()
        tops = {int(row) for anchor in drawn for row in np.argsort(-scores[:, anchor], kind="stable")[:3]}
        assert budget == len(tops) and 3 <= budget <= 15
        chosen = pool.subset(sorted(tops))
        wrong.append(float(np.mean(predict_labels(copy, chosen) != chosen.labels)))
    assert report.summary["helpful_rows_misclassified"] == pytest.approx(np.mean(wrong))
    assert set(report.deltas) == {"helpful", "random", "anchors"}
    assert report.baseline_accuracy == pytest.approx(accuracy(copy, test))
    write_report(report, tmp_path, "augmentation")
    assert (tmp_path / "augmentation.png").stat().st_size > 0


def test_self_influence_ranks_planted_flips_above_clean_rows():
    """A separable toy set with 4 labels flipped: the flipped rows have the highest self-influence."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 200)
    features = rng.normal(size=(200, 3)) + 3.0 * (2 * labels[:, None] - 1)
    flipped = np.zeros(200, dtype=bool)
    flipped[rng.choice(200, 4, replace=False)] = True
    noisy = np.where(flipped, 1 - labels, labels)
    head = ConvexHead.train(features, noisy, 2, damping=0.01)
    self_influence = head.self_influence()
    assert set(np.argsort(-self_influence)[:4]) == set(np.flatnonzero(flipped))
    assert flip_recall(self_influence, flipped, 0.02) == 1.0


@pytest.mark.parametrize(
    ("arguments", "flag"),
    [
        (["evaluate", "lds", "--fraction", "1.5"], "--fraction"),
        (["evaluate", "lds", "--subsets", "1"], "--subsets"),
        (["evaluate", "lds", "--scale", "everything"], "--scale"),
        (["evaluate", "lds", "--scale", "tracked", "--method", "magic"], "--method"),
        (["evaluate", "loo", "--m", "0"], "--m"),
        (["evaluate", "loo", "--damping", "0"], "--damping"),
        (["evaluate", "loo", "--test-points", "0"], "--test-points"),
        (["evaluate", "recall", "--reference", "oracle"], "--reference"),
        (["audit", "--inject-noise", "1.5"], "--inject-noise"),
        (["map", "--top", "0"], "--top"),
        (["correct", "--seeds", "0"], "--seeds"),
        (["correct", "--learning-rate", "-1"], "--learning-rate"),
    ],
)
def test_bad_arguments_are_usage_errors_naming_the_flag(arguments, flag, tmp_path):
    from cli import app

    result = CliRunner().invoke(app, [*arguments, "--model", str(tmp_path / "none")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and flag in errors[0], result.output  # one line, naming the flag


@pytest.mark.slow
def test_retrains_on_ray_tasks_equal_the_in_process_ones(trained_tiny, ray_local, tmp_path):
    from workers.retraining import ray_mapper

    engine = local_engine(trained_tiny)
    spec = RetrainSpec.from_card(engine.card)
    masks = random_subsets(len(engine.examples), 3, 0.5, seed=4)
    on_ray = retrain_subsets(spec, engine.examples, masks, RetrainCache(tmp_path / "a"), mapper=ray_mapper(2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each task runs: the same kernels sum in the same order
    try:
        here = retrain_subsets(spec, engine.examples, masks, RetrainCache(tmp_path / "b"))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(on_ray, here, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_lds_tracked_shares_one_s_test_between_fastif_and_full(trained_tiny, data_dir, tmp_path, monkeypatch):
    """fastif and full on the same test point: one LiSSA run, the second answered from the cache; no
    progress callback needed."""
    from engine import backends
    from interpret.config import LissaConfig, QueryConfig
    from interpret.data import DataSpec, load_examples
    from tasks.evaluation import ensure_indexes, lds_tracked

    engine = ensure_indexes(local_engine(trained_tiny), ["fastif"], tmp_path)
    started = []
    original = backends.LocalBackend.start_s_test
    monkeypatch.setattr(
        backends.LocalBackend,
        "start_s_test",
        lambda self, *a, **k: started.append(a[0]) or original(self, *a, **k),
    )
    test = load_examples(DataSpec(str(data_dir / "dev.tsv")))
    config = QueryConfig(k=30, lissa=LissaConfig(recursion_depth=10, scale=50, damping=0.1))
    report = lds_tracked(
        engine, trained_tiny, test, np.arange(3), ["fastif", "full"], tmp_path / "r", 3, 0.5, 0, config
    )
    assert len(started) == 3 and set(report.lds) == {"fastif", "full"}


def test_lds_tracked_takes_scores_computed_elsewhere_on_the_same_retrains(trained_tiny, data_dir, tmp_path):
    """A peer library's scores (``given_scores``) are measured on the same retrains as the product's
    methods: the gradient index's own scores handed in give its LDS, negated ones its negation, and a
    matrix of the wrong shape is refused."""
    from interpret.data import DataSpec, load_examples
    from tasks.evaluation import ensure_indexes, lds_tracked, method_scores

    engine = ensure_indexes(local_engine(trained_tiny), ["gradient"], tmp_path)
    test, rows = load_examples(DataSpec(str(data_dir / "dev.tsv"))), np.arange(4)
    scores = method_scores(engine, test, rows, "gradient")
    given = {"peer": scores, "peer_negated": -scores}
    args = (engine, trained_tiny, test, rows, ["gradient"], tmp_path / "r", 4, 0.5, 0)
    report = lds_tracked(*args, given_scores=given)
    assert set(report.lds) == {"gradient", "peer", "peer_negated"}
    assert report.lds["peer"] == pytest.approx(report.lds["gradient"], abs=1e-12)
    assert report.lds["peer_negated"] == pytest.approx(-report.lds["gradient"], abs=1e-12)
    assert np.isfinite(report.lds["gradient"])
    with pytest.raises(ValueError, match=r"peer: scores must be \[4, \d+\]"):
        lds_tracked(*args, given_scores={"peer": scores[:2]})


def test_the_ekfac_baseline_tracks_the_gradient_index_layers(trained_tiny):
    """The benchmark's EK-FAC (Kronfluence) is given exactly the linear layers the gradient index
    projects, in its order: the head and the tracked block, no norm."""
    from benchmarks.ekfac_baseline import tracked_linear_modules
    from interpret.influence.projection import Projector
    from interpret.models import TrackedModel, load_classifier

    model, tokenizer = load_classifier(str(trained_tiny))
    tracked = TrackedModel(model, tokenizer, 1, 32)
    modules = tracked_linear_modules(tracked)
    assert modules == [slot.name for slot in Projector(tracked, 4).slots]
    assert "classifier" in modules and not any("LayerNorm" in name for name in modules)
    assert all(isinstance(model.get_submodule(name), torch.nn.Linear) for name in modules)


@pytest.mark.slow  # six commands end to end on the tiny model: about a minute
def test_every_task_runs_from_the_cli_and_the_job_path_gives_the_same_report(engine_dirs, data_dir, tmp_path):
    """Each CLI command writes its task's report (JSON and PNG) through the one registry, and a job given
    the same test points as inputs (``tasks.registry.run_job``, what the service runs) measures the same
    numbers: the two paths assemble a task in one place."""
    from cli import app
    from engine.builds import build_gradient_index
    from interpret.config import GradientIndexConfig
    from interpret.data import DataSpec, load_examples
    from service.schemas import EvaluateRequest, TextInput
    from tasks.evaluation import sample_rows
    from tasks.registry import TASKS, HeadCache, run_job

    model, index = engine_dirs
    dev = str(data_dir / "dev.tsv")
    gradient_index = tmp_path / "gradient-index"
    build_gradient_index(local_engine(model), gradient_index, GradientIndexConfig(rank=4, damping=0.1))
    common = ["--model", str(model), "--eval", dev, "--out", str(tmp_path), "--index", str(index)]
    no_gradient = ["--gradient-index", str(tmp_path / "none")]  # fastif, from the kNN index
    commands = {
        "loo": ["evaluate", "loo", "--test-points", "3", "--m", "3", *common],
        "lds_head": ["evaluate", "lds", "--test-points", "4", "--subsets", "6", *common],
        "recall": [
            "evaluate",
            "recall",
            "--method",
            "fastif",
            "--test-points",
            "2",
            "--k",
            "20",
            *common,
            *no_gradient,
        ],
        "influence_map": ["map", *common, *no_gradient],
        "error_correction": ["correct", "--seeds", "1", *common, *no_gradient],
        "simulatability": [
            "simulate",
            "--points",
            "2",
            "--top",
            "3",
            "--simulator-rows",
            "24",
            *common,
            *no_gradient,
        ],
        "audit": ["audit", "--model", str(model), "--out", str(tmp_path), "--work", str(tmp_path / "w")],
        "augmentation": [
            "augment",
            "--anchors",
            dev,
            "--pool",
            str(data_dir / "train.tsv"),
            "--seeds",
            "2",
            "--anchor-count",
            "4",
            "--top",
            "3",
            *[argument for argument in common if argument not in ("--index", str(index))],
            "--gradient-index",
            str(gradient_index),
        ],
    }
    assert set(commands) == set(TASKS)
    reports = {}
    for name, arguments in commands.items():
        result = CliRunner().invoke(app, arguments)
        assert result.exit_code == 0, (name, result.output)
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
        TASKS[name].report.model_validate(reports[name])  # the file is the registry's report model
        assert (tmp_path / f"{name}.png").stat().st_size > 0
        summary = reports[name]["summary"]
        assert (summary or name == "audit") and all(
            np.isfinite(v) for v in summary.values()
        )  # audit: no flips
    assert len(reports["audit"]["ranked"]) == 96  # the CLI exports every row

    test = load_examples(DataSpec(dev))
    rows = sample_rows(len(test), 3, 0)  # the CLI's sample for --test-points 3, seed 0
    inputs = [TextInput(text=test.texts[r], label=int(test.labels[r])) for r in rows]
    engine = local_engine(model, index_dir=index)
    job = run_job(engine, EvaluateRequest(task="loo", inputs=inputs, m=3), HeadCache(), tmp_path, model)
    for mine, theirs in zip(job.points, reports["loo"]["points"], strict=True):
        np.testing.assert_allclose(mine.predicted, theirs["predicted"], rtol=1e-6)
        np.testing.assert_allclose(mine.actual, theirs["actual"], rtol=1e-6)
    audit = run_job(engine, EvaluateRequest(task="audit", limit=5), HeadCache(), tmp_path, model)
    assert [r.row for r in audit.ranked] == [r["row"] for r in reports["audit"]["ranked"][:5]]
    points = sample_rows(len(test), 2, 0)  # --points 2, seed 0
    inputs = [TextInput(text=test.texts[r]) for r in points]  # no labels: the model's prediction is simulated
    request = EvaluateRequest(task="simulatability", inputs=inputs, top=3, simulator_rows=24)
    simulated = run_job(engine, request, HeadCache(), tmp_path, model)
    np.testing.assert_allclose(simulated.before, reports["simulatability"]["before"], rtol=1e-6)
    for name, after in simulated.after.items():
        np.testing.assert_allclose(after, reports["simulatability"]["after"][name], rtol=1e-6)
    train = load_examples(DataSpec(str(data_dir / "train.tsv")))
    labelled = [
        TextInput(text=text, label=int(label)) for text, label in zip(test.texts, test.labels, strict=True)
    ]
    pool = [
        TextInput(text=text, label=int(label)) for text, label in zip(train.texts, train.labels, strict=True)
    ]
    request = EvaluateRequest(
        task="augmentation", inputs=labelled, anchors=labelled, pool=pool, seeds=2, anchor_count=4, top=3
    )
    engine = local_engine(model, gradient_index_dir=gradient_index)
    augmented = run_job(engine, request, HeadCache(), tmp_path, model)
    assert augmented.anchors == reports["augmentation"]["anchors"]
    assert augmented.budgets == reports["augmentation"]["budgets"]
    for name, deltas in augmented.deltas.items():
        np.testing.assert_allclose(deltas, reports["augmentation"]["deltas"][name], atol=1e-9)
