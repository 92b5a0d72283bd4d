"""``influence index add``: new rows appended as one shard, with the index's own projection and kept
preconditioner. With a data-independent preconditioner an add equals a fresh build over the union; the
stored rows never change; an interrupted add leaves the old index intact and resumes; engines that load
the index serve the added rows' texts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.builds import add_to_gradient_index, build_gradient_index
from engine.pipeline import answer_query, local_engine
from index import IndexMismatchError
from index.gradient import PRECONDITIONER_FILE, load_gradient_index, read_gradient_manifest
from index.shards import QUANTISER_FILE
from interpret.config import GradientIndexConfig, QueryConfig
from interpret.data import DataSpec
from tests.conftest import synthetic_rows, write_tsv

QUERY = "the plot was good and fun"
FIXED = GradientIndexConfig(
    rank=4, projection="random", preconditioner="identity", damping=0.1, chunk_rows=16
)


@pytest.fixture
def new_rows(data_dir, tmp_path):
    """40 rows the model never saw, and the training data with them appended (for a fresh build)."""
    added = synthetic_rows(40, seed=7)
    base = (data_dir / "train.tsv").read_text().splitlines()[1:]
    union = [(line.split("\t")[0], int(line.split("\t")[1])) for line in base] + added
    return DataSpec(str(write_tsv(tmp_path / "new.tsv", added))), DataSpec(
        str(write_tsv(tmp_path / "union.tsv", union))
    )


def _loaded(engine, folder):
    identity = engine.identity
    return load_gradient_index(folder, identity.model_fingerprint, identity.data_fingerprint, 1)


def test_an_add_equals_a_fresh_build_over_the_union(engine_dirs, new_rows, tmp_path):
    """Random projection and identity preconditioner depend on no data, so the grown index must hold the
    union's vectors and answer as its fresh build does; its engine serves the added rows' texts."""
    model, (added, union) = engine_dirs[0], new_rows
    build_gradient_index(local_engine(model, dtype=torch.float64), tmp_path / "grown", FIXED)
    grown = add_to_gradient_index(local_engine(model, added, dtype=torch.float64), tmp_path / "grown", added)
    assert grown.count == 136 and grown.shards == 2 and grown.counts == [96, 40]
    assert grown.additions[0]["first_row"] == 96 and grown.history[-1]["op"] == "add"
    fresh_engine = local_engine(model, union, dtype=torch.float64)
    build_gradient_index(fresh_engine, tmp_path / "fresh", FIXED)
    engine = local_engine(model, dtype=torch.float64, gradient_index_dir=tmp_path / "grown")
    assert len(engine.examples) == 136 and engine.examples.texts[96:] == [t for t, _ in synthetic_rows(40, 7)]
    assert engine.identity.data_fingerprint == grown.data_fingerprint
    np.testing.assert_allclose(
        engine.gradient_index.vectors(),
        _loaded(fresh_engine, tmp_path / "fresh").vectors(),
        rtol=1e-5,
        atol=1e-7,
    )
    fresh_engine.gradient_index = _loaded(fresh_engine, tmp_path / "fresh")
    answers = [answer_query(e, QUERY, config=QueryConfig(top=8)) for e in (engine, fresh_engine)]
    for side in ("helpful", "harmful"):
        got, expected = getattr(answers[0], side), getattr(answers[1], side)
        assert [(e.id, e.text) for e in got] == [(e.id, e.text) for e in expected]
        np.testing.assert_allclose([e.score for e in got], [e.score for e in expected], rtol=1e-5)
    full = answer_query(engine, QUERY, config=QueryConfig(top=3, method="full", k=None))
    assert len(full.candidate_rows) == 136  # the explainer scores the added rows too


@pytest.mark.parametrize("storage", ["sq8", "pca-sq8"])
def test_an_add_keeps_the_stored_rows_and_the_fisher(engine_dirs, new_rows, tmp_path, storage):
    """A kfac / Fisher / sq8 (or pca-sq8) index: the stored rows' vectors and the preconditioner are
    unchanged, the new shard is coded with the kept quantiser (pca-sq8: the same principal directions);
    the same rows cannot be added twice."""
    model, (added, _) = engine_dirs[0], new_rows
    engine = local_engine(model, dtype=torch.float64)
    pca_dim = 8 if storage == "pca-sq8" else None
    config = GradientIndexConfig(rank=4, damping=0.1, storage=storage, pca_dim=pca_dim, chunk_rows=16)
    built = build_gradient_index(engine, tmp_path / "g", config)
    assert (tmp_path / "g" / QUANTISER_FILE).is_file()
    before = _loaded(engine, tmp_path / "g").vectors()
    newcomer = local_engine(model, added, dtype=torch.float64)
    grown = add_to_gradient_index(newcomer, tmp_path / "g", added)
    assert grown.projection_sha256 == built.projection_sha256 and grown.storage == storage
    if storage == "pca-sq8":
        maps = [_directions(tmp_path / "g" / f"shard-{n:05d}" / "index.faiss") for n in (0, 1)]
        assert maps[0].shape == (8 * grown.dim,)
        np.testing.assert_array_equal(maps[0], maps[1])
    grown_engine = local_engine(model, dtype=torch.float64, gradient_index_dir=tmp_path / "g")
    np.testing.assert_array_equal(grown_engine.gradient_index.vectors()[:96], before)
    with pytest.raises(ValueError, match="already in the index"):
        add_to_gradient_index(newcomer, tmp_path / "g", added)
    with pytest.raises(ValueError, match="already in the index"):
        add_to_gradient_index(engine, tmp_path / "g", DataSpec(engine.examples.source))
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["count"] == 136


def _directions(path) -> np.ndarray:
    """A pca-sq8 shard's linear map, as stored."""
    import faiss

    index = faiss.read_index(str(path))  # held while its transform is read: it owns it
    transform = faiss.downcast_VectorTransform(index.chain.at(0))
    return faiss.vector_to_array(transform.A).copy()


