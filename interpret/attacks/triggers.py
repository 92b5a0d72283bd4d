"""Universal adversarial triggers (Wallace et al. 2019): one short word-piece sequence that, prepended to
every input of a class, flips as many predictions as possible.

Start from ``num_tokens`` copies of "the"; each iteration takes a batch of the attacked inputs, averages
the gradient of the loss at the trigger embeddings over the batch, proposes for every trigger position
the ``candidates`` vocabulary entries with the best first-order change (HotFlip's step), evaluates every
single replacement on the batch (the real loss, not the approximation), and keeps the best if it helps.
Untargeted: raise the loss of the inputs' true label; with ``target``: lower the loss of the target.
The trigger goes right after the tokenizer's leading special tokens (``[CLS]`` / ``<s>``; a decoder's
tokenizer often has none), and the attacked texts are encoded as if a space preceded them, so that with a
byte-level BPE their first word starts a word (``Ġ``) instead of gluing onto the trigger.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interpret.attacks.base import (
    DEFAULT_IGNORE_TOKENS,
    AttackResult,
    WordEdit,
    candidate_vocabulary,
    encode_ids,
    loss_gradients,
    losses,
    probabilities,
    tokens_of,
)
from interpret.cancellation import checkpoint
from interpret.classifier import TextClassifier
from interpret.config import TRIGGER_BATCH_SIZE, TriggerParams


@dataclass
class TriggerResult:
    trigger: list[str]
    trigger_ids: list[int]
    loss_trace: list[float]
    """Mean attack loss on the iteration's batch after each iteration (lower = stronger trigger)."""


def trigger_slot(classifier: TextClassifier) -> int:
    """Where a trigger goes: after the special tokens the tokenizer puts before a text."""
    ids = encode_ids(classifier, "the")["input_ids"].tolist()
    special = set(classifier.tokenizer.all_special_ids)
    return next((i for i, token in enumerate(ids) if token not in special), len(ids))


def encode_for_trigger(classifier: TextClassifier, text: str) -> dict[str, torch.Tensor]:
    """A text's ids as they follow a trigger: encoded after a space (``Ġthe``, not ``the``)."""
    return encode_ids(classifier, " " + text.lstrip())


def with_trigger(row: dict[str, torch.Tensor], trigger: torch.Tensor, slot: int) -> dict[str, torch.Tensor]:
    """Insert the trigger at ``slot``; segment ids of the inserted pieces copy the first piece's."""
    ids = row["input_ids"]
    out = {"input_ids": torch.cat([ids[:slot], trigger, ids[slot:]])}
    if "token_type_ids" in row:
        types = row["token_type_ids"]
        out["token_type_ids"] = torch.cat([types[:slot], types[:1].expand(len(trigger)), types[slot:]])
    return out


def _attack_loss(classifier, rows, trigger, slot: int, labels, target) -> float:
    """The attack's objective on ``rows`` with ``trigger`` at ``slot`` (lower is better for the attacker)."""
    triggered = [with_trigger(r, trigger, slot) for r in rows]
    goal = [target] * len(rows) if target is not None else labels
    mean = float(losses(classifier, triggered, goal).mean())
    return mean if target is not None else -mean


def search_trigger(
    classifier: TextClassifier,
    texts: list[str],
    labels: list[int],
    target: int | None = None,
    num_tokens: int = TriggerParams.default("num_tokens"),
    iterations: int = TriggerParams.default("iterations"),
    candidates: int = TriggerParams.default("candidates"),
    batch_size: int = TRIGGER_BATCH_SIZE,
    seed: int = TriggerParams.default("seed"),
    ignore_tokens: tuple[str, ...] = DEFAULT_IGNORE_TOKENS,
) -> TriggerResult:
    if not texts or len(texts) != len(labels):
        raise ValueError("texts and labels must be non-empty and of equal length")
    rng = np.random.default_rng(seed)
    rows = [encode_for_trigger(classifier, t) for t in texts]
    allowed = candidate_vocabulary(classifier, tuple(ignore_tokens))
    matrix = classifier.embeddings.weight.detach()
    start_id = classifier.tokenizer.convert_tokens_to_ids(classifier.tokenizer.tokenize(" the")[0])
    assert isinstance(start_id, int)  # one token in, one id out
    if not allowed[start_id]:  # "the" is not one piece here: start from the first word-start entry
        start_id = int(allowed.nonzero()[0])
    trigger = torch.full((num_tokens,), start_id, device=classifier.device)
    slot = trigger_slot(classifier)
    trace = []
    for _ in range(iterations):
        chosen = rng.choice(len(rows), size=min(batch_size, len(rows)), replace=False)
        batch, batch_labels = [rows[i] for i in chosen], [labels[i] for i in chosen]
        trigger, loss = _improve(
            classifier, batch, batch_labels, trigger, slot, target, matrix, allowed, candidates
        )
        trace.append(loss)
    tokens = classifier.tokens(trigger.tolist())
    return TriggerResult(tokens, trigger.tolist(), trace)


