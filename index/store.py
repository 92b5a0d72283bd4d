"""Build, store and load the FAISS index over kNN features, guarded by a manifest.

An index folder holds ``index.faiss`` (FAISS's own binary format), ``rows.json`` (training row of each
vector, in insertion order) and ``manifest.json``. The folder is written in one atomic rename, so a crash
leaves the previous index intact. Loading checks the model and data fingerprints: scores computed against
an index of another model or another dataset would be silently wrong, so that is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from interpret.config import DEFAULT_FACTORY, DEFAULT_KNN_METRIC, Metric
from interpret.storage import atomic_directory, write_json_atomic

INDEX_FILE, ROWS_FILE, MANIFEST_FILE = "index.faiss", "rows.json", "manifest.json"
_METRICS = {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT}


class IndexMismatchError(ValueError):
    """The stored index was built for another model or dataset (or is missing/corrupt)."""


@dataclass(frozen=True)
class Manifest:
    model_fingerprint: str
    data_fingerprint: str
    dim: int
    metric: str
    factory: str
    count: int
    created_at: str
    feature: str = "input of the final linear layer"
    faiss_version: str = faiss.__version__
    adapter: dict[str, Any] | None = None
    """The PEFT adapter the model is (type, base, rank, targets), or null for a plain model."""


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a GPU (faiss-gpu); faiss-cpu always says no."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _to_search_device(index: faiss.Index) -> faiss.Index:
    if not gpu_available():
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError:  # e.g. HNSW has no GPU version: search it on the CPU
        return index


def empty_index(dim: int, factory: str, metric: Metric = DEFAULT_KNN_METRIC) -> faiss.Index:
    """An untrained index of this shape; raises ``ValueError`` naming a bad factory string or metric.

    Cheap: call it before encoding a training set, so a typo fails in milliseconds, not after the encode."""
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    try:
        return faiss.index_factory(dim, factory, _METRICS[metric])
    except RuntimeError as error:
        raise ValueError(
            f"factory={factory!r} is not a FAISS factory string for {dim}-dimensional vectors "
            "(try 'Flat', 'IVF1024,Flat', 'HNSW32')"
        ) from error


def filled_index(vectors: np.ndarray, factory: str, metric: Metric) -> faiss.Index:
    """An index of this factory holding ``vectors`` (row i = id i), trained on them first if it must be."""
    index = empty_index(vectors.shape[1], factory, metric)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def write_index_folder(directory: str | Path, index: faiss.Index, manifest: dict[str, Any]) -> None:
    """``index.faiss``, ``rows.json`` and ``manifest.json``, replacing ``directory`` in one rename."""
    with atomic_directory(directory) as scratch:
        write_index_files(scratch, index, np.arange(index.ntotal))
        write_json_atomic(scratch / MANIFEST_FILE, manifest)


def write_index_files(folder: Path, index: faiss.Index, rows: np.ndarray) -> None:
    """``index.faiss`` and ``rows.json`` (the training row of each stored vector, in id order) in ``folder``,
    a scratch folder that is renamed into place whole."""
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(folder / INDEX_FILE))
    (folder / ROWS_FILE).write_text(json.dumps([int(row) for row in rows]))


def read_index_folder(directory: str | Path, count: int) -> tuple[faiss.Index, np.ndarray]:
    """The stored index (on the GPUs when faiss-gpu sees any) and its rows; refused if the counts differ."""
    index = faiss.read_index(str(Path(directory) / INDEX_FILE))
    rows = np.asarray(json.loads((Path(directory) / ROWS_FILE).read_text()), dtype=np.int64)
    if index.ntotal != count or len(rows) != count:
        raise IndexMismatchError(f"{directory}: index holds {index.ntotal} vectors, manifest says {count}")
    return _to_search_device(index), rows


@dataclass
class FeatureIndex:
    """A loaded index: ``search(features, k) -> (rows, distances)`` in training-set rows."""

    index: faiss.Index
    rows: np.ndarray
    manifest: Manifest

    def search(self, features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest rows to one query vector ``[1, D]``, nearest first (L2: squared distances)."""
        features = np.ascontiguousarray(features, dtype=np.float32).reshape(1, -1)
        if features.shape[1] != self.manifest.dim:
            raise ValueError(
                f"query features have dim {features.shape[1]}, the index has {self.manifest.dim}"
            )
        distances, positions = self.index.search(features, min(k, self.manifest.count))
        keep = positions[0] >= 0  # approximate indexes may return fewer than k
        return self.rows[positions[0][keep]], distances[0][keep]

    def vectors(self) -> np.ndarray | None:
        """Every stored feature vector ``[N, D]`` in training-row order, or ``None`` when the index does not
        keep them exactly (compressed codes: the caller encodes instead)."""
        if (
            self.index.ntotal != len(self.rows)
            or "PQ" in self.manifest.factory
            or "SQ" in self.manifest.factory
        ):
            return None
        try:
            stored = faiss.downcast_index(self.index).reconstruct_n(0, self.index.ntotal)
        except RuntimeError:
            return None
        out: np.ndarray = np.empty_like(stored)
        out[self.rows] = stored
        return out


def build_index(
    features: np.ndarray,
    directory: str | Path,
    model_fingerprint: str,
    data_fingerprint: str,
    factory: str = DEFAULT_FACTORY,
    metric: Metric = DEFAULT_KNN_METRIC,
    adapter: dict[str, Any] | None = None,
) -> Manifest:
    """Index ``features`` (row i = training row i) and write the folder atomically."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"features must be a non-empty [N, D] array, got shape {features.shape}")
    index = filled_index(features, factory, metric)
    manifest = Manifest(
        model_fingerprint,
        data_fingerprint,
        features.shape[1],
        metric,
        factory,
        len(features),
        datetime.now(UTC).isoformat(),
        adapter=adapter,
    )
    write_index_folder(directory, index, asdict(manifest))
    return manifest


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise IndexMismatchError(f"{path}: no index manifest; build one with `influence index build`")
    try:
        return Manifest(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise IndexMismatchError(f"{path}: unreadable manifest ({error}); rebuild the index") from error


def load_index(directory: str | Path, model_fingerprint: str, data_fingerprint: str) -> FeatureIndex:
    """Load an index built for exactly this model and this training data, or refuse."""
    manifest = read_manifest(directory)
    for what, stored, expected in (
        ("model", manifest.model_fingerprint, model_fingerprint),
        ("data", manifest.data_fingerprint, data_fingerprint),
    ):
        if stored != expected:
            raise IndexMismatchError(
                f"{directory}: index was built for {what} fingerprint {stored[:12]}, but the loaded {what} "
                f"is {expected[:12]}; rebuild it with `influence index build`"
            )
    return FeatureIndex(*read_index_folder(directory, manifest.count), manifest)
