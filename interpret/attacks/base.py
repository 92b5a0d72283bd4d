"""What the attacks share: word-piece ids in, gradients of the loss at the embeddings, the output type.

An attack edits whole words of a real tokenizer, whatever its kind: WordPiece (``##`` marks a
continuation), byte-level BPE (``Ġ`` marks a word start: GPT-2, RoBERTa, Qwen2) or SentencePiece (``▁``
marks a word start: DeBERTa-v3, ALBERT, XLM-R, Llama). The kind is read from the tokenizer's own
pre-tokenizer (:func:`word_start_rule`). The rules:

* a word is the tokenizer's own word (its ``word_ids``): an edit replaces or removes all of its pieces, so
  no edit ever splits a word;
* a replacement is one vocabulary entry that starts a word: no special tokens, no ``[unusedN]`` or
  ``<...>`` slots, no continuation pieces, nothing in ``ignore_tokens``, so an edited input still reads as
  words;
* special tokens and words holding an ignored token are never edited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from interpret.classifier import TextClassifier
from interpret.config import AttackMethod

DEFAULT_IGNORE_TOKENS = ("[UNK]", "[PAD]", "<unk>", "<pad>")


@dataclass
class WordEdit:
    """One change: ``position`` is the word-piece index; ``before``/``after`` are pieces (None: none)."""

    position: int
    before: str | None
    after: str | None


@dataclass
class AttackResult:
    """AllenNLP's shape: ``original`` tokens, ``final`` token lists, model outputs before and after."""

    method: AttackMethod
    original: list[str]
    final: list[list[str]]
    outputs_before: list[float]
    outputs_after: list[list[float]]
    edits: list[WordEdit]
    success: bool
    extra: dict[str, float | str] = field(default_factory=dict)


def tokens_of(classifier: TextClassifier, ids: torch.Tensor) -> list[str]:
    return classifier.tokens(ids.tolist())


def encode_ids(classifier: TextClassifier, text: str, pair: str | None = None) -> dict[str, torch.Tensor]:
    """``{"input_ids": [S], "token_type_ids": [S]?}`` of one input (no batch dimension)."""
    encoded = classifier.tokenizer(
        text, pair, truncation=True, max_length=classifier.max_length, return_tensors="pt"
    )
    return {k: v[0].to(classifier.device) for k, v in encoded.items() if k in ("input_ids", "token_type_ids")}


