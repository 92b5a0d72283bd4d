"""Saliency maps on the tiny trained model (float64): exact gradients, completeness, seeds, brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interpret.saliency import SALIENCY_METHODS, TextClassifier, encode_text, saliency
from interpret.saliency.black_box import batch_probabilities

SENTENCE = "the movie was awful and the plot was dull"


@pytest.fixture
def classifier(tiny64) -> TextClassifier:
    model, tokenizer = tiny64
    return TextClassifier(model, tokenizer, max_length=32)


def log_p_gradient(classifier: TextClassifier, text: str, label: int, pair: str | None = None):
    """``x`` and ``d log p(label) / dx`` at the word-piece embeddings, by plain autograd."""
    encoded = classifier.tokenizer(text, pair, return_tensors="pt")
    embeddings = classifier.embeddings(encoded.pop("input_ids")).detach().requires_grad_()
    log_p = torch.log_softmax(classifier.model(inputs_embeds=embeddings, **encoded).logits, dim=-1)[0, label]
    (gradient,) = torch.autograd.grad(log_p, embeddings)
    return embeddings.detach()[0], gradient[0]


def test_vanilla_gradient_is_x_times_grad_and_sums_to_one(classifier):
    result = saliency(classifier, SENTENCE, "simple_gradient")
    x, gradient = log_p_gradient(classifier, SENTENCE, result.label)
    np.testing.assert_allclose(result.raw_scores, (x * gradient).sum(-1).numpy(), rtol=1e-10, atol=1e-14)
    magnitude = (x * gradient).abs().sum(-1).numpy()
    np.testing.assert_allclose(result.scores, magnitude / magnitude.sum(), rtol=1e-10)
    assert abs(sum(result.scores) - 1) < 1e-12 and min(result.scores) >= 0
    assert result.tokens[0] == "[CLS]" and result.word_ids[0] is None and result.word_ids[1] == 0
    assert result.label == int(np.argmax(result.probabilities))


@pytest.mark.parametrize("text", [SENTENCE, "a fine and warm story", "the cast was quite boring"])
def test_integrated_gradients_completeness_at_50_steps(classifier, text):
    result = saliency(classifier, text, "integrated_gradients", steps=50)
    assert result.extra["completeness_gap"] < 0.05
    assert sum(result.raw_scores) == pytest.approx(result.extra["sum_of_attributions"], rel=1e-9)
    assert abs(sum(result.scores) - 1) < 1e-12


def test_smoothgrad_is_seeded(classifier):
    first = saliency(classifier, SENTENCE, "smooth_gradient", num_samples=8, stdev=0.05, seed=3)
    again = saliency(classifier, SENTENCE, "smooth_gradient", num_samples=8, stdev=0.05, seed=3)
    other = saliency(classifier, SENTENCE, "smooth_gradient", num_samples=8, stdev=0.05, seed=4)
    assert first.scores == again.scores and first.scores != other.scores
    noiseless = saliency(classifier, SENTENCE, "smooth_gradient", num_samples=3, stdev=0.0)
    vanilla = saliency(classifier, SENTENCE, "simple_gradient")
    np.testing.assert_allclose(noiseless.scores, vanilla.scores, rtol=1e-10)


def test_leave_one_out_matches_a_brute_force_loop(classifier):
    result = saliency(classifier, SENTENCE, "leave_one_out")
    words = SENTENCE.split()
    full = batch_probabilities(classifier, [SENTENCE])[0, result.label]
    expected = []
    for i in range(len(words)):
        reduced = " ".join(words[:i] + words[i + 1 :])
        expected.append(full - batch_probabilities(classifier, [reduced])[0, result.label])
    encoded = encode_text(classifier, SENTENCE)
    per_word = np.zeros(len(words))
    for word, raw in zip(encoded.word_ids, result.raw_scores, strict=True):
        if word is not None:
            per_word[word] += raw
    np.testing.assert_allclose(per_word, expected, rtol=1e-8, atol=1e-12)
    assert abs(sum(result.scores) - 1) < 1e-12


def test_lime_is_seeded_and_finds_the_sentiment_word(classifier):
    text = "the movie was awful"
    first = saliency(classifier, text, "lime", num_samples=300, seed=1)
    assert first.scores == saliency(classifier, text, "lime", num_samples=300, seed=1).scores
    loo = saliency(classifier, text, "leave_one_out")
    assert np.argmax(first.scores) == np.argmax(loo.scores) == first.tokens.index("awful")
    assert 0 <= first.extra["weighted_r2"] <= 1


def test_pairs_number_the_second_sentence_after_the_first(classifier):
    encoded = encode_text(classifier, "good film", "dull plot")
    assert [w for w in encoded.word_ids if w is not None] == [0, 1, 2, 3]
    assert encoded.words == ["good", "film", "dull", "plot"]
    assert encoded.without_words({1, 2}) == ("good", "plot")
    for method in SALIENCY_METHODS:
        result = saliency(classifier, "good film", method, pair="dull plot")
        assert abs(sum(result.scores) - 1) < 1e-9 and len(result.scores) == len(encoded.tokens)


def test_bad_requests_name_the_problem(classifier):
    with pytest.raises(ValueError, match="method must be one of"):
        saliency(classifier, SENTENCE, "grad_cam")
    with pytest.raises(
        ValueError, match=r"\['stepz'\] are not parameters of saliency method 'integrated_gradients'"
    ):
        saliency(classifier, SENTENCE, "integrated_gradients", stepz=5)
    with pytest.raises(ValueError, match="label=5 is not a label of this model"):
        saliency(classifier, SENTENCE, "simple_gradient", label=5)


@pytest.mark.parametrize("family", ["bert", "gpt2", "deberta-v2"])
def test_pieces_are_the_text_each_token_covers_without_markers(family):
    """WordPiece ``##``, byte-level ``Ġ`` and SentencePiece ``▁`` are the tokenizer's, not the reader's:
    ``pieces`` are the characters each token covers, and a word's pieces join into the word."""
    from interpret.classifier import TextClassifier
    from interpret.saliency import saliency
    from tests.families import family_classifier

    classifier = TextClassifier(*family_classifier(family))
    text = "the plot was boring and fun"
    found = saliency(classifier, text, "simple_gradient")
    assert len(found.pieces) == len(found.tokens)
    assert not any(marker in piece for piece in found.pieces for marker in ("##", "Ġ", "▁"))
    words = {}
    for piece, word in zip(found.pieces, found.word_ids, strict=True):
        if word is not None:
            words[word] = words.get(word, "") + piece
    assert [words[w] for w in sorted(words)] == text.split()
