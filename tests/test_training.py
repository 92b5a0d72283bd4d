import json

import numpy as np
import pytest
import torch

from interpret.data import DataSpec, load_examples
from interpret.models import TrackedModel, load_classifier, model_fingerprint
from interpret.training import TrainConfig, bucketed_batches, fine_tune, save_classifier


def test_bucketed_batches_cover_every_row_once():
    lengths = np.random.default_rng(0).integers(1, 50, size=1000)
    batches = bucketed_batches(lengths, 32, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    same = bucketed_batches(lengths, 32, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, same, strict=True))


def test_fine_tune_trains_only_tracked_parameters_and_saves_safetensors(tiny_dir, data_dir, tmp_path):
    model, tokenizer = load_classifier(str(tiny_dir))
    tracked = TrackedModel(model, tokenizer, tracked_layers=1)
    frozen_before = model.bert.encoder.layer[0].output.dense.weight.clone()
    tracked_before = model.bert.encoder.layer[2].output.dense.weight.clone()
    spec = DataSpec(str(data_dir / "train.tsv"), max_examples=40)
    train = load_examples(spec)
    config = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-3)
    report = fine_tune(
        tracked, train, load_examples(DataSpec(str(data_dir / "dev.tsv"))), config, progress=False
    )
    assert report.train_examples == 40 and report.steps == 3 and 0 <= report.eval_accuracy <= 1
    assert (model.bert.encoder.layer[0].output.dense.weight == frozen_before).all()
    assert not (model.bert.encoder.layer[2].output.dense.weight == tracked_before).all()
    card = save_classifier(tmp_path / "out", tracked, str(tiny_dir), train, config, report, spec)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert json.loads((tmp_path / "out" / "card.json").read_text())["data_spec"]["source"] == spec.source
    assert model_fingerprint(load_classifier(str(tmp_path / "out"))[0]) == card["model_fingerprint"]


def refused_simulation(model_dir, index_dir, gradient_index_dir, engine) -> None:
    """The service turns task=simulatability away for a LoRA adapter with a 422 naming ``evaluate.task``
    and the fix (its simulator trains the tracked layers, and an adapter has none), before any job starts."""
    from fastapi.testclient import TestClient

    from clients import BadRequestError, InfluenceClient, evaluate_request
    from service.app import create_app
    from service.core import InfluenceService
    from service.settings import Settings

    settings = Settings(
        _env_file=None,
        model_dir=model_dir,
        index_dir=index_dir,
        gradient_index_dir=gradient_index_dir,
        workers=1,
    )
    service = InfluenceService(settings, engine)
    try:
        with TestClient(create_app(settings, service)) as http:
            client = InfluenceClient(http=http, backoff_s=0.01)
            request = evaluate_request("simulatability", ["a good fun film"], top=2, simulator_rows=20)
            with pytest.raises(BadRequestError, match="serve the merged model") as refused:
                client.submit_job(request, kind="evaluate")
            assert refused.value.status == 422 and refused.value.detail["field"] == "evaluate.task"
            assert client.jobs().jobs == []  # refused before a job was queued
    finally:
        service.shutdown()


def test_train_config_validation():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=0)


LORA_FAMILIES = {"bert": "query,value", "qwen2": "q_proj,v_proj"}