def _batch(classifier: TextClassifier, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad one-input id dicts into a batch with an attention mask."""
    width = max(len(r["input_ids"]) for r in rows)
    pad = classifier.tokenizer.pad_token_id or 0
    batch = {"input_ids": torch.full((len(rows), width), pad, device=classifier.device)}
    batch["attention_mask"] = torch.zeros((len(rows), width), dtype=torch.long, device=classifier.device)
    if "token_type_ids" in rows[0]:
        batch["token_type_ids"] = torch.zeros((len(rows), width), dtype=torch.long, device=classifier.device)
    for i, row in enumerate(rows):
        length = len(row["input_ids"])
        batch["attention_mask"][i, :length] = 1
        for key, value in row.items():
            batch[key][i, :length] = value
    return batch


def probabilities(
    classifier: TextClassifier, rows: list[dict[str, torch.Tensor]], batch_size: int = 64
) -> np.ndarray:
    """``[N, C]`` class probabilities of id rows."""
    out = []
    for start in range(0, len(rows), batch_size):
        with torch.no_grad():
            logits = classifier.logits(**_batch(classifier, rows[start : start + batch_size]))
        out.append(torch.softmax(logits.double(), dim=-1).cpu().numpy())
    return np.concatenate(out)


def losses(
    classifier: TextClassifier, rows: list[dict[str, torch.Tensor]], labels: list[int], batch_size: int = 64
) -> np.ndarray:
    """Cross-entropy of each row toward its label, without gradients."""
    out = []
    for start in range(0, len(rows), batch_size):
        with torch.no_grad():
            logits = classifier.logits(**_batch(classifier, rows[start : start + batch_size]))
        goal = torch.tensor(labels[start : start + batch_size], device=classifier.device)
        out.append(F.cross_entropy(logits, goal, reduction="none").double().cpu().numpy())
    return np.concatenate(out)


def loss_gradients(
    classifier: TextClassifier, rows: list[dict[str, torch.Tensor]], labels: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy of each row toward its label: ``(losses [N], d sum(loss) / d embeddings [N, S, D],
    embeddings [N, S, D])``; rows are independent, so each gradient is that row's own."""
    batch = _batch(classifier, rows)
    embeddings = classifier.embeddings(batch["input_ids"]).detach().requires_grad_()
    logits = classifier.logits(inputs_embeds=embeddings, **batch)
    losses = F.cross_entropy(logits, torch.tensor(labels, device=classifier.device), reduction="none")
    (gradient,) = torch.autograd.grad(losses.sum(), embeddings)
    return losses.detach(), gradient, embeddings.detach()


def word_start_rule(tokenizer) -> Callable[[str], bool]:
    """Whether a vocabulary entry can start a word, from how the tokenizer splits text: byte-level BPE
    marks a word's first piece with ``Ġ``, SentencePiece with ``▁``; WordPiece marks the other pieces
    (``##``). A tokenizer without a ``tokenizers`` backend is judged by its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        splitting = f"{backend.pre_tokenizer!r} {backend.decoder!r}"
        if "ByteLevel" in splitting:
            return lambda token: token.startswith("Ġ")
        if "▁" in splitting or "▁" in repr(backend.normalizer):
            return lambda token: token.startswith("▁")
        prefix = getattr(backend.model, "continuing_subword_prefix", None) or "##"
        return lambda token: not token.startswith(prefix)
    vocab = tokenizer.get_vocab()
    marker = next((m for m in ("Ġ", "▁") if sum(t.startswith(m) for t in vocab) > len(vocab) // 4), None)
    return (lambda token: token.startswith(marker)) if marker else (lambda token: not token.startswith("##"))


def candidate_vocabulary(classifier: TextClassifier, ignore_tokens: tuple[str, ...]) -> torch.Tensor:
    """Boolean ``[V]``: ids an attack may insert (word starts, not special, not ignored)."""
    tokenizer = classifier.tokenizer
    vocab_size = classifier.embeddings.num_embeddings
    allowed = torch.zeros(vocab_size, dtype=torch.bool)  # an embedding row with no vocabulary entry: never
    starts_word = word_start_rule(tokenizer)
    for token, token_id in tokenizer.get_vocab().items():
        if token_id >= vocab_size:
            continue
        bracketed = token.startswith(("[", "<")) and token.endswith(("]", ">"))
        usable = starts_word(token) and not bracketed and token not in ignore_tokens and token.strip("Ġ▁")
        allowed[token_id] = bool(usable)
    for token_id in tokenizer.all_special_ids:
        if token_id < vocab_size:
            allowed[token_id] = False
    return allowed.to(classifier.device)


def editable_words(
    classifier: TextClassifier, text: str, pair: str | None, ignore_tokens: tuple[str, ...]
) -> list[list[int]]:
    """The positions of each editable word of ``encode_ids(text, pair)``, in order: the tokenizer's own
    words (``word_ids``, numbered per sentence), none holding a special or an ignored token."""
    encoding = classifier.tokenizer(text, pair, truncation=True, max_length=classifier.max_length)
    ids = encoding["input_ids"]
    special = set(classifier.tokenizer.all_special_ids)
    tokens = classifier.tokens(ids)
    words: dict[tuple[int, int], list[int]] = {}
    for position, (word, sequence) in enumerate(
        zip(encoding.word_ids(), encoding.sequence_ids(), strict=True)
    ):
        if word is not None:
            words.setdefault((sequence, word), []).append(position)
    return [
        positions
        for positions in words.values()
        if not any(ids[p] in special or tokens[p] in ignore_tokens for p in positions)
    ]


def without_positions(row: dict[str, torch.Tensor], positions: list[int]) -> dict[str, torch.Tensor]:
    """The row with the pieces at ``positions`` removed."""
    keep = torch.ones(len(row["input_ids"]), dtype=torch.bool, device=row["input_ids"].device)
    keep[positions] = False
    return {k: v[keep] for k, v in row.items()}


def word_gradient_norms(gradient: torch.Tensor, words: list[list[int]]) -> list[float]:
    """``||d loss / d e_w||`` of each word: the norm over all of its pieces' embeddings."""
    return [float(gradient[positions].norm()) for positions in words]


def words_text(classifier: TextClassifier, tokens: list[str]) -> str:
    """The surface text of some pieces (a word's, for an edit's ``before``)."""
    return classifier.tokenizer.convert_tokens_to_string(tokens).strip()


def first_order_scores(
    embedding_matrix: torch.Tensor, current: torch.Tensor, gradient: torch.Tensor
) -> torch.Tensor:
    """``(E_v - e) . g`` for every vocabulary entry ``v``: the first-order change of the loss (HotFlip)."""
    return (embedding_matrix - current) @ gradient
