"""The FastIF query on the tiny model: kNN vs full scan, ranking, the exact path, the engine and its CLI."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from index import build_index
from interpret.data import DataSpec
from interpret.influence import ExampleStates, LissaConfig, QueryConfig, influence_query
from interpret.models import TrackedModel, encode_features, load_classifier, model_fingerprint
from service.cli import app
from service.pipeline import LocalEngine

LISSA = LissaConfig(recursion_depth=50, batch_size=4, damping=0.1, scale=20.0)
QUERY = "the plot was good and fun"


@pytest.fixture(scope="module")
def engine_dirs(tiny_dir, data_dir, tmp_path_factory):
    """The tiny model with a card naming its data, and a Flat index over its training set."""
    from interpret.training import CARD_FILE

    model, tokenizer = load_classifier(str(tiny_dir))
    spec = DataSpec(str(data_dir / "train.tsv"))
    card = {
        "tracked_layers": 1,
        "max_length": 32,
        "data_spec": {
            "source": spec.source,
            "text_column": "text",
            "pair_column": None,
            "label_column": "label",
            "id_column": None,
        },
    }
    (tiny_dir / CARD_FILE).write_text(json.dumps(card))
    from interpret.data import load_examples

    examples = load_examples(spec)
    features = encode_features(TrackedModel(model, tokenizer, 0), examples.texts, progress=False)
    index_dir = tmp_path_factory.mktemp("index")
    build_index(features, index_dir, model_fingerprint(model), examples.fingerprint)
    return tiny_dir, index_dir


def test_knn_with_k_equal_n_reproduces_the_full_scan(engine_dirs):
    engine = LocalEngine(engine_dirs[0], index_dir=engine_dirs[1])
    n = len(engine.examples)
    knn = engine.query(QUERY, config=QueryConfig(k=n, top=5, lissa=LISSA))
    full = engine.query(QUERY, config=QueryConfig(k=None, top=5, lissa=LISSA))
    order = np.argsort(knn.candidate_rows)
    np.testing.assert_allclose(knn.candidate_scores[order], full.candidate_scores, rtol=1e-5, atol=1e-7)
    assert [e.id for e in knn.harmful] == [e.id for e in full.harmful]
    assert knn.candidate_distances is not None and np.all(np.diff(knn.candidate_distances) >= 0)


def test_knn_candidates_are_the_nearest_and_ranking_is_signed(engine_dirs):
    engine = LocalEngine(engine_dirs[0], index_dir=engine_dirs[1])
    answer = engine.query(QUERY, config=QueryConfig(k=20, top=4, lissa=LISSA))
    assert len(answer.candidate_rows) == 20
    helpful = [e.score for e in answer.helpful]
    harmful = [e.score for e in answer.harmful]
    assert helpful == sorted(helpful) and harmful == sorted(harmful, reverse=True)
    assert all(s < 0 for s in helpful) and all(s > 0 for s in harmful)
    scores = answer.candidate_scores
    assert len(helpful) == min(4, (scores < 0).sum()) and len(harmful) == min(4, (scores > 0).sum())
    if helpful:
        assert helpful[0] == scores.min()
    if harmful:
        assert harmful[0] == scores.max()
    assert answer.label_used == answer.predicted_label
    assert set(answer.timings) == {"encode", "s_test", "search", "score"}


def test_explaining_another_label_flips_nothing_silently(engine_dirs):
    engine = LocalEngine(engine_dirs[0], index_dir=engine_dirs[1])
    answer = engine.query(QUERY, label=0, config=QueryConfig(k=10, lissa=LISSA))
    assert answer.label_used == 0
    with pytest.raises(ValueError, match="label must be in"):
        engine.query(QUERY, label=7, config=QueryConfig(k=10, lissa=LISSA))


def test_exact_query_on_the_classifier(tiny_dir, train_set):
    tracked = TrackedModel(*load_classifier(str(tiny_dir)), tracked_layers="classifier")
    train = ExampleStates(tracked, train_set)
    from interpret.influence import training_hessian

    hessian = training_hessian(tracked, tracked.parameters(), train)
    config = QueryConfig(k=None, top=3, lissa=LissaConfig(damping=0.01), exact=True)
    answer = influence_query(tracked, train, QUERY, config=config, hessian=hessian)
    assert answer.s_test is None and len(answer.candidate_scores) == len(train_set)
    with pytest.raises(ValueError, match="Hessian"):
        influence_query(tracked, train, QUERY, config=config)


def test_query_config_validation():
    with pytest.raises(ValueError, match="k must be"):
        QueryConfig(k=0)
    with pytest.raises(ValueError, match="top must be"):
        QueryConfig(top=0)
    with pytest.raises(ValueError, match="recursion_depth"):
        LissaConfig(recursion_depth=0)
    with pytest.raises(ValueError, match="damping"):
        LissaConfig(damping=0)


def test_cli_errors_are_one_line_and_exit_2(engine_dirs, tmp_path, monkeypatch, capsys):
    from service.cli import main

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
    assert payload["candidates"] == 15 and len(payload["helpful"]) == 3
    assert payload["lissa"]["config"]["recursion_depth"] == 20
