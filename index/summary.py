"""One summary of any index folder, kNN or gradient: what ``influence index info`` prints."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from index.gradient import GRADIENT_KIND, read_gradient_manifest
from index.storage import ROW_ID_BYTES
from index.store import INDEX_FILE, MANIFEST_FILE, IndexMismatchError, read_manifest


def index_summary(directory: str | Path) -> dict[str, Any]:
    """The manifest's facts and the resident bytes a load will take: a gradient index's recorded estimate
    (``index.storage.resident_bytes``), a kNN index's stored size (FAISS reads its file whole)."""
    path = Path(directory) / MANIFEST_FILE
    try:
        kind = json.loads(path.read_text()).get("kind", "knn")
    except (OSError, ValueError) as error:
        raise IndexMismatchError(f"{path}: no readable index manifest ({error}); build the index") from error
    if kind == GRADIENT_KIND:
        gradient = read_gradient_manifest(directory)
        return {**asdict(gradient), "kind": GRADIENT_KIND, "resident_bytes": gradient.memory_bytes}
    knn = read_manifest(directory)
    stored = (Path(directory) / INDEX_FILE).stat().st_size + knn.count * ROW_ID_BYTES
    return {**asdict(knn), "kind": "knn", "storage": "float32", "resident_bytes": stored}