@pytest.mark.parametrize("family", sorted(LORA_FAMILIES))
def test_train_lora_saves_an_adapter_that_loads_with_its_card_labels_and_answers(
    family, tiny_dir, data_dir, tmp_path
):
    """``influence train --lora``: a LoRA adapter over the base (peft, the head trained whole beside it),
    saved as an adapter folder with its card; it loads over its base with the same weights (the card's
    fingerprint), its label names, and exactly peft's trainable parameters tracked; both indexes over it
    answer a gradient and a fastif query; it is explained (saliency) and attacked like any model."""
    from peft import get_peft_model_state_dict
    from typer.testing import CliRunner

    from cli import app
    from engine.builds import build_gradient_index, build_knn_index
    from engine.pipeline import answer_query, local_engine
    from interpret.attacks import hotflip
    from interpret.checkpoint import load_checkpoint
    from interpret.classifier import TextClassifier
    from interpret.config import GradientIndexConfig, LissaConfig, QueryConfig
    from interpret.models import ADAPTER_CONFIG, is_adapter, label_names
    from interpret.saliency import saliency

    base = tiny_dir
    if family != "bert":  # a decoder base, saved as any trainer leaves one
        from interpret.training import keep_label_names
        from tests.families import family_classifier

        model, tokenizer = family_classifier(family, dtype=torch.float32)
        base = tmp_path / "base"
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)
        keep_label_names(base, model.config)
    out = tmp_path / "adapter"
    arguments = [
        "train",
        "--base-model",
        str(base),
        "--train",
        str(data_dir / "train.tsv"),
        "--out",
        str(out),
    ]
    arguments += ["--eval", str(data_dir / "dev.tsv"), "--epochs", "2", "--batch-size", "16"]
    arguments += ["--learning-rate", "1e-2", "--label-names", "neg,pos"]
    result = CliRunner().invoke(app, [*arguments, "--lora", f"r=4,alpha=8,targets={LORA_FAMILIES[family]}"])
    assert result.exit_code == 0, result.output
    adapter = json.loads((out / ADAPTER_CONFIG).read_text())
    assert (
        adapter["r"] == 4
        and adapter["lora_alpha"] == 8
        and set(adapter["target_modules"]) == set(LORA_FAMILIES[family].split(","))
    )
    assert adapter["base_model_name_or_path"] == str(base.resolve())
    card = json.loads((out / "card.json").read_text())
    assert card["tracked_layers"] == "lora"
    recorded = {"type": "LORA", "base": str(base.resolve()), "r": 4, "alpha": 8}
    assert {k: card["adapter"][k] for k in recorded} == recorded  # the card names the adapter and its base
    assert card["adapter"]["targets"] == sorted(LORA_FAMILIES[family].split(","))
    assert card["adapter"]["modules_to_save"]

    checkpoint = load_checkpoint(out)
    tracked = checkpoint.tracked
    assert checkpoint.fingerprint == card["model_fingerprint"]  # the same weights, loaded over the base
    assert label_names(tracked.model.config) == ["neg", "pos"]
    saved = get_peft_model_state_dict(tracked.model)  # what peft saved: the adapter and the head
    assert tracked.num_parameters == sum(t.numel() for t in saved.values())
    if family == "bert":  # 3 layers x (query, value) x (A 4x16 + B 16x4), and the head (2x16 + 2)
        assert tracked.num_parameters == 3 * 2 * (4 * 16 + 16 * 4) + 34
    assert all(is_adapter(name) for name in tracked.parameter_names)

    gradient = build_gradient_index(local_engine(out), tmp_path / "grad", GradientIndexConfig(rank=4))
    knn = build_knn_index(local_engine(out), tmp_path / "knn")
    assert gradient.adapter == knn.adapter == card["adapter"]  # every manifest names the adapter too
    engine = local_engine(out, index_dir=tmp_path / "knn", gradient_index_dir=tmp_path / "grad")
    lissa = LissaConfig(recursion_depth=20, batch_size=4, damping=0.1)
    for query in (QueryConfig(top=3), QueryConfig(method="fastif", k=40, top=3, lissa=lissa)):
        answer = answer_query(engine, "a good fun film", config=query)
        assert len(answer.helpful) + len(answer.harmful) > 0 and np.isfinite(answer.candidate_scores).all()
    assert answer.method == "fastif" and answer.lissa is not None
    classifier = TextClassifier.of(engine.backend.explainer.tracked)  # explained and attacked like any model
    for method in ("simple_gradient", "integrated_gradients"):
        assert np.isfinite(saliency(classifier, "a good fun film", method).scores).all(), method
    assert hotflip(classifier, "a good fun film", max_flips=1).final
    if family == "bert":  # served, it refuses the one task an adapter cannot run, by name
        refused_simulation(out, tmp_path / "knn", tmp_path / "grad", engine)

    for bad, flag in ((["--lora", "r=4,oops"], "--lora"), (["--lora", "r=0"], "--lora")):
        refused = CliRunner().invoke(app, [*arguments, "--out", str(tmp_path / "x"), *bad])
        assert refused.exit_code == 2 and flag in refused.output, refused.output
    both = CliRunner().invoke(app, [*arguments, "--lora", "r=4", "--tracked-layers", "1"])
    assert both.exit_code == 2 and "own tracked set" in both.output
