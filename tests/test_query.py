"""The FastIF query on the tiny model: kNN vs full scan, ranking, the exact path, the engine and its CLI."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from engine.pipeline import answer_query, local_engine
from interpret.influence import LissaConfig, QueryConfig, prepare_test_point, score_rows, training_hessian

LISSA = LissaConfig(recursion_depth=50, batch_size=4, damping=0.1, scale=20.0)
QUERY = "the plot was good and fun"


def test_knn_with_k_equal_n_reproduces_the_full_scan(engine_dirs):
    engine = local_engine(engine_dirs[0], index_dir=engine_dirs[1])
    n = len(engine.examples)
    knn = answer_query(engine, QUERY, config=QueryConfig(k=n, top=5, lissa=LISSA))
    full = answer_query(engine, QUERY, config=QueryConfig(k=None, top=5, lissa=LISSA))
    order = np.argsort(knn.candidate_rows)
    np.testing.assert_allclose(knn.candidate_scores[order], full.candidate_scores, rtol=1e-5, atol=1e-7)
    assert [e.id for e in knn.harmful] == [e.id for e in full.harmful]
    assert knn.candidate_distances is not None and np.all(np.diff(knn.candidate_distances) >= 0)


def test_knn_candidates_are_the_nearest_and_ranking_is_signed(engine_dirs):
    engine = local_engine(engine_dirs[0], index_dir=engine_dirs[1])
    answer = answer_query(engine, QUERY, config=QueryConfig(k=60, top=4, lissa=LISSA))
    assert len(answer.candidate_rows) == 60
    helpful = [e.score for e in answer.helpful]
    harmful = [e.score for e in answer.harmful]
    assert helpful == sorted(helpful) and harmful == sorted(harmful, reverse=True)
    assert all(s < 0 for s in helpful) and all(s > 0 for s in harmful)
    scores = answer.candidate_scores
    assert len(helpful) == min(4, (scores < 0).sum()) and len(harmful) == min(4, (scores > 0).sum())
    assert helpful and harmful, "60 of the 96 rows hold both signs (the nearest 40 are all helpful)"
    assert helpful[0] == scores.min() and harmful[0] == scores.max()
    assert answer.label_used == answer.predicted_label
    assert set(answer.timings) == {"encode", "s_test", "search", "score", "total"}


def test_explaining_another_label_flips_nothing_silently(engine_dirs):
    engine = local_engine(engine_dirs[0], index_dir=engine_dirs[1])
    answer = answer_query(engine, QUERY, label=0, config=QueryConfig(k=10, lissa=LISSA))
    assert answer.label_used == 0
    with pytest.raises(ValueError, match="label=7 is not a label of this model"):
        answer_query(engine, QUERY, label=7, config=QueryConfig(k=10, lissa=LISSA))


def test_exact_query_on_the_classifier(engine_dirs, train_set):
    engine = local_engine(engine_dirs[0], tracked_layers="classifier")
    config = QueryConfig(k=None, top=3, lissa=LissaConfig(damping=0.01), exact=True)
    answer = answer_query(engine, QUERY, config=config)
    assert answer.lissa is None and len(answer.candidate_scores) == len(train_set)
    checkpoint = engine.backend.explainer.checkpoint
    tracked, train = checkpoint.tracked, checkpoint.train
    theta = tracked.parameters()
    point = prepare_test_point(tracked, theta, QUERY, None, None)
    hessian = training_hessian(tracked, theta, train)
    s_test = torch.linalg.solve(hessian + 0.01 * torch.eye(len(theta)), point.v)
    expected = score_rows(tracked, theta, s_test, train, range(len(train_set)))
    np.testing.assert_allclose(answer.candidate_scores, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="no index"):
        answer_query(engine, QUERY, config=QueryConfig(k=5, lissa=LISSA))


def test_query_config_validation():
    with pytest.raises(ValueError, match=r"\nk\n  Input should be greater than or equal to 1"):
        QueryConfig(k=0)
    with pytest.raises(ValueError, match=r"\ntop\n  Input should be greater than or equal to 1"):
        QueryConfig(top=0)
    with pytest.raises(ValueError, match="recursion_depth"):
        LissaConfig(recursion_depth=0)
    with pytest.raises(ValueError, match="damping"):
        LissaConfig(damping=0)


def test_cli_errors_are_one_line_and_exit_2(engine_dirs, tmp_path, monkeypatch, capsys):
    from cli import main

    argv = ["influence", "query", "--text", QUERY, "--model", str(engine_dirs[0]), "--index", str(tmp_path)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    errors = capsys.readouterr().err  # also holds the loaders' progress bars
    last_line = errors.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "no index manifest" in last_line
    assert "Traceback" not in errors


def test_cli_query_prints_json(engine_dirs):
    result = CliRunner().invoke(
        app,
        [
            "query",
            "--text",
            QUERY,
            "--model",
            str(engine_dirs[0]),
            "--index",
            str(engine_dirs[1]),
            "--k",
            "15",
            "--top",
            "3",
            "--recursion-depth",
            "20",
            "--lissa-batch-size",
            "4",
            "--scale",
            "20",
            "--damping",
            "0.1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{") :])
    assert payload["quality"]["candidates"] == 15 and len(payload["helpful"]) == 3
    assert payload["quality"]["lissa"]["config"]["recursion_depth"] == 20


def test_cli_saliency_and_attack_print_json(engine_dirs):
    runner = CliRunner()
    base = ["--text", QUERY, "--model", str(engine_dirs[0]), "--json"]
    salient = runner.invoke(
        app, ["saliency", *base, "--method", "integrated_gradients", "--param", "steps=40"]
    )
    assert salient.exit_code == 0, salient.output
    payload = json.loads(salient.stdout[salient.stdout.index("{") :])
    assert payload["method"] == "integrated_gradients" and abs(sum(payload["scores"]) - 1) < 1e-6
    attacked = runner.invoke(app, ["attack", *base, "--method", "input_reduction", "--param", "beam_size=2"])
    assert attacked.exit_code == 0, attacked.output
    payload = json.loads(attacked.stdout[attacked.stdout.index("{") :])
    assert payload["outputs_after"][0]["label"] == payload["outputs_before"]["label"]
    wrong = runner.invoke(app, ["saliency", *base, "--param", "steps"])
    assert wrong.exit_code != 0 and "expected name=value" in wrong.output


def test_every_solver_is_one_plan_of_explainer_methods_that_the_local_backend_runs(engine_dirs):
    """The s_test plan names each call's ``Explainer`` method itself (no method travels as a string), and
    the local backend's answer is the plan's: T LiSSA repetitions averaged, one call for the other solvers.
    ``Explainer.run`` refuses anything that is not one of its own methods."""
    from interpret.explainer import Explainer
    from interpret.s_test_plan import s_test_plan

    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    backend = engine.backend
    lissa = QueryConfig(k=None, lissa=LISSA.replace(num_repetitions=3))
    plan = s_test_plan(QUERY, None, None, lissa)
    assert [c.method for c in plan] == [Explainer.lissa_repetition] * 3
    assert [c.args[-1] for c in plan] == [0, 1, 2]  # each repetition its own seed stream
    assert [c.method for c in s_test_plan(QUERY, None, None, QueryConfig(exact=True))] == [Explainer.solve]
    cg = QueryConfig(k=None, solver="cg", cg_rows=40)
    assert [c.method for c in s_test_plan(QUERY, None, None, cg)] == [Explainer.cg_solve]
    with pytest.raises(ValueError, match="curvature"):
        s_test_plan(QUERY, None, None, QueryConfig(rerank=5, solver="index"))

    s_test = backend.finish_s_test(backend.start_s_test(QUERY, None, None, lissa))
    assert len(s_test.vectors) == 3 and s_test.report.norm_traces.shape[0] == 3
    by_hand = [backend.explainer.lissa_repetition(QUERY, None, None, lissa.lissa, r)[0] for r in range(3)]
    np.testing.assert_allclose(np.mean(by_hand, axis=0), backend.explainer.average(*s_test.vectors))
    for method in ("prepare", print):
        with pytest.raises(TypeError, match="is not a public method of Explainer"):
            backend.explainer.run(None, method, QUERY, None, None)
