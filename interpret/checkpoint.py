"""A saved classifier with everything a query needs: tracked model, training examples, fingerprints.

``influence train`` writes a model folder with ``card.json`` (see ``interpret.training``), and
``influence card`` writes one for a model trained elsewhere (:func:`write_card`). The local engine and
every Ray worker load a folder the same way through :func:`load_checkpoint`, so they agree on the tracked
scope, the truncation length and the training data. A folder with no card and no data given still loads:
prediction, saliency and the HotFlip / Input Reduction attacks need no training data, and whatever does
(influence, indexes, triggers) says so with :class:`TrainingDataMissingError`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from interpret.data import AddedRows, DataSpec, ExampleSet, load_examples, with_added_rows
from interpret.influence.batches import ExampleStates
from interpret.models import (
    TrackedModel,
    TrackedScope,
    adapter_record,
    label_count,
    load_classifier,
    model_fingerprint,
)
from interpret.storage import write_json_atomic
from interpret.training import CARD_FILE

DEFAULT_TRACKED_LAYERS = 2
DEFAULT_MAX_LENGTH = 128


class TrainingDataMissingError(ValueError):
    """Something that needs the training data was asked of a model loaded without it."""


def missing_data_message(model_dir: str | Path, what: str) -> str:
    """One line naming both fixes: the data on this command, or once in the folder's card."""
    return (
        f"{what} needs the training data the model was trained on, and {model_dir} has no card.json naming "
        f"it: pass it (--train FILE; INFLUENCE_TRAIN_DATA for the service), or record it once with "
        f"`influence card --model {model_dir} --train FILE`"
    )


def require_training_data(
    model_dir: str | Path, train_spec: DataSpec | None, what: str, message: str | None = None
) -> None:
    """Refuse before anything loads when ``what`` needs training data and neither the caller nor the
    folder's card names any; ``message`` replaces the default one (:func:`missing_data_message`)."""
    if train_spec is None and card_data_spec(read_card(model_dir)) is None:
        raise TrainingDataMissingError(message or missing_data_message(model_dir, what))


def read_card(model_dir: str | Path) -> dict:
    """The folder's ``card.json``, or ``{}`` for a plain Hugging Face folder."""
    path = Path(model_dir) / CARD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def card_data_spec(card: dict) -> DataSpec | None:
    return DataSpec(**card["data_spec"]) if card.get("data_spec") else None


@dataclass
class Checkpoint:
    card: dict
    tracked: TrackedModel
    examples: ExampleSet | None
    """``None`` when the model was loaded without training data."""
    train: ExampleStates | None
    fingerprint: str
    model_dir: str = ""

    def training(self, what: str) -> tuple[ExampleSet, ExampleStates]:
        """The training examples and their states, or a :class:`TrainingDataMissingError` naming ``what``."""
        if self.examples is None or self.train is None:
            raise TrainingDataMissingError(missing_data_message(self.model_dir, what))
        return self.examples, self.train


def load_checkpoint(
    model_dir: str | Path,
    train_spec: DataSpec | None = None,
    tracked_layers: TrackedScope | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    added: AddedRows | None = None,
) -> Checkpoint:
    """Load the model and its training data (with the rows a gradient index ``added`` after them); the
    card supplies whatever is not given.

    When the data is the card's own, it must be exactly the rows the model was trained on (the card's
    data fingerprint): influence over rows the model never saw would be silently wrong. With no data
    given and none in the card, the checkpoint has no training examples (:meth:`Checkpoint.training`).
    """
    card = read_card(model_dir)
    from_card = train_spec is None
    train_spec = train_spec or card_data_spec(card)
    model, tokenizer = load_classifier(str(model_dir), None, dtype, trust_remote_code, device)
    scope = (
        tracked_layers if tracked_layers is not None else card.get("tracked_layers", DEFAULT_TRACKED_LAYERS)
    )
    tracked = TrackedModel(model, tokenizer, scope, card.get("max_length", DEFAULT_MAX_LENGTH))
    fingerprint = model_fingerprint(model)
    if train_spec is None:
        return Checkpoint(card, tracked, None, None, fingerprint, str(model_dir))
    examples = load_examples(train_spec)
    if from_card and card.get("data_fingerprint") not in (None, examples.fingerprint):
        raise ValueError(
            f"{model_dir}: card.json names {train_spec.source}, but those {len(examples)} rows are not the "
            "rows the model was trained on (data fingerprint differs): retrain, or pass the training data"
        )
    examples = with_added_rows(examples, added)
    check_labels(tracked, examples)
    return Checkpoint(card, tracked, examples, ExampleStates(tracked, examples), fingerprint, str(model_dir))


def with_training(checkpoint: Checkpoint, train_spec: DataSpec, added: AddedRows | None) -> Checkpoint:
    """``checkpoint`` serving ``train_spec``'s rows with ``added`` after them (rows a gradient index gained
    under a running server): the same model, a new training set and its states."""
    examples = with_added_rows(load_examples(train_spec), added)
    check_labels(checkpoint.tracked, examples)
    return replace(checkpoint, examples=examples, train=ExampleStates(checkpoint.tracked, examples))


def check_labels(tracked: TrackedModel, examples: ExampleSet) -> None:
    """Training labels must be labels of the model: a label past its head would index out of range."""
    num_labels = label_count(tracked.model.config)
    if examples.num_labels > num_labels:
        raise ValueError(
            f"{examples.source} has labels up to {examples.num_labels - 1}, but the model has {num_labels} "
            f"outputs (0..{num_labels - 1}): pass the data it was trained on, or map its labels to 0..C-1"
        )


def write_card(
    model_dir: str | Path,
    train_spec: DataSpec,
    tracked_layers: TrackedScope = DEFAULT_TRACKED_LAYERS,
    max_length: int = DEFAULT_MAX_LENGTH,
    trust_remote_code: bool = False,
) -> dict:
    """Write ``card.json`` for a model trained elsewhere, so every later command finds its data alone.

    The model is loaded once to check the data against it (labels in range, the tracked set exists) and
    to record its weights' fingerprint; an existing card's training record (``influence train``'s) is
    kept, its data and tracked set replaced. Written atomically."""
    model, tokenizer = load_classifier(str(model_dir), None, torch.float32, trust_remote_code)
    tracked = TrackedModel(model, tokenizer, tracked_layers, max_length)
    examples = load_examples(train_spec)
    check_labels(tracked, examples)
    card = {
        **read_card(model_dir),
        "model_fingerprint": model_fingerprint(model),
        "data_source": examples.source,
        "data_fingerprint": examples.fingerprint,
        "data_spec": asdict(train_spec),
        "tracked_layers": tracked.tracked_layers,
        "adapter": adapter_record(model),
        "max_length": max_length,
        "num_labels": label_count(model.config),
        "num_examples": len(examples),
        "carded_at": datetime.now(UTC).isoformat(),
    }
    write_json_atomic(Path(model_dir) / CARD_FILE, card)
    return card
