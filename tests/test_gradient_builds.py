"""Building a gradient index (engine.builds, index.gradient): shards that never change the answer, memory
known first, resumable and cancellable builds, scratch folders, and a manifest that refuses what it was
not built for."""

import json

import numpy as np
import pytest
import torch

from engine.builds import build_gradient_index
from engine.pipeline import local_engine
from index import IndexMismatchError
from index.gradient import load_gradient_index, shard_folder
from interpret.cancellation import RequestCancelled
from interpret.config import GradientIndexConfig
from interpret.influence.projection import Projection

QUERY = "the plot was good and fun"


def _build(engine, folder, **settings):
    config = GradientIndexConfig(**{"rank": 4, "damping": 0.1, **settings})
    return build_gradient_index(engine, folder, config)


def _vectors(folder, engine):
    identity = engine.identity
    index = load_gradient_index(folder, identity.model_fingerprint, identity.data_fingerprint, 1)
    return index.vectors()


@pytest.mark.parametrize("projection", ["kfac", "random"])
def test_shard_size_never_changes_the_index(engine_dirs, tmp_path, projection):
    """Same arithmetic in another order (rows projected in 1, 2 or 3 shards; float32 storage sets the
    tolerance), so the element-wise tolerance stays tight: it is not a solve compared across BLAS
    kernels."""
    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    built = []
    for chunk_rows in (96, 48, 32):  # 1, 2 and 3 shards
        _build(engine, tmp_path / f"c{chunk_rows}", chunk_rows=chunk_rows, projection=projection)
        built.append(_vectors(tmp_path / f"c{chunk_rows}", engine))
        assert not shard_folder(tmp_path / f"c{chunk_rows}").exists()  # shards dropped once indexed
    np.testing.assert_allclose(built[0], built[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(built[0], built[2], rtol=1e-6, atol=1e-7)


def test_the_peak_memory_formula_counts_one_shard_a_chunk_curvature_and_the_hessian():
    """The gradients stay on disk: the peak holds the largest shard, the quantiser's training sample, one
    chunk being preconditioned, the curvature and (hessian) the explicit Hessian; never all the rows."""
    from engine.builds import build_peak_bytes
    from index.vectors import TRAIN_ROWS

    held = 123_456
    fisher = build_peak_bytes(1000, 64, 500, "fisher", held, 100)
    assert fisher == held + 4 * 1000 * 64 + 3 * 8 * 100 * 64 + 4 * 8 * 64 * 64
    assert build_peak_bytes(1000, 64, 500, "hessian", held, 100) - fisher == 2 * 8 * 500 * 500
    many = build_peak_bytes(10 * TRAIN_ROWS, 64, 500, "fisher", held, 100)
    assert many - build_peak_bytes(TRAIN_ROWS, 64, 500, "fisher", held, 100) == 0  # rows add only to held


def test_a_build_the_machine_cannot_hold_is_refused_before_any_work_naming_a_rank_that_fits(
    engine_dirs, tmp_path, monkeypatch
):
    """The estimate at the asked rank exceeds what is available, the one at half the rank does not: the
    error names both sizes and that rank, and nothing was computed or written."""
    from engine import builds

    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    rows, tracked = len(engine.examples), engine.identity.num_parameters
    config = builds.GradientIndexConfig()
    peaks = {}
    for rank in (4, 8):
        dim = builds.projected_dim(engine, rank, 0)
        held = builds.resident_bytes(builds.storage_layout("float32", rows, dim, "Flat"), rows, dim)
        peaks[rank] = builds.build_peak_bytes(rows, dim, tracked, "fisher", held, config.chunk_rows)
    assert peaks[4] < peaks[8]
    monkeypatch.setattr(builds, "available_memory", lambda: (peaks[4] + peaks[8]) // 2)
    monkeypatch.setattr(engine.backend.explainer, "kfac_factors", lambda *a: pytest.fail("work was done"))
    with pytest.raises(builds.IndexTooLargeError, match=r"--rank 4\b") as refused:
        _build(engine, tmp_path / "big", rank=8)
    assert builds.readable_bytes(peaks[8]) in str(refused.value)
    assert not (tmp_path / "big").exists() and not shard_folder(tmp_path / "big").exists()
    monkeypatch.undo()
    assert _build(engine, tmp_path / "fits", rank=8).count == rows


def test_a_build_keeping_coordinates_too_wide_to_hold_is_refused_naming_fewer_that_fit(
    engine_dirs, tmp_path, monkeypatch
):
    """With ``coordinates`` the width is what is kept, whatever the rank: the refusal names a number of
    coordinates that fits, not a rank."""
    from engine import builds

    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    rows, tracked = len(engine.examples), engine.identity.num_parameters
    config = builds.GradientIndexConfig()
    peaks = {}
    for dim in (30, 60):
        held = builds.resident_bytes(builds.storage_layout("float32", rows, dim, "Flat"), rows, dim)
        peaks[dim] = builds.build_peak_bytes(rows, dim, tracked, "fisher", held, config.chunk_rows)
    monkeypatch.setattr(builds, "available_memory", lambda: (peaks[30] + peaks[60]) // 2)
    monkeypatch.setattr(engine.backend.explainer, "kfac_factors", lambda *a: pytest.fail("work was done"))
    with pytest.raises(builds.IndexTooLargeError, match=r"keep --coordinates 30 or fewer"):
        _build(engine, tmp_path / "big", coordinates=60)
    assert not (tmp_path / "big").exists() and not shard_folder(tmp_path / "big").exists()


def test_an_interrupted_build_resumes_from_its_shards(engine_dirs, tmp_path, monkeypatch):
    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    _build(engine, tmp_path / "reference", chunk_rows=20)
    explainer, calls = engine.backend.explainer, []
    real = explainer.gradient_shard

    def failing(rows, *args):
        if len(calls) == 3:
            raise KeyboardInterrupt("interrupted")
        calls.append(len(rows))
        return real(rows, *args)

    monkeypatch.setattr(explainer, "gradient_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        _build(engine, tmp_path / "resumed", chunk_rows=20)
    # the fit's second moments of the grid coordinates over its 96-row sample, then two shards
    assert calls == [96, 20, 19] and len(list(shard_folder(tmp_path / "resumed").glob("*.npy"))) == 2
    assert (shard_folder(tmp_path / "resumed") / "bases.safetensors").is_file()  # the kfac fit, kept
    assert not (tmp_path / "resumed").exists()  # nothing half-written where the index goes
    calls.clear()
    monkeypatch.setattr(
        explainer, "gradient_shard", lambda rows, *a: calls.append(len(rows)) or real(rows, *a)
    )
    monkeypatch.setattr(explainer, "kfac_factors", lambda *a: pytest.fail("the fit was redone"))
    _build(engine, tmp_path / "resumed", chunk_rows=20)
    assert calls == [19, 19, 19]  # 96 rows in 5 shards: only the 3 not finished before, and no fit again
    np.testing.assert_allclose(
        _vectors(tmp_path / "resumed", engine), _vectors(tmp_path / "reference", engine)
    )


def test_a_build_given_a_scratch_folder_keeps_its_shards_there(engine_dirs, tmp_path, monkeypatch):
    """Issue 23: the service's builds keep their shards in its scratch folder, never beside the index it
    serves; a cancelled one leaves only whole shards there, and the rerun resumes from them."""
    engine, scratch = local_engine(engine_dirs[0]), tmp_path / "scratch"
    served = tmp_path / "served" / "gradient-index"
    explainer, real = engine.backend.explainer, engine.backend.explainer.gradient_shard

    def cancelled_after_two(rows, *args, done=[]):  # noqa: B006 (the fit's second moments, then shards)
        if len(done) == 3:
            raise RequestCancelled("the job was deleted")
        done.append(rows)
        return real(rows, *args)

    monkeypatch.setattr(explainer, "gradient_shard", cancelled_after_two)
    config = GradientIndexConfig(rank=4, damping=0.1, chunk_rows=20)
    with pytest.raises(RequestCancelled):
        build_gradient_index(engine, served, config, scratch=scratch)
    assert len(list(shard_folder(scratch / "gradient-index").glob("shard-*.npy"))) == 2
    assert not list(shard_folder(scratch / "gradient-index").glob("tmp*"))  # nothing half-written
    assert not served.parent.exists()  # nothing beside the served index
    rerun = []
    monkeypatch.setattr(explainer, "gradient_shard", lambda rows, *a: rerun.append(rows) or real(rows, *a))
    assert build_gradient_index(engine, served, config, scratch=scratch).count == 96
    assert len(rerun) == 3  # 96 rows in 5 shards: only the 3 not finished before
    assert sorted(path.name for path in served.parent.iterdir()) == ["gradient-index"]
    assert not shard_folder(scratch / "gradient-index").exists()  # dropped once the index is written


def test_a_bad_factory_fails_before_any_gradient(engine_dirs, tmp_path, monkeypatch):
    engine = local_engine(engine_dirs[0])
    monkeypatch.setattr(engine.backend.explainer, "gradient_shard", lambda *a: pytest.fail("computed"))
    with pytest.raises(ValueError, match="factory"):
        _build(engine, tmp_path / "bad", factory="IVF-nope")


def test_the_manifest_refuses_other_weights_data_or_tracked_set(engine_dirs, tmp_path):
    engine = local_engine(engine_dirs[0])
    _build(engine, tmp_path / "g")
    identity = engine.identity
    with pytest.raises(IndexMismatchError, match="model fingerprint"):
        load_gradient_index(tmp_path / "g", "0" * 64, identity.data_fingerprint, 1)
    with pytest.raises(IndexMismatchError, match="data fingerprint"):
        load_gradient_index(tmp_path / "g", identity.model_fingerprint, "0" * 64, 1)
    with pytest.raises(IndexMismatchError, match="tracked_layers"):
        load_gradient_index(tmp_path / "g", identity.model_fingerprint, identity.data_fingerprint, 2)
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["spec"] == {
        "rank": 4,
        "seed": 0,
        "preconditioner": "fisher",
        "damping": 0.1,
        "tracked_layers": 1,
        "projection": "kfac",
        "fit_rows": 96,  # 2,000 asked, the tiny set has 96
        "coordinates": 120,  # as many as rank-4 grids hold, chosen from the rank-16 grids
        "grid_rank": 16,
    }
    with pytest.raises(IndexMismatchError, match="not a gradient index"):
        local_engine(engine_dirs[0], gradient_index_dir=engine_dirs[1])


def test_the_same_bases_with_another_damping_are_another_curvature(engine_dirs, tmp_path):
    """The pool and the s_test cache key the index solver's inverse by the curvature's digest: the bases
    alone would hand a rebuilt index (same sample, new damping) the old inverse."""
    engine = local_engine(engine_dirs[0])
    identity = engine.identity
    fingerprints = (identity.model_fingerprint, identity.data_fingerprint, 1)
    loaded = []
    for damping in (0.1, 0.2):
        _build(engine, tmp_path / f"d{damping}", damping=damping)
        loaded.append(load_gradient_index(tmp_path / f"d{damping}", *fingerprints).curvature)
    assert loaded[0].projection == loaded[1].projection
    assert loaded[0].digest != loaded[1].digest and loaded[1].damping == 0.2


def test_swapped_kfac_bases_are_refused_and_an_older_manifest_reads_as_random(engine_dirs, tmp_path):
    from safetensors.numpy import load_file, save_file

    engine = local_engine(engine_dirs[0])
    identity = engine.identity
    fingerprints = (identity.model_fingerprint, identity.data_fingerprint, 1)
    _build(engine, tmp_path / "g")
    bases = load_file(str(tmp_path / "g" / "projection.safetensors"))
    assert load_gradient_index(tmp_path / "g", *fingerprints).projection.kind == "kfac"
    save_file({k: v[::-1].copy() for k, v in bases.items()}, str(tmp_path / "g" / "projection.safetensors"))
    with pytest.raises(IndexMismatchError, match="SHA-256"):
        load_gradient_index(tmp_path / "g", *fingerprints)

    _build(engine, tmp_path / "r", projection="random")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    for key in ("projection", "fit_rows"):  # what an index built before kfac existed lacks
        manifest["spec"].pop(key)
    manifest.pop("projection_sha256")
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(manifest))
    older = load_gradient_index(tmp_path / "r", *fingerprints)
    assert older.projection == Projection(4, 0) and older.spec.projection == "random"


def test_a_stale_default_folder_is_passed_over_but_an_explicit_one_is_not(engine_dirs, tmp_path, caplog):
    engine = local_engine(engine_dirs[0])
    _build(engine, tmp_path / "g")
    assert local_engine(engine_dirs[0], gradient_index_dir=tmp_path / "g").gradient_index is not None
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    (tmp_path / "g" / "manifest.json").write_text(json.dumps({**manifest, "model_fingerprint": "0" * 64}))
    passed_over = local_engine(
        engine_dirs[0], gradient_index_dir=tmp_path / "g", gradient_index_optional=True
    )
    assert passed_over.gradient_index is None and "answering without a gradient index" in caplog.text
    with pytest.raises(IndexMismatchError, match="model fingerprint"):
        local_engine(engine_dirs[0], gradient_index_dir=tmp_path / "g")


# ------------------------------------------------------------------------------------------ query


def test_a_build_keeping_coordinates_stores_the_top_second_moments_preconditioned_exactly(
    engine_dirs, tmp_path
):
    """``coordinates``: the fit's second pass keeps the grid coordinates of largest ``E[g_c^2]`` over the fit
    rows (here every row), and the stored vectors are ``(C + d I)^-1 g~_z`` over those coordinates alone,
    against an explicit float64 solve."""
    from interpret.influence.projection import KEEP_SUFFIX, top_coordinates

    engine = local_engine(engine_dirs[0], dtype=torch.float64)
    manifest = _build(engine, tmp_path / "kept", coordinates=30)
    assert manifest.dim == 30 and manifest.spec["coordinates"] == 30
    identity = engine.identity
    index = load_gradient_index(tmp_path / "kept", identity.model_fingerprint, identity.data_fingerprint, 1)
    bases = index.projection.bases
    explainer = engine.backend.explainer
    sides = {name: rows for name, rows in bases.items() if not name.endswith(KEEP_SUFFIX)}
    whole = Projection(manifest.spec["grid_rank"], 0, sides)
    grid = explainer.gradient_shard(np.arange(engine.num_examples), whole).astype(np.float64)
    cells = {slot.name: slot.dim for slot in explainer.projector(whole).slots}
    expected = top_coordinates((grid**2).mean(0), cells, 30)
    assert all(np.array_equal(bases[name], kept) for name, kept in expected.items())
    projected = torch.from_numpy(explainer.gradient_shard(np.arange(engine.num_examples), index.projection))
    projected = projected.double()
    curvature = projected.T @ projected / len(projected) + 0.1 * torch.eye(30, dtype=torch.float64)
    np.testing.assert_allclose(
        index.vectors(), torch.linalg.solve(curvature, projected.T).T.numpy(), rtol=1e-4, atol=1e-6
    )


def test_coordinates_beyond_the_grids_or_without_kfac_are_refused_before_any_work(engine_dirs, tmp_path):
    engine = local_engine(engine_dirs[0])
    with pytest.raises(ValueError, match="coordinates=100,000 is more than"):
        _build(engine, tmp_path / "wide", coordinates=100_000)
    assert not shard_folder(tmp_path / "wide").exists()
    with pytest.raises(ValueError, match="set projection='kfac' and a rank"):
        GradientIndexConfig(projection="random", coordinates=10)


def test_the_default_keeps_the_rank_s_width_chosen_from_grids_four_times_as_wide(engine_dirs):
    """``grid_rank``: null is 4 x rank; equal to the rank (or grids no wider than the rank's, or a seeded
    projection) keeps every coordinate; ``coordinates`` overrides the width; below the rank is refused."""
    from engine.builds import index_width, kept_coordinates, projected_dim

    engine = local_engine(engine_dirs[0])

    def kept(**settings):
        return kept_coordinates(engine, GradientIndexConfig(**settings))

    width = projected_dim(engine, 4, 0)
    assert GradientIndexConfig(rank=4).basis_rank == 16 and GradientIndexConfig(rank=64).basis_rank == 256
    assert kept(rank=4) == width < projected_dim(engine, 16, 0)
    assert index_width(engine, GradientIndexConfig(rank=4)) == width
    assert kept(rank=4, grid_rank=4) is None and kept(rank=4, projection="random") is None
    assert kept(rank=4, coordinates=30) == 30
    assert kept(rank=64) is None  # the tiny model's layers are whole at rank 64
    assert index_width(engine, GradientIndexConfig(rank=64)) == projected_dim(engine, 64, 0)
    with pytest.raises(ValueError, match="grid_rank=4 is below rank=8"):
        GradientIndexConfig(rank=8, grid_rank=4)
    with pytest.raises(ValueError, match="set projection='kfac' and a rank, or drop grid_rank"):
        GradientIndexConfig(projection="random", grid_rank=16)
