"""Retraining the tracked set on subsets of its training data, cached: the ground truth of ``lds``.

A retrain repeats ``influence train`` exactly as the model card records it (base model, tracked set,
truncation length, training config and seed) on some rows of the card's training data, and keeps only
the tracked parameter vector ``theta`` (the frozen bottom is the base model's, unchanged by training).
Vectors are cached as safetensors under a key of everything they depend on, so comparing a second
method, or rerunning with more test points, costs no retraining.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from interpret.data import ExampleSet
from interpret.influence.batches import ExampleStates
from interpret.influence.objective import per_example_losses
from interpret.models import TrackedModel, TrackedScope
from interpret.training import TrainConfig, train_classifier


@dataclass(frozen=True)
class RetrainSpec:
    """How the model under evaluation was trained: what a retrain repeats."""

    base_model: str
    tracked_layers: TrackedScope
    max_length: int
    num_labels: int
    data_fingerprint: str
    train_config: dict

    @classmethod
    def from_card(cls, card: dict) -> RetrainSpec:
        missing = [
            k for k in ("base_model", "tracked_layers", "train_config", "data_fingerprint") if k not in card
        ]
        if missing:
            raise ValueError(
                f"the model card lacks {', '.join(missing)}: retraining needs a model saved by "
                "`influence train` (it records how the model was trained)"
            )
        return cls(
            card["base_model"],
            card["tracked_layers"],
            int(card.get("max_length", 128)),
            int(card["num_labels"]),
            card["data_fingerprint"],
            dict(card["train_config"]),
        )

    def key(self, rows: np.ndarray) -> str:
        """SHA-256 of the spec and the exact rows trained on."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        digest.update(np.sort(np.asarray(rows, dtype=np.int64)).tobytes())
        return digest.hexdigest()


class RetrainCache:
    """``<folder>/<key>.safetensors`` holding one retrained ``theta``; written atomically."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        return load_file(path)["theta"] if path.is_file() else None

    def put(self, key: str, theta: torch.Tensor) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        os.close(handle)
        try:
            save_file({"theta": theta.detach().cpu().contiguous()}, scratch)
            os.replace(scratch, self._path(key))
        finally:
            if os.path.exists(scratch):
                os.unlink(scratch)


def retrain(spec: RetrainSpec, examples: ExampleSet, rows: np.ndarray) -> torch.Tensor:
    """Fine-tune the base model's tracked set on ``examples`` restricted to ``rows``; its ``theta``."""
    if examples.fingerprint != spec.data_fingerprint:
        raise ValueError("these are not the rows the model was trained on (data fingerprint differs)")
    tracked, _ = train_classifier(
        spec.base_model,
        examples.subset(np.sort(rows)),
        spec.tracked_layers,
        TrainConfig(**spec.train_config),
        num_labels=spec.num_labels,
        max_length=spec.max_length,
        progress=False,
    )
    return tracked.parameters().clone()


@torch.no_grad()
def test_losses(tracked: TrackedModel, thetas: list[torch.Tensor], test: ExampleSet) -> np.ndarray:
    """Cross-entropy of every test row under each ``theta`` ``[len(thetas), T]``: the frozen bottom runs
    once per block and is shared by all of them."""
    states = ExampleStates(tracked, test)
    out = np.empty((len(thetas), len(test)))
    for positions, state, labels in states.iter_blocks(np.arange(len(test)), 64):
        for number, theta in enumerate(thetas):
            theta = theta.to(device=tracked.device, dtype=tracked.dtype)
            out[number, positions] = per_example_losses(tracked, theta, state, labels).double().cpu().numpy()
    return out
