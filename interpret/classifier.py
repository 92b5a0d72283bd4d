"""Any Hugging Face sequence classifier with its tokenizer: what saliency maps and attacks run on.

Unlike ``interpret.models.TrackedModel`` it needs no frozen/tracked split: saliency and attacks
differentiate the whole model with respect to its input embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from interpret.concurrency import lock_of, serialized
from interpret.models import uses_token_types


@dataclass
class TextClassifier:
    """Any Hugging Face sequence classifier and its tokenizer (no frozen/tracked split needed)."""

    model: nn.Module
    tokenizer: object
    max_length: int = 128

    def __post_init__(self) -> None:
        self.tokenizer = serialized(self.tokenizer)  # shared with other threads (service, workers)

    @classmethod
    def of(cls, tracked) -> TextClassifier:
        """The whole model behind a ``TrackedModel`` (same modules, same tokenizer and lock)."""
        return cls(tracked.model, tracked.tokenizer, tracked.max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The model's logits, holding the model's lock: a ``TrackedModel`` on another thread may be
        swapping tensors into the same modules (see ``interpret.concurrency``)."""
        if not uses_token_types(self.model):
            inputs.pop("token_type_ids", None)
        with lock_of(self.model):
            return self.model(**inputs).logits
