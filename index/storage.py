"""How a gradient index holds its vectors, and what that costs in memory before any of it is spent.

Five storages trade bytes per row against recall (``benchmarks/scale.py`` measures them):

* ``float32``: the vectors as computed, searched exactly (``4 d`` bytes per row);
* ``float16``: FAISS's ``SQfp16`` (``2 d``), scores to float16 precision;
* ``sq8``: FAISS's 8-bit scalar quantiser (``d``), one trained range per dimension;
* ``ivf-pq``: an IVF coarse quantiser over product codes (``M`` bytes per row, plus an 8-byte id in its
  list). A query searches ``nprobe`` lists for ``RESCORE_FACTOR x top`` candidates per side and re-scores
  them exactly against float16 copies of the vectors kept on disk (``vectors.f16.npy``, read row by row, so
  none of it is resident): the scores it returns are the float16 vectors' inner products, for
  whichever rows the codes let through;
* ``pca-sq8``: each vector projected onto the top ``r`` principal directions of the stored vectors
  (eigenvectors of their uncentred second moment ``X^T X / n``: the rank-``r`` map that best keeps inner
  products), held as ``r`` 8-bit codes and scanned whole; its candidates are re-scored like ivf-pq's. No
  coarse lists, so no row is skipped by a list it was filed in: ``benchmarks/scale.py`` found ivf-pq's
  misses there.

:func:`resident_bytes` is the one estimate of what a loaded index holds in memory; a build checks it
against the budget before it starts and records the measured size in the manifest, and a load checks the
recorded size before it reads anything.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from interpret.config import DEFAULT_PCA_DIM, IndexStorage

RESCORE_FACTOR = 4
"""ivf-pq, pca-sq8: candidates per side re-scored exactly, as a multiple of the rows asked for."""
RESCORE_FILE = "vectors.f16.npy"
"""ivf-pq, pca-sq8: the float16 vectors their candidates are re-scored against (row i = index id i)."""
NORMS_FILE = "norms.npy"
"""Each row's norm in the preconditioned space (``index.vectors.preconditioned_norms``, row i = index id
i), what the normalised view divides by."""
RESCORED_STORAGES: tuple[IndexStorage, ...] = ("ivf-pq", "pca-sq8")
"""The storages whose codes only pick candidates, re-scored against ``RESCORE_FILE``."""
MIN_POINTS_PER_LIST = 39
"""FAISS's k-means wants about this many training points per centroid (it warns below)."""
STORAGES: tuple[IndexStorage, ...] = get_args(IndexStorage)
PQ_CENTROIDS = 256
"""Centroids of each 8-bit product sub-quantiser (so PQ training needs at least this many rows)."""
ROW_ID_BYTES = 8
"""Each row's training-row number, held beside the index as int64."""
NORM_BYTES = 4
"""Each row's preconditioned norm (``NORMS_FILE``), held as float32 for the normalised view."""


class IndexTooLargeError(ValueError):
    """An index would need more memory than the machine or the configured budget has; the message names
    the size and what would fit."""


@dataclass(frozen=True)
class StorageLayout:
    """One storage made concrete for ``count`` rows of width ``dim``: its FAISS factory and sizes."""

    storage: IndexStorage
    factory: str
    ivf_lists: int | None = None
    pq_bytes: int | None = None
    nprobe: int | None = None
    pca_dim: int | None = None

    @property
    def rescored(self) -> bool:
        """Whether its codes only pick candidates, re-scored against the float16 copy on disk."""
        return self.storage in RESCORED_STORAGES


