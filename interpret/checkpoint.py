"""A saved classifier with everything a query needs: tracked model, training examples, fingerprints.

``influence train`` writes a model folder with ``card.json`` (see ``interpret.training``); the local engine
and every Ray worker load it the same way through :func:`load_checkpoint`, so they agree on the tracked
scope, the truncation length and the training data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from interpret.data import DataSpec, ExampleSet, load_examples
from interpret.influence.batches import ExampleStates
from interpret.models import TrackedModel, TrackedScope, load_classifier, model_fingerprint
from interpret.training import CARD_FILE

DEFAULT_TRACKED_LAYERS = 2
DEFAULT_MAX_LENGTH = 128


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
    examples: ExampleSet
    train: ExampleStates
    fingerprint: str


def load_checkpoint(
    model_dir: str | Path,
    train_spec: DataSpec | None = None,
    tracked_layers: TrackedScope | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> Checkpoint:
    """Load the model and its training data; the card supplies whatever is not given.

    When the data is the card's own, it must be exactly the rows the model was trained on (the card's
    data fingerprint): influence over rows the model never saw would be silently wrong.
    """
    card = read_card(model_dir)
    from_card = train_spec is None
    train_spec = train_spec or card_data_spec(card)
    if train_spec is None:
        raise ValueError(f"{model_dir}: no card.json naming the training data; pass the training data")
    model, tokenizer = load_classifier(str(model_dir), None, dtype, trust_remote_code, device)
    scope = (
        tracked_layers if tracked_layers is not None else card.get("tracked_layers", DEFAULT_TRACKED_LAYERS)
    )
    tracked = TrackedModel(model, tokenizer, scope, card.get("max_length", DEFAULT_MAX_LENGTH))
    examples = load_examples(train_spec)
    if from_card and card.get("data_fingerprint") not in (None, examples.fingerprint):
        raise ValueError(
            f"{model_dir}: card.json names {train_spec.source}, but those {len(examples)} rows are not the "
            "rows the model was trained on (data fingerprint differs): retrain, or pass the training data"
        )
    return Checkpoint(card, tracked, examples, ExampleStates(tracked, examples), model_fingerprint(model))
