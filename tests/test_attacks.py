"""Attacks on the tiny trained model: HotFlip flips labels, Input Reduction keeps them, triggers work."""

from __future__ import annotations

import numpy as np
import pytest

from interpret.attacks import flip_rate, hotflip, input_reduction, search_trigger
from interpret.data import DataSpec, load_examples
from interpret.saliency import TextClassifier
from interpret.saliency.black_box import batch_probabilities


@pytest.fixture(scope="module")
def classifier(tiny_dir) -> TextClassifier:
    from interpret.models import load_classifier

    model, tokenizer = load_classifier(str(tiny_dir))
    return TextClassifier(model, tokenizer, max_length=32)


@pytest.fixture(scope="module")
def dev(data_dir):
    return load_examples(DataSpec(str(data_dir / "dev.tsv")))


def correctly_classified(classifier, examples, limit: int = 20) -> list[int]:
    predicted = batch_probabilities(classifier, examples.texts).argmax(axis=1)
    return [i for i in range(len(examples)) if predicted[i] == examples.labels[i]][:limit]


def test_hotflip_changes_most_labels_and_never_touches_ignored_tokens(classifier, dev):
    rows = correctly_classified(classifier, dev)
    results = [hotflip(classifier, dev.texts[i], ignore_tokens=("[UNK]", "[PAD]", "movie")) for i in rows]
    assert np.mean([r.success for r in results]) >= 0.7
    for row, result in zip(rows, results, strict=True):
        final = result.final[0]
        assert len(final) == len(result.original) and final[0] == "[CLS]" and final[-1] == "[SEP]"
        for position, (before, after) in enumerate(zip(result.original, final, strict=True)):
            if before in ("[CLS]", "[SEP]", "movie"):
                assert after == before, (dev.texts[row], position)
        assert {e.position for e in result.edits} == {
            p for p, (a, b) in enumerate(zip(result.original, final, strict=True)) if a != b
        }
        after = np.argmax(result.outputs_after[0])
        assert result.success == (after != np.argmax(result.outputs_before))


def test_hotflip_skips_unknown_words_and_reaches_a_target(classifier):
    result = hotflip(classifier, "the zebra plot was good and fun", target=0)
    assert "[UNK]" in result.original
    unknown = result.original.index("[UNK]")
    assert result.final[0][unknown] == "[UNK]"
    assert result.success and np.argmax(result.outputs_after[0]) == 0  # the target reached


def test_input_reduction_keeps_the_label_and_never_grows(classifier, dev):
    for row in correctly_classified(classifier, dev, limit=10):
        result = input_reduction(classifier, dev.texts[row], beam_size=3)
        label = int(np.argmax(result.outputs_before))
        assert int(np.argmax(result.outputs_after[0])) == label
        reduced = result.final[0]
        assert len(reduced) <= len(result.original) and reduced[0] == "[CLS]" and reduced[-1] == "[SEP]"
        again = batch_probabilities(classifier, [" ".join(reduced[1:-1])])[0]
        assert int(np.argmax(again)) == label  # the reduced text, re-tokenised, still predicts the label
        assert len(result.edits) == len(result.original) - len(reduced)


def test_triggers_raise_the_error_rate_on_held_out_inputs(classifier, dev, train_set):
    positives = [i for i in range(len(train_set)) if train_set.labels[i] == 1]
    held_out = [i for i in range(len(dev)) if dev.labels[i] == 1]
    texts = [dev.texts[i] for i in held_out]
    trigger = search_trigger(
        classifier, [train_set.texts[i] for i in positives], [1] * len(positives), num_tokens=2, iterations=4
    )
    before = flip_rate(classifier, texts, [1] * len(texts), None)
    after = flip_rate(classifier, texts, [1] * len(texts), trigger.trigger_ids)
    assert after > before + 0.2, (trigger.trigger, before, after)
    assert len(trigger.trigger) == 2 and len(trigger.loss_trace) == 4