def test_an_interrupted_add_leaves_the_index_intact_and_resumes(engine_dirs, new_rows, tmp_path, monkeypatch):
    model, (added, _) = engine_dirs[0], new_rows
    build_gradient_index(local_engine(model, dtype=torch.float64), tmp_path / "g", FIXED)
    before = (tmp_path / "g" / "manifest.json").read_text()
    engine = local_engine(model, added, dtype=torch.float64)
    explainer, computed = engine.backend.explainer, []
    original = explainer.gradient_shard

    def crash_on_the_second(rows, projection):
        if len(computed) == 1:
            raise RuntimeError("killed mid-add")
        computed.append(len(rows))
        return original(rows, projection)

    monkeypatch.setattr(explainer, "gradient_shard", crash_on_the_second)
    with pytest.raises(RuntimeError, match="killed mid-add"):
        add_to_gradient_index(engine, tmp_path / "g", added, chunk_rows=16)
    assert (tmp_path / "g" / "manifest.json").read_text() == before
    assert read_gradient_manifest(tmp_path / "g").count == 96
    monkeypatch.setattr(
        explainer,
        "gradient_shard",
        lambda rows, projection: computed.append(len(rows)) or original(rows, projection),
    )
    grown = add_to_gradient_index(engine, tmp_path / "g", added, chunk_rows=16)
    assert grown.count == 136 and computed == [14, 13, 13]  # the first chunk was not computed again
    assert not (tmp_path / "g.add.shards").exists()


def test_an_index_without_its_kept_preconditioner_is_refused(engine_dirs, new_rows, tmp_path):
    model, (added, _) = engine_dirs[0], new_rows
    build_gradient_index(local_engine(model, dtype=torch.float64), tmp_path / "g", FIXED)
    path = tmp_path / "g" / "manifest.json"
    (tmp_path / "g" / PRECONDITIONER_FILE).unlink()
    payload = json.loads(path.read_text())
    payload["inverse_sha256"] = None  # as an index built before it kept one
    path.write_text(json.dumps(payload))
    with pytest.raises(IndexMismatchError, match="built before it kept its preconditioner"):
        add_to_gradient_index(local_engine(model, added, dtype=torch.float64), tmp_path / "g", added)


def test_index_add_on_the_command_line(engine_dirs, new_rows, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    model, (added, _) = engine_dirs[0], new_rows
    build_gradient_index(local_engine(model), tmp_path / "g", FIXED)
    command = ["index", "add", "--train", added.source, "--index", str(tmp_path / "g"), "--model", str(model)]
    result = CliRunner().invoke(app, command, terminal_width=200)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "added 40 rows as shard 1" in said and "now holds 136 rows in 2 shards" in said
    again = CliRunner().invoke(app, command, terminal_width=200)
    assert again.exit_code == 2 and "already in the index" in again.output
    runner = CliRunner()
    assert (
        runner.invoke(app, ["index", "remove", "--index", str(tmp_path / "g"), "--rows", "100"]).exit_code
        == 0
    )
    info = runner.invoke(app, ["index", "info", "--index", str(tmp_path / "g")], terminal_width=300)
    said = " ".join(info.output.split())
    assert "added 40 rows from row 96" in said and "1 rows removed from answers" in said


def test_a_changed_added_set_breaks_the_chain_and_is_refused(engine_dirs, new_rows, tmp_path):
    """The added rows are read from their source at every load: edited, their fingerprint no longer
    continues the index's chain, and the index is refused by its data fingerprint."""
    from engine.pipeline import gradient_index_for

    model, (added, _) = engine_dirs[0], new_rows
    build_gradient_index(local_engine(model), tmp_path / "g", FIXED)
    add_to_gradient_index(local_engine(model, added), tmp_path / "g", added)
    engine = local_engine(model, gradient_index_dir=tmp_path / "g")
    assert len(engine.examples) == 136
    path = tmp_path / "new.tsv"
    path.write_text(path.read_text().replace("\t1\n", "\t0\n", 1))  # one label flipped
    with pytest.raises(IndexMismatchError, match="data fingerprint"):
        local_engine(model, gradient_index_dir=tmp_path / "g")
    assert gradient_index_for(tmp_path / "g", engine.backend) is not None  # the engine loaded before edits


def test_an_add_projects_the_new_rows_onto_the_kept_coordinates(engine_dirs, new_rows, tmp_path):
    """An index keeping some grid coordinates (``coordinates``) grows with the same ones: the new shard is
    the new rows' gradients on them, preconditioned with the kept inverse."""
    from index.gradient import read_inverse

    model, (added, _) = engine_dirs[0], new_rows
    config = GradientIndexConfig(rank=4, damping=0.1, coordinates=30, chunk_rows=16)
    build_gradient_index(local_engine(model, dtype=torch.float64), tmp_path / "g", config)
    newcomer = local_engine(model, added, dtype=torch.float64)
    grown = add_to_gradient_index(newcomer, tmp_path / "g", added)
    assert grown.dim == 30 and grown.spec["coordinates"] == 30
    engine = local_engine(model, dtype=torch.float64, gradient_index_dir=tmp_path / "g")
    projection = engine.gradient_index.projection
    gradients = newcomer.backend.explainer.gradient_shard(np.arange(40), projection).astype(np.float64)
    inverse = read_inverse(tmp_path / "g", grown).astype(np.float64)
    np.testing.assert_allclose(
        engine.gradient_index.vectors()[96:], gradients @ inverse, rtol=1e-4, atol=1e-6
    )
