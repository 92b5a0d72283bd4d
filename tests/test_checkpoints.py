"""Bring your own checkpoint: a folder written by plain ``save_pretrained`` (no card), with or without its
training data; ``influence card``; label names from ``config.id2label``."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli import app
from cli.commands import main, rerank_size
from clients import BadRequestError, InfluenceClient
from clients import TrainingDataMissingError as ClientTrainingDataMissing
from engine.pipeline import local_engine
from interpret.checkpoint import TrainingDataMissingError, load_checkpoint
from interpret.config import FAST_RERANK
from interpret.models import label_names, load_classifier, set_label_names
from service.app import create_app
from service.core import InfluenceService
from service.settings import Settings
from tests.conftest import save_plain

TEXT = "the plot was good and fun"
NAMES = ["negative", "positive"]
SMALL_LISSA = ["--recursion-depth", "5", "--repetitions", "1", "--lissa-batch-size", "8", "--scale", "20"]


@pytest.fixture
def plain_dir(tiny_dir, tmp_path):
    """The tiny BERT as another trainer leaves it (``tests.conftest.save_plain``)."""
    folder = save_plain(tiny_dir, tmp_path / "their-model", NAMES)
    assert not (folder / "card.json").exists()
    return folder


def _invoke(*arguments: str):
    return CliRunner().invoke(app, list(arguments))


def _main_error(monkeypatch, capsys, *arguments: str) -> str:
    """What ``influence ARGS`` prints on stderr when it fails: it must exit 2 with exactly one line."""
    monkeypatch.setattr(sys, "argv", ["influence", *arguments])
    capsys.readouterr()  # what ran before (save_pretrained's bars) is not this command's output
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_label_names_come_from_id2label_and_placeholders_read_label_k(tiny_dir):
    model, _ = load_classifier(str(tiny_dir))
    assert label_names(model.config) == ["label 0", "label 1"]  # transformers' LABEL_0 / LABEL_1
    set_label_names(model.config, NAMES)
    assert label_names(model.config) == NAMES and model.config.label2id == {"negative": 0, "positive": 1}
    for wrong in (["one"], ["same", "same"], ["", "b"]):
        with pytest.raises(ValueError, match="2 distinct, non-empty names"):
            set_label_names(model.config, wrong)


def test_a_folder_without_a_card_predicts_explains_and_attacks_without_data(plain_dir):
    checkpoint = load_checkpoint(plain_dir)
    assert checkpoint.examples is None and checkpoint.train is None
    with pytest.raises(TrainingDataMissingError, match="influence card --model"):
        checkpoint.training("influence")

    saliency = _invoke("saliency", "--model", str(plain_dir), "--text", TEXT, "--json")
    assert saliency.exit_code == 0, saliency.output
    result = json.loads(saliency.stdout)
    assert result["label_explained_name"] in NAMES
    assert result["prediction"]["label_name"] == NAMES[result["prediction"]["label"]]

    for method in ("hotflip", "input_reduction"):
        attack = _invoke("attack", "--model", str(plain_dir), "--text", TEXT, "--method", method, "--json")
        assert attack.exit_code == 0, attack.output
        outputs = json.loads(attack.stdout)["outputs_before"]
        assert outputs["label_name"] == NAMES[outputs["label"]]
    table = _invoke("attack", "--model", str(plain_dir), "--text", TEXT)
    assert "(negative)" in table.output or "(positive)" in table.output


def test_predict_shows_the_models_label_names_and_labels_may_be_named(plain_dir):
    table = _invoke("predict", "--model", str(plain_dir), "--text", TEXT, "--text", "boring")
    assert table.exit_code == 0, table.output
    assert "p(negative)" in table.output and "p(positive)" in table.output
    found = json.loads(_invoke("predict", "--model", str(plain_dir), "--text", TEXT, "--json").stdout)
    prediction = found["predictions"][0]
    assert prediction["label_name"] == NAMES[prediction["label"]]

    def saliency(label: str) -> dict:
        arguments = ["saliency", "--model", str(plain_dir), "--text", TEXT, "--method", "simple_gradient"]
        result = _invoke(*arguments, "--label", label, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    by_name, by_index = saliency("positive"), saliency("1")
    assert by_name["label_explained"] == 1 and by_name["raw_scores"] == by_index["raw_scores"]


def test_a_label_the_model_does_not_have_is_one_line_listing_its_names(plain_dir, monkeypatch, capsys):
    line = _main_error(
        monkeypatch, capsys, "saliency", "--model", str(plain_dir), "--text", TEXT, "--label", "neutral"
    )
    assert "--label='neutral' is not a label of this model" in line and "['negative', 'positive']" in line


def _save(folder, model, tokenizer=None):
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def test_folders_that_cannot_be_explained_say_how_to_fix_them(tmp_path, monkeypatch, capsys):
    """Item 6 of issue 35: a base model, a causal LM, no tokenizer, code not trusted, no folder at all."""
    import transformers as hf

    from tests.families import family_classifier

    bert, bert_tokenizer = family_classifier("bert", dtype=torch.float32)
    gpt2, gpt2_tokenizer = family_classifier("gpt2", dtype=torch.float32)
    remote = _save(tmp_path / "remote", bert, bert_tokenizer)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_mine.MineForSequenceClassification"}
    (remote / "config.json").write_text(json.dumps(config))
    cases = {
        _save(tmp_path / "base", hf.BertModel(bert.config), bert_tokenizer): (
            "holds BertModel, not a sequence classifier",
            "BertForSequenceClassification.save_pretrained",
            "influence train --base-model",
        ),
        _save(tmp_path / "lm", hf.GPT2LMHeadModel(gpt2.config), gpt2_tokenizer): (
            "holds GPT2LMHeadModel",
            "GPT2ForSequenceClassification",
        ),
        _save(tmp_path / "no-tokenizer", bert): (
            "no tokenizer beside the model",
            "tokenizer.save_pretrained",
        ),
        remote: ("ships its own model code", "--trust-remote-code", "INFLUENCE_TRUST_REMOTE_CODE"),
        tmp_path / "nothing": ("no model there (no config.json)", "save_pretrained"),
    }
    for folder, fixes in cases.items():
        for command in ("predict", "saliency"):
            line = _main_error(monkeypatch, capsys, command, "--model", str(folder), "--text", TEXT)
            assert line.startswith("error: ") and all(fix in line for fix in fixes), line


def test_a_trigger_search_without_examples_asks_for_them(plain_dir, data_dir, monkeypatch, capsys):
    arguments = ("attack", "--model", str(plain_dir), "--text", TEXT, "--method", "triggers")
    line = _main_error(monkeypatch, capsys, *arguments)
    assert "needs labelled examples" in line and "--examples FILE" in line
    small = ["--param", "num_tokens=1", "--param", "iterations=1", "--param", "candidates=2"]
    small += ["--param", "num_examples=8", "--param", "held_out=8"]
    found = _invoke(
        *arguments, "--examples", str(data_dir / "train.tsv"), *small, "--target", "negative", "--json"
    )
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["outputs_before"]["label_name"] in NAMES


def test_what_needs_training_data_says_so_in_one_line_naming_the_fix(plain_dir, monkeypatch, capsys):
    for arguments in (
        ("query", "--model", str(plain_dir), "--text", TEXT),
        ("index", "build", "--model", str(plain_dir), "--kind", "knn"),
        ("evaluate", "recall", "--model", str(plain_dir)),
    ):
        line = _main_error(monkeypatch, capsys, *arguments)
        assert "needs the training data" in line and f"influence card --model {plain_dir}" in line, line
    line = _main_error(monkeypatch, capsys, "serve", "--model", str(plain_dir / "missing"))
    assert "no model there (no config.json)" in line and "influence train" in line


def test_query_takes_the_training_data_and_the_card_command_records_it(plain_dir, data_dir, tmp_path):
    train = str(data_dir / "train.tsv")
    given = _invoke(
        "query", "--model", str(plain_dir), "--train", train, "--text", TEXT, "--method", "full",
        "--top", "3", *SMALL_LISSA, "--json",
    )  # fmt: skip
    assert given.exit_code == 0, given.output
    answer = json.loads(given.stdout)
    assert answer["quality"]["candidates"] == 96 and len(answer["helpful"]) == 3
    assert {e["label_name"] for e in answer["helpful"] + answer["harmful"]} <= set(NAMES)
    assert answer["label_used_name"] == NAMES[answer["label_used"]]

    carded = _invoke("card", "--model", str(plain_dir), "--train", train, "--tracked-layers", "1")
    assert carded.exit_code == 0, carded.output
    card = json.loads((plain_dir / "card.json").read_text())
    assert card["tracked_layers"] == 1 and card["num_examples"] == 96 and card["num_labels"] == 2
    assert card["data_spec"]["source"] == str((data_dir / "train.tsv").resolve())

    # every later command finds the data, and the index is built over the same rows
    index = tmp_path / "index"
    built = _invoke("index", "build", "--model", str(plain_dir), "--kind", "knn", "--out", str(index))
    assert built.exit_code == 0, built.output
    found = _invoke(
        "query", "--model", str(plain_dir), "--index", str(index), "--text", TEXT, "--method", "fastif",
        "--k", "20", "--top", "2", *SMALL_LISSA, "--json",
    )  # fmt: skip
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["quality"]["candidates"] == 20
    trigger = _invoke(
        "attack", "--model", str(plain_dir), "--text", TEXT, "--method", "triggers", "--json",
        "--param", "num_tokens=1", "--param", "iterations=1", "--param", "candidates=2",
        "--param", "num_examples=8", "--param", "held_out=8",
    )  # fmt: skip
    assert trigger.exit_code == 0, trigger.output


def test_the_card_command_refuses_labels_the_model_does_not_have(plain_dir, tmp_path):
    wrong = tmp_path / "three.tsv"
    wrong.write_text("text\tlabel\na\t0\nb\t2\n")
    result = _invoke("card", "--model", str(plain_dir), "--train", str(wrong))
    assert isinstance(result.exception, ValueError)
    assert "labels up to 2, but the model has 2 outputs" in str(result.exception)
    assert not (plain_dir / "card.json").exists()


def test_the_service_starts_without_training_data_and_says_what_needs_it(plain_dir, tmp_path):
    settings = Settings(
        _env_file=None, model_dir=plain_dir, index_dir=tmp_path / "none", gradient_index_dir=None
    )
    service = InfluenceService(settings, local_engine(plain_dir))
    try:
        with TestClient(create_app(settings, service)) as http:
            model = http.get("/v1/models").json()["models"][0]
            assert model["labels"] == NAMES and model["num_training_examples"] == 0
            assert "influence card --model" in model["influence_unavailable"]
            ready = http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["training_data"] is False

            predicted = http.post("/v1/predict", json={"inputs": [{"text": TEXT}]}).json()
            assert predicted["predictions"][0]["label_name"] in NAMES
            saliency = http.post("/v1/saliency", json={"text": TEXT, "method": "simple_gradient"})
            assert saliency.status_code == 200 and saliency.json()["label_explained_name"] in NAMES
            hotflip = http.post("/v1/attack", json={"text": TEXT, "method": "hotflip", "target": "negative"})
            assert hotflip.status_code == 200, hotflip.text
            named, indexed = (
                http.post(
                    "/v1/saliency", json={"text": TEXT, "method": "simple_gradient", "label": label}
                ).json()
                for label in ("positive", 1)
            )
            assert named == indexed and named["label_explained_name"] == "positive"
            unknown = http.post(
                "/v1/saliency", json={"text": TEXT, "method": "simple_gradient", "label": "meh"}
            )
            assert unknown.status_code == 422 and unknown.json()["detail"]["field"] == "label"
            assert "['negative', 'positive']" in unknown.json()["message"]

            client = InfluenceClient("http://testserver", http=http)
            assert client.predict(TEXT).predictions[0].label_name in NAMES
            assert client.models().models[0].labels == NAMES
            with pytest.raises(ClientTrainingDataMissing, match="INFLUENCE_TRAIN_DATA") as refused_here:
                client.influence(TEXT)
            assert isinstance(refused_here.value, BadRequestError) and refused_here.value.status == 409

            refused = [
                http.post("/v1/influence", json={"inputs": [{"text": TEXT}]}),
                http.post("/v1/attack", json={"text": TEXT, "method": "triggers"}),
                http.post("/v1/jobs", json={"kind": "influence", "influence": {"inputs": [{"text": TEXT}]}}),
                http.post("/v1/jobs", json={"kind": "index_build"}),
                http.post(
                    "/v1/jobs", json={"kind": "attack", "attack": {"text": TEXT, "method": "triggers"}}
                ),
            ]
            for response in refused:
                body = response.json()
                assert response.status_code == 409 and body["code"] == "training_data_missing", body
                assert "INFLUENCE_TRAIN_DATA" in body["message"]
    finally:
        service.shutdown()


def test_the_service_takes_the_training_data_from_its_setting(plain_dir, data_dir, monkeypatch):
    monkeypatch.setenv("INFLUENCE_TRAIN_DATA", str(data_dir / "train.tsv"))
    settings = Settings(
        _env_file=None, model_dir=plain_dir, index_dir=None, gradient_index_dir=None, allow_full_scan=True
    )
    assert settings.train_spec().source == str(data_dir / "train.tsv")
    service = InfluenceService(settings, local_engine(plain_dir, settings.train_spec(), tracked_layers=1))
    try:
        with TestClient(create_app(settings, service)) as http:
            assert http.get("/v1/models").json()["models"][0]["influence_unavailable"] is None
            lissa = {"recursion_depth": 5, "batch_size": 8, "num_repetitions": 1, "scale": 20.0}
            body = {"inputs": [{"text": TEXT}], "method": "full", "top": 2, "lissa": lissa}
            response = http.post("/v1/influence", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["results"][0]["quality"]["candidates"] == 96
    finally:
        service.shutdown()


def test_train_writes_label_names(tiny_dir, data_dir, tmp_path):
    out = tmp_path / "named"
    arguments = ["train", "--base-model", str(tiny_dir), "--train", str(data_dir / "train.tsv")]
    arguments += ["--eval", str(data_dir / "dev.tsv"), "--out", str(out), "--max-examples", "16"]
    result = _invoke(*arguments, "--tracked-layers", "0", "--label-names", "negative, positive")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    short = _invoke(*arguments, "--label-names", "only-one")
    assert short.exit_code == 2 and "--label-names" in short.output
    shutil.rmtree(out)


# ------------------------------------------------------------------ four families, from save_pretrained


@pytest.mark.parametrize("family", ["bert", "deberta-v2", "gpt2", "roberta"])
def test_a_save_pretrained_folder_of_any_family_gets_everything(family, data_dir, tmp_path):
    """WordPiece and SentencePiece encoders, a byte-BPE decoder and a byte-BPE encoder, written by plain
    ``save_pretrained`` (no card): prediction, five saliency maps and three attacks with no data; both
    index kinds and three query kinds with ``--train``; then ``influence card`` and the same query bare."""
    from interpret.saliency import SALIENCY_METHODS
    from tests.families import family_classifier

    model, tokenizer = family_classifier(family, dtype=torch.float32)
    set_label_names(model.config, NAMES)
    folder = _save(tmp_path / family, model, tokenizer)
    train, model_option = str(data_dir / "train.tsv"), ("--model", str(folder))

    def ok(*arguments: str) -> dict | None:
        result = _invoke(*arguments, *model_option)
        assert result.exit_code == 0, (arguments, result.output)
        return json.loads(result.stdout) if "--json" in arguments else None

    assert ok("predict", "--text", TEXT, "--json")["predictions"][0]["label_name"] in NAMES
    for method in SALIENCY_METHODS:
        found = ok("saliency", "--text", TEXT, "--method", method, "--json")
        assert found["label_explained_name"] in NAMES and len(found["scores"]) == len(found["tokens"])
    trigger = ["--param", "num_tokens=1", "--param", "iterations=1", "--param", "candidates=2"]
    trigger += ["--param", "num_examples=8", "--param", "held_out=8", "--examples", train]
    for method, extra in (("hotflip", []), ("input_reduction", []), ("triggers", trigger)):
        found = ok("attack", "--text", TEXT, "--method", method, "--json", *extra)
        assert found["outputs_before"]["label_name"] in NAMES

    knn, grad = str(tmp_path / "knn"), str(tmp_path / "grad")
    ok("index", "build", "--kind", "knn", "--out", knn, "--train", train)
    ok(
        "index",
        "build",
        "--kind",
        "gradient",
        "--out",
        grad,
        "--rank",
        "2",
        "--damping",
        "0.1",
        "--train",
        train,
    )
    indexes = ("--index", knn, "--gradient-index", grad)
    queries = {
        "gradient": ("--top", "3"),
        "rerank": ("--top", "3", "--rerank", "10", *SMALL_LISSA),
        "rerank_fast": ("--top", "3", "--rerank", "fast", *SMALL_LISSA),
        "fastif": ("--top", "3", "--method", "fastif", "--k", "40", *SMALL_LISSA),
    }
    given = {}
    for name, arguments in queries.items():
        given[name] = ok("query", "--text", TEXT, *indexes, *arguments, "--json", "--train", train)
        assert len(given[name]["helpful"]) == 3 and given[name]["label_used_name"] in NAMES, name
    assert given["fastif"]["quality"]["candidates"] == 40
    assert given["rerank_fast"]["quality"]["rerank"] == FAST_RERANK

    other = _invoke("query", "--text", TEXT, *indexes, *model_option, "--train", str(data_dir / "dev.tsv"))
    assert "was built for data fingerprint" in str(other.exception)  # --train data is checked like the card's

    ok("card", "--train", train)
    for name, arguments in queries.items():  # the card names the data: the same answers without --train
        bare = ok("query", "--text", TEXT, *indexes, *arguments, "--json")
        assert [e["id"] for e in bare["helpful"]] == [e["id"] for e in given[name]["helpful"]], name


def test_rerank_takes_a_number_of_candidates_or_fast():
    import typer

    assert rerank_size(None) is None and rerank_size("fast") == FAST_RERANK and rerank_size("1000") == 1000
    for wrong in ("0", "-5", "quick", "2.5"):
        with pytest.raises(typer.BadParameter, match="nor 'fast'"):
            rerank_size(wrong)


def test_an_unexpected_error_is_one_line_naming_the_command_and_the_model(plain_dir, monkeypatch, capsys):
    from interpret.explainer import Explainer

    def broken(self, texts, pairs):
        raise RuntimeError("Sizes of tensors must match\nmore detail")

    monkeypatch.setattr(Explainer, "predict", broken)
    monkeypatch.setattr(sys, "argv", ["influence", "predict", "--model", str(plain_dir), "--text", TEXT])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "error: influence predict failed on a bert model: RuntimeError: Sizes of tensors must match (a bug: "
        "rerun with --debug for the traceback, and report it)"
    ]
    monkeypatch.setattr(
        sys, "argv", ["influence", "predict", "--debug", "--model", str(plain_dir), "--text", TEXT]
    )
    with pytest.raises(RuntimeError, match="Sizes of tensors"):
        main()


def test_a_named_gradient_index_that_is_missing_or_unfinished_is_an_error_not_another_method(
    plain_dir, data_dir, tmp_path, monkeypatch, capsys
):
    query = ("query", "--model", str(plain_dir), "--train", str(data_dir / "train.tsv"), "--text", TEXT)
    missing = tmp_path / "grad"
    line = _main_error(monkeypatch, capsys, *query, "--gradient-index", str(missing))
    assert "no gradient index there" in line and f"--out {missing}" in line
    (tmp_path / "grad.shards").mkdir()
    line = _main_error(monkeypatch, capsys, *query, "--gradient-index", str(missing))
    assert "did not finish" in line and "resume it with `influence index build --kind gradient" in line


def test_a_gradient_index_alone_makes_the_service_ready(plain_dir, data_dir, tmp_path):
    """The README's own-model set-up builds only the gradient index: the server is ready with it (the
    compose healthcheck reads /readyz), and not ready with training data but neither index."""
    from engine.builds import build_gradient_index
    from interpret.config import GradientIndexConfig
    from interpret.data import DataSpec

    spec = DataSpec(str(data_dir / "train.tsv"))
    build_gradient_index(
        local_engine(plain_dir, spec), tmp_path / "grad", GradientIndexConfig(rank=2, damping=0.1)
    )
    for gradient_dir, ready in ((tmp_path / "grad", 200), (None, 503)):
        settings = Settings(
            _env_file=None,
            model_dir=plain_dir,
            index_dir=tmp_path / "no-knn",
            gradient_index_dir=gradient_dir,
        )
        service = InfluenceService(settings, local_engine(plain_dir, spec, gradient_index_dir=gradient_dir))
        try:
            with TestClient(create_app(settings, service)) as http:
                answer = http.get("/readyz")
                assert answer.status_code == ready, answer.text
                assert (ready == 503) == ("no index loaded" in answer.text)
        finally:
            service.shutdown()
