"""A gradient index in shards: each a contiguous run of training rows, searched alone, answers merged.

One shard is the index folder itself (``index.faiss``, ``rows.json`` and, for ivf-pq and pca-sq8,
``vectors.f16.npy``:
the layout from before shards existed). ``S > 1`` shards are subfolders ``shard-00000/`` ... of the index
folder, each with the same three files; ``rows.json`` holds the training rows (global numbers) of the
shard's ids. Every shard's index is a copy of one index trained on all the vectors (the scalar quantiser's
ranges, the IVF centroids and PQ codebooks), then filled with the shard's rows, so each row gets the code
it would get unsharded and the merged answer of any storage is the unsharded one: for ``float32``
(``Flat``) the same rows with the same scores, which the tests check with 1, 2 and 3 shards.

A query searches each shard for its own top of each side (in this process, :class:`LocalShards`, or on one
Ray actor per shard, ``workers.shards``) and :func:`merge_sides` keeps the best of the union: every row of
the global top ``k`` is in its own shard's top ``k``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from index.storage import NORMS_FILE, RESCORE_FACTOR, RESCORE_FILE, STORAGES, StorageLayout
from index.store import IndexMismatchError, empty_index, read_index_folder, write_index_files
from index.vectors import ChunkedVectors

Side = tuple[np.ndarray, np.ndarray]
"""Training rows and their inner products ``ip`` with the query (float64), best first."""
Sides = tuple[Side, Side]
"""The largest inner products (helpful) and the smallest (harmful)."""

QUANTISER_FILE = "quantiser.faiss"
"""A trained storage's empty, trained index (ranges, centroids, codebooks): every shard, and each shard
``influence index add`` appends, is a copy of it."""

_STORAGE_CLASS = {
    "float16": "ScalarQuantizer",
    "sq8": "ScalarQuantizer",
    "ivf-pq": "IVFPQ",
    "pca-sq8": "PreTransform",
}
"""The FAISS index class (name part, CPU or GPU) each compressed storage is held in."""


def shard_directory(directory: str | Path, shards: int, number: int) -> Path:
    """Where shard ``number`` of ``shards`` lives: the index folder itself when there is one."""
    return Path(directory) if shards == 1 else Path(directory) / f"shard-{number:05d}"


def shard_rows(count: int, shards: int) -> list[np.ndarray]:
    """The training rows of each shard: ``count`` rows cut into ``shards`` contiguous runs, sizes within
    one of each other."""
    if not 1 <= shards <= count:
        raise ValueError(f"shards={shards} must be between 1 and the {count:,} rows")
    return [np.asarray(rows, dtype=np.int64) for rows in np.array_split(np.arange(count), shards)]


def search_sides(
    index: faiss.Index, query: np.ndarray, top: int, rescore: RowFile | np.ndarray | None = None
) -> Sides:
    """Index ids and inner products ``ip`` (float64) of the ``top`` largest and the ``top`` smallest inner
    products with ``query`` ``[1, d]``, each best first. With ``rescore`` (the float16 vectors on disk),
    ``RESCORE_FACTOR x top`` candidates per side are searched by code and re-scored exactly against it."""
    wanted = min(top, index.ntotal)
    fetched = min(wanted * RESCORE_FACTOR, index.ntotal) if rescore is not None else wanted
    products, positions = index.search(np.concatenate([query, -query]), fetched)
    sides = []
    for side, sign in ((0, 1.0), (1, -1.0)):
        ids = positions[side][positions[side] >= 0]
        if rescore is None:
            sides.append((ids, sign * products[side][: len(ids)].astype(np.float64)))
            continue
        ids = np.sort(ids)  # in file order: the rows on disk are read front to back
        exact = row_products(rescore[ids], query[0])
        order = np.argsort(-sign * exact, kind="stable")[:wanted]
        sides.append((ids[order], exact[order]))
    return sides[0], sides[1]


SCAN_BLOCK = 8192
"""Rows decoded per step when the normalised view scans a compressed shard's codes."""


