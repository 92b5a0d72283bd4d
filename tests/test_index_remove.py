"""``influence index remove``: removed rows never appear in answers again, by any method, in or out of
shards; the rest are the exact top of what remains; the manifest records it; bad rows are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from index.gradient import GradientSpec, read_gradient_manifest, write_gradient_index
from index.growth import remove_gradient_rows
from index.storage import storage_layout

SPEC = GradientSpec(rank=None, seed=0, preconditioner="identity", damping=1.0, tracked_layers=1)
ROWS, DIM = 600, 32
QUERY = "the plot was good and fun"


def _vectors() -> np.ndarray:
    return np.random.default_rng(4).standard_normal((ROWS, DIM)).astype(np.float32)


def _load(folder):
    from index.gradient import load_gradient_index

    return load_gradient_index(folder, "model", "data", 1)


@pytest.mark.parametrize("shards", [1, 3])
def test_removed_rows_are_left_out_and_the_rest_is_the_exact_top(tmp_path, shards):
    vectors, query = _vectors(), np.random.default_rng(5).standard_normal(DIM).astype(np.float32)
    layout = storage_layout("float32", ROWS, DIM, "Flat")
    write_gradient_index(vectors, tmp_path / "g", "model", "data", SPEC, [], layout=layout, shards=shards)
    products = vectors.astype(np.float64) @ query
    removed = np.concatenate([np.argsort(-products)[:15], np.argsort(products)[:5], [250]])
    manifest = remove_gradient_rows(tmp_path / "g", removed.tolist())
    assert manifest.removed_rows == sorted(set(removed.tolist()))
    assert manifest.history[-1]["op"] == "remove" and manifest.history[-1]["newly_removed"] == len(removed)
    assert read_gradient_manifest(tmp_path / "g") == manifest
    (helpful, helpful_scores), (harmful, harmful_scores) = _load(tmp_path / "g").search(query, 20)
    kept = np.setdiff1d(np.arange(ROWS), removed)
    best = kept[np.argsort(-products[kept])[:20]]
    worst = kept[np.argsort(products[kept])[:20]]
    np.testing.assert_array_equal(helpful, best)
    np.testing.assert_array_equal(harmful, worst)
    np.testing.assert_allclose(helpful_scores, -products[best], rtol=1e-5)
    np.testing.assert_allclose(harmful_scores, -products[worst], rtol=1e-5)
    again = remove_gradient_rows(tmp_path / "g", [int(removed[0]), 7])  # one already gone, one new
    assert again.history[-1]["newly_removed"] == 1 and len(again.history) == 2


def test_bad_rows_are_refused_and_nothing_is_written(tmp_path):
    write_gradient_index(_vectors(), tmp_path / "g", "model", "data", SPEC, [])
    before = (tmp_path / "g" / "manifest.json").read_text()
    with pytest.raises(ValueError, match=r"rows \[600, -1\]|rows \[-1, 600\]"):
        remove_gradient_rows(tmp_path / "g", [3, 600, -1])
    with pytest.raises(ValueError, match="at least one"):
        remove_gradient_rows(tmp_path / "g", [])
    assert (tmp_path / "g" / "manifest.json").read_text() == before


def test_a_removed_row_leaves_every_method(engine_dirs, tmp_path):
    """The gradient index's shards leave the rows out; the full scan (and the kNN path) leave them out of
    their candidates, so no answer names them."""
    from engine.builds import build_gradient_index
    from engine.pipeline import answer_query, gradient_index_for, local_engine
    from interpret.config import GradientIndexConfig, QueryConfig

    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    build_gradient_index(engine, tmp_path / "g", GradientIndexConfig(rank=4, damping=0.1))
    engine.gradient_index = gradient_index_for(tmp_path / "g", engine.backend)
    before = answer_query(engine, QUERY, config=QueryConfig(top=5))
    removed = [before.helpful[0].row, before.helpful[1].row, before.harmful[0].row]
    remove_gradient_rows(tmp_path / "g", removed)
    engine.gradient_index = gradient_index_for(tmp_path / "g", engine.backend)
    for method in ("gradient", "full"):
        answer = answer_query(engine, QUERY, config=QueryConfig(top=5, method=method, k=None))
        shown = {e.row for e in answer.helpful} | {e.row for e in answer.harmful}
        assert not shown & set(removed), (method, shown)
        assert not set(answer.candidate_rows.tolist()) & set(removed)
    gradient = answer_query(engine, QUERY, config=QueryConfig(top=5))
    assert [e.row for e in gradient.helpful][:3] == [e.row for e in before.helpful][2:5]


def test_index_remove_on_the_command_line(engine_dirs, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    write_gradient_index(_vectors(), tmp_path / "g", "model", "data", SPEC, [])
    runner = CliRunner()
    result = runner.invoke(app, ["index", "remove", "--index", str(tmp_path / "g"), "--rows", "3,9"])
    assert result.exit_code == 0, result.output
    assert "removed 2 rows" in result.output
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["removed_rows"] == [3, 9]
    refused = runner.invoke(app, ["index", "remove", "--index", str(tmp_path / "g"), "--rows", "3,x"])
    assert refused.exit_code == 2 and "--rows takes row numbers" in refused.output
    neither = runner.invoke(app, ["index", "remove", "--index", str(tmp_path / "g")])
    assert neither.exit_code == 2 and "--rows or with --ids" in neither.output
    foreign = runner.invoke(
        app, ["index", "remove", "--index", str(tmp_path / "g"), "--ids", "1", "--model", str(engine_dirs[0])]
    )
    assert foreign.exit_code == 2 and "not the data the index was built on" in foreign.output


def test_ids_map_to_their_rows_and_unknown_ids_are_named():
    from interpret.data import ExampleSet

    examples = ExampleSet(["a", "b", "c"], None, np.array([0, 1, 0]), ["x7", "y2", "z9"], "f", "train.tsv")
    assert examples.rows_of(["z9", "x7"]).tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"ids \['nope'\] are not in the training data train.tsv"):
        examples.rows_of(["y2", "nope"])
