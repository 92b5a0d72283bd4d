import json

import numpy as np
import pytest

from index import IndexMismatchError, build_index, load_index


@pytest.fixture
def features():
    return np.random.default_rng(0).standard_normal((500, 24)).astype(np.float32)


def brute_force(features, query, k):
    distances = ((features - query) ** 2).sum(axis=1)
    order = np.argsort(distances, kind="stable")[:k]
    return order, distances[order]


def test_flat_search_equals_brute_force(tmp_path, features):
    build_index(features, tmp_path / "idx", "model-a", "data-a")
    loaded = load_index(tmp_path / "idx", "model-a", "data-a")
    for query in features[:5] + 0.1:
        rows, distances = loaded.search(query[None], 20)
        expected_rows, expected_distances = brute_force(features, query, 20)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_allclose(distances, expected_distances, rtol=1e-4)


@pytest.mark.parametrize("factory", ["IVF16,Flat", "HNSW16"])
def test_approximate_indexes_recall_most_neighbours(tmp_path, features, factory):
    build_index(features, tmp_path / "idx", "m", "d", factory=factory)
    loaded = load_index(tmp_path / "idx", "m", "d")
    if hasattr(loaded.index, "nprobe"):
        loaded.index.nprobe = 4
    recall = np.mean(
        [
            np.isin(brute_force(features, q, 10)[0], loaded.search(q[None], 10)[0]).mean()
            for q in features[:20]
        ]
    )
    assert recall > 0.7
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["factory"] == factory


def test_manifest_mismatch_is_refused(tmp_path, features):
    build_index(features, tmp_path / "idx", "model-a", "data-a")
    with pytest.raises(IndexMismatchError, match="model fingerprint"):
        load_index(tmp_path / "idx", "model-b", "data-a")
    with pytest.raises(IndexMismatchError, match="data fingerprint"):
        load_index(tmp_path / "idx", "model-a", "data-b")
    with pytest.raises(IndexMismatchError, match="no index manifest"):
        load_index(tmp_path / "missing", "model-a", "data-a")


def test_failed_rebuild_keeps_the_previous_index(tmp_path, features, monkeypatch):
    build_index(features, tmp_path / "idx", "model-a", "data-a")
    import index.store as store

    def broken_write(*_):
        raise OSError("disk full")

    monkeypatch.setattr(store.faiss, "write_index", broken_write)
    with pytest.raises(OSError, match="disk full"):
        build_index(features[:10], tmp_path / "idx", "model-b", "data-b")
    assert load_index(tmp_path / "idx", "model-a", "data-a").manifest.count == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_bad_arguments(tmp_path, features):
    with pytest.raises(ValueError, match="factory"):
        build_index(features, tmp_path / "idx", "m", "d", factory="NotAnIndex")
    with pytest.raises(ValueError, match="metric"):
        build_index(features, tmp_path / "idx", "m", "d", metric="cosine")
    build_index(features, tmp_path / "idx", "m", "d")
    with pytest.raises(ValueError, match="dim"):
        load_index(tmp_path / "idx", "m", "d").search(np.zeros((1, 3)), 5)
