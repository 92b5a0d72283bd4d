"""One tokenizer shared by threads: a worker's LiSSA thread and its saliency thread, the service's requests."""

from __future__ import annotations

import copy
import pickle
import threading

import torch

from interpret.models import TrackedModel
from interpret.saliency import TextClassifier, encode_text
from interpret.tokenization import SerializedTokenizer, serialized, tokenizer_lock

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
    failures: list[str] = []
    start = threading.Barrier(2)

    def hammer(call, check) -> None:
        start.wait()
        for _ in range(4000):
            if failures:
                return
            try:
                check(call())
            except Exception as error:  # noqa: BLE001 - any failure in the thread is the finding
                failures.append(repr(error))

    def check_batch(encoded) -> None:
        assert all(torch.equal(encoded[k], expected_batch[k]) for k in expected_batch), "batch changed"

    def check_single(encoded) -> None:
        assert torch.equal(encoded.input_ids, expected_ids), "sentence changed"

    threads = [
        threading.Thread(target=hammer, args=(lambda: tracked.encode(BATCH), check_batch)),
        threading.Thread(target=hammer, args=(lambda: encode_text(classifier, SENTENCE), check_single)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_holders_of_one_tokenizer_share_one_lock_and_the_proxy_behaves_like_it(tiny64):
    model, tokenizer = tiny64
    tracked = TrackedModel(model, tokenizer)
    classifier = TextClassifier(model, tracked.tokenizer)
    assert isinstance(tracked.tokenizer, SerializedTokenizer)
    assert classifier.tokenizer is tracked.tokenizer  # a proxy is not wrapped twice
    assert tokenizer_lock(serialized(tokenizer).wrapped) is tokenizer_lock(tokenizer)
    proxy = serialized(tokenizer)
    assert proxy(SENTENCE)["input_ids"] == tokenizer(SENTENCE)["input_ids"]
    assert proxy.pad_token_id == tokenizer.pad_token_id
    assert proxy.all_special_ids == tokenizer.all_special_ids
    assert len(proxy) == len(tokenizer)
    ids = tokenizer(SENTENCE)["input_ids"]
    assert proxy.convert_ids_to_tokens(ids) == tokenizer.convert_ids_to_tokens(ids)
    for clone in (copy.deepcopy(proxy), pickle.loads(pickle.dumps(proxy))):
        assert clone(SENTENCE)["input_ids"] == tokenizer(SENTENCE)["input_ids"]
        assert tokenizer_lock(clone.wrapped) is not tokenizer_lock(tokenizer)  # a copy has its own state
