"""The normalised view of a gradient index (``normalize=true``): scores are cosines of the test and training
gradients in the preconditioned space, checked against a direct computation with ``A^-1/2``; every storage
finds the exact top, shards and removed rows behave as in the raw view, an added shard keeps its norms, and
an index built before norms were kept is refused by name (a 422 from the service)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from index.gradient import GradientSpec, load_gradient_index, write_gradient_index
from index.storage import NORMS_FILE, STORAGES, storage_layout
from index.vectors import ChunkedVectors, preconditioned_norms
from interpret.config import MethodUnavailableError, QueryConfig, unused_knobs

SPEC = GradientSpec(rank=None, seed=0, preconditioner="fisher", damping=1.0, tracked_layers=1)
ROWS, DIM = 600, 32


def _gradients(seed: int = 0) -> np.ndarray:
    """Rows whose norms spread over two orders of magnitude, so raw and normalised rankings differ."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((ROWS, 4)) @ rng.standard_normal((4, DIM)) + rng.standard_normal(
        (ROWS, DIM)
    )
    return (directions * np.exp(rng.uniform(-1.5, 1.5, (ROWS, 1)))).astype(np.float32)


def _inverse(gradients: np.ndarray) -> np.ndarray:
    fisher = gradients.T.astype(np.float64) @ gradients / len(gradients)
    return np.linalg.inv(fisher + SPEC.damping * np.eye(DIM))


def _write(folder, gradients, storage="float32", shards=1):
    inverse = _inverse(gradients)
    vectors = ChunkedVectors(
        [gradients[:250], gradients[250:]], lambda block: block @ inverse.T.astype(np.float32)
    )
    layout = storage_layout(storage, ROWS, DIM, "Flat", ivf_lists=8, nprobe=8, pca_dim=DIM)
    return write_gradient_index(
        vectors, folder, "model", "data", SPEC, [], inverse=inverse, layout=layout, shards=shards
    )


def _load(folder):
    return load_gradient_index(folder, "model", "data", 1)


