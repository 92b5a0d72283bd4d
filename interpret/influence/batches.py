"""Frozen states of training examples, computed in length-sorted blocks and handed out by row."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from interpret.data import ExampleSet, Rows
from interpret.models import FrozenState, TrackedModel, length_sorted_batches


class ExampleStates:
    """Gives ``(FrozenState, labels)`` for any rows of an :class:`ExampleSet`."""

    def __init__(self, tracked: TrackedModel, examples: ExampleSet, block_size: int = 128):
        self.tracked = tracked
        self.examples = examples
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.examples)

    def _frozen(self, rows: Rows) -> FrozenState:
        texts = [self.examples.texts[i] for i in rows]
        pairs = [self.examples.pairs[i] for i in rows] if self.examples.pairs is not None else None
        return self.tracked.frozen(self.tracked.encode(texts, pairs))

    def labels(self, rows: Rows) -> torch.Tensor:
        return torch.as_tensor(
            self.examples.labels[np.asarray(rows, dtype=np.int64)], device=self.tracked.device
        )

    def load(self, rows: Rows) -> tuple[FrozenState, torch.Tensor]:
        """States of ``rows`` in the order given (repeats allowed), built from length-sorted blocks."""
        order = np.asarray(rows, dtype=np.int64)
        pairs = [self.examples.pairs[i] for i in order] if self.examples.pairs is not None else None
        blocks = []
        for positions in length_sorted_batches(
            [self.examples.texts[i] for i in order], self.block_size, pairs
        ):
            blocks.append((positions, self._frozen(order[positions])))
        return _assemble(blocks, len(order)), self.labels(order)

    def iter_blocks(
        self, rows: Rows, block_size: int
    ) -> Iterator[tuple[np.ndarray, FrozenState, torch.Tensor]]:
        """``(positions into rows, states, labels)`` in length-sorted blocks: the fast way to scan rows."""
        order = np.asarray(rows, dtype=np.int64)
        pairs = [self.examples.pairs[i] for i in order] if self.examples.pairs is not None else None
        for positions in length_sorted_batches([self.examples.texts[i] for i in order], block_size, pairs):
            yield positions, self._frozen(order[positions]), self.labels(order[positions])


def _assemble(blocks: list[tuple[np.ndarray, FrozenState]], total: int) -> FrozenState:
    """Scatter blocks of different padded lengths into one batch in the original order (padded on the
    right, with the state's own padding value: a decoder's head pools on the last non-pad id)."""
    first = blocks[0][1]
    if first.mask is None:
        hidden = first.hidden.new_empty((total, *first.hidden.shape[1:]))
        for positions, state in blocks:
            hidden[torch.as_tensor(positions)] = state.hidden
        return FrozenState(hidden, None, padding_value=first.padding_value)
    width = max(state.hidden.shape[1] for _, state in blocks)
    hidden = first.hidden.new_full((total, width, *first.hidden.shape[2:]), first.padding_value)
    mask = first.mask.new_zeros((total, width))
    types = None if first.token_types is None else first.token_types.new_zeros((total, width))
    for positions, state in blocks:
        index = torch.as_tensor(positions)
        assert state.mask is not None  # every block of one model is padded alike
        hidden[index, : state.hidden.shape[1]] = state.hidden
        mask[index, : state.mask.shape[1]] = state.mask
        if types is not None and state.token_types is not None:
            types[index, : state.token_types.shape[1]] = state.token_types
    return FrozenState(hidden, mask, types, first.padding_value)
