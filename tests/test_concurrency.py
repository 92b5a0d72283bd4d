"""One model and one tokenizer shared by threads, as a worker's LiSSA and light threads share them."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch

from interpret.concurrency import SerializedTokenizer, lock_of, serialized
from interpret.influence import ExampleStates, LissaConfig
from interpret.influence.lissa import lissa_repetition
from interpret.influence.query import prepare_test_point
from interpret.models import TrackedModel
from interpret.saliency import TextClassifier, encode_text, saliency

BATCH = ["the movie was awful and the plot was dull", "great", "a fine film with a good cast and plot"]
SENTENCE = "the plot was dull"


def test_batch_and_single_encodes_in_two_threads_match_the_sequential_ones(tiny64):
    """Unserialised, the padded batch call and the unpadded one-sentence call reset each other's padding
    state and one of them fails ("Already borrowed", or "Unable to create tensor") or pads wrongly."""
    model, tokenizer = tiny64
    tracked = TrackedModel(model, tokenizer)
    classifier = TextClassifier(model, tokenizer, max_length=32)
    expected_batch = tracked.encode(BATCH)
    expected_ids = encode_text(classifier, SENTENCE).input_ids

    def check_batch(encoded) -> None:
        assert all(torch.equal(encoded[k], expected_batch[k]) for k in expected_batch), "batch changed"

    def check_single(encoded) -> None:
        assert torch.equal(encoded.input_ids, expected_ids), "sentence changed"

    failures = side_by_side(
        (lambda: tracked.encode(BATCH), check_batch, 4000),
        (lambda: encode_text(classifier, SENTENCE), check_single, 4000),
    )
    assert failures == []


@pytest.mark.slow  # thousands of threaded calls
def test_lissa_beside_prepare_and_saliency_gives_the_sequential_answers(tiny64, train_set):
    """Unlocked, ``functional_call`` in two threads restores each other's swapped tensors: ``v`` comes out
    wrong and the module can keep a foreign tensor as its parameter."""
    model, tokenizer = tiny64
    tracked = TrackedModel(model, tokenizer, tracked_layers=2)
    classifier = TextClassifier(model, tokenizer, max_length=32)
    parameters = dict(model.named_parameters())
    theta, train = tracked.parameters(), ExampleStates(tracked, train_set)
    config = LissaConfig(recursion_depth=10, damping=0.1, scale=10.0)
    expected_v = prepare_test_point(tracked, theta, SENTENCE, None, None).v
    expected_h = lissa_repetition(tracked, theta, expected_v, train, config, 0)[0]
    expected_map = saliency(classifier, SENTENCE, "simple_gradient").raw_scores

    def check_v(v) -> None:
        assert torch.allclose(v, expected_v, rtol=1e-10, atol=1e-12), "v changed"

    def check_h(h) -> None:
        assert torch.allclose(h, expected_h, rtol=1e-10, atol=1e-12), "s_test changed"

    def check_map(raw_scores) -> None:
        assert raw_scores == pytest.approx(expected_map, rel=1e-10, abs=1e-12), "saliency changed"

    failures = side_by_side(
        (lambda: lissa_repetition(tracked, theta, expected_v, train, config, 0)[0], check_h, 60),
        (lambda: prepare_test_point(tracked, theta, SENTENCE, None, None).v, check_v, 600),
        (lambda: saliency(classifier, SENTENCE, "simple_gradient").raw_scores, check_map, 600),
    )
    assert failures == []
    assert all(parameter is parameters[name] for name, parameter in model.named_parameters())


def side_by_side(*loops) -> list[str]:
    """Run each ``(call, check, times)`` loop on its own thread, all started together; the failures."""
    failures: list[str] = []
    start = threading.Barrier(len(loops))

    def hammer(call, check, times) -> None:
        start.wait()
        for _ in range(times):
            if failures:
                return
            try:
                check(call())
            except Exception as error:  # any failure in a thread is the finding: report it, don't lose it
                failures.append(repr(error))

    threads = [threading.Thread(target=hammer, args=loop) for loop in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def test_holders_of_one_tokenizer_share_one_lock_and_the_proxy_behaves_like_it(tiny64):
    model, tokenizer = tiny64
    tracked = TrackedModel(model, tokenizer)
    classifier = TextClassifier(model, tracked.tokenizer)
    assert isinstance(tracked.tokenizer, SerializedTokenizer)
    assert classifier.tokenizer is tracked.tokenizer  # a proxy is not wrapped twice
    assert lock_of(serialized(tokenizer).wrapped) is lock_of(tokenizer)
    proxy = serialized(tokenizer)
    assert proxy(SENTENCE)["input_ids"] == tokenizer(SENTENCE)["input_ids"]
    assert proxy.pad_token_id == tokenizer.pad_token_id
    assert proxy.all_special_ids == tokenizer.all_special_ids
    assert len(proxy) == len(tokenizer)
    ids = tokenizer(SENTENCE)["input_ids"]
    assert proxy.convert_ids_to_tokens(ids) == tokenizer.convert_ids_to_tokens(ids)
    for clone in (copy.deepcopy(proxy), pickle.loads(pickle.dumps(proxy))):
        assert clone(SENTENCE)["input_ids"] == tokenizer(SENTENCE)["input_ids"]
        assert lock_of(clone.wrapped) is not lock_of(tokenizer)  # a copy has its own state