def _cosines(gradients: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``-cos(A^-1/2 g_test, A^-1/2 g_z)`` for every row, ``A^-1/2`` from an eigendecomposition."""
    values, vectors = np.linalg.eigh(_inverse(gradients))
    root = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    rows, test = gradients.astype(np.float64) @ root, root @ query.astype(np.float64)
    return -(rows @ test) / (np.linalg.norm(rows, axis=1) * np.linalg.norm(test))


def test_norms_are_the_square_roots_of_each_rows_self_product():
    gradients = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    stored = np.array([[1.0, 1.0], [-4.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(preconditioned_norms(gradients, stored), [np.sqrt(7.0), 2.0])


@pytest.mark.parametrize("shards", [1, 3])
def test_float32_scores_are_the_exact_cosines_and_shards_change_nothing(tmp_path, shards):
    gradients = _gradients()
    manifest = _write(tmp_path / "index", gradients, shards=shards)
    assert manifest.norms == "preconditioned"
    index = _load(tmp_path / "index")
    for query in (gradients[7] + 0.05, gradients[:50].mean(0), -gradients[400]):
        expected = _cosines(gradients, query)
        (helpful, helpful_scores), (harmful, harmful_scores) = index.search(query, 25, normalize=True)
        np.testing.assert_array_equal(helpful, np.argsort(expected, kind="stable")[:25])
        np.testing.assert_array_equal(harmful, np.argsort(-expected, kind="stable")[:25])
        np.testing.assert_allclose(helpful_scores, expected[helpful], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(harmful_scores, expected[harmful], rtol=1e-4, atol=1e-6)
        raw = index.search(query, 25)
        assert set(raw[0][0].tolist()) != set(helpful.tolist())  # large gradients lead the raw view


FOUND_OF_20 = {"float16": 20, "sq8": 16, "ivf-pq": 18, "pca-sq8": 20}
"""Rows of the exact normalised top 20 each storage finds, at least. sq8 is the least exact: no float16
copy re-scores its candidates, and its codes' absolute error is divided by a small row's small norm."""


@pytest.mark.parametrize("storage", [s for s in STORAGES if s != "float32"])
def test_a_compressed_storage_finds_the_exact_normalised_top(tmp_path, storage):
    gradients = _gradients(1)
    _write(tmp_path / "index", gradients, storage, shards=2)
    index = _load(tmp_path / "index")
    query = gradients[11] + 0.1
    expected = _cosines(gradients, query)
    (helpful, scores), (harmful, _) = index.search(query, 20, normalize=True)
    assert len(set(helpful.tolist()) & set(np.argsort(expected)[:20].tolist())) >= FOUND_OF_20[storage]
    assert len(set(harmful.tolist()) & set(np.argsort(-expected)[:20].tolist())) >= FOUND_OF_20[storage]
    tolerance = 0.05 if storage == "sq8" else 0.01  # float16 re-scoring, or decoded codes
    np.testing.assert_allclose(scores, expected[helpful], atol=tolerance)


def test_removed_rows_stay_out_of_the_normalised_view(tmp_path):
    from index.growth import remove_gradient_rows

    gradients = _gradients()
    _write(tmp_path / "index", gradients, shards=2)
    before = _load(tmp_path / "index").search(gradients[3], 10, normalize=True)
    removed = [int(before[0][0][0]), int(before[1][0][0])]
    remove_gradient_rows(tmp_path / "index", removed)
    after = _load(tmp_path / "index").search(gradients[3], 10, normalize=True)
    np.testing.assert_array_equal(after[0][0][:9], before[0][0][1:])
    np.testing.assert_array_equal(after[1][0][:9], before[1][0][1:])


def test_rows_added_later_are_normalised_as_a_build_of_all_of_them_is(tmp_path):
    from index.growth import append_rows
    from interpret.data import DataSpec

    gradients = _gradients()
    inverse = _inverse(gradients[:500])
    transform = lambda block: block @ inverse.T.astype(np.float32)  # noqa: E731
    layout = storage_layout("float32", 500, DIM, "Flat")
    write_gradient_index(
        ChunkedVectors([gradients[:500]], transform),
        tmp_path / "grown",
        "model",
        "data",
        SPEC,
        [],
        inverse=inverse,
        layout=layout,
    )
    spec = DataSpec(str(tmp_path / "more.tsv"))
    append_rows(tmp_path / "grown", ChunkedVectors([gradients[500:]], transform), spec, "more")
    write_gradient_index(
        ChunkedVectors([gradients], transform),
        tmp_path / "whole",
        "model",
        "data",
        SPEC,
        [],
        inverse=inverse,
        layout=storage_layout("float32", ROWS, DIM, "Flat"),
    )
    from index.gradient import read_gradient_manifest

    grown = read_gradient_manifest(tmp_path / "grown")
    got = load_gradient_index(tmp_path / "grown", "model", grown.data_fingerprint, 1).search(
        gradients[550], 15, normalize=True
    )
    expected = _load(tmp_path / "whole").search(gradients[550], 15, normalize=True)
    for (rows, scores), (rows_expected, scores_expected) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(rows, rows_expected)
        np.testing.assert_allclose(scores, scores_expected, rtol=1e-5)


def _as_built_before_norms(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("norms")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / NORMS_FILE).unlink()


def test_an_index_built_before_norms_were_kept_is_refused_by_name(tmp_path):
    gradients = _gradients()
    _write(tmp_path / "index", gradients)
    _as_built_before_norms(tmp_path / "index")
    index = _load(tmp_path / "index")
    assert len(index.search(gradients[0], 5)[0][0]) == 5  # the raw view still answers
    with pytest.raises(MethodUnavailableError, match="rebuild it with `influence index build") as refusal:
        index.search(gradients[0], 5, normalize=True)
    assert refusal.value.field == "normalize"


def test_a_torn_norms_file_is_refused_at_load(tmp_path):
    from index import IndexMismatchError

    _write(tmp_path / "index", _gradients())
    np.save(tmp_path / "index" / NORMS_FILE, np.ones(7, dtype=np.float32))
    with pytest.raises(IndexMismatchError, match=r"norms\.npy: holds float32 \(7,\), the shard needs 600"):
        _load(tmp_path / "index")


def test_normalize_is_read_by_the_gradient_index_alone():
    config = QueryConfig(normalize=True)
    assert unused_knobs(config, "gradient", "lissa") == []
    assert [name for name, _ in unused_knobs(config, "fastif", "lissa")] == ["normalize"]
    assert "normalize" in [
        name for name, _ in unused_knobs(QueryConfig(normalize=True, rerank=5), "gradient", "lissa")
    ]
