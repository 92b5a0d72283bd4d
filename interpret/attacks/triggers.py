"""Universal adversarial triggers (Wallace et al. 2019): one short word-piece sequence that, prepended to
every input of a class, flips as many predictions as possible.

Start from ``num_tokens`` copies of "the"; each iteration takes a batch of the attacked inputs, averages
the gradient of the loss at the trigger embeddings over the batch, proposes for every trigger position
the ``candidates`` vocabulary entries with the best first-order change (HotFlip's step), evaluates every
single replacement on the batch (the real loss, not the approximation), and keeps the best if it helps.
Untargeted: raise the loss of the inputs' true label; with ``target``: lower the loss of the target.
The trigger goes right after the first token (``[CLS]`` / ``<s>``).
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


def with_trigger(row: dict[str, torch.Tensor], trigger: torch.Tensor) -> dict[str, torch.Tensor]:
    """Insert the trigger after the first token; segment ids of the inserted pieces copy the first's."""
    out = {"input_ids": torch.cat([row["input_ids"][:1], trigger, row["input_ids"][1:]])}
    if "token_type_ids" in row:
        types = row["token_type_ids"]
        out["token_type_ids"] = torch.cat([types[:1], types[:1].expand(len(trigger)), types[1:]])
    return out


def _attack_loss(classifier, rows, trigger, labels, target) -> float:
    """The attack's objective on ``rows`` (lower is better for the attacker)."""
    triggered = [with_trigger(r, trigger) for r in rows]
    goal = [target] * len(rows) if target is not None else labels
    mean = float(losses(classifier, triggered, goal).mean())
    return mean if target is not None else -mean


def search_trigger(
    classifier: TextClassifier,
    texts: list[str],
    labels: list[int],
    target: int | None = None,
    num_tokens: int = TriggerParams.num_tokens,
    iterations: int = TriggerParams.iterations,
    candidates: int = TriggerParams.candidates,
    batch_size: int = TRIGGER_BATCH_SIZE,
    seed: int = TriggerParams.seed,
    ignore_tokens: tuple[str, ...] = DEFAULT_IGNORE_TOKENS,
) -> TriggerResult:
    if not texts or len(texts) != len(labels):
        raise ValueError("texts and labels must be non-empty and of equal length")
    rng = np.random.default_rng(seed)
    rows = [encode_ids(classifier, t) for t in texts]
    allowed = candidate_vocabulary(classifier, tuple(ignore_tokens))
    matrix = classifier.embeddings.weight.detach()
    start_id = classifier.tokenizer.convert_tokens_to_ids(classifier.tokenizer.tokenize("the")[0])
    trigger = torch.full((num_tokens,), start_id, device=classifier.device)
    trace = []
    for _ in range(iterations):
        chosen = rng.choice(len(rows), size=min(batch_size, len(rows)), replace=False)
        batch, batch_labels = [rows[i] for i in chosen], [labels[i] for i in chosen]
        trigger, loss = _improve(
            classifier, batch, batch_labels, trigger, target, matrix, allowed, candidates
        )
        trace.append(loss)
    tokens = classifier.tokenizer.convert_ids_to_tokens(trigger.tolist())
    return TriggerResult(tokens, trigger.tolist(), trace)


def _improve(classifier, batch, labels, trigger, target, matrix, allowed, candidates):
    goal = [target] * len(batch) if target is not None else labels
    _, gradient, _ = loss_gradients(classifier, [with_trigger(r, trigger) for r in batch], goal)
    trigger_gradient = gradient[:, 1 : 1 + len(trigger)].mean(dim=0)  # [T, D], averaged over the batch
    best_loss = _attack_loss(classifier, batch, trigger, labels, target)
    best = trigger
    sign = -1.0 if target is not None else 1.0  # targeted: lower the target loss; else raise the true one
    for position in range(len(trigger)):
        change = sign * ((matrix - matrix[trigger[position]]) @ trigger_gradient[position])
        change = torch.where(allowed, change, torch.tensor(float("-inf"), device=change.device))
        for token in torch.topk(change, candidates).indices.tolist():
            checkpoint()  # each candidate costs a forward pass over the batch
            proposal = trigger.clone()
            proposal[position] = token
            loss = _attack_loss(classifier, batch, proposal, labels, target)
            if loss < best_loss:
                best, best_loss = proposal, loss
    return best, best_loss


def flip_rate(
    classifier: TextClassifier, texts: list[str], labels: list[int], trigger_ids: list[int] | None
) -> float:
    """Share of ``texts`` predicted other than their label (with the trigger prepended when given)."""
    rows = [encode_ids(classifier, t) for t in texts]
    if trigger_ids is not None:
        trigger = torch.tensor(trigger_ids, device=classifier.device)
        rows = [with_trigger(r, trigger) for r in rows]
    predicted = probabilities(classifier, rows).argmax(axis=1)
    return float(np.mean(predicted != np.asarray(labels)))


def trigger_attack(
    classifier: TextClassifier,
    text: str,
    pair: str | None,
    label: int | None,
    examples,
    target: int | None = None,
    num_tokens: int = TriggerParams.num_tokens,
    iterations: int = TriggerParams.iterations,
    candidates: int = TriggerParams.candidates,
    num_examples: int = TriggerParams.num_examples,
    held_out: int = TriggerParams.held_out,
    seed: int = TriggerParams.seed,
) -> AttackResult:
    """Search a trigger on training ``examples`` of the attacked class (``label``, default: the prediction
    for ``text``), report its error rate on other, held-out examples of that class, apply it to ``text``."""
    if pair is not None:
        raise ValueError("triggers are searched over single sentences; text_pair is not supported")
    TriggerParams(num_tokens, iterations, candidates, num_examples, held_out, seed)  # the one check
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
    attacked = with_trigger(row, trigger)
    after = probabilities(classifier, [attacked])[0]
    original, final = tokens_of(classifier, row["input_ids"]), tokens_of(classifier, attacked["input_ids"])
    edits = [WordEdit(1 + i, None, token) for i, token in enumerate(found.trigger)]
    reached = int(after.argmax()) == target if target is not None else int(after.argmax()) != label
    extra = {
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
