"""The offline jobs: the kNN index and the gradient index, built through an engine's backend (in this
process, or sharded over the Ray workers), each checked before its expensive part and written atomically.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.pipeline import Engine
from index import Manifest, build_index, empty_index
from index.gradient import (
    RECALL_PROBES,
    GradientManifest,
    GradientSpec,
    ShardStore,
    built_grid_rank,
    check_built_for,
    read_gradient_manifest,
    read_inverse,
    read_projection,
    shard_folder,
    write_gradient_index,
)
from index.growth import append_rows, check_growable
from index.storage import (
    IndexTooLargeError,
    StorageLayout,
    available_memory,
    check_resident,
    readable_bytes,
    resident_bytes,
    storage_layout,
)
from index.vectors import TRAIN_ROWS, ChunkedVectors
from interpret.cancellation import RequestContext
from interpret.config import (
    AUTO_SHARDS,
    DEFAULT_CHUNK_ROWS,
    DEFAULT_FACTORY,
    DEFAULT_KNN_METRIC,
    GradientIndexConfig,
    Metric,
)
from interpret.data import DataSpec
from interpret.influence.cg import cg_rows
from interpret.influence.exact import MAX_EXACT_PARAMETERS
from interpret.influence.preconditioner import inverse_damped, precondition, second_moment
from interpret.influence.projection import Projection, eigen_bases, top_coordinates

Progress = Callable[[int, int], None]

ENCODE_CHUNK = 2048
"""Training texts per encode call of a kNN index build: its progress (and on a pool, its sharding) grain."""

FIT_CHUNK = 256
"""Rows per chunk of the ``kfac`` fit sample. Fixed (not per worker), and the chunks' sums are added in
order, so the fitted bases are the same whatever the worker count."""

FACTORY_PROBE_DIM = 1024
"""A width to try a factory string at before the gradients' own width is known (catches typos at once)."""


def build_knn_index(
    engine: Engine,
    directory: str | Path,
    factory: str = DEFAULT_FACTORY,
    metric: Metric = DEFAULT_KNN_METRIC,
    progress: Progress | None = None,
    context: RequestContext | None = None,
) -> Manifest:
    """Encode the training set through the engine's backend (the same ``features`` queries use) and write
    the FAISS index atomically. The factory string is checked before any encoding."""
    examples, identity = engine.training_examples("a kNN index"), engine.identity
    empty_index(identity.feature_dim, factory, metric)
    features = over_examples(engine.backend.encode, examples, progress, context)
    data = engine.data_fingerprint("a kNN index")
    return build_index(
        features, directory, identity.model_fingerprint, data, factory, metric, adapter_of(identity)
    )


def adapter_of(identity) -> dict | None:
    """The adapter an index records (``Identity.adapter``, canonical JSON) as a JSON object."""
    return None if identity.adapter is None else json.loads(identity.adapter)


def over_examples(call, examples, progress: Progress | None = None, context=None) -> np.ndarray:
    """``call(texts, pairs, context)`` (the backend's ``encode`` or ``predict``) over a whole example set
    in chunks of ``ENCODE_CHUNK`` rows, concatenated in order; ``progress(chunks done, chunks)``."""
    starts = range(0, len(examples), ENCODE_CHUNK)
    parts = []
    for done, start in enumerate(starts):
        texts = examples.texts[start : start + ENCODE_CHUNK]
        pairs = examples.pairs[start : start + ENCODE_CHUNK] if examples.pairs is not None else None
        parts.append(call(texts, pairs, context))
        if progress is not None:
            progress(done + 1, len(starts))
    return np.concatenate(parts)


def check_gradient_factory(factory: str) -> None:
    """Raise ``ValueError`` for a factory string FAISS cannot build as an inner-product index (at
    ``FACTORY_PROBE_DIM``: before the gradients' own width is known, so a typo costs no gradient)."""
    empty_index(FACTORY_PROBE_DIM, factory, "ip")


def resolved_preconditioner(requested: str, tracked_parameters: int) -> str:
    """The preconditioner a build uses: ``hessian`` (the projected explicit training Hessian: with no
    projection, the index is the exact influence) only where an explicit Hessian is possible, at most
    ``MAX_EXACT_PARAMETERS`` tracked parameters; refused otherwise, naming ``fisher``.

    ``fisher`` stays the default, although it is an approximation: against the exact influence on the
    tests' tiny models it ranks rows at Spearman 0.96-1.0 after a few training steps and 0.8-0.96 once
    they reach 90% accuracy, encoders and decoders alike; the Hessian costs one double backward per
    tracked parameter over every row (a minute for a 3,000-parameter block over 200 rows on 2 cores)."""
    if requested == "hessian" and tracked_parameters > MAX_EXACT_PARAMETERS:
        raise ValueError(
            f"preconditioner='hessian' needs an explicit Hessian of the {tracked_parameters} tracked "
            f"parameters (at most {MAX_EXACT_PARAMETERS}); use 'fisher'"
        )
    return requested


