"""What every saliency method shares: the encoded input, the forward from embeddings, the output type.

The explained function is ``f(x) = log p(label | x)`` (the negative loss AllenNLP differentiates), so a
positive raw score supports the label; normalised scores (absolute values summing to 1) are the same
whichever of the two is used. Gradients are taken with respect to the word-piece embeddings (the output
of the word embedding table, before position and segment embeddings are added), as AllenNLP does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from interpret.classifier import TextClassifier
from interpret.config import SaliencyMethod, check_label


@dataclass
class EncodedText:
    """One input as word-pieces: ids, masks, the tokens, each token's word and the words themselves."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    tokens: list[str]
    word_ids: list[int | None]
    words: list[str]
    special: list[bool]
    word_spans: list[tuple[int, int, int]]
    """Per word: (sequence 0 or 1, start, end) character offsets in ``text`` or ``pair``."""
    text: str
    pair: str | None
    pieces: list[str] = field(default_factory=list)
    """Each token as the text it covers (no ``##`` / ``Ġ`` / ``▁`` markers); special tokens as themselves."""

    def without_words(self, removed: set[int]) -> tuple[str, str | None]:
        """The input with those words deleted (whitespace collapsed), as LIME's text sampler does."""
        sources = [list(self.text), list(self.pair) if self.pair is not None else []]
        for word in removed:
            sequence, start, end = self.word_spans[word]
            sources[sequence][start:end] = [""] * (end - start)
        text, pair = ("".join(chars) for chars in sources)
        return " ".join(text.split()), (" ".join(pair.split()) if self.pair is not None else None)

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class SaliencyMap:
    """Scores per word-piece: ``raw_scores`` signed (positive supports ``label``), ``scores`` normalised."""

    method: SaliencyMethod
    tokens: list[str]
    word_ids: list[int | None]
    raw_scores: list[float]
    scores: list[float]
    label: int
    probabilities: list[float]
    extra: dict[str, float | str] = field(default_factory=dict)
    pieces: list[str] = field(default_factory=list)
    """Each token as the text it covers (``EncodedText.pieces``): what a person reads."""
    warnings: list[str] = field(default_factory=list)
    """What makes this map less trustworthy than it looks (an incomplete integrated-gradients path)."""


def encode_text(classifier: TextClassifier, text: str, pair: str | None = None) -> EncodedText:
    """Tokenise one input; words of the second sentence are numbered after those of the first."""
    encoding = classifier.tokenizer(
        text, pair, truncation=True, max_length=classifier.max_length, return_tensors="pt"
    )
    sequence_ids = encoding.sequence_ids(0)
    raw_words = encoding.word_ids(0)
    first_words = 1 + max(
        (w for w, s in zip(raw_words, sequence_ids, strict=True) if s == 0 and w is not None), default=-1
    )
    word_ids: list[int | None] = [
        None if w is None else (w if s == 0 else w + first_words)
        for w, s in zip(raw_words, sequence_ids, strict=True)
    ]
    input_ids = encoding["input_ids"].to(classifier.device)
    tokens = classifier.tokens(encoding["input_ids"][0].tolist())
    words, spans = _words(encoding, word_ids, text, pair)
    pieces = _pieces(encoding, tokens, text, pair)
    return EncodedText(
        input_ids,
        encoding["attention_mask"].to(classifier.device),
        encoding["token_type_ids"].to(classifier.device) if "token_type_ids" in encoding else None,
        tokens,
        word_ids,
        words,
        [w is None for w in word_ids],
        spans,
        text,
        pair,
        pieces,
    )


def _pieces(encoding, tokens: list[str], text: str, pair: str | None) -> list[str]:
    """The characters each token covers in its own sentence, each character given to one token only and
    surrounding spaces dropped (byte-level offsets include a word's leading space, and SentencePiece's lone
    ``▁`` overlaps the next piece's offsets: a marker alone covers nothing). A special token has no
    characters: it is shown as itself."""
    out, taken = [], {0: 0, 1: 0}
    for position, token in enumerate(tokens):
        sequence, span = encoding.sequence_ids(0)[position], encoding.token_to_chars(0, position)
        if sequence is None or span is None:
            out.append(token)
            continue
        if not token.replace("▁", "").replace("Ġ", "").removeprefix("##").strip():
            out.append("")
            continue
        start = max(span.start, taken[sequence])
        taken[sequence] = max(span.end, taken[sequence])
        out.append(_source(text, pair, sequence)[start : span.end].strip())
    return out


def _source(text: str, pair: str | None, sequence: int) -> str:
    """The text a piece of sequence ``sequence`` (0: the text, 1: the pair) was cut from."""
    if sequence == 0:
        return text
    assert pair is not None, "a piece of the second sequence without a pair"
    return pair


