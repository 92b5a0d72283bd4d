"""Any Hugging Face sequence classifier with its tokenizer: what saliency maps and attacks run on.

Unlike ``interpret.models.TrackedModel`` it needs no frozen/tracked split: saliency and attacks
differentiate the whole model with respect to its input embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from interpret.concurrency import lock_of, serialized
from interpret.models import is_linear, linear_widths, uses_token_types


@dataclass
class TextClassifier:
    """Any Hugging Face sequence classifier and its tokenizer (no frozen/tracked split needed)."""

    model: nn.Module
    tokenizer: object
    max_length: int = 128
    _head: nn.Module | None = field(default=None, init=False, repr=False)

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

    @property
    def head(self) -> nn.Module:
        """The last linear layer as wide as the labels (registration order is enough here: a classifier has
        one such layer)."""
        if self._head is None:
            count = self.num_labels
            linear = [m for m in self.model.modules() if is_linear(m) and linear_widths(m)[1] == count]
            self._head = linear[-1]
        return self._head

    def logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The model's logits, holding the model's lock: a ``TrackedModel`` on another thread may be
        swapping tensors into the same modules (see ``interpret.concurrency``).

        Given ``inputs_embeds``, a decoder classifier cannot see where each row's text ends (HF pools on
        the last non-pad *id*, and without ids on the last column, a pad for every shorter row of a
        right-padded batch). Its head scores every position; each row's logits are taken here at its last
        attended position instead, which is the last real token under right padding."""
        if not uses_token_types(self.model):
            inputs.pop("token_type_ids", None)
        by_embeddings = "inputs_embeds" in inputs and "attention_mask" in inputs
        scored: list[torch.Tensor] = []
        with lock_of(self.model):
            if not by_embeddings:
                return self.model(**inputs).logits
            handle = self.head.register_forward_hook(lambda _m, _args, output: scored.append(output))
            try:
                pooled = self.model(**inputs).logits
            finally:
                handle.remove()
        every_position = scored[-1]
        if every_position.dim() != 3:  # an encoder's head sees one pooled vector per row: HF's is right
            return pooled
        mask = inputs["attention_mask"]
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (positions * (mask != 0)).argmax(-1)
        return every_position[torch.arange(len(last), device=last.device), last]
