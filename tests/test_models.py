import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from interpret.models import TrackedModel, UnsupportedModelError, load_classifier, model_fingerprint

SENTENCES = ["the movie was good", "awful", "a very boring and dull plot is the story"]


@pytest.mark.parametrize("scope", [0, 1, 3, "classifier"])
def test_split_forward_equals_the_hugging_face_forward(tiny64, scope):
    model, tokenizer = tiny64
    tracked = TrackedModel(model, tokenizer, scope)
    encoded = tracked.encode(SENTENCES)
    expected = model(**encoded).logits
    got = tracked.logits(tracked.parameters(), tracked.frozen(encoded))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_sentence_pairs_use_token_types_and_match(tiny64):
    model, tokenizer = tiny64
    tracked = TrackedModel(model, tokenizer, 1)
    encoded = tracked.encode(["the plot was good", "dull"], ["the cast was bad", "fun"])
    assert encoded["token_type_ids"].max() == 1
    torch.testing.assert_close(tracked.predict_logits(encoded), model(**encoded).logits, rtol=0, atol=1e-12)


def test_features_feed_the_final_linear_layer(tiny64):
    model, tokenizer = tiny64
    tracked = TrackedModel(model, tokenizer, 2)
    encoded = tracked.encode(SENTENCES)
    torch.testing.assert_close(model.classifier(tracked.features(encoded)), model(**encoded).logits)


def test_tracked_parameter_sets(tiny64):
    model, tokenizer = tiny64
    head_only = TrackedModel(model, tokenizer, 0)
    assert set(head_only.parameter_names) == {
        n for n, _ in model.named_parameters() if "pooler" in n or "classifier" in n
    }
    classifier = TrackedModel(model, tokenizer, "classifier")
    assert classifier.parameter_names == ["classifier.weight", "classifier.bias"]
    two = TrackedModel(model, tokenizer, 2)
    assert any(n.startswith("bert.encoder.layer.1.") for n in two.parameter_names)
    assert not any(n.startswith("bert.encoder.layer.0.") for n in two.parameter_names)
    theta = two.parameters()
    assert theta.shape == (two.num_parameters,)
    torch.testing.assert_close(two.unflatten(theta)["classifier.bias"], model.classifier.bias)
    with pytest.raises(ValueError, match="tracked_layers"):
        TrackedModel(model, tokenizer, 4)


def test_a_model_without_blocks_or_head_is_named():
    """Any family is accepted (tests/test_architectures.py); a model with no list of blocks, or no linear
    layer as wide as its labels, is refused with what is missing."""

    class NoBlocks(torch.nn.Module):
        config = GPT2Config(num_labels=2)

        def __init__(self):
            super().__init__()
            self.score = torch.nn.Linear(4, 2)

    with pytest.raises(UnsupportedModelError, match="no list of blocks"):
        TrackedModel(NoBlocks(), None, 0)
    model = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10))
    model.config.num_labels = 3  # the score layer has 2 outputs
    with pytest.raises(UnsupportedModelError, match="3 outputs"):
        TrackedModel(model, None, 1)


def test_fingerprint_tracks_weights_and_survives_save_load(tiny_dir, tmp_path):
    model, tokenizer = load_classifier(str(tiny_dir))
    before = model_fingerprint(model)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    assert model_fingerprint(load_classifier(str(tmp_path))[0]) == before
    with torch.no_grad():
        model.classifier.bias[0] += 1e-3
    assert model_fingerprint(model) != before


def test_influence_tracked_lists_what_a_tracked_set_selects_and_a_miss_names_the_closest_modules(tiny_dir):
    """``influence tracked`` prints the parameters a set selects (names, shapes, counts) without building
    anything; a pattern that selects nothing is a usage error naming module names close to it."""
    import json

    from typer.testing import CliRunner

    from cli import app

    model, tokenizer = load_classifier(str(tiny_dir))
    pattern = "*.attention.output.dense"
    result = CliRunner().invoke(
        app, ["tracked", "--model", str(tiny_dir), "--tracked-modules", pattern, "--json"]
    )
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    expected = TrackedModel(model, tokenizer, f"modules:{pattern}")
    assert [row["name"] for row in listed["parameters"]] == expected.parameter_names
    assert listed["tracked"] == expected.num_parameters == sum(row["count"] for row in listed["parameters"])
    assert listed["total"] == sum(p.numel() for p in model.parameters())
    shapes = {name: list(p.shape) for name, p in model.named_parameters()}
    assert all(row["shape"] == shapes[row["name"]] for row in listed["parameters"])

    table = CliRunner().invoke(app, ["tracked", "--model", str(tiny_dir), "--tracked-layers", "classifier"])
    assert (
        table.exit_code == 0 and "classifier.weight" in table.output and "parameters tracked" in table.output
    )

    missed = CliRunner().invoke(
        app, ["tracked", "--model", str(tiny_dir), "--tracked-modules", "*.atention.dense"]
    )
    assert missed.exit_code == 2 and "--tracked-modules" in missed.output
    assert "closest module names" in missed.output and "attention" in missed.output.split("closest")[1]
