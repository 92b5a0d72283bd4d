"""Any Hugging Face sequence classifier with its tokenizer: what saliency maps and attacks run on.

Unlike ``interpret.models.TrackedModel`` it needs no frozen/tracked split: saliency and attacks
differentiate the whole model with respect to its input embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from interpret.concurrency import lock_of, serialized
from interpret.models import is_linear, label_count, linear_widths, takes_token_types


@dataclass
class TextClassifier:
    """Any Hugging Face sequence classifier and its tokenizer (no frozen/tracked split needed)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
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
        embeddings = self.model.get_input_embeddings()
        assert isinstance(embeddings, nn.Embedding), type(embeddings)  # a text model's token table
        return embeddings

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The word-pieces of ``ids`` as the tokenizer spells them (``##ing``, ``Ġthe``)."""
        tokens = self.tokenizer.convert_ids_to_tokens(list(ids))
        return [tokens] if isinstance(tokens, str) else tokens

    @property
    def num_labels(self) -> int:
        return label_count(self.model.config)

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

        Given ``inputs_embeds`` (with ``input_ids`` optional beside them), every family sees its own
        pooling of each row's real tokens:

        * a decoder classifier cannot see where each row's text ends from embeddings (HF pools on the
          last non-pad *id*, and without ids on the last column, a pad for every shorter row of a
          right-padded batch). Its head scores every position; each row's logits are taken here at its
          last attended position, which is the last real token under right padding;
        * an encoder-decoder classifier (BART) refuses ``inputs_embeds`` and pools on its ids' last
          end-of-sequence token: it gets ``input_ids``, and :meth:`_substituted` puts the embeddings in
          where its shared embedding runs (the encoder's tokens and the decoder's right-shifted copy)."""
        if not takes_token_types(self.model):
            inputs.pop("token_type_ids", None)
        by_embeddings = "inputs_embeds" in inputs and "attention_mask" in inputs
        if by_embeddings and self.model.config.is_encoder_decoder:
            return self._substituted(inputs.pop("inputs_embeds"), inputs)
        if by_embeddings:
            inputs.pop("input_ids", None)
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

    def _substituted(self, embeddings: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """An encoder-decoder's logits with ``embeddings`` in place of its token embeddings: the first call
        of the shared table (the encoder, on ``input_ids``) returns them, the second (the decoder, on the
        ids shifted right behind its start token) returns them shifted the same way."""
        ids = inputs.get("input_ids")
        if ids is None or ids.shape != embeddings.shape[:2]:
            raise ValueError(
                f"{type(self.model).__name__} pools on its token ids: give input_ids [B, S] beside "
                "inputs_embeds [B, S, D]"
            )
        inputs["input_ids"] = ids.expand(len(embeddings), -1)
        calls: list[int] = []

        def substitute(_module, _args, output: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            if len(calls) == 1:
                return embeddings
            return torch.cat([output[:, :1], embeddings[:, :-1]], dim=1)

        table = self.embeddings.weight  # the encoder and decoder may hold their own modules over it
        tied = [m for m in self.model.modules() if isinstance(m, nn.Embedding) and m.weight is table]
        with lock_of(self.model):
            handles = [module.register_forward_hook(substitute) for module in tied]
            try:
                return self.model(**inputs).logits
            finally:
                for handle in handles:
                    handle.remove()
