"""How a gradient index holds its vectors (index.storage): every storage round-trips, ivf-pq's answers carry
exact scores, a compressed storage's recall is measured and recorded, memory is checked before anything is
allocated, and a folder whose storage does not match its manifest is refused."""

import json
import os

import numpy as np
import pytest
import torch

from engine.builds import build_gradient_index
from engine.pipeline import answer_query, local_engine
from index import IndexMismatchError
from index.gradient import (
    GradientSpec,
    load_gradient_index,
    read_gradient_manifest,
    shard_folder,
    write_gradient_index,
)
from index.shards import RowFile, principal_directions
from index.storage import (
    RESCORE_FILE,
    STORAGES,
    IndexTooLargeError,
    StorageLayout,
    default_lists,
    default_pq_bytes,
    resident_bytes,
    storage_layout,
)
from interpret.config import GradientIndexConfig, QueryConfig

SPEC = GradientSpec(rank=None, seed=0, preconditioner="identity", damping=1.0, tracked_layers=1)
ROWS, DIM = 800, 48


def _vectors(seed: int = 0) -> np.ndarray:
    """Rows with structure (a few shared directions plus noise), as projected gradients have."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((6, DIM))
    return (rng.standard_normal((ROWS, 6)) @ basis + 0.3 * rng.standard_normal((ROWS, DIM))).astype(
        np.float32
    )


def _write(folder, storage, vectors, **knobs):
    layout = storage_layout(storage, len(vectors), vectors.shape[1], "Flat", **knobs)
    probes = vectors[:10] + 0.1
    return write_gradient_index(vectors, folder, "model", "data", SPEC, [], layout=layout, probes=probes)


def _load(folder, max_bytes=None):
    return load_gradient_index(folder, "model", "data", 1, max_bytes)


def _exact_top(vectors, query, top):
    products = vectors.astype(np.float64) @ query.astype(np.float64)
    return np.argsort(-products)[:top], np.argsort(products)[:top]


@pytest.mark.parametrize("storage", STORAGES)
def test_every_storage_round_trips_its_manifest_and_answers(tmp_path, storage):
    vectors = _vectors()
    written = _write(tmp_path / storage, storage, vectors)
    loaded = _load(tmp_path / storage)
    assert loaded.manifest == written == read_gradient_manifest(tmp_path / storage)
    assert written.storage == storage and written.count == ROWS and written.dim == DIM
    assert written.resident_bytes == resident_bytes(written.layout, ROWS, DIM)
    assert (written.storage_recall is None) == (storage == "float32")
    query = vectors[3] + 0.05
    (helpful, helpful_scores), (harmful, harmful_scores) = loaded.search(query, 20)
    assert len(helpful) == len(harmful) == 20
    assert np.all(np.diff(helpful_scores) >= 0) and np.all(np.diff(harmful_scores) <= 0)  # best first
    best, worst = _exact_top(vectors, query, 20)
    overlap = min(len(np.intersect1d(helpful, best)), len(np.intersect1d(harmful, worst))) / 20
    assert overlap >= (1.0 if storage == "float32" else 0.8), overlap


def test_float32_answers_are_the_exact_inner_products(tmp_path):
    vectors = _vectors()
    _write(tmp_path / "f32", "float32", vectors)
    query = vectors[7] - 0.2
    (helpful, scores), _ = _load(tmp_path / "f32").search(query, 10)
    best, _ = _exact_top(vectors, query, 10)
    np.testing.assert_array_equal(helpful, best)
    np.testing.assert_allclose(scores, -(vectors[helpful].astype(np.float64) @ query), rtol=1e-5)


def test_ivf_pq_rescores_its_candidates_exactly_against_float16_vectors(tmp_path):
    """The codes only choose candidates: each returned row's score is its float16 vector's exact inner
    product with the query (score = -ip), and the order follows those exact scores."""
    vectors = _vectors(1)
    manifest = _write(tmp_path / "pq", "ivf-pq", vectors, ivf_lists=8, pq_bytes=6, nprobe=4)
    assert (manifest.ivf_lists, manifest.pq_bytes, manifest.nprobe) == (8, 6, 4)
    index = _load(tmp_path / "pq")
    stored = np.load(tmp_path / "pq" / RESCORE_FILE)
    assert stored.dtype == np.float16 and stored.shape == (ROWS, DIM)
    np.testing.assert_array_equal(stored, vectors.astype(np.float16))
    query = vectors[11] * 0.5
    for rows, scores in index.search(query, 25):
        exact = -(stored[rows].astype(np.float32) @ query.astype(np.float32))
        np.testing.assert_allclose(scores, exact, rtol=1e-6, atol=1e-6)
    recall = manifest.storage_recall
    assert recall is not None and recall["queries"] == 10 and recall["top"] == 100
    assert recall["recall_helpful"] >= 0.8 and recall["recall_harmful"] >= 0.8, recall


def test_the_rescoring_rows_are_read_from_the_file_in_any_order(tmp_path):
    stored = np.random.default_rng(3).standard_normal((50, 6)).astype(np.float16)
    np.save(tmp_path / "v.npy", stored)
    rows = RowFile(tmp_path / "v.npy")
    assert (rows.shape, rows.dtype, len(rows)) == ((50, 6), np.float16, 50)
    for pick in ([7, 3, 4, 5, 49, 0, 3], [], list(range(50))):
        np.testing.assert_array_equal(rows[np.asarray(pick, dtype=np.int64)], stored[pick])


def test_a_truncated_rescoring_copy_is_refused_when_the_index_loads(tmp_path):
    vectors = _vectors(2)
    _write(tmp_path / "pca", "pca-sq8", vectors, pca_dim=8)
    path = tmp_path / "pca" / RESCORE_FILE
    os.truncate(path, path.stat().st_size - 100)  # numpy's header check sees it: never a short read later
    refusal = r"vectors\.f16\.npy: unreadable re-scoring vectors .*; rebuild the index"
    with pytest.raises(IndexMismatchError, match=refusal):
        _load(tmp_path / "pca")


def test_principal_directions_are_the_top_right_singular_vectors():
    """The uncentred second moment's eigenvectors are X's right singular vectors (X = U S V^T gives
    X^T X = V S^2 V^T): the same subspace, each direction up to its sign."""
    sample = _vectors(4) + 3.0  # an offset centring would remove: the directions must keep it
    ours = principal_directions(sample, 5)
    _, _, right = np.linalg.svd(sample.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(np.abs(ours @ right[:5].T), np.eye(5), atol=1e-4)
    np.testing.assert_allclose(ours @ ours.T, np.eye(5), atol=1e-5)


def test_pca_sq8_rescores_its_candidates_exactly_and_finds_the_top(tmp_path):
    """Its codes keep 8 of 48 directions (the rows hold 6 shared ones plus noise, and an offset): each
    returned row's score is its float16 vector's exact inner product, and the exact top is found."""
    vectors = _vectors(5) + 1.0
    manifest = _write(tmp_path / "pca", "pca-sq8", vectors, pca_dim=8)
    assert (manifest.pca_dim, manifest.factory) == (8, "PCA8,SQ8")
    assert (
        manifest.resident_bytes == ROWS * (8 + 8 + 4) + 8 * DIM * 4 + 2 * 4 * 8
    )  # codes, rows, norms, map, ranges
    index = _load(tmp_path / "pca")
    stored = np.load(tmp_path / "pca" / RESCORE_FILE)
    np.testing.assert_array_equal(stored, vectors.astype(np.float16))
    query = vectors[13] * 0.5 - 0.5
    best, worst = _exact_top(stored.astype(np.float32), query, 25)
    (helpful, helpful_scores), (harmful, harmful_scores) = index.search(query, 25)
    for rows, scores in ((helpful, helpful_scores), (harmful, harmful_scores)):
        exact = -(stored[rows].astype(np.float32) @ query.astype(np.float32))
        np.testing.assert_allclose(scores, exact, rtol=1e-6, atol=1e-6)
    assert len(np.intersect1d(helpful, best)) >= 24 and len(np.intersect1d(harmful, worst)) >= 24
    recall = manifest.storage_recall
    assert recall["recall_helpful"] >= 0.95 and recall["recall_harmful"] >= 0.95, recall


def test_the_recorded_recall_is_what_a_search_finds(tmp_path):
    """The manifest's recall is recomputed here from the loaded index and the exact products."""
    vectors = _vectors(2)
    probes = vectors[:10] + 0.1
    manifest = _write(tmp_path / "sq8", "sq8", vectors)
    index = _load(tmp_path / "sq8")
    found = {"helpful": [], "harmful": []}
    for probe in probes:
        (helpful, _), (harmful, _) = index.search(probe, 100)
        best, worst = _exact_top(vectors, probe, 100)
        found["helpful"].append(len(np.intersect1d(helpful, best)) / 100)
        found["harmful"].append(len(np.intersect1d(harmful, worst)) / 100)
    for side, values in found.items():
        assert manifest.storage_recall[f"recall_{side}"] == pytest.approx(np.mean(values), abs=0.011)