def gradient_spec(engine: Engine, config: GradientIndexConfig, context=None) -> GradientSpec:
    return GradientSpec(
        config.rank,
        config.seed,
        resolved_preconditioner(config.preconditioner, engine.identity.num_parameters),
        config.damping,
        engine.identity.tracked_layers,
        "kfac" if config.fitted else "random",
        min(config.fit_rows, engine.num_examples) if config.fitted else None,
        kept_coordinates(engine, config, context),
        config.basis_rank if config.fitted else None,
    )


def _shard_store(engine: Engine, directory: str | Path, config: GradientIndexConfig) -> ShardStore:
    identity = engine.identity
    keys = {"model": identity.model_fingerprint, "data": identity.data_fingerprint, **config.identity}
    return ShardStore(shard_folder(directory), keys)


def fit_chunks(engine: Engine, config: GradientIndexConfig, context=None) -> int:
    """Chunks of the ``kfac`` fit sample (0 for a seeded projection), twice over when only some grid
    coordinates are kept (the factors, then the grids' second moments)."""
    if not config.fitted:
        return 0
    passes = 1 if kept_coordinates(engine, config, context) is None else 2
    return passes * math.ceil(min(config.fit_rows, engine.num_examples) / FIT_CHUNK)


def _offset(progress: Progress | None, before: int, total: int) -> Progress | None:
    """``progress`` for one stage of several: its ``done`` counted after ``before`` earlier steps."""
    if progress is None:
        return None
    return lambda done, _stage_total: progress(before + done, total)


def fit_projection(
    engine: Engine,
    directory: str | Path,
    config: GradientIndexConfig,
    progress: Progress | None = None,
    context: RequestContext | None = None,
) -> Projection:
    """The build's projection: seeded Gaussian sides (``random``, or no rank), or ``kfac`` bases fitted on a
    seeded sample of ``fit_rows`` training rows (the Kronecker factors summed chunk by chunk over the
    workers, then :func:`eigen_bases` at ``grid_rank``), and when its grids are wider than the index, the
    :func:`kept_coordinates` of largest second moment over the same rows (:func:`top_coordinates`; a second
    pass, the sample's gradients on the whole grids). Fitted bases are kept beside the shards, so a resumed
    build reuses them; ``progress(chunks done, chunks)`` as the fit's chunks finish."""
    rank = config.basis_rank
    if not config.fitted or rank is None:  # fitted: kfac with a rank
        return Projection(rank, config.seed)
    store = _shard_store(engine, directory, config)
    if (bases := store.load_bases()) is not None:
        return Projection(rank, config.seed, bases)
    rows = cg_rows(engine.num_examples, config.fit_rows, config.seed)
    steps, kept = fit_chunks(engine, config, context), kept_coordinates(engine, config, context)
    chunks = np.array_split(rows, math.ceil(len(rows) / FIT_CHUNK))
    total: dict[str, torch.Tensor] = {}
    for number, factors in engine.backend.kfac_factor_shards(chunks, rank, context):
        for name, array in factors.items():
            factor = torch.tensor(array, dtype=torch.float64)  # arrays off a worker are read-only
            total[name] = total[name] + factor if name in total else factor
        if progress is not None:
            progress(number + 1, steps)
    bases = eigen_bases(total, rank)
    if kept is not None:
        grids = Projection(rank, config.seed, bases)
        cells = {
            layer["layer"]: layer["k_out"] * layer["k_in"]
            for layer in engine.backend.projection_layers(grids, context)
        }
        squares = np.zeros(sum(cells.values()))
        for number, block in engine.backend.gradient_shards(chunks, grids, context):
            squares += (block.astype(np.float64) ** 2).sum(axis=0)
            if progress is not None:
                progress(len(chunks) + number + 1, steps)
        bases |= top_coordinates(squares / len(rows), cells, kept)
    store.save_bases(bases)
    return Projection(rank, config.seed, bases)