def _words(encoding, word_ids: list[int | None], text: str, pair: str | None):
    """Each word's surface text and span, from the character offsets of its first and last pieces."""
    count = 1 + max((w for w in word_ids if w is not None), default=-1)
    spans: dict[int, list[int]] = {}
    for position, word in enumerate(word_ids):
        if word is not None:
            spans.setdefault(word, []).append(position)
    words, word_spans = [], []
    for word in range(count):
        positions = spans[word]
        sequence = encoding.sequence_ids(0)[positions[0]]
        source = _source(text, pair, sequence)
        start = encoding.token_to_chars(0, positions[0]).start
        end = encoding.token_to_chars(0, positions[-1]).end
        words.append(source[start:end])
        word_spans.append((sequence, start, end))
    return words, word_spans


def embed_tokens(classifier: TextClassifier, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return classifier.embeddings(input_ids)


def log_probabilities(
    classifier: TextClassifier,
    embeddings: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, C]`` log-probabilities from word-piece embeddings (the function every method explains).

    Masks, segment ids and token ids of batch 1 are broadcast to the batch (Captum expands inputs by
    steps/samples); the ids only tell an encoder-decoder where each row ends (``TextClassifier.logits``).
    """
    batch = embeddings.shape[0]
    kwargs = {"inputs_embeds": embeddings, "attention_mask": attention_mask.expand(batch, -1)}
    for name, value in (("token_type_ids", token_type_ids), ("input_ids", input_ids)):
        if value is not None:
            kwargs[name] = value.expand(batch, -1)
    return torch.log_softmax(classifier.logits(**kwargs), dim=-1)


def forward_arguments(encoded: EncodedText) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """What :func:`log_probabilities` takes beside the embeddings (Captum's ``additional_forward_args``)."""
    return encoded.attention_mask, encoded.token_type_ids, encoded.input_ids


def predict_probabilities(classifier: TextClassifier, encoded: EncodedText) -> np.ndarray:
    embeddings = embed_tokens(classifier, encoded.input_ids)
    with torch.no_grad():
        return (
            log_probabilities(classifier, embeddings, *forward_arguments(encoded))
            .exp()[0]
            .double()
            .cpu()
            .numpy()
        )


def explained_label(classifier: TextClassifier, probabilities: np.ndarray, label: int | None) -> int:
    if label is None:
        return int(probabilities.argmax())
    check_label(label, classifier.num_labels)
    return int(label)


def token_map(
    method: SaliencyMethod,
    encoded: EncodedText,
    attributions: torch.Tensor,
    label: int,
    probabilities: np.ndarray,
    extra: Mapping[str, float | str] | None = None,
    warnings: list[str] | None = None,
) -> SaliencyMap:
    """From per-dimension attributions ``[S, D]``: raw = their sum per token (signed), normalised =
    ``||a_t||_1 / sum_t ||a_t||_1`` (the issue's definition; AllenNLP normalises ``|sum_d a_td|``)."""
    attributions = attributions.detach()
    raw = attributions.sum(dim=-1).double().cpu().numpy()
    magnitude = attributions.abs().sum(dim=-1).double().cpu().numpy()
    total = magnitude.sum()
    scores = magnitude / total if total > 0 else magnitude
    return SaliencyMap(
        method,
        encoded.tokens,
        encoded.word_ids,
        raw.tolist(),
        scores.tolist(),
        label,
        probabilities.tolist(),
        dict(extra or {}),
        encoded.pieces,
        warnings or [],
    )


def word_map(
    method: SaliencyMethod,
    encoded: EncodedText,
    word_scores: np.ndarray,
    label: int,
    probabilities: np.ndarray,
    extra: Mapping[str, float | str] | None = None,
) -> SaliencyMap:
    """From per-word scores: each word's score is shared equally by its word-pieces (specials get 0), so
    token scores sum to word scores; normalised = ``|s_w| / sum_w |s_w|``, shared the same way."""
    total = np.abs(word_scores).sum()
    normalised = np.abs(word_scores) / total if total > 0 else np.zeros_like(word_scores)
    pieces = np.bincount([w for w in encoded.word_ids if w is not None], minlength=len(word_scores))
    raw, scores = [], []
    for word in encoded.word_ids:
        raw.append(0.0 if word is None else float(word_scores[word] / pieces[word]))
        scores.append(0.0 if word is None else float(normalised[word] / pieces[word]))
    return SaliencyMap(
        method,
        encoded.tokens,
        encoded.word_ids,
        raw,
        scores,
        label,
        probabilities.tolist(),
        dict(extra or {}),
        encoded.pieces,
    )
