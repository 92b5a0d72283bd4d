import json

import numpy as np
import pytest

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


def test_train_config_validation():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=0)