def projected_gradients(
    engine: Engine,
    directory: str | Path,
    config: GradientIndexConfig,
    projection: Projection,
    progress: Progress | None = None,
    context: RequestContext | None = None,
) -> ChunkedVectors:
    """Every training row's projected gradient ``[N, d]`` (float32), computed in chunks of
    ``config.chunk_rows`` kept beside ``directory`` (so that an interrupted build resumes) and read back
    from there memory-mapped: no process holds them all."""
    chunks = np.array_split(
        np.arange(engine.num_examples), math.ceil(engine.num_examples / config.chunk_rows)
    )
    store = _shard_store(engine, directory, config)
    done = {n: vectors for n, rows in enumerate(chunks) if (vectors := store.load(n, rows)) is not None}
    missing = [n for n in range(len(chunks)) if n not in done]
    if progress is not None:
        progress(len(done), len(chunks))
    for position, vectors in engine.backend.gradient_shards(
        [chunks[n] for n in missing], projection, context
    ):
        number = missing[position]
        if not done:  # the first shard tells the width: check the factory string before the rest
            empty_index(vectors.shape[1], config.factory, "ip")
        store.save(number, chunks[number], vectors)
        done[number] = store.mapped(number)  # read back from disk: this chunk is let go
        if progress is not None:
            progress(len(done), len(chunks))
    return ChunkedVectors([done[n] for n in range(len(chunks))])


def fit_inverse(
    engine: Engine, gradients: ChunkedVectors, spec: GradientSpec, projection: Projection, context=None
) -> torch.Tensor:
    """``(C + damping I)^-1`` of the chosen curvature (``interpret.influence.preconditioner``); the
    Fisher's sum is streamed over the gradients' chunks."""
    dim = gradients.dim
    if spec.preconditioner == "identity":
        curvature = torch.zeros(dim, dim, dtype=torch.float64)
    elif spec.preconditioner == "hessian":
        curvature = torch.from_numpy(engine.backend.projected_training_hessian(projection, context))
    else:
        curvature = torch.zeros(dim, dim, dtype=torch.float64)
        for block in gradients.blocks():
            curvature += second_moment(torch.from_numpy(block))
        curvature /= gradients.count
    return inverse_damped(curvature, spec.damping)


def preconditioned(gradients: ChunkedVectors, inverse: torch.Tensor) -> ChunkedVectors:
    """The gradients read as ``u_z = (C + damping I)^-1 g~_z``, block by block (what an index stores)."""
    return gradients.with_transform(lambda block: precondition(torch.from_numpy(block), inverse).numpy())


def build_peak_bytes(
    rows: int, dim: int, tracked_parameters: int, preconditioner: str, held: int, chunk_rows: int
) -> int:
    """Resident bytes a gradient-index build peaks at, in the process that writes it (the gradients stay
    on disk, memory-mapped, and stream into one shard at a time):

    * ``held``: the largest shard as the finished index holds it (``index.storage.resident_bytes``);
    * what its quantiser is trained on, at most ``TRAIN_ROWS`` rows, ``4 min(N, TRAIN_ROWS) d``, and
      a chunk being read and preconditioned, ``3 * 8 * chunk_rows * d`` (float64 copies);
    * the ``d x d`` curvature in float64 and the eigendecomposition that inverts it, ``4 * 8 d^2`` (the
      matrix, its eigenvectors, the inverse and LAPACK's workspace);
    * for ``hessian``, the explicit ``P x P`` training Hessian and its projection, ``2 * 8 P^2``."""
    peak = held + 4 * min(rows, TRAIN_ROWS) * dim + 3 * 8 * chunk_rows * dim + 4 * 8 * dim * dim
    if preconditioner == "hessian":
        peak += 2 * 8 * tracked_parameters * tracked_parameters
    return peak


def projected_dim(engine: Engine, rank: int | None, seed: int, context=None) -> int:
    """``d``: the width of one projected gradient on whole ``rank x rank`` grids (a seeded projection has a
    fitted one's shape), from the backend's tracked model."""
    layers = engine.backend.projection_layers(Projection(rank, seed), context)
    return sum(layer["k_out"] * layer["k_in"] for layer in layers)


def kept_coordinates(engine: Engine, config: GradientIndexConfig, context=None) -> int | None:
    """How many of its ``grid_rank`` grids' coordinates a ``kfac`` index keeps: ``coordinates``, else as many
    as ``rank x rank`` grids hold; ``None`` when that is every one (a uniform index, a seeded one, or a
    model whose layers are no wider than the rank). More than the grids hold is refused."""
    grid = config.basis_rank
    if not config.fitted or (grid == config.rank and config.coordinates is None):
        return None
    total = projected_dim(engine, grid, config.seed, context)
    kept = config.coordinates or projected_dim(engine, config.rank, config.seed, context)
    if kept > total:
        raise ValueError(
            f"coordinates={kept:,} is more than the {total:,} of the rank-{grid} grids: keep fewer, or raise "
            "grid_rank"
        )
    return None if kept == total else kept


