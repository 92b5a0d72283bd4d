"""Row-ordered vectors a gradient-index build streams into its shards, without holding them all.

A build's projected gradients lie on disk as consecutive chunks (``.npy`` files, memory-mapped);
:class:`ChunkedVectors` reads them in row order, block by block, through a ``transform`` (the
preconditioner), so the preconditioned ``[N, d]`` matrix never exists in one process: each index shard is
filled from blocks, and only the shard being filled is resident.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

TRAIN_ROWS = 262_144
"""Rows a storage's quantiser is trained on at most (a seeded sample beyond that): FAISS's k-means takes
256 points per centroid, so this covers 1,024 IVF lists and every PQ codebook; at or below it, all rows."""


@dataclass
class ChunkedVectors:
    """Float32 vectors ``[N, d]`` held as consecutive ``chunks`` (arrays or memory-mapped files), read
    through ``transform`` (a block of rows in, the same rows out, float32)."""

    chunks: Sequence[np.ndarray]
    transform: Callable[[np.ndarray], np.ndarray] | None = None

    def __post_init__(self) -> None:
        if not self.chunks or any(c.ndim != 2 or c.shape[1] != self.chunks[0].shape[1] for c in self.chunks):
            raise ValueError("vectors must be a non-empty list of [rows, d] chunks of one width")
        self._starts = np.cumsum([0] + [len(chunk) for chunk in self.chunks])

    @property
    def count(self) -> int:
        return int(self._starts[-1])

    @property
    def dim(self) -> int:
        return int(self.chunks[0].shape[1])

    def with_transform(self, transform: Callable[[np.ndarray], np.ndarray]) -> ChunkedVectors:
        return ChunkedVectors(self.chunks, transform)

    def _read(self, block: np.ndarray) -> np.ndarray:
        block = np.array(block, dtype=np.float32)  # a copy: memory-mapped chunks are read-only
        return block if self.transform is None else np.ascontiguousarray(self.transform(block), np.float32)

    def _slices(self, start: int, stop: int | None) -> Iterator[np.ndarray]:
        """Rows ``start:stop`` as they are stored (before the transform), one slice per chunk they touch."""
        stop = self.count if stop is None else stop
        for number, chunk in enumerate(self.chunks):
            first, last = int(self._starts[number]), int(self._starts[number + 1])
            if first < stop and last > start:
                yield chunk[max(start - first, 0) : min(stop, last) - first]

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Rows ``start:stop`` in order, one block per chunk they touch."""
        for piece in self._slices(start, stop):
            yield self._read(piece)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (any order), as ``[len(rows), d]``."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        owners = np.searchsorted(self._starts, rows, side="right") - 1
        for number in np.unique(owners):
            mine = owners == number
            out[mine] = self._read(self.chunks[number][rows[mine] - self._starts[number]])
        return out

    def products(self, queries: np.ndarray) -> np.ndarray:
        """Every row's inner products with ``queries`` ``[P, d]``: ``[N, P]`` float32, streamed."""
        return np.concatenate([block @ queries.T for block in self.blocks()])

    def blocks_with_norms(
        self, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """As :meth:`blocks`, each block with its rows' :func:`preconditioned_norms`."""
        for piece in self._slices(start, stop):
            raw = np.array(piece, dtype=np.float32)
            stored = self._read(raw)
            yield stored, preconditioned_norms(raw if self.transform is not None else stored, stored)

    def training_sample(self, seed: int = 0) -> np.ndarray:
        """What a quantiser is trained on: every row up to ``TRAIN_ROWS``, else a seeded sample of that
        many (the same whatever the shard count, so the shards share one quantiser)."""
        if self.count <= TRAIN_ROWS:
            return np.concatenate(list(self.blocks()))
        rows = np.sort(np.random.default_rng(seed).choice(self.count, TRAIN_ROWS, replace=False))
        return self.take(rows)


def preconditioned_norms(gradients: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Each row's norm in the preconditioned space, ``sqrt(|g~_z . u_z|)`` with ``u_z = A^-1 g~_z``
    (``A = C + damping I``), which is ``||A^-1/2 g~_z||``: the square root of the row's self-influence under
    the index's curvature, RelatIF's denominator. Dividing ``g~_test . u_z`` by it (and by the test's own
    ``||A^-1/2 g~_test||``) gives the cosine of the two gradients in the space where the index's curvature
    is the identity. Rows stored without a transform pass themselves as ``gradients``: their plain norm.
    The absolute value keeps a row real under an indefinite (``hessian``) curvature. Float32 ``[B]``."""
    products = np.einsum("ij,ij->i", np.asarray(gradients, np.float64), np.asarray(stored, np.float64))
    return np.asarray(np.sqrt(np.abs(products)), dtype=np.float32)