def test_layouts_are_checked_and_sized():
    assert default_lists(800) == 20 and default_lists(100) == 2 and default_lists(10) == 1
    assert DIM % default_pq_bytes(DIM) == 0 and default_pq_bytes(3360) == 420
    sizes = {
        storage: resident_bytes(storage_layout(storage, ROWS, DIM, "Flat"), ROWS, DIM) for storage in STORAGES
    }
    per_row = 8 + 4  # each row's id and its norm (the normalised view)
    assert sizes["float32"] == ROWS * (4 * DIM + per_row) and sizes["float16"] == ROWS * (2 * DIM + per_row)
    assert sizes["float32"] > sizes["float16"] > sizes["sq8"]
    million = storage_layout("ivf-pq", 10**6, 3360, "Flat")  # MiniLM's width at rank 16
    assert (million.ivf_lists, million.pq_bytes) == (1000, 420)
    assert resident_bytes(million, 10**6, 3360) / 10**6 < 1024  # the target: under 1 KB a row
    with pytest.raises(ValueError, match="must divide the vectors' width 48"):
        storage_layout("ivf-pq", ROWS, DIM, "Flat", pq_bytes=5)
    with pytest.raises(ValueError, match="use at most 20"):
        storage_layout("ivf-pq", ROWS, DIM, "Flat", ivf_lists=100)
    with pytest.raises(ValueError, match="use float16 or sq8"):
        storage_layout("ivf-pq", 100, DIM, "Flat")
    pca = storage_layout("pca-sq8", 10**6, 3360, "Flat")
    assert (pca.pca_dim, pca.rescored) == (256, True) and storage_layout(
        "pca-sq8", 10, 48, "Flat"
    ).pca_dim == 48
    assert resident_bytes(pca, 10**6, 3360) / 10**6 < 300  # 256 code bytes and an 8-byte row number
    with pytest.raises(ValueError, match="pca_dim=64 must be at most the vectors' width 48: use 48"):
        storage_layout("pca-sq8", ROWS, DIM, "Flat", pca_dim=64)
    with pytest.raises(ValueError, match="pca_dim applies to storage='pca-sq8', not 'sq8': drop pca_dim"):
        GradientIndexConfig(storage="sq8", pca_dim=64)
    with pytest.raises(ValueError, match="drop factory"):
        GradientIndexConfig(storage="sq8", factory="HNSW32")