def index_width(engine: Engine, config: GradientIndexConfig, context=None) -> int:
    """``d``: the width of one of the index's projected gradients (its kept coordinates, or whole grids)."""
    kept = kept_coordinates(engine, config, context)
    return kept if kept is not None else projected_dim(engine, config.basis_rank, config.seed, context)


def check_index_memory(
    config: GradientIndexConfig, rows: int, dim: int, max_bytes: int | None
) -> tuple[StorageLayout, int]:
    """The finished index's storage layout for ``rows`` vectors of width ``dim`` and its shard count
    (``config.shards``, or when unset the fewest whose largest fits ``max_bytes``), refused
    (:class:`IndexTooLargeError`, naming the storages that fit) before any work when one shard exceeds
    this machine's memory or ``max_bytes``. One shard is loaded with the queries' projection and inverse."""
    layout = storage_layout(
        config.storage,
        rows,
        dim,
        config.factory,
        config.ivf_lists,
        config.pq_bytes,
        config.nprobe,
        config.pca_dim,
    )
    shards = config.shards or fewest_shards(layout, rows, dim, max_bytes)
    if shards > rows:
        raise ValueError(f"shards={shards} is more than the {rows:,} training rows: use at most {rows}")
    largest = -(-rows // shards)
    inverse = 4 * dim * dim if config.fitted and shards == 1 else 0  # a kfac index keeps its inverse
    check_resident(resident_bytes(layout, largest, dim, inverse), max_bytes, largest, dim, inverse)
    return layout, shards


def fewest_shards(layout: StorageLayout, rows: int, dim: int, max_bytes: int | None) -> int:
    """The fewest shards (at most ``AUTO_SHARDS``) whose largest holds at most ``max_bytes``: 1 without a
    budget; ``AUTO_SHARDS`` when none fits, which the budget check then refuses (a smaller storage, or
    ``shards`` named, fits)."""
    if max_bytes is None:
        return 1
    most = min(rows, AUTO_SHARDS)
    shards = min(most, max(1, -(-resident_bytes(layout, rows, dim) // max_bytes)))
    while shards < most and resident_bytes(layout, -(-rows // shards), dim) > max_bytes:
        shards += 1  # each shard repeats the trained quantiser: the even split may fall just short
    return shards


def probe_rows(count: int, seed: int) -> np.ndarray:
    """The training rows whose projected gradients probe a compressed storage's recall (seeded)."""
    return np.sort(np.random.default_rng(seed).choice(count, min(RECALL_PROBES, count), replace=False))


def check_build_memory(
    engine: Engine, config: GradientIndexConfig, spec: GradientSpec, dim: int, shards: int, context=None
) -> int:
    """The build's estimated peak (:func:`build_peak_bytes`) for gradients of width ``dim`` written in
    ``shards`` shards; :class:`IndexTooLargeError` before any work when this machine cannot hold it,
    naming the largest lower rank that fits."""
    rows, tracked = engine.num_examples, engine.identity.num_parameters
    largest = -(-rows // shards)

    def peak(width: int) -> int:
        named = width == dim  # a named code size or pca width fits only its own width
        layout = storage_layout(
            config.storage,
            rows,
            width,
            config.factory,
            config.ivf_lists,
            config.pq_bytes if named else None,
            config.nprobe,
            config.pca_dim if named else None,
        )
        held = resident_bytes(layout, largest, width)
        return build_peak_bytes(rows, width, tracked, spec.preconditioner, held, config.chunk_rows)

    need, available = peak(dim), available_memory()
    if need <= available:
        return need
    fits, advice = None, "track fewer parameters or use fewer rows"
    if config.coordinates is not None:  # the width is the coordinates kept, whatever the rank
        kept = dim
        while kept > 1 and fits is None:
            kept //= 2
            fits = kept if peak(kept) <= available else None
        advice = f"keep --coordinates {fits} or fewer" if fits else advice
    else:
        rank = config.rank or 256
        while rank > 1 and fits is None:
            rank //= 2
            if peak(projected_dim(engine, rank, config.seed, context)) <= available:
                fits = rank
        advice = f"build with --rank {fits} or fewer rows" if fits else advice
    raise IndexTooLargeError(
        f"a gradient index of {rows:,} rows x {dim:,} dimensions (rank {config.rank}, {spec.preconditioner}) "
        f"needs about {readable_bytes(need)} at its peak and {readable_bytes(available)} are available: "
        f"{advice}"
    )


def add_to_gradient_index(
    engine: Engine,
    directory: str | Path,
    spec: DataSpec,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    context: RequestContext | None = None,
) -> GradientManifest:
    """Append the engine's training rows (the new rows, read from ``spec``) to the gradient index in
    ``directory`` as one new shard (``index.growth.append_rows``): their gradients projected with the
    index's own projection, in chunks kept beside it (an interrupted add resumes, and the old index stays
    as it was), and preconditioned with its kept inverse: the Fisher is not refitted, so the stored rows
    keep their vectors and an add costs what projecting the new rows costs. Checked before any work: the
    model and tracked set, that the index can grow, and that these rows are new to it."""
    manifest = read_gradient_manifest(directory)
    check_built_for(directory, manifest, engine.identity.model_fingerprint, engine.identity.tracked_layers)
    fingerprint = engine.data_fingerprint("rows to add")
    check_growable(directory, manifest, fingerprint)
    inverse = torch.from_numpy(read_inverse(directory, manifest)).double()
    projection, _ = read_projection(directory, manifest)
    built = manifest.spec
    fitted = built.get("projection") == "kfac" and built["rank"] is not None
    config = GradientIndexConfig(
        rank=built["rank"],
        projection=built.get("projection", "random"),
        seed=built["seed"],
        fit_rows=built.get("fit_rows") or GradientIndexConfig().fit_rows,
        grid_rank=built_grid_rank(built) if fitted else None,
        coordinates=built.get("coordinates"),
        preconditioner=built["preconditioner"],
        damping=built["damping"],
        chunk_rows=chunk_rows,
    )
    work = Path(directory).with_name(Path(directory).name + ".add")
    clock = time.perf_counter()
    gradients = projected_gradients(engine, work, config, projection, progress, context)
    grown = append_rows(
        directory, preconditioned(gradients, inverse), spec, fingerprint, time.perf_counter() - clock
    )
    ShardStore(shard_folder(work), {}).remove()
    return grown


def build_gradient_index(
    engine: Engine,
    directory: str | Path,
    config: GradientIndexConfig | None = None,
    progress: Progress | None = None,
    context: RequestContext | None = None,
    scratch: str | Path | None = None,
    max_bytes: int | None = None,
) -> GradientManifest:
    """Project every training gradient, fit the preconditioner, store ``u_z = (C + damping I)^-1 g~_z`` in
    an inner-product index held as ``config.storage`` says (atomically), then drop the shards. The factory
    string, the build's peak memory and the finished index's resident bytes (against ``max_bytes``, the
    operator's ``INFLUENCE_MAX_INDEX_BYTES``, too) are checked first.

    The shards (each written whole, so an interrupted build resumes) are kept beside ``directory``, or in
    ``scratch`` (the service's: nothing but the finished index lands beside the one it serves)."""
    config = config or GradientIndexConfig()
    check_gradient_factory(config.factory)
    engine.training_examples("a gradient index")
    spec = gradient_spec(engine, config, context)
    dim = index_width(engine, config, context)
    layout, shards = check_index_memory(config, engine.num_examples, dim, max_bytes)
    check_build_memory(engine, config, spec, dim, shards, context)
    # One progress bar over both passes: the factor chunks of the fit, then the gradient chunks.
    fit, chunks = fit_chunks(engine, config, context), math.ceil(engine.num_examples / config.chunk_rows)
    work = Path(scratch) / Path(directory).name if scratch is not None else directory
    projection = fit_projection(engine, work, config, _offset(progress, 0, fit + chunks), context)
    gradients = projected_gradients(
        engine, work, config, projection, _offset(progress, fit, fit + chunks), context
    )
    inverse = fit_inverse(engine, gradients, spec, projection, context)
    probes = gradients.take(probe_rows(gradients.count, config.seed))  # queries for the storage's recall
    identity = engine.identity
    layers = engine.backend.projection_layers(projection, context)
    manifest = write_gradient_index(
        preconditioned(gradients, inverse),
        directory,
        identity.model_fingerprint,
        engine.data_fingerprint("a gradient index"),
        spec,
        layers,
        config.factory,
        projection,
        inverse.numpy(),
        adapter_of(identity),
        layout,
        probes,
        shards,
    )
    ShardStore(shard_folder(work), {}).remove()
    return manifest