def code_products(index: faiss.Index, query: np.ndarray) -> np.ndarray:
    """Every stored vector's inner product with ``query`` ``[1, d]`` as the index holds it (its codes
    decoded; pca-sq8's in its principal coordinates), float32, in id order: the scan the normalised view
    makes, which no inner-product search can (a row's weight ``1 / norm`` is not part of its code). A
    float32 shard is read in place; a compressed one is decoded ``SCAN_BLOCK`` rows at a time."""
    held = faiss.downcast_index(index)
    if isinstance(held, faiss.IndexPreTransform):
        chain: Any = held.chain  # a SWIG vector (faiss's stubs call it a list)
        for step in range(chain.size()):
            query = faiss.downcast_VectorTransform(chain.at(step)).apply(query)
        return code_products(held.index, query)
    count, vector = held.ntotal, np.asarray(query[0], dtype=np.float32)
    if isinstance(held, faiss.IndexFlat):
        stored = faiss.rev_swig_ptr(held.get_xb(), count * held.d).reshape(count, held.d)
        return np.asarray(stored @ vector, dtype=np.float32)
    out = np.empty(count, dtype=np.float32)
    for start in range(0, count, SCAN_BLOCK):
        block = held.reconstruct_n(start, min(SCAN_BLOCK, count - start))
        out[start : start + len(block)] = block @ vector
    return out


def normalized_sides(
    index: faiss.Index,
    query: np.ndarray,
    top: int,
    norms: np.ndarray,
    rescore: RowFile | None = None,
    left_out: np.ndarray | None = None,
) -> Sides:
    """Index ids and normalised inner products ``ip_z / norm_z`` of the ``top`` largest and smallest, each
    best first, over every id but ``left_out``: a full scan of the codes (:func:`code_products`). With
    ``rescore``, ``RESCORE_FACTOR x top`` per side are re-scored exactly against the float16 vectors. A
    row whose norm is 0 (a zero gradient) scores 0."""
    safe = np.where(norms > 0, norms, 1.0).astype(np.float64)
    values = np.where(norms > 0, code_products(index, query) / safe, 0.0)
    keep = np.ones(len(values), dtype=bool)
    if left_out is not None:
        keep[left_out] = False
    ids = np.flatnonzero(keep)
    wanted = min(top, len(ids))
    fetched = min(wanted * RESCORE_FACTOR, len(ids)) if rescore is not None else wanted
    sides = []
    for sign in (1.0, -1.0):
        ranked = -sign * values[ids]
        chosen = ids[np.argpartition(ranked, fetched - 1)[:fetched]] if fetched else ids[:0]
        if rescore is not None:
            chosen = np.sort(chosen)  # file order, as search_sides reads them
            found = np.where(norms[chosen] > 0, row_products(rescore[chosen], query[0]) / safe[chosen], 0.0)
        else:
            found = values[chosen]
        order = np.lexsort((chosen, -sign * found))[:wanted]  # ties: the lower id first, in any shard
        sides.append((chosen[order], found[order].astype(np.float64)))
    return sides[0], sides[1]


RESCORE_BLOCK = 512
"""Candidate rows re-scored per step (bounds the float64 copy)."""


class RowFile:
    """A re-scored storage's float16 copy (an ``.npy`` file), read row by row with ``pread``: nothing of
    it is mapped into the process, so it stays in the page cache, not in the process's resident memory.
    (A memory map's touched pages count as resident, and the kernel maps whole runs of pages around each
    row read: ``benchmarks/scale.py`` saw 6.2 GB of a 6.7 GB copy mapped after 20 queries at 1M rows.)"""

    def __init__(self, path: str | Path):
        header = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header, maps nothing yet
        self.path, self.shape, self.dtype = Path(path), header.shape, header.dtype
        self.offset = int(header.offset)
        del header

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        """The given rows ``[len(rows), d]`` (any order); each run of consecutive rows is one read."""
        rows = np.asarray(rows, dtype=np.int64)
        width = int(self.shape[1]) * self.dtype.itemsize
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        with self.path.open("rb") as handle:
            for run in np.split(np.arange(len(ordered)), breaks):
                if not len(run):
                    continue
                first = int(ordered[run[0]])
                data = os.pread(handle.fileno(), width * len(run), self.offset + first * width)
                out[order[run]] = np.frombuffer(data, dtype=self.dtype).reshape(len(run), -1)
        return out