def default_lists(count: int) -> int:
    """``sqrt(N)`` coarse lists (about ``sqrt(N)`` rows each), at most ``N / 39`` (each centroid gets its
    training points), at least 1. FAISS's guide suggests 4-16 ``sqrt(N)`` for faster scans; their k-means
    costs 4-16 times as much to build, which ``benchmarks/scale.py`` measures on 2 cores."""
    return max(1, min(round(math.sqrt(count)), count // MIN_POINTS_PER_LIST))


def default_pq_bytes(dim: int) -> int:
    """The divisor of ``dim`` nearest ``dim / 8``: eight dimensions per 8-bit code, 1/32 of float32."""
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    return min(divisors, key=lambda m: (abs(m - dim / 8), m))


def storage_layout(
    storage: IndexStorage,
    count: int,
    dim: int,
    factory: str,
    ivf_lists: int | None = None,
    pq_bytes: int | None = None,
    nprobe: int = 32,
    pca_dim: int | None = None,
) -> StorageLayout:
    """The FAISS factory string and sizes of ``storage`` for these vectors; ``factory`` is float32's own.
    pca-sq8's factory names its shape; its transform is our uncentred one (``index.shards``), not FAISS's
    ``PCA``, which centres the vectors and so adds a per-row term to every inner product."""
    if storage == "float32":
        return StorageLayout(storage, factory)
    if storage == "float16":
        return StorageLayout(storage, "SQfp16")
    if storage == "sq8":
        return StorageLayout(storage, "SQ8")
    if storage == "pca-sq8":
        width = pca_dim if pca_dim is not None else min(DEFAULT_PCA_DIM, dim)
        if width > dim:
            raise ValueError(
                f"pca_dim={width} must be at most the vectors' width {dim}: use {min(DEFAULT_PCA_DIM, dim)}"
            )
        return StorageLayout(storage, f"PCA{width},SQ8", pca_dim=width)
    lists = check_storage_rows(storage, count, ivf_lists)
    code = pq_bytes if pq_bytes is not None else default_pq_bytes(dim)
    if dim % code:
        raise ValueError(f"pq_bytes={code} must divide the vectors' width {dim}: try {default_pq_bytes(dim)}")
    return StorageLayout(storage, f"IVF{lists},PQ{code}", lists, code, min(nprobe, lists))


def check_storage_rows(storage: IndexStorage, count: int, ivf_lists: int | None = None) -> int:
    """What ``count`` rows allow (checked before any gradient is computed): ivf-pq needs ``PQ_CENTROIDS``
    rows to train its codes and ``MIN_POINTS_PER_LIST`` per coarse list. Returns the lists (0 without)."""
    if storage != "ivf-pq":
        return 0
    if count < PQ_CENTROIDS:
        raise ValueError(
            f"storage='ivf-pq' trains {PQ_CENTROIDS} centroids per code byte and needs at least that many "
            f"rows, got {count}: use float16 or sq8"
        )
    lists = ivf_lists if ivf_lists is not None else default_lists(count)
    if lists > max(1, count // MIN_POINTS_PER_LIST):
        raise ValueError(
            f"ivf_lists={lists} is too many for {count:,} rows (k-means wants {MIN_POINTS_PER_LIST} rows per "
            f"list): use at most {max(1, count // MIN_POINTS_PER_LIST)}, or null"
        )
    return lists


def resident_bytes(layout: StorageLayout, count: int, dim: int, extra: int = 0) -> int:
    """Bytes a loaded index holds in memory: its vectors or codes, its row ids and norms and ``extra`` (the
    fitted projection and inverse). ``ivf-pq``: codes and list ids, the coarse centroids and the PQ codebooks
    (``256`` centroids per sub-quantiser); ``pca-sq8``: ``r`` code bytes per row, the ``r x d`` directions
    and the code ranges. The float16 re-scoring copy of either is read from disk, not held."""
    per_row = {"float32": 4 * dim, "float16": 2 * dim, "sq8": dim}.get(layout.storage)
    if per_row is not None:
        vectors = count * per_row + (2 * 4 * dim if layout.storage == "sq8" else 0)
    elif layout.storage == "pca-sq8":
        assert layout.pca_dim is not None  # storage_layout set it
        vectors = count * layout.pca_dim + layout.pca_dim * dim * 4 + 2 * 4 * layout.pca_dim
    else:
        assert layout.ivf_lists is not None and layout.pq_bytes is not None  # storage_layout set them
        vectors = count * (layout.pq_bytes + 8) + layout.ivf_lists * dim * 4 + PQ_CENTROIDS * dim * 4
    return vectors + count * (ROW_ID_BYTES + NORM_BYTES) + extra


def readable_bytes(count: int) -> str:
    """``3.2 GiB``, ``512.0 MiB``, ``4.0 KiB``: the largest unit that keeps the number at least 1."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def available_memory() -> int:
    """Bytes this process can still take: ``MemAvailable`` (Linux), lowered to a container's cgroup limit
    minus its use where one is set; total physical memory elsewhere."""
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    limit, usage = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    if limit.exists() and usage.exists() and limit.read_text().strip().isdigit():
        available = min(available, int(limit.read_text()) - int(usage.read_text()))
    return available


def check_resident(
    need: int, budget: int | None, count: int, dim: int, extra: int = 0, what: str = "a gradient index"
) -> None:
    """Refuse (:class:`IndexTooLargeError`) when ``need`` bytes exceed this machine's available memory or
    the configured ``budget`` (``INFLUENCE_MAX_INDEX_BYTES``), naming the storages that would fit."""
    available = available_memory()
    limit = available if budget is None else min(available, budget)
    if need <= limit:
        return
    by_budget = budget is not None and budget < available
    holder = "the budget INFLUENCE_MAX_INDEX_BYTES" if by_budget else "this machine"
    sizes = {storage: _resident(storage, count, dim, extra) for storage in STORAGES}
    fitting = [f"{storage} ({readable_bytes(size)})" for storage, size in sizes.items() if 0 < size <= limit]
    advice = (
        f"build it with --storage {fitting[0].split()[0]} ({', '.join(fitting)} fit)"
        if fitting
        else "no storage fits: raise the budget, cut the index into more shards (--shards), or use fewer "
        "rows or a lower rank"
    )
    raise IndexTooLargeError(
        f"{what} of {count:,} rows x {dim:,} dimensions needs about {readable_bytes(need)} in memory and "
        f"{holder} allows {readable_bytes(limit)}: {advice}"
    )


def _resident(storage: IndexStorage, count: int, dim: int, extra: int) -> int:
    """``storage``'s resident bytes at its defaults; 0 where it cannot hold these rows (too few for IVF)."""
    try:
        layout = storage_layout(storage, count, dim, "Flat")
    except ValueError:
        return 0
    return resident_bytes(layout, count, dim, extra)
