"""Offline job: kNN features of the training set in a FAISS index with a manifest (the only faiss user)."""

from index.store import (
    FeatureIndex,
    IndexMismatchError,
    Manifest,
    build_index,
    empty_index,
    load_index,
    read_manifest,
)

__all__ = [
    "FeatureIndex",
    "IndexMismatchError",
    "Manifest",
    "build_index",
    "empty_index",
    "load_index",
    "read_manifest",
]
