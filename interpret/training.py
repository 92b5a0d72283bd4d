"""Fine-tune the tracked top of a classifier (the job behind ``influence train`` and the quickstart).

Only the tracked parameters (last N layers + head, see ``interpret.models.TrackedModel``) are trained, so
influence is taken over exactly the parameters that learned from the data. The frozen bottom runs under
``no_grad``; batches are drawn from length buckets (seeded), which keeps padding low on CPU without
changing what an epoch sees. Every example of the set given is trained on: a subset is chosen where the
data is named (``DataSpec.max_examples``), so the model card names exactly the rows the model saw.

Weight decay is FastIF's (the Hugging Face Trainer's rule): AdamW's decoupled decay of 0.005 on weight
matrices only, never on biases or LayerNorm weights. It is an optimiser setting, not a term of the loss:
the influence objective (``interpret.influence.objective``) is the plain mean cross-entropy, and the
``damping`` of ``(H + damping I)^-1`` is what stands in for an L2 term there.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from interpret.data import DataSpec, ExampleSet
from interpret.models import (
    TrackedModel,
    TrackedScope,
    adapter_record,
    is_peft_model,
    label_count,
    length_sorted_batches,
    model_fingerprint,
)
from interpret.storage import atomic_directory, write_json_atomic

CARD_FILE = "card.json"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.005
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


LORA_EXAMPLE = "r=8,alpha=16,targets=query,value"


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter to train instead of the model's own weights (``peft``'s ``LoraConfig``, task
    ``SEQ_CLS``: the classification head is trained whole beside the adapter, as ``modules_to_save``)."""

    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ()
    """Module names the adapter wraps (``query``, ``value``; ``q_proj``, ``v_proj``); empty: peft's
    default for the model's family."""
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora r must be >= 1, got {self.r}")
        if not self.alpha > 0:
            raise ValueError(f"lora alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """``r=8,alpha=16,targets=query,value[,dropout=0.1]``: a bare item after ``targets=`` is one more
        target module."""
        fields: dict[str, list[str]] = {}
        key = None
        for item in (part.strip() for part in text.split(",") if part.strip()):
            if "=" in item:
                key, value = (side.strip() for side in item.split("=", 1))
                if key not in ("r", "alpha", "targets", "dropout"):
                    raise ValueError(f"lora: unknown key {key!r} in {text!r}: use r, alpha, targets, dropout")
                fields[key] = [value] if value else []
            elif key == "targets":
                fields[key].append(item)
            else:
                raise ValueError(f"lora: {item!r} in {text!r} is not key=value ({LORA_EXAMPLE})")
        try:
            return cls(
                int(fields.get("r", [cls.r])[0]),
                float(fields.get("alpha", [cls.alpha])[0]),
                tuple(fields.get("targets", [])),
                float(fields.get("dropout", [cls.dropout])[0]),
            )
        except (TypeError, ValueError, IndexError) as error:
            raise ValueError(f"lora {text!r}: {error}") from None


def with_adapter(model, spec: LoraSpec, base: str):
    """``model`` wrapped in a fresh LoRA adapter (``peft.get_peft_model``); ``base`` is recorded as the
    adapter's base (``base_model_name_or_path``), so the saved folder loads over it."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise ValueError("--lora trains a PEFT adapter: install peft (pip install peft)") from None
    model.name_or_path = base
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=spec.r,
        lora_alpha=spec.alpha,  # type: ignore[arg-type]  # declared int; PEFT divides it by r: floats work
        lora_dropout=spec.dropout,
        target_modules=list(spec.targets) or None,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:  # peft names the targets it could not find
        raise ValueError(f"--lora targets={','.join(spec.targets)}: {error}") from None


@dataclass
class TrainReport:
    train_examples: int
    eval_examples: int
    eval_accuracy: float | None
    steps: int
    final_loss: float
    seconds: float


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, sort by length inside windows of 50 batches, cut, shuffle the batches."""
    order = rng.permutation(len(lengths))
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _batch(tracked: TrackedModel, examples: ExampleSet, rows: np.ndarray):
    pairs = [examples.pairs[i] for i in rows] if examples.pairs is not None else None
    encoded = tracked.encode([examples.texts[i] for i in rows], pairs)
    return encoded, torch.as_tensor(examples.labels[rows], device=tracked.device)


@torch.no_grad()
def predict_labels(tracked: TrackedModel, examples: ExampleSet, batch_size: int = 256) -> np.ndarray:
    predictions = np.empty(len(examples), dtype=np.int64)
    for rows in length_sorted_batches(examples.texts, batch_size, examples.pairs):
        encoded, _ = _batch(tracked, examples, rows)
        predictions[rows] = tracked.predict_logits(encoded).argmax(dim=-1).cpu().numpy()
    return predictions


def accuracy(tracked: TrackedModel, examples: ExampleSet) -> float:
    return float((predict_labels(tracked, examples) == examples.labels).mean())


def decays(name: str) -> bool:
    """Whether a parameter gets weight decay: weight matrices yes; biases and LayerNorm weights no."""
    return not (name.endswith(".bias") or "LayerNorm" in name or "layer_norm" in name)


def parameter_groups(tracked: TrackedModel, weight_decay: float) -> list[dict]:
    """AdamW groups of the tracked parameters: decayed weights, and the rest without decay."""
    named = dict(tracked.model.named_parameters())
    names = tracked.parameter_names
    return [
        {"params": [named[n] for n in names if decays(n)], "weight_decay": weight_decay},
        {"params": [named[n] for n in names if not decays(n)], "weight_decay": 0.0},
    ]


def fine_tune(
    tracked: TrackedModel,
    train: ExampleSet,
    eval_set: ExampleSet | None = None,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> TrainReport:
    from transformers import get_linear_schedule_with_warmup

    config = config or TrainConfig()
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    lengths = np.array([len(t) for t in train.texts])
    batches = [b for _ in range(config.epochs) for b in bucketed_batches(lengths, config.batch_size, rng)]
    params = tracked.freeze_untracked()
    optimizer = torch.optim.AdamW(
        parameter_groups(tracked, config.weight_decay), lr=config.learning_rate, weight_decay=0.0
    )
    schedule = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * len(batches)), len(batches)
    )
    for module in tracked.tracked_layer_modules():
        module.train()  # dropout in the tracked layers; the frozen bottom stays in eval mode
    loss_value = float("nan")
    bar = tqdm(batches, desc="train", unit="batch", disable=not progress)
    for rows in bar:
        encoded, labels = _batch(tracked, train, rows)
        loss = F.cross_entropy(tracked.logits(None, tracked.frozen(encoded)), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = 0.9 * loss_value + 0.1 * loss.item() if np.isfinite(loss_value) else loss.item()
        bar.set_postfix(loss=f"{loss_value:.4f}")
    tracked.model.eval()
    for param in tracked.model.parameters():
        param.requires_grad_(False)
    eval_accuracy = accuracy(tracked, eval_set) if eval_set is not None else None
    return TrainReport(
        len(train),
        len(eval_set) if eval_set else 0,
        eval_accuracy,
        len(batches),
        loss_value,
        time.perf_counter() - start,
    )


def train_classifier(
    base_model: str,
    train: ExampleSet,
    tracked_layers: TrackedScope,
    config: TrainConfig,
    num_labels: int | None = None,
    eval_set: ExampleSet | None = None,
    max_length: int = 128,
    progress: bool = True,
    lora: LoraSpec | None = None,
) -> tuple[TrackedModel, TrainReport]:
    """Load ``base_model`` with a fresh head and fine-tune its tracked set on ``train``; with ``lora``, a
    new LoRA adapter over it instead (and the tracked set is the adapter's weights and the head).

    The global torch seed is set to ``config.seed`` before the load, because the new head is initialised
    from it: the same base, data and config give the same weights (retraining for ``influence evaluate``
    depends on it)."""
    from interpret.models import load_classifier

    torch.manual_seed(config.seed)
    labels = num_labels or max(train.num_labels, eval_set.num_labels if eval_set is not None else 0)
    model, tokenizer = load_classifier(base_model, num_labels=labels, fresh_head=True)
    if lora is not None:
        base = str(Path(base_model).resolve()) if Path(base_model).is_dir() else base_model
        model, tracked_layers = with_adapter(model, lora, base), "lora"
    tracked = TrackedModel(model, tokenizer, tracked_layers, max_length)
    report = fine_tune(tracked, train, eval_set, config, progress)
    return tracked, report


def save_classifier(
    directory: str | Path,
    tracked: TrackedModel,
    base_model: str,
    train: ExampleSet,
    config: TrainConfig,
    report: TrainReport,
    data_spec: DataSpec | None = None,
) -> dict:
    """Weights (safetensors), tokenizer and ``card.json``, written atomically."""
    card = {
        "base_model": base_model,
        "model_fingerprint": model_fingerprint(tracked.model),
        "data_source": train.source,
        "data_fingerprint": train.fingerprint,
        "data_spec": asdict(data_spec) if data_spec is not None else None,
        "tracked_layers": tracked.tracked_layers,
        "adapter": adapter_record(tracked.model),
        "max_length": tracked.max_length,
        "num_labels": label_count(tracked.model.config),
        "train_config": asdict(config),
        "report": asdict(report),
        "created_at": datetime.now(UTC).isoformat(),
    }
    with atomic_directory(directory) as scratch:
        tracked.model.save_pretrained(scratch, safe_serialization=True)
        tracked.tokenizer.save_pretrained(scratch)
        if is_peft_model(tracked.model):  # the adapter's head size and label names, read when it loads
            tracked.model.config.save_pretrained(scratch)
        keep_label_names(scratch, tracked.model.config)
        write_json_atomic(scratch / CARD_FILE, card)
    return card


def keep_label_names(folder: Path, config) -> None:
    """Keep ``id2label`` in the saved config even for two labels. transformers 5 leaves a two-label map
    out (two is its default), but some families default to another count (BART: 3), so the folder would
    load with a head of the wrong width and fail."""
    path = folder / "config.json"
    saved = json.loads(path.read_text())
    if "id2label" not in saved:
        saved["id2label"] = {str(k): v for k, v in config.id2label.items()}
        saved["label2id"] = {v: int(k) for k, v in config.id2label.items()}
        write_json_atomic(path, saved)
