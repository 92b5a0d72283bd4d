"""What the attacks share: word-piece ids in, gradients of the loss at the embeddings, the output type.

An attack edits word-pieces of a real tokenizer. Candidate replacements are whole-word vocabulary entries
only: no special tokens, no ``[unusedN]`` slots, no ``##`` continuation pieces, nothing in
``ignore_tokens``, so an edited input still reads as words. Positions holding special tokens or ignored
tokens are never edited.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from interpret.classifier import TextClassifier

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

    method: str
    original: list[str]
    final: list[list[str]]
    outputs_before: list[float]
    outputs_after: list[list[float]]
    edits: list[WordEdit]
    success: bool
    extra: dict[str, float | str] = field(default_factory=dict)


def tokens_of(classifier: TextClassifier, ids: torch.Tensor) -> list[str]:
    return classifier.tokenizer.convert_ids_to_tokens(ids.tolist())


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
    embeddings = classifier.embeddings(batch.pop("input_ids")).detach().requires_grad_()
    logits = classifier.logits(inputs_embeds=embeddings, **batch)
    losses = F.cross_entropy(logits, torch.tensor(labels, device=classifier.device), reduction="none")
    (gradient,) = torch.autograd.grad(losses.sum(), embeddings)
    return losses.detach(), gradient, embeddings.detach()


def candidate_vocabulary(classifier: TextClassifier, ignore_tokens: tuple[str, ...]) -> torch.Tensor:
    """Boolean ``[V]``: ids an attack may insert (whole words, not special, not ignored)."""
    tokenizer = classifier.tokenizer
    vocab_size = classifier.embeddings.num_embeddings
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    for token_id in tokenizer.all_special_ids:
        allowed[token_id] = False
    vocab = tokenizer.get_vocab()
    # Byte-level BPE / SentencePiece mark word starts ("Ġthe", "▁the"); WordPiece marks continuations ("##s").
    marker = next((m for m in ("Ġ", "▁") if f"{m}the" in vocab), None)
    for token, token_id in vocab.items():
        if token_id >= vocab_size:
            continue
        bracketed = token.startswith(("[", "<")) and token.endswith(("]", ">"))
        continuation = not token.startswith(marker) if marker else token.startswith("##")
        if continuation or bracketed or token in ignore_tokens or not token.strip("Ġ▁"):
            allowed[token_id] = False
    return allowed.to(classifier.device)


def editable_positions(
    classifier: TextClassifier, ids: torch.Tensor, ignore_tokens: tuple[str, ...]
) -> list[int]:
    """Positions that are neither special tokens nor in ``ignore_tokens``."""
    special = set(classifier.tokenizer.all_special_ids)
    tokens = tokens_of(classifier, ids)
    return [
        i
        for i, (t, tid) in enumerate(zip(tokens, ids.tolist(), strict=True))
        if tid not in special and t not in ignore_tokens
    ]


def first_order_scores(
    embedding_matrix: torch.Tensor, current: torch.Tensor, gradient: torch.Tensor
) -> torch.Tensor:
    """``(E_v - e) . g`` for every vocabulary entry ``v``: the first-order change of the loss (HotFlip)."""
    return (embedding_matrix - current) @ gradient
