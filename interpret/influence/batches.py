"""Frozen states of training examples, computed in length-sorted blocks and handed out by row."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import torch

from interpret.config import FROZEN_CACHE_BYTES
from interpret.data import ExampleSet, Rows
from interpret.models import FrozenState, TrackedModel, length_sorted_batches


class FrozenCache:
    """The frozen bottom's output of single rows (``[tokens, H]``, unpadded; ``[D]`` for a classifier-only
    tracked set), least recently used out once they hold more than ``max_bytes``. Thread-safe: a worker's
    threads share one."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.nbytes = max_bytes, 0
        self._rows: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, rows: np.ndarray) -> dict[int, torch.Tensor]:
        """The cached ones among ``rows`` (each now the most recently used)."""
        found = {}
        with self._lock:
            for row in map(int, rows):
                if row in self._rows:
                    self._rows.move_to_end(row)
                    found[row] = self._rows[row]
        return found

    def put(self, row: int, state: torch.Tensor) -> None:
        size = state.nelement() * state.element_size()
        with self._lock:
            if row in self._rows or size > self.max_bytes:
                return
            self._rows[row] = state
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, old = self._rows.popitem(last=False)
                self.nbytes -= old.nelement() * old.element_size()


class ExampleStates:
    """Gives ``(FrozenState, labels)`` for any rows of an :class:`ExampleSet`.

    Scans that ask for it (``iter_blocks(cached=True)``: candidate scoring) keep each row's frozen-bottom
    output in a :class:`FrozenCache` of ``cache_bytes`` and assemble later blocks from it: the tracked
    layers see the same real positions (padding is masked out of attention and out of every loss), so a
    score moves only by float rounding. The generic path has nothing frozen to keep (its state is the ids)."""

    def __init__(
        self,
        tracked: TrackedModel,
        examples: ExampleSet,
        block_size: int = 128,
        cache_bytes: int = FROZEN_CACHE_BYTES,
    ):
        self.tracked = tracked
        self.examples = examples
        self.block_size = block_size
        self.cache = FrozenCache(cache_bytes) if cache_bytes > 0 and not tracked.generic else None

    def __len__(self) -> int:
        return len(self.examples)

    def _frozen(self, rows: Rows) -> FrozenState:
        texts = [self.examples.texts[i] for i in rows]
        pairs = [self.examples.pairs[i] for i in rows] if self.examples.pairs is not None else None
        return self.tracked.frozen(self.tracked.encode(texts, pairs))

    def _frozen_cached(self, rows: np.ndarray) -> FrozenState:
        """``_frozen(rows)`` with each row's state taken from the cache when it is there, and kept there."""
        assert self.cache is not None
        found = self.cache.get(rows)
        missing = [int(row) for row in rows if int(row) not in found]
        if missing:
            state = self._frozen(missing)
            lengths = None if state.mask is None else state.mask.sum(dim=1).tolist()
            for i, row in enumerate(missing):
                piece = state.hidden[i] if lengths is None else state.hidden[i, : int(lengths[i])]
                found[row] = piece.clone()  # not a view: the block it came from can be freed
                self.cache.put(row, found[row])
        return _padded([found[int(row)] for row in rows])

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
        self, rows: Rows, block_size: int, cached: bool = False
    ) -> Iterator[tuple[np.ndarray, FrozenState, torch.Tensor]]:
        """``(positions into rows, states, labels)`` in length-sorted blocks: the fast way to scan rows.
        ``cached``: states through the cache (scoring candidates that other queries score too)."""
        order = np.asarray(rows, dtype=np.int64)
        pairs = [self.examples.pairs[i] for i in order] if self.examples.pairs is not None else None
        frozen = self._frozen_cached if cached and self.cache is not None else self._frozen
        for positions in length_sorted_batches([self.examples.texts[i] for i in order], block_size, pairs):
            yield positions, frozen(order[positions]), self.labels(order[positions])


def _padded(pieces: list[torch.Tensor]) -> FrozenState:
    """One batch of single rows' states: stacked (``[D]`` rows, no mask), or ``[tokens, H]`` rows padded
    with zeros on the right under a mask of their lengths."""
    if pieces[0].dim() == 1:
        return FrozenState(torch.stack(pieces), None)
    lengths = torch.tensor([len(piece) for piece in pieces])
    width = int(lengths.max())
    hidden = pieces[0].new_zeros((len(pieces), width, *pieces[0].shape[1:]))
    for i, piece in enumerate(pieces):
        hidden[i, : len(piece)] = piece
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long().to(hidden.device)
    return FrozenState(hidden, mask)


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