def _improve(classifier, batch, labels, trigger, slot, target, matrix, allowed, candidates):
    goal = [target] * len(batch) if target is not None else labels
    _, gradient, _ = loss_gradients(classifier, [with_trigger(r, trigger, slot) for r in batch], goal)
    trigger_gradient = gradient[:, slot : slot + len(trigger)].mean(dim=0)  # [T, D], averaged over the batch
    best_loss = _attack_loss(classifier, batch, trigger, slot, labels, target)
    best = trigger
    sign = -1.0 if target is not None else 1.0  # targeted: lower the target loss; else raise the true one
    for position in range(len(trigger)):
        change = sign * ((matrix - matrix[trigger[position]]) @ trigger_gradient[position])
        change = torch.where(allowed, change, torch.tensor(float("-inf"), device=change.device))
        for token in torch.topk(change, min(candidates, int(allowed.sum()))).indices.tolist():
            checkpoint()  # each candidate costs a forward pass over the batch
            proposal = trigger.clone()
            proposal[position] = token
            loss = _attack_loss(classifier, batch, proposal, slot, labels, target)
            if loss < best_loss:
                best, best_loss = proposal, loss
    return best, best_loss


def flip_rate(
    classifier: TextClassifier, texts: list[str], labels: list[int], trigger_ids: list[int] | None
) -> float:
    """Share of ``texts`` predicted other than their label (with the trigger prepended when given)."""
    if trigger_ids is None:
        rows = [encode_ids(classifier, t) for t in texts]
    else:
        trigger, slot = torch.tensor(trigger_ids, device=classifier.device), trigger_slot(classifier)
        rows = [with_trigger(encode_for_trigger(classifier, t), trigger, slot) for t in texts]
    predicted = probabilities(classifier, rows).argmax(axis=1)
    return float(np.mean(predicted != np.asarray(labels)))


def trigger_attack(
    classifier: TextClassifier,
    text: str,
    pair: str | None,
    label: int | None,
    examples,
    target: int | None = None,
    num_tokens: int = TriggerParams.default("num_tokens"),
    iterations: int = TriggerParams.default("iterations"),
    candidates: int = TriggerParams.default("candidates"),
    num_examples: int = TriggerParams.default("num_examples"),
    held_out: int = TriggerParams.default("held_out"),
    seed: int = TriggerParams.default("seed"),
) -> AttackResult:
    """Search a trigger on training ``examples`` of the attacked class (``label``, default: the prediction
    for ``text``), report its error rate on other, held-out examples of that class, apply it to ``text``."""
    if pair is not None:
        raise ValueError("triggers are searched over single sentences; text_pair is not supported")
    TriggerParams(  # the one check of the values
        num_tokens=num_tokens,
        iterations=iterations,
        candidates=candidates,
        num_examples=num_examples,
        held_out=held_out,
        seed=seed,
    )
    row = encode_ids(classifier, text)
    before = probabilities(classifier, [row])[0]
    label = int(before.argmax()) if label is None else label
    same_class = np.flatnonzero(np.asarray(examples.labels) == label)
    if len(same_class) < 2:
        raise ValueError(
            f"the training data has {len(same_class)} examples of label {label}; need at least 2"
        )
    order = np.random.default_rng(seed).permutation(same_class)
    search_rows = order[: min(num_examples, len(order) // 2)]
    held_rows = order[len(search_rows) : len(search_rows) + held_out]
    search_texts = [examples.texts[i] for i in search_rows]
    found = search_trigger(
        classifier,
        search_texts,
        [label] * len(search_texts),
        target,
        num_tokens,
        iterations,
        candidates,
        seed=seed,
    )
    held_texts = [examples.texts[i] for i in held_rows]
    trigger = torch.tensor(found.trigger_ids, device=classifier.device)
    slot = trigger_slot(classifier)
    attacked = with_trigger(encode_for_trigger(classifier, text), trigger, slot)
    after = probabilities(classifier, [attacked])[0]
    original, final = tokens_of(classifier, row["input_ids"]), tokens_of(classifier, attacked["input_ids"])
    edits = [WordEdit(slot + i, None, token) for i, token in enumerate(found.trigger)]
    reached = int(after.argmax()) == target if target is not None else int(after.argmax()) != label
    extra: dict[str, float | str] = {
        "trigger": " ".join(found.trigger),
        "held_out_examples": float(len(held_texts)),
        "held_out_error_rate_before": flip_rate(classifier, held_texts, [label] * len(held_texts), None),
        "held_out_error_rate_after": flip_rate(
            classifier, held_texts, [label] * len(held_texts), found.trigger_ids
        ),
    }
    return AttackResult(
        "triggers", original, [final], before.tolist(), [after.tolist()], edits, reached, extra
    )
