"""A gradient index in shards (index.shards): cut into 1, 2 or 3 shards it gives the unsharded answers (for
Flat: the same rows and the same scores), a manifest whose shards do not match the folder is refused,
the shard count follows the memory budget, and on Ray (workers.shards) each shard lives on its own actor,
a killed one is replaced and the query still answers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from engine.builds import check_index_memory, fewest_shards
from index import IndexMismatchError
from index.gradient import GradientSpec, load_gradient_index, local_shards, read_gradient_manifest
from index.shards import LocalShards, merge_sides, shard_directory, shard_rows
from index.storage import STORAGES, IndexTooLargeError, resident_bytes, storage_layout
from interpret.config import GradientIndexConfig

SPEC = GradientSpec(rank=None, seed=0, preconditioner="identity", damping=1.0, tracked_layers=1)
ROWS, DIM = 700, 48


def _vectors(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((6, DIM))
    noise = 0.3 * rng.standard_normal((ROWS, DIM))
    return (rng.standard_normal((ROWS, 6)) @ basis + noise).astype(np.float32)


def _write(folder, vectors, storage="float32", shards=1):
    from index.gradient import write_gradient_index

    layout = storage_layout(storage, len(vectors), vectors.shape[1], "Flat", ivf_lists=8, nprobe=4)
    return write_gradient_index(vectors, folder, "model", "data", SPEC, [], layout=layout, shards=shards)


def _load(folder, serve=None, max_bytes=None):
    return load_gradient_index(folder, "model", "data", 1, max_bytes, serve)


def _queries(vectors):
    return [vectors[5] + 0.1, -vectors[300], vectors[:40].mean(0)]


def _answers(index, queries, top=50):
    return [index.search(query, top) for query in queries]


def assert_same_answers(got, expected):
    for one, other in zip(got, expected, strict=True):
        for (rows, scores), (rows_other, scores_other) in zip(one, other, strict=True):
            np.testing.assert_array_equal(rows, rows_other)
            np.testing.assert_array_equal(scores, scores_other)


def test_shard_rows_cut_the_rows_into_contiguous_runs():
    runs = shard_rows(10, 3)
    assert [run.tolist() for run in runs] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(ValueError, match="shards=11"):
        shard_rows(10, 11)


def test_merge_keeps_the_best_of_every_shard_on_each_side():
    first = ((np.array([1, 2]), np.array([9.0, 4.0])), (np.array([3, 1]), np.array([-5.0, 0.5])))
    second = ((np.array([7, 8]), np.array([6.0, 5.0])), (np.array([9, 7]), np.array([-8.0, -1.0])))
    (helpful, helpful_ip), (harmful, harmful_ip) = merge_sides([first, second], 3)
    assert helpful.tolist() == [1, 7, 8] and helpful_ip.tolist() == [9.0, 6.0, 5.0]
    assert harmful.tolist() == [9, 3, 7] and harmful_ip.tolist() == [-8.0, -5.0, -1.0]


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_sharded_flat_gives_the_unsharded_rows_and_scores(tmp_path, shards):
    vectors = _vectors()
    _write(tmp_path / "one", vectors)
    manifest = _write(tmp_path / "cut", vectors, shards=shards)
    assert manifest.shards == shards and sum(manifest.counts) == ROWS
    assert read_gradient_manifest(tmp_path / "cut") == manifest
    for number in range(shards):
        assert (shard_directory(tmp_path / "cut", shards, number) / "index.faiss").is_file()
    queries = _queries(vectors)
    assert_same_answers(
        _answers(_load(tmp_path / "cut"), queries), _answers(_load(tmp_path / "one"), queries)
    )
    assert_same_answers(
        _answers(_load(tmp_path / "cut"), queries, ROWS), _answers(_load(tmp_path / "one"), queries, ROWS)
    )


@pytest.mark.parametrize("storage", [s for s in STORAGES if s != "float32"])
def test_a_compressed_storage_answers_the_same_in_shards(tmp_path, storage):
    """Every shard holds a copy of the one quantiser trained on all rows, so a row's code is the same
    wherever it lives (ivf-pq: its list and codes; each shard re-scores its own float16 rows)."""
    vectors = _vectors(1)
    one = _write(tmp_path / "one", vectors, storage)
    cut = _write(tmp_path / "cut", vectors, storage, shards=3)
    assert cut.storage == one.storage and cut.resident_bytes >= one.resident_bytes
    assert cut.storage_recall == one.storage_recall
    queries = _queries(vectors)
    assert_same_answers(
        _answers(_load(tmp_path / "cut"), queries), _answers(_load(tmp_path / "one"), queries)
    )


def test_a_missing_shard_or_a_wrong_count_is_refused(tmp_path):
    vectors = _vectors()
    _write(tmp_path / "cut", vectors, shards=3)
    shutil.copytree(tmp_path / "cut", tmp_path / "counts")
    path = tmp_path / "counts" / "manifest.json"
    payload = json.loads(path.read_text())
    payload["shard_counts"] = [300, 200, 200]  # the files hold 234 / 233 / 233
    path.write_text(json.dumps(payload))
    with pytest.raises(IndexMismatchError, match="manifest says 300"):
        _load(tmp_path / "counts")
    payload["shards"] = 2
    path.write_text(json.dumps(payload))
    with pytest.raises(IndexMismatchError, match="2 shards hold"):
        _load(tmp_path / "counts")
    shutil.rmtree(tmp_path / "cut" / "shard-00002")
    with pytest.raises(IndexMismatchError, match="shard 2 of 3 is missing"):
        _load(tmp_path / "cut")


def test_the_shard_count_follows_the_budget(tmp_path):
    """Unset, a build takes the fewest shards that each fit INFLUENCE_MAX_INDEX_BYTES; one process loading
    them all is refused against the same budget, naming the size."""
    layout = storage_layout("float32", ROWS, DIM, "Flat")
    whole = resident_bytes(layout, ROWS, DIM)
    assert fewest_shards(layout, ROWS, DIM, None) == 1 and fewest_shards(layout, ROWS, DIM, whole) == 1
    assert fewest_shards(layout, ROWS, DIM, whole // 2) == 2  # 350 rows each: exactly half
    assert fewest_shards(layout, ROWS, DIM, whole // 2 - 1) == 3
    config = GradientIndexConfig(rank=None, storage="float32")
    assert check_index_memory(config, ROWS, DIM, whole // 3 + 1000)[1] == 3
    assert check_index_memory(config.replace(shards=4), ROWS, DIM, None)[1] == 4
    with pytest.raises(IndexTooLargeError, match="needs about"):
        check_index_memory(config.replace(shards=2), ROWS, DIM, whole // 3)
    with pytest.raises(ValueError, match="more than the 700"):
        check_index_memory(config.replace(shards=701), ROWS, DIM, None)
    _write(tmp_path / "cut", _vectors(), shards=3)
    manifest = read_gradient_manifest(tmp_path / "cut")
    with pytest.raises(IndexTooLargeError, match="the gradient index of 700 rows"):
        local_shards(tmp_path / "cut", manifest, whole // 3 + 1000)
    assert isinstance(local_shards(tmp_path / "cut", manifest, None), LocalShards)


def _actors(directory, manifest, max_bytes):
    from workers.shards import ShardActors

    return ShardActors(directory, manifest, max_bytes, deadline_s=120.0)


@pytest.mark.slow
def test_shard_actors_answer_like_one_index_and_replace_a_killed_one(ray_local, tmp_path):
    vectors = _vectors()
    _write(tmp_path / "one", vectors)
    _write(tmp_path / "cut", vectors, shards=3)
    queries = _queries(vectors)
    expected = _answers(_load(tmp_path / "one"), queries)
    index = _load(tmp_path / "cut", _actors)
    try:
        assert_same_answers(_answers(index, queries), expected)
        normalized = _load(tmp_path / "cut").search(queries[0], 50, normalize=True)
        for (rows, scores), (rows_local, scores_local) in zip(
            index.search(queries[0], 50, normalize=True), normalized, strict=True
        ):
            np.testing.assert_array_equal(rows, rows_local)
            np.testing.assert_allclose(scores, scores_local, rtol=1e-6)
        ray_local.kill(index.shards.actors[1])
        assert_same_answers(_answers(index, queries), expected)
        assert index.shards.replacements == 1
    finally:
        index.close()
    from index.growth import remove_gradient_rows

    removed = [int(expected[0][0][0][0]), int(expected[0][1][0][0])]  # the first query's best of each side
    remove_gradient_rows(tmp_path / "cut", removed)
    index = _load(tmp_path / "cut", _actors)
    try:
        (helpful, _), (harmful, _) = index.search(queries[0], 50)
        assert not set(removed) & (set(helpful.tolist()) | set(harmful.tolist()))
        np.testing.assert_array_equal(helpful[:10], expected[0][0][0][1:11])
    finally:
        index.close()


@pytest.mark.slow
def test_a_shard_too_large_for_its_actor_is_refused_as_itself(ray_local, tmp_path):
    _write(tmp_path / "cut", _vectors(), shards=2)
    refusal = r"shard [01] of the gradient index of 350 rows .* more shards"
    with pytest.raises(IndexTooLargeError, match=refusal):
        _load(tmp_path / "cut", _actors, max_bytes=1000)


def test_a_build_in_shards_answers_queries_as_one(engine_dirs, tmp_path):
    import torch

    from engine.builds import build_gradient_index
    from engine.pipeline import answer_query, gradient_index_for, local_engine

    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    answers = []
    for shards in (1, 2):
        config = GradientIndexConfig(rank=4, damping=0.1, shards=shards)
        assert build_gradient_index(engine, tmp_path / f"s{shards}", config).shards == shards
        engine.gradient_index = gradient_index_for(tmp_path / f"s{shards}", engine.backend)
        answers.append(answer_query(engine, "the plot was good and fun"))
    assert [e.id for e in answers[0].helpful] == [e.id for e in answers[1].helpful]
    assert [e.id for e in answers[0].harmful] == [e.id for e in answers[1].harmful]
    np.testing.assert_array_equal(answers[0].candidate_scores, answers[1].candidate_scores)


def test_index_info_names_the_shards(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    _write(tmp_path / "cut", _vectors(), shards=3)
    result = CliRunner().invoke(app, ["index", "info", "--index", str(tmp_path / "cut")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "3 shards (one Ray actor each when served): 234, 233, 233 rows" in result.output
    assert "normalised view (--normalize): plain norms kept" in result.output


def test_chunked_vectors_read_rows_in_order_through_the_transform():
    from index.vectors import ChunkedVectors

    whole = _vectors()
    chunks = ChunkedVectors([whole[:100], whole[100:450], whole[450:]], lambda block: 2 * block)
    assert chunks.count == ROWS and chunks.dim == DIM
    np.testing.assert_array_equal(np.concatenate(list(chunks.blocks())), 2 * whole)
    np.testing.assert_array_equal(np.concatenate(list(chunks.blocks(90, 460))), 2 * whole[90:460])
    rows = np.array([699, 0, 450, 99, 100])
    np.testing.assert_array_equal(chunks.take(rows), 2 * whole[rows])
    np.testing.assert_allclose(chunks.products(whole[:3]), 2 * whole @ whole[:3].T, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="one width"):
        ChunkedVectors([whole, whole[:, :5]])


@pytest.mark.parametrize("storage", STORAGES)
def test_a_streamed_write_equals_one_from_an_array(tmp_path, monkeypatch, storage):
    """Chunks read through a transform (as a build streams its preconditioned gradients) give the index an
    array of the transformed rows gives, recall included; past TRAIN_ROWS the quantiser is trained on one
    seeded sample whatever the shard count."""
    from index import vectors as chunked
    from index.gradient import write_gradient_index

    monkeypatch.setattr(chunked, "TRAIN_ROWS", 400)
    whole = _vectors(2)
    streamed = chunked.ChunkedVectors([whole[:256], whole[256:]], lambda block: 0.5 * block)
    layout = storage_layout(storage, ROWS, DIM, "Flat", ivf_lists=8, nprobe=4)
    probes = whole[:5] + 0.1
    written = {}
    for name, vectors, shards in (("array", 0.5 * whole, 1), ("streamed", streamed, 1), ("cut", streamed, 2)):
        written[name] = write_gradient_index(
            vectors, tmp_path / name, "model", "data", SPEC, [], layout=layout, probes=probes, shards=shards
        )
    assert written["array"].storage_recall == written["streamed"].storage_recall
    assert written["cut"].storage_recall == written["streamed"].storage_recall
    queries = _queries(whole)
    expected = _answers(_load(tmp_path / "array"), queries)
    assert_same_answers(_answers(_load(tmp_path / "streamed"), queries), expected)
    assert_same_answers(_answers(_load(tmp_path / "cut"), queries), expected)


def test_only_ivf_pq_keeps_a_rescoring_copy(tmp_path):
    """A float32 index in IVF lists is searched exactly and keeps no float16 copy; ivf-pq one per shard."""
    from index.gradient import write_gradient_index
    from index.storage import RESCORE_FILE

    vectors = _vectors()
    lists = storage_layout("float32", ROWS, DIM, "IVF4,Flat")
    write_gradient_index(vectors, tmp_path / "ivf", "model", "data", SPEC, [], layout=lists, shards=2)
    _write(tmp_path / "pq", vectors, "ivf-pq", shards=2)
    assert not list((tmp_path / "ivf").rglob(RESCORE_FILE))
    assert len(list((tmp_path / "pq").rglob(RESCORE_FILE))) == 2
