"""A gradient index that changes after its build, without touching its rows' vectors.

* :func:`remove_gradient_rows` leaves training rows out of every later answer: the manifest records them
  (each shard searches past them, ``index.shards.IndexShard``).
* :func:`append_rows` adds a shard holding new rows' preconditioned gradients, computed with the index's
  own projection and preconditioner (both kept fixed: the Fisher is not refitted, so the rows already
  stored keep their vectors and scores), coded with the index's own trained quantiser. The new folder is
  the old files hard-linked (a one-shard index's files move into ``shard-00000/``) plus the new shard and
  manifest, renamed into place in one step: an interrupted add leaves the old index as it was.

Both write a ``history`` entry in the manifest; an add extends its data chain (``data_chain``,
``additions``), so an engine loads the added rows' texts after the training data
(``interpret.data.with_added_rows``) and the index's data fingerprint is the chain's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.gradient import GradientManifest, read_gradient_manifest
from index.shards import QUANTISER_FILE, fill_shard, needs_training, shard_directory
from index.storage import NORMS_FILE, RESCORE_FILE, resident_bytes
from index.store import (
    INDEX_FILE,
    MANIFEST_FILE,
    ROWS_FILE,
    IndexMismatchError,
    empty_index,
    write_index_files,
)
from index.vectors import ChunkedVectors
from interpret.data import DataSpec, chain_fingerprint
from interpret.storage import atomic_directory, write_json_atomic

SHARD_FILES = (INDEX_FILE, ROWS_FILE, RESCORE_FILE, NORMS_FILE)
"""A shard's own files (a one-shard index keeps them at the top of its folder)."""


def _history(manifest: GradientManifest, entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(manifest.history or []), {**entry, "at": datetime.now(UTC).isoformat()}]


def remove_gradient_rows(directory: str | Path, rows: Sequence[int]) -> GradientManifest:
    """Leave training ``rows`` out of every later answer of the index in ``directory``: recorded in its
    manifest (rewritten atomically, with a history entry naming how many rows and their SHA-256), the
    vectors untouched, so it takes milliseconds and a rebuild brings them back. Rows already removed stay
    so; a row the index does not hold is refused, naming it. A served index sees it once reloaded."""
    manifest = read_gradient_manifest(directory)
    asked = np.unique(np.asarray(list(rows), dtype=np.int64))
    if len(asked) == 0:
        raise ValueError("no rows to remove: name at least one training row")
    outside = asked[(asked < 0) | (asked >= manifest.count)]
    if len(outside):
        raise ValueError(
            f"rows {outside[:5].tolist()} are not in the index, which holds rows 0 to {manifest.count - 1}"
        )
    before = manifest.removed_rows or []
    removed = np.union1d(before, asked).astype(np.int64)
    entry = {
        "op": "remove",
        "rows": len(asked),
        "newly_removed": int(len(removed) - len(before)),
        "rows_sha256": hashlib.sha256(",".join(map(str, asked.tolist())).encode()).hexdigest(),
    }
    updated = dataclasses.replace(manifest, removed_rows=removed.tolist(), history=_history(manifest, entry))
    write_json_atomic(Path(directory) / MANIFEST_FILE, asdict(updated))
    return updated


def check_growable(directory: str | Path, manifest: GradientManifest, fingerprint: str) -> None:
    """Refuse, before any gradient is computed, an add the index cannot take: a trained storage whose
    quantiser was not kept, or rows already added or already its training data."""
    if fingerprint in manifest.chain:
        raise ValueError(
            f"{directory}: these rows are already in the index (data fingerprint {fingerprint[:12]})"
        )
    if needs_training(manifest.dim, manifest.factory) and not (Path(directory) / QUANTISER_FILE).is_file():
        raise IndexMismatchError(
            f"{directory}: a {manifest.storage} index built before it kept its quantiser; rebuild it with "
            "`influence index build --kind gradient` to add rows to it"
        )


def template_of(directory: str | Path, manifest: GradientManifest) -> faiss.Index:
    """The empty index every shard of this index copies: its kept quantiser, or its untrained factory."""
    path = Path(directory) / QUANTISER_FILE
    template = (
        faiss.read_index(str(path)) if path.is_file() else empty_index(manifest.dim, manifest.factory, "ip")
    )
    if manifest.nprobe is not None:
        faiss.ParameterSpace().set_index_parameter(template, "nprobe", manifest.nprobe)
    return template


def append_rows(
    directory: str | Path, vectors: ChunkedVectors, spec: DataSpec, fingerprint: str, seconds: float = 0.0
) -> GradientManifest:
    """Append ``vectors`` (the new rows' preconditioned gradients, in the order of ``spec``'s rows) to the
    index in ``directory`` as one new shard, atomically; ``seconds``: what computing them took."""
    directory = Path(directory)
    manifest = read_gradient_manifest(directory)
    check_growable(directory, manifest, fingerprint)
    if vectors.dim != manifest.dim:
        raise IndexMismatchError(f"{directory}: new rows have width {vectors.dim}, the index {manifest.dim}")
    count, added = manifest.count, vectors.count
    chain = [*manifest.chain, fingerprint]
    with atomic_directory(directory) as scratch:
        _link_existing(directory, scratch, manifest.shards)
        rows = np.arange(count, count + added)
        place = shard_directory(scratch, manifest.shards + 1, manifest.shards)
        shard = fill_shard(
            template_of(directory, manifest), vectors, rows, place, manifest.layout.rescored, start=0
        )
        write_index_files(place, shard.index, rows)
        del shard
        addition = {"spec": asdict(spec.with_absolute_source()), "fingerprint": fingerprint}
        updated = dataclasses.replace(
            manifest,
            count=count + added,
            shards=manifest.shards + 1,
            shard_counts=[*manifest.counts, added],
            resident_bytes=manifest.memory_bytes + resident_bytes(manifest.layout, added, manifest.dim),
            data_fingerprint=chain_fingerprint(chain),
            data_chain=chain,
            additions=[*(manifest.additions or []), {**addition, "rows": added, "first_row": count}],
            history=_history(
                manifest, {"op": "add", "rows": added, "fingerprint": fingerprint, "seconds": seconds}
            ),
        )
        write_json_atomic(scratch / MANIFEST_FILE, asdict(updated))
    return updated


def _link_existing(directory: Path, scratch: Path, shards: int) -> None:
    """Every file of the index in ``directory`` hard-linked into ``scratch`` (no vector is copied), a
    one-shard index's own files into ``shard-00000/``; the manifest is written anew."""
    for path in sorted(directory.rglob("*")):
        if path.is_dir() or path == directory / MANIFEST_FILE:
            continue
        relative = path.relative_to(directory)
        if shards == 1 and relative.name in SHARD_FILES and relative.parent == Path("."):
            relative = shard_directory(Path("."), 2, 0) / relative.name
        target = scratch / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