def row_products(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``rows @ query`` in float64, each row summed alone (numpy's pairwise sum over that row): a row's
    product does not depend on which or how many rows come with it, as a BLAS matrix-vector product's may
    (its kernels treat blocks and tails differently), so a shard re-scores a row exactly as one index does."""
    query64 = np.asarray(query, dtype=np.float64)
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), RESCORE_BLOCK):
        block = np.asarray(rows[start : start + RESCORE_BLOCK], dtype=np.float64)
        out[start : start + RESCORE_BLOCK] = (block * query64).sum(axis=1)
    return out


def merge_sides(parts: Sequence[Sides], top: int) -> Sides:
    """The ``top`` largest (helpful) and smallest (harmful) inner products over every shard's answer; equal
    products keep shard order, then each shard's own order."""
    merged = []
    for side, sign in ((0, -1.0), (1, 1.0)):
        rows = np.concatenate([part[side][0] for part in parts])
        products = np.concatenate([part[side][1] for part in parts])
        order = np.argsort(sign * products, kind="stable")[:top]
        merged.append((rows[order], products[order]))
    return merged[0], merged[1]


@dataclass
class IndexShard:
    """One loaded shard: its FAISS index, the training row of each id, the re-scoring vectors and the
    rows removed from answers (``influence index remove``)."""

    index: faiss.Index
    rows: np.ndarray
    rescore: RowFile | None = None
    hidden: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    norms: np.ndarray | None = None
    """Each id's norm in the preconditioned space (the normalised view); None: built before they were kept."""

    def search(self, query: np.ndarray, top: int, normalize: bool = False) -> Sides:
        """This shard's top of each side, in training rows, removed rows left out: it searches for as many
        more as it has removed, so an exact storage still returns its true top ``top`` of the rest. With
        ``normalize``, ranked by ``ip / norm`` (:func:`normalized_sides`), and those are the values."""
        if normalize:
            if self.norms is None:
                raise IndexMismatchError(
                    "this gradient index was built before it kept its rows' norms: rebuild it with "
                    "`influence index build --kind gradient` for the normalised view"
                )
            left_out = np.flatnonzero(np.isin(self.rows, self.hidden))
            found = normalized_sides(self.index, query, top, self.norms, self.rescore, left_out)
            return (self.rows[found[0][0]], found[0][1]), (self.rows[found[1][0]], found[1][1])
        sides = search_sides(self.index, query, top + len(self.hidden), self.rescore)
        kept = []
        for ids, products in sides:
            rows = self.rows[ids]
            keep = ~np.isin(rows, self.hidden)
            kept.append((rows[keep][:top], products[keep][:top]))
        return kept[0], kept[1]


class ShardSearcher(Protocol):
    """Where the shards of a loaded gradient index are held: this process, or Ray actors."""

    def search(self, query: np.ndarray, top: int, normalize: bool = False) -> Sides: ...

    def close(self) -> None: ...


@dataclass
class LocalShards:
    """Every shard held in this process, searched one after another."""

    shards: list[IndexShard]

    def search(self, query: np.ndarray, top: int, normalize: bool = False) -> Sides:
        return merge_sides([shard.search(query, top, normalize) for shard in self.shards], top)

    def close(self) -> None:
        self.shards = []

    def vectors(self) -> np.ndarray:
        """Every stored vector ``[N, d]`` in training-row order: as the storage decodes it, or the float16
        re-scoring copy where there is one (the vectors answers are scored with)."""
        count = sum(len(shard.rows) for shard in self.shards)
        out = np.empty((count, self.shards[0].index.d), dtype=np.float32)
        for shard in self.shards:
            if shard.rescore is not None:
                out[shard.rows] = shard.rescore[np.arange(len(shard.rows))]
            else:
                out[shard.rows] = faiss.downcast_index(shard.index).reconstruct_n(0, len(shard.rows))
        return out


def needs_training(dim: int, factory: str) -> bool:
    """Whether an index of this factory must be trained before rows are added (a scalar quantiser's
    ranges, IVF centroids, PQ codebooks): its trained quantiser is then kept for rows added later."""
    return not empty_index(dim, factory, "ip").is_trained


PCA_ROWS = 65_536
"""Rows of the training sample pca-sq8's principal directions are fitted on at most (a seeded subset):
enough for a 4,096-wide second moment, and a quarter of the sample's cost."""


def principal_directions(sample: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` leading eigenvectors ``V`` of the uncentred second moment ``M = X^T X / n`` of the
    rows of ``X``, as rows ``[width, d]`` (float32, orthonormal). Over the span of the sample's rows,
    ``q . x ~ (V q) . (V x)`` with the least squared error any rank-``width`` map has (Eckart-Young), and
    with no per-row offset, as centring (PCA on ``X - mean``) would add."""
    moment = np.zeros((sample.shape[1], sample.shape[1]), dtype=np.float64)
    for start in range(0, len(sample), 8192):  # float32 products, summed in float64
        block = np.asarray(sample[start : start + 8192], dtype=np.float32)
        moment += block.T @ block
    values, vectors = np.linalg.eigh(moment / len(sample))
    return np.ascontiguousarray(vectors[:, np.argsort(values)[::-1][:width]].T, dtype=np.float32)


def principal_index(directions: np.ndarray) -> faiss.Index:
    """An empty pca-sq8 index: ``directions`` ``[r, d]`` as a fixed linear map (no offset), then an 8-bit
    scalar quantiser over the ``r`` coordinates, inner product (the quantiser still to train)."""
    width, dim = directions.shape
    transform = faiss.LinearTransform(dim, width, False)
    faiss.copy_array_to_vector(np.ascontiguousarray(directions, np.float32).ravel(), transform.A)
    transform.is_trained = True
    codes = faiss.IndexScalarQuantizer(width, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    return faiss.clone_index(faiss.IndexPreTransform(transform, codes))  # a copy that owns its parts


def trained_template(vectors: ChunkedVectors, layout: StorageLayout) -> faiss.Index:
    """An empty index of ``layout``, its quantiser trained on ``vectors``' training sample: every shard is a
    copy of it (so a row's code does not depend on its shard). pca-sq8 fits its directions on (a seeded
    ``PCA_ROWS`` of) the sample first, then its code ranges on the projected sample."""
    sample = vectors.training_sample() if needs_training(vectors.dim, layout.factory) else None
    if layout.storage == "pca-sq8":
        assert sample is not None and layout.pca_dim is not None
        fit = sample
        if len(sample) > PCA_ROWS:
            fit = sample[np.sort(np.random.default_rng(0).choice(len(sample), PCA_ROWS, replace=False))]
        template = principal_index(principal_directions(fit, layout.pca_dim))
    else:
        template = empty_index(vectors.dim, layout.factory, "ip")
    if sample is not None:
        template.train(sample)
    if layout.nprobe is not None:
        faiss.ParameterSpace().set_index_parameter(template, "nprobe", layout.nprobe)
    return template


def fill_shard(
    template: faiss.Index,
    vectors: ChunkedVectors,
    rows: np.ndarray,
    place: Path,
    rescored: bool,
    start: int | None = None,
) -> IndexShard:
    """A copy of ``template`` holding training ``rows`` (a contiguous run), read block by block from
    ``vectors`` at ``start`` (default: ``rows[0]``); when ``rescored`` (ivf-pq, pca-sq8), the float16
    re-scoring copy is written into ``place`` as it goes (memory-mapped, not held), and every row's
    preconditioned norm (``NORMS_FILE``, for the normalised view) after it."""
    first = int(rows[0]) if start is None else start
    index = faiss.clone_index(template)
    place.mkdir(parents=True, exist_ok=True)
    rescore = None
    if rescored:
        shape = (len(rows), vectors.dim)
        rescore = np.lib.format.open_memmap(place / RESCORE_FILE, mode="w+", dtype=np.float16, shape=shape)
    norms = np.empty(len(rows), dtype=np.float32)
    done = 0
    for block, block_norms in vectors.blocks_with_norms(first, first + len(rows)):
        index.add(block)
        if rescore is not None:
            rescore[done : done + len(block)] = block.astype(np.float16)
        norms[done : done + len(block)] = block_norms
        done += len(block)
    np.save(place / NORMS_FILE, norms, allow_pickle=False)
    if rescore is None:
        return IndexShard(index, rows, norms=norms)
    rescore.flush()
    del rescore
    return IndexShard(index, rows, RowFile(place / RESCORE_FILE), norms=norms)


def write_shards(
    folder: Path,
    vectors: ChunkedVectors,
    layout: StorageLayout,
    shards: int,
    probes: np.ndarray | None,
    top: int,
) -> tuple[list[int], list[Sides]]:
    """Fill and write each shard of ``vectors`` into ``folder`` (a scratch folder renamed into place
    whole), one at a time, so only the shard being filled is resident. Returns each shard's row count and,
    for each of the ``probes`` ``[P, d]``, its merged answer (top ``top`` per side)."""
    template = trained_template(vectors, layout)
    if needs_training(vectors.dim, layout.factory):
        faiss.write_index(template, str(folder / QUANTISER_FILE))  # rows added later are coded with it
    found: list[list[Sides]] = [[] for _ in range(0 if probes is None else len(probes))]
    runs = shard_rows(vectors.count, shards)
    for number, rows in enumerate(runs):
        place = shard_directory(folder, shards, number)
        shard = fill_shard(template, vectors, rows, place, layout.rescored)
        write_index_files(place, shard.index, rows)
        for answers, probe in zip(found, probes if probes is not None else [], strict=True):
            answers.append(shard.search(probe[None], top))
        del shard
    return [len(rows) for rows in runs], [merge_sides(answers, top) for answers in found]


def load_shard(
    directory: str | Path,
    shards: int,
    number: int,
    count: int,
    dim: int,
    layout: StorageLayout,
    hidden: np.ndarray | None = None,
    normed: bool = False,
) -> IndexShard:
    """Shard ``number`` of ``shards`` (``count`` rows of width ``dim``), refused when its files do not
    hold what the manifest says; ``hidden``: its rows removed from answers; ``normed``: the manifest says
    its rows' norms are kept."""
    place = shard_directory(directory, shards, number)
    if not (place / "rows.json").is_file():
        raise IndexMismatchError(
            f"{place}: shard {number} of {shards} is missing; rebuild the index with "
            "`influence index build --kind gradient`"
        )
    index, rows = read_index_folder(place, count)
    if index.d != dim:
        raise IndexMismatchError(f"{place}: vectors have dim {index.d}, the manifest says {dim}")
    rescore = check_storage(place, layout, index, count, dim)
    if layout.nprobe is not None:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", layout.nprobe)
    norms = read_norms(place / NORMS_FILE, count) if normed else None
    return IndexShard(index, rows, rescore, np.empty(0, np.int64) if hidden is None else hidden, norms)


def read_norms(path: Path, count: int) -> np.ndarray:
    """A shard's kept norms, one finite float32 per row, or refused naming the rebuild."""
    try:
        norms: np.ndarray = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise IndexMismatchError(f"{path}: unreadable row norms ({error}); rebuild the index") from error
    if norms.shape != (count,) or norms.dtype != np.float32 or not np.isfinite(norms).all():
        raise IndexMismatchError(
            f"{path}: holds {norms.dtype} {norms.shape}, the shard needs {count} finite float32 norms; "
            "rebuild the index with `influence index build --kind gradient`"
        )
    return norms


def check_storage(
    place: Path, layout: StorageLayout, index: faiss.Index, count: int, dim: int
) -> RowFile | None:
    """The shard's index is held as the manifest's storage says, or refused; a re-scored storage's float16
    vectors (one per row, the index's width) are returned, read from disk as they are asked for."""
    if layout.storage not in STORAGES:
        raise IndexMismatchError(f"{place}: unknown storage {layout.storage!r}; rebuild the index")
    held = type(faiss.downcast_index(index)).__name__
    wanted = _STORAGE_CLASS.get(layout.storage)
    if wanted is not None and wanted not in held:
        raise IndexMismatchError(
            f"{place}: the manifest says storage {layout.storage!r} but the index is a {held}; "
            "rebuild it with `influence index build --kind gradient`"
        )
    if not layout.rescored:
        return None
    path = place / RESCORE_FILE
    try:
        rescore = RowFile(path)
    except (OSError, ValueError) as error:
        raise IndexMismatchError(
            f"{path}: unreadable re-scoring vectors ({error}); rebuild the index"
        ) from error
    if tuple(rescore.shape) != (count, dim) or rescore.dtype != np.float16:
        raise IndexMismatchError(
            f"{path}: holds {rescore.dtype} {rescore.shape}, the index needs float16 "
            f"({count}, {dim}); rebuild the index"
        )
    return rescore