def test_a_load_past_the_budget_is_refused_before_the_index_is_read(tmp_path):
    """The index file is garbage: a refusal that came after reading it would be FAISS's error, not this."""
    _write(tmp_path / "f32", "float32", _vectors())
    (tmp_path / "f32" / "index.faiss").write_bytes(b"not an index")
    need = read_gradient_manifest(tmp_path / "f32").resident_bytes
    with pytest.raises(IndexTooLargeError, match="INFLUENCE_MAX_INDEX_BYTES") as refused:
        _load(tmp_path / "f32", max_bytes=need // 3)
    advice = str(refused.value).split("build it with")[1]  # a third of float32: only sq8's codes fit
    assert advice.startswith(" --storage sq8 (sq8 (") and "float16" not in advice and "ivf-pq" not in advice


def test_a_storage_that_does_not_match_its_folder_is_refused(tmp_path):
    vectors = _vectors()
    _write(tmp_path / "f32", "float32", vectors)
    manifest = json.loads((tmp_path / "f32" / "manifest.json").read_text())
    (tmp_path / "f32" / "manifest.json").write_text(json.dumps({**manifest, "storage": "sq8"}))
    with pytest.raises(IndexMismatchError, match="storage 'sq8' but the index is a IndexFlatIP"):
        _load(tmp_path / "f32")
    _write(tmp_path / "pq", "ivf-pq", vectors, ivf_lists=8, pq_bytes=6)
    np.save(tmp_path / "pq" / RESCORE_FILE, vectors[:10].astype(np.float16))
    with pytest.raises(IndexMismatchError, match="the index needs float16"):
        _load(tmp_path / "pq")
    (tmp_path / "pq" / RESCORE_FILE).unlink()
    with pytest.raises(IndexMismatchError, match="unreadable re-scoring vectors"):
        _load(tmp_path / "pq")


def test_a_build_past_the_budget_is_refused_before_any_work(engine_dirs, tmp_path, monkeypatch):
    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    monkeypatch.setattr(engine.backend.explainer, "kfac_factors", lambda *a: pytest.fail("work was done"))
    monkeypatch.setattr(engine.backend.explainer, "gradient_shard", lambda *a: pytest.fail("work was done"))
    config = GradientIndexConfig(rank=4, damping=0.1)
    with pytest.raises(IndexTooLargeError, match=r"needs about .* in memory and the budget"):
        build_gradient_index(engine, tmp_path / "big", config, max_bytes=100)  # less than one row
    assert not (tmp_path / "big").exists() and not shard_folder(tmp_path / "big").exists()


def test_a_compressed_build_answers_queries_and_says_how_it_holds_them(engine_dirs, tmp_path):
    """sq8 over the tiny model's rows: the quality block names the storage and its measured recall, and
    the answer's rows are (nearly) the float32 index's."""
    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    answers = {}
    for storage in ("float32", "sq8"):
        config = GradientIndexConfig(rank=4, damping=0.1, storage=storage)
        manifest = build_gradient_index(engine, tmp_path / storage, config)
        assert manifest.storage == storage
        engine.gradient_index = load_gradient_index(
            tmp_path / storage, engine.identity.model_fingerprint, engine.identity.data_fingerprint, 1
        )
        answers[storage] = answer_query(engine, "the plot was good and fun", config=QueryConfig(top=10))
    quality = answers["sq8"].gradient_index
    assert quality["storage"] == "sq8" and quality["storage_recall"]["queries"] == 20
    assert answers["float32"].gradient_index["storage_recall"] is None
    same = len({e.row for e in answers["float32"].helpful} & {e.row for e in answers["sq8"].helpful})
    assert same >= 8, same


def test_index_info_reports_rows_storage_and_resident_bytes(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    manifest = _write(tmp_path / "pq", "ivf-pq", _vectors(), ivf_lists=8, pq_bytes=6)
    result = CliRunner().invoke(app, ["index", "info", "--index", str(tmp_path / "pq"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["kind"] == "gradient" and summary["storage"] == "ivf-pq" and summary["count"] == ROWS
    assert summary["resident_bytes"] == manifest.resident_bytes
    shown = CliRunner().invoke(app, ["index", "info", "--index", str(tmp_path / "pq")], terminal_width=200)
    assert f"{ROWS:,} rows x {DIM}" in shown.output and "ivf-pq" in shown.output


def test_a_manifest_from_before_storages_loads_as_float32_with_its_bytes_estimated(tmp_path):
    vectors = _vectors()
    _write(tmp_path / "old", "float32", vectors)
    path = tmp_path / "old" / "manifest.json"
    new_fields = ("storage", "ivf_lists", "pq_bytes", "nprobe", "resident_bytes", "storage_recall", "shards")
    new_fields += ("shard_counts",)
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in new_fields}
    path.write_text(json.dumps(old))
    manifest = _load(tmp_path / "old").manifest
    assert manifest.storage == "float32" and manifest.resident_bytes is None
    assert manifest.layout == StorageLayout("float32", "Flat")
    assert manifest.memory_bytes == ROWS * (4 * DIM + 8 + 4)  # vectors, row ids, norms
    assert manifest.shards == 1 and manifest.counts == [ROWS]
