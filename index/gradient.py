"""The gradient index: every training example's projected, preconditioned gradient in a FAISS
inner-product index, so an influence query over the whole training set is one search.

A folder holds ``manifest.json`` (model and data fingerprints, the projection's kind, rank and seed, the
preconditioner and its damping, the storage and the shards), the vectors (``index.faiss`` and ``rows.json``,
or one subfolder of them per shard: ``index.shards``) and, for a ``kfac`` projection, its fitted bases in
``projection.safetensors`` (their SHA-256 in the manifest), written in one atomic rename.
The build computes gradients in shards kept in a side folder (``<out>.shards/``: one ``.npy`` of float32
vectors and one JSON of rows and settings per shard, each written atomically; the fitted bases too), so an
interrupted build resumes where it stopped and a build split over workers writes the same shards as one
in-process.

Stored vectors are ``u_z = (C + damping I)^-1 g~_z`` (``interpret.influence.preconditioner``); the score
is ``I(z, z_test) = -g~_test . u_z``, so the most helpful rows are the *largest* inner products and the
most harmful the smallest (searched as the largest with ``-g~_test``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from index.shards import IndexShard, LocalShards, ShardSearcher, Sides, load_shard, write_shards
from index.storage import StorageLayout, check_resident, resident_bytes, storage_layout
from index.store import MANIFEST_FILE, IndexMismatchError
from index.vectors import ChunkedVectors
from interpret.config import DEFAULT_FACTORY, IndexStorage, MethodUnavailableError
from interpret.data import AddedRows, DataSpec
from interpret.influence.metrics import recall_at_m
from interpret.influence.preconditioner import IndexCurvature, precondition
from interpret.influence.projection import Projection, bases_digest
from interpret.storage import atomic_directory, write_json_atomic

GRADIENT_KIND = "gradient"
PROJECTION_FILE = "projection.safetensors"
INVERSE_KEY = "preconditioner:inverse"
"""``(C + damping I)^-1`` in ``projection.safetensors`` beside the bases: the ``index`` solver's curvature."""
PRECONDITIONER_FILE = "preconditioner.safetensors"
"""A seeded projection's ``(C + damping I)^-1`` (a kfac index keeps it in ``projection.safetensors``): what
rows added later are preconditioned with."""
RECALL_TOP, RECALL_PROBES = 100, 20
"""A compressed storage's recall is measured at build time as recall@100 over 20 probe queries."""
BASES_FILE = "bases.safetensors"
"""A build's fitted ``kfac`` bases beside its shards (so a resumed build projects with the same ones)."""


@dataclass(frozen=True)
class GradientSpec:
    """What the stored vectors depend on besides the weights and the data; the manifest records it."""

    rank: int | None
    seed: int
    preconditioner: str
    damping: float
    tracked_layers: int | str
    projection: str = "random"
    """``kfac`` or ``random`` (indexes built before ``kfac`` existed read as ``random``, which they were)."""
    fit_rows: int | None = None
    """``kfac``: training rows its Kronecker factors were summed over."""
    coordinates: int | None = None
    """``kfac``: the grid coordinates kept (those of largest second moment), or ``None``: all of them."""
    grid_rank: int | None = None
    """``kfac``: the rank per side of the eigenbasis grids (the projection's own rank), or ``None``: ``rank``
    (indexes built before the grids could be wider than the index)."""


@dataclass(frozen=True)
class GradientManifest:
    model_fingerprint: str
    data_fingerprint: str
    spec: dict[str, Any]
    dim: int
    factory: str
    count: int
    layers: list[dict[str, Any]]
    created_at: str
    kind: str = GRADIENT_KIND
    metric: str = "ip"
    fidelity: dict[str, Any] | None = None
    """Measured against a converged full scan (``benchmarks/gradient_index.py`` records it); null until."""
    faiss_version: str = faiss.__version__
    projection_sha256: str | None = None
    """SHA-256 of ``projection.safetensors`` (the fitted ``kfac`` bases and the inverse); null when seeded."""
    adapter: dict[str, Any] | None = None
    """The PEFT adapter the model is (type, base, rank, targets), or null for a plain model."""
    storage: str = "float32"
    """How the vectors are held (``index.storage``); indexes built before storages existed are float32."""
    ivf_lists: int | None = None
    pq_bytes: int | None = None
    nprobe: int | None = None
    """ivf-pq: its coarse lists, code bytes per row and lists searched per query."""
    pca_dim: int | None = None
    """pca-sq8: the principal directions its codes keep."""
    resident_bytes: int | None = None
    """What the loaded index holds in memory (``index.storage.resident_bytes``), checked before a load."""
    storage_recall: dict[str, Any] | None = None
    """A compressed storage's recall@100 against the exact search over its own float32 vectors, measured
    at build time with training rows' projected gradients as queries; null for an exact index."""
    shards: int = 1
    shard_counts: list[int] | None = None
    """Rows of each shard, in row order (``index.shards``); null for one shard (all ``count`` rows)."""
    inverse_sha256: str | None = None
    """SHA-256 of ``preconditioner.safetensors`` (a seeded projection's inverse); null for kfac or before."""
    data_chain: list[str] | None = None
    """The training data's fingerprint, then each added set's (``influence index add``); null: never grown.
    ``data_fingerprint`` is then their ``interpret.data.chain_fingerprint``."""
    additions: list[dict[str, Any]] | None = None
    """Each added set: its data spec (absolute source), fingerprint, rows, first row and time."""
    removed_rows: list[int] | None = None
    """Training rows left out of every answer (``influence index remove``), sorted; null: none."""
    history: list[dict[str, Any]] | None = None
    """What changed the index after its build, oldest first (``index.growth``: remove, add)."""
    norms: str | None = None
    """What each shard's ``norms.npy`` holds, which the normalised view divides by: ``preconditioned``
    (``||A^-1/2 g~_z||``, the test's norm taken the same way) or ``plain`` (rows stored as given, no
    preconditioner: ``||u_z||`` and ``||g~_test||``); null: built before norms were kept."""

    @property
    def layout(self) -> StorageLayout:
        storage = typing.cast(IndexStorage, self.storage)
        return StorageLayout(storage, self.factory, self.ivf_lists, self.pq_bytes, self.nprobe, self.pca_dim)

    @property
    def memory_bytes(self) -> int:
        """What a load will hold: the recorded estimate, or one made now for a manifest from before."""
        return self.resident_bytes or resident_bytes(self.layout, self.count, self.dim)

    @property
    def chain(self) -> list[str]:
        """The fingerprints of the data the index holds: its training data's, then each added set's."""
        return self.data_chain or [self.data_fingerprint]

    @property
    def counts(self) -> list[int]:
        """Rows of each shard."""
        return self.shard_counts or [self.count]

    @property
    def added_rows(self) -> AddedRows | None:
        """The rows this index added after its training data, as an engine loads them."""
        if not self.additions or not self.data_chain:
            return None
        return AddedRows(self.data_chain[0], tuple(DataSpec(**added["spec"]) for added in self.additions))

    def hidden(self, number: int) -> np.ndarray:
        """The removed rows that shard ``number`` holds."""
        removed = np.asarray(self.removed_rows or [], dtype=np.int64)
        start = sum(self.counts[:number])
        return removed[(removed >= start) & (removed < start + self.counts[number])]

    def shard_bytes(self, number: int) -> int:
        """What the process that holds shard ``number`` alone holds (the projection stays with queries)."""
        return resident_bytes(self.layout, self.counts[number], self.dim)


@dataclass
class GradientIndex:
    """A loaded gradient index: ``search(g~_test, top)`` gives the most helpful and most harmful rows. Its
    vectors are held by ``shards``: in this process, or by Ray actors (then this process holds none)."""

    shards: ShardSearcher
    manifest: GradientManifest
    projection: Projection
    curvature: IndexCurvature | None = None
    """Present for a ``kfac`` index (orthonormal projection rows), which the ``index`` solver needs."""
    inverse: np.ndarray | None = None
    """``(C + damping I)^-1``, for the test's norm in the normalised view (an index with ``preconditioned``
    norms); None otherwise."""
    spec: GradientSpec = field(init=False)

    def __post_init__(self) -> None:
        self.spec = GradientSpec(**self.manifest.spec)

    def require_norms(self) -> None:
        """Refuse the normalised view, naming the rebuild, on an index built before it kept its norms."""
        if self.manifest.norms is None:
            raise MethodUnavailableError(
                "normalize=true needs a gradient index that keeps its rows' norms, and this one was built "
                "before it did: rebuild it with `influence index build --kind gradient`, or leave normalize "
                "out for the raw scores",
                "normalize",
            )

    def precondition(self, gradients: np.ndarray) -> np.ndarray:
        """``u = (C + damping I)^-1 g~`` for each row of ``gradients`` ``[n, d]``: what the index stores
        for a training row, so ``g~_test . u`` scores rows it never held (``index.growth`` adds rows so)."""
        inverse = self.inverse if self.inverse is not None else getattr(self.curvature, "inverse", None)
        vectors = np.asarray(gradients, dtype=np.float64)
        if inverse is not None:
            return precondition(
                torch.from_numpy(vectors), torch.from_numpy(np.asarray(inverse, np.float64))
            ).numpy()
        if self.manifest.norms == "plain":  # stored as given: no preconditioner
            return vectors
        raise MethodUnavailableError(
            "scoring rows outside the index needs its preconditioner, which an index built before it kept "
            "its norms does not load: rebuild it with `influence index build --kind gradient`",
            "gradient_index",
        )

    def test_norm(self, query: np.ndarray) -> float:
        """The test gradient's norm, taken as the rows' are (``manifest.norms``): ``||A^-1/2 g~_test||`` =
        ``sqrt(|g~_test . A^-1 g~_test|)``, or ``||g~_test||`` for ``plain`` norms."""
        vector = np.asarray(query, dtype=np.float32).ravel()
        if self.manifest.norms == "preconditioned":
            assert self.inverse is not None  # loaded with the index (load_gradient_index)
            solved = np.asarray(self.inverse, dtype=np.float32) @ vector  # float32 as stored: no d x d copy
            return float(np.sqrt(abs(np.dot(vector.astype(np.float64), solved.astype(np.float64)))))
        return float(np.linalg.norm(vector.astype(np.float64)))

    def search(
        self, test_gradient: np.ndarray, top: int, normalize: bool = False
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """``((rows, scores) helpful, (rows, scores) harmful)``, each best first; ``score = -ip``.

        ``normalize``: ranked and scored by the cosine of the test and training gradients in the
        preconditioned space, ``score = -g~_test . u_z / (||A^-1/2 g~_test|| ||A^-1/2 g~_z||)`` (in
        ``[-1, 1]`` for a positive definite ``A``). It orders rows as RelatIF's relative influence
        ``I(z, test) / sqrt(I(z, z))`` does (the test's norm is one constant), so a row no longer ranks
        high for its gradient's size alone."""
        query = np.ascontiguousarray(test_gradient, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.manifest.dim:
            raise ValueError(f"test gradient has dim {query.shape[1]}, the index has {self.manifest.dim}")
        if normalize:
            self.require_norms()
        (helpful, helpful_ip), (harmful, harmful_ip) = self.shards.search(query, top, normalize)
        scale = 1.0
        if normalize:
            test = self.test_norm(query)
            scale = 1.0 / test if test > 0 else 0.0
        return (helpful, -helpful_ip * scale), (harmful, -harmful_ip * scale)

    def close(self) -> None:
        """Let go of the shards (a Ray actor per shard is stopped)."""
        self.shards.close()

    def vectors(self) -> np.ndarray:
        """Every stored vector ``[N, d]`` in training-row order (for checks and benchmarks): the shards
        must be held in this process."""
        if not isinstance(self.shards, LocalShards):
            raise ValueError("the index's vectors are held by Ray actors: load it here to read them")
        return self.shards.vectors()


class ShardStore:
    """Finished gradient shards of one build (and its fitted bases), beside its output folder; reused only
    with the same spec, model and data (a shard's JSON records them)."""

    def __init__(self, directory: str | Path, identity: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.identity = identity

    def _paths(self, number: int) -> tuple[Path, Path]:
        return self.directory / f"shard-{number:05d}.npy", self.directory / f"shard-{number:05d}.json"

    def load(self, number: int, rows: np.ndarray) -> np.ndarray | None:
        """The shard's vectors (memory-mapped) if it was finished for exactly these rows and this identity,
        else None."""
        vectors_path, meta_path = self._paths(number)
        if not (vectors_path.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("identity") != self.identity or meta.get("rows") != rows.tolist():
                return None
            vectors = self.mapped(number)
        except (OSError, ValueError):
            return None  # a torn or foreign file: recompute the shard
        return vectors if vectors.ndim == 2 and vectors.shape[0] == len(rows) else None

    def mapped(self, number: int) -> np.ndarray:
        """Shard ``number``'s saved vectors, memory-mapped (read from disk as they are used)."""
        vectors: np.ndarray = np.load(self._paths(number)[0], mmap_mode="r", allow_pickle=False)
        return vectors

    def save(self, number: int, rows: np.ndarray, vectors: np.ndarray) -> None:
        vectors_path, meta_path = self._paths(number)
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".npy", delete=False) as handle:
            np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
        os.replace(handle.name, vectors_path)
        write_json_atomic(meta_path, {"identity": self.identity, "rows": rows.tolist()})

    def load_bases(self) -> dict[str, np.ndarray] | None:
        """The bases an interrupted build of this identity fitted, or None."""
        from safetensors.numpy import load_file

        path, meta_path = self.directory / BASES_FILE, self.directory / (BASES_FILE + ".json")
        try:
            if json.loads(meta_path.read_text()).get("identity") != self.identity:
                return None
            return load_file(str(path))
        except (OSError, ValueError):
            return None

    def save_bases(self, bases: dict[str, np.ndarray]) -> None:
        from safetensors.numpy import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        descriptor, scratch = tempfile.mkstemp(dir=self.directory, suffix=".safetensors")
        os.close(descriptor)
        save_file({k: np.ascontiguousarray(v) for k, v in bases.items()}, scratch)
        os.replace(scratch, self.directory / BASES_FILE)
        write_json_atomic(self.directory / (BASES_FILE + ".json"), {"identity": self.identity})

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def shard_folder(directory: str | Path) -> Path:
    directory = Path(directory)
    return directory.with_name(directory.name + ".shards")


def write_gradient_index(
    vectors: np.ndarray | ChunkedVectors,
    directory: str | Path,
    model_fingerprint: str,
    data_fingerprint: str,
    spec: GradientSpec,
    layers: list[dict[str, Any]],
    factory: str = DEFAULT_FACTORY,
    projection: Projection | None = None,
    inverse: np.ndarray | None = None,
    adapter: dict[str, Any] | None = None,
    layout: StorageLayout | None = None,
    probes: np.ndarray | None = None,
    shards: int = 1,
) -> GradientManifest:
    """Store preconditioned vectors ``[N, d]`` (row i = training row i; an array, or chunks streamed one
    shard at a time) in an inner-product index held as ``layout`` says (default: float32 in ``factory``),
    cut into ``shards`` shards (``index.shards``), with the projection's fitted bases and the
    preconditioner's ``inverse`` (kept beside a seeded projection too, so rows can be added later). With
    ``probes`` (projected gradients, as queries), a compressed index's recall against the exact search is
    measured and recorded."""
    if isinstance(vectors, np.ndarray):
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"vectors must be a non-empty [N, d] array, got shape {vectors.shape}")
        vectors = ChunkedVectors([vectors])
    count, dim = vectors.count, vectors.dim
    layout = layout or storage_layout("float32", count, dim, factory)
    stored = None
    if projection is not None and projection.bases is not None:
        if inverse is None:
            raise ValueError("a kfac index stores its preconditioner's inverse: pass inverse")
        stored = {**projection.bases, INVERSE_KEY: np.asarray(inverse, dtype=np.float32)}
    kept = None if stored is not None or inverse is None else {INVERSE_KEY: np.asarray(inverse, np.float32)}
    # the test's norm in the normalised view is taken with the inverse: loaded with the index, so counted
    extra = sum(array.nbytes for held in (stored, kept) if held is not None for array in held.values())
    norms_kind = "plain" if vectors.transform is None else None if inverse is None else "preconditioned"
    measured = probes if layout.factory != "Flat" and probes is not None else None
    top = min(RECALL_TOP, count)
    arrays = {PROJECTION_FILE: stored, PRECONDITIONER_FILE: kept}
    with atomic_directory(directory) as scratch:
        from safetensors.numpy import save_file

        for name, tensors in arrays.items():
            if tensors is not None:
                save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(scratch / name))
        counts, answers = write_shards(scratch, vectors, layout, shards, measured, top)
        manifest = GradientManifest(
            model_fingerprint,
            data_fingerprint,
            asdict(spec),
            dim,
            layout.factory,
            count,
            layers,
            datetime.now(UTC).isoformat(),
            projection_sha256=None if stored is None else bases_digest(stored),
            inverse_sha256=None if kept is None else bases_digest(kept),
            adapter=adapter,
            storage=layout.storage,
            ivf_lists=layout.ivf_lists,
            pq_bytes=layout.pq_bytes,
            nprobe=layout.nprobe,
            pca_dim=layout.pca_dim,
            resident_bytes=sum(resident_bytes(layout, n, dim) for n in counts) + extra,
            storage_recall=None if measured is None else storage_recall(answers, vectors, measured, top),
            shards=shards,
            shard_counts=None if shards == 1 else counts,
            norms=norms_kind,
        )
        write_json_atomic(scratch / MANIFEST_FILE, asdict(manifest))
    return manifest


def storage_recall(
    answers: list[Sides], vectors: ChunkedVectors, probes: np.ndarray, top: int = RECALL_TOP
) -> dict[str, Any]:
    """recall@``top`` of each probe's ``answers`` (the index searched as queries are, re-scoring included)
    against the exact inner products of the probes ``[P, d]`` with the float32 ``vectors``, each side,
    averaged."""
    scores = -vectors.products(np.ascontiguousarray(probes, dtype=np.float32))  # [N, P] influence scores
    found: dict[str, list[float]] = {"helpful": [], "harmful": []}
    for column, (helpful, harmful) in enumerate(answers):
        found["helpful"].append(recall_at_m(helpful[0], scores[:, column], top, "helpful"))
        found["harmful"].append(recall_at_m(harmful[0], scores[:, column], top, "harmful"))
    return {
        "top": top,
        "queries": len(probes),
        "queries_are": "training rows' projected gradients",
        **{f"recall_{side}": float(np.mean(values)) for side, values in found.items()},
    }


def read_gradient_manifest(directory: str | Path) -> GradientManifest:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise IndexMismatchError(
            f"{path}: no gradient index manifest; build one with `influence index build --kind gradient`"
        )
    try:
        payload = json.loads(path.read_text())
        if payload.get("kind") != GRADIENT_KIND:
            raise IndexMismatchError(
                f"{directory}: a {payload.get('kind', 'knn')} index, not a gradient index"
            )
        return GradientManifest(**payload)
    except (json.JSONDecodeError, TypeError) as error:
        raise IndexMismatchError(f"{path}: unreadable manifest ({error}); rebuild the index") from error


def record_fidelity(directory: str | Path, fidelity: dict[str, Any]) -> None:
    """Write measured fidelity numbers into the manifest (atomically): queries report them."""
    path = Path(directory) / MANIFEST_FILE
    payload = json.loads(path.read_text())
    payload["fidelity"] = fidelity
    write_json_atomic(path, payload)


ServeShards = Callable[[Path, GradientManifest, "int | None"], ShardSearcher]
"""Who holds a loaded index's shards, given its folder, manifest and memory budget: ``workers.shards``
starts one Ray actor per shard; by default this process loads them all (:func:`local_shards`)."""


def load_gradient_index(
    directory: str | Path,
    model_fingerprint: str,
    data_fingerprint: str,
    tracked_layers: int | str,
    max_bytes: int | None = None,
    serve: ServeShards | None = None,
) -> GradientIndex:
    """Load a gradient index built for exactly this model, data and tracked set, or refuse; its shards are
    held by ``serve`` (by default, here). Refused too, before any vector is read, when what one process
    holds exceeds its machine's memory or ``max_bytes``."""
    manifest = read_gradient_manifest(directory)
    check_built_for(directory, manifest, model_fingerprint, tracked_layers, data_fingerprint)
    if len(manifest.counts) != manifest.shards or sum(manifest.counts) != manifest.count:
        raise IndexMismatchError(
            f"{directory}: the manifest's {manifest.shards} shards hold {manifest.counts} rows, not "
            f"{manifest.count}; rebuild the index"
        )
    projection, curvature = read_projection(directory, manifest)
    inverse = None
    if manifest.norms == "preconditioned":
        inverse = curvature.inverse if curvature is not None else read_inverse(directory, manifest)
    shards = (serve or local_shards)(Path(directory), manifest, max_bytes)
    return GradientIndex(shards, manifest, projection, curvature, inverse)


def check_built_for(
    directory: str | Path,
    manifest: GradientManifest,
    model_fingerprint: str,
    tracked_layers: int | str,
    data_fingerprint: str | None = None,
) -> None:
    """Refuse an index built for another model, tracked set or (unless ``None``) training data."""
    checks = (
        ("model fingerprint", manifest.model_fingerprint, model_fingerprint),
        ("data fingerprint", manifest.data_fingerprint, data_fingerprint),
        ("tracked_layers", manifest.spec.get("tracked_layers"), tracked_layers),
    )
    for what, stored, expected in checks:
        if expected is not None and stored != expected:
            shown = (lambda v: str(v)[:12]) if "fingerprint" in what else repr
            raise IndexMismatchError(
                f"{directory}: gradient index was built for {what} {shown(stored)}, but the loaded model "
                f"has {shown(expected)}; rebuild it with `influence index build --kind gradient`"
            )


def local_shards(directory: Path, manifest: GradientManifest, max_bytes: int | None) -> LocalShards:
    """Every shard loaded in this process, after checking that all of them fit it."""
    what = f"{directory}: the gradient index"
    check_resident(manifest.memory_bytes, max_bytes, manifest.count, manifest.dim, what=what)
    return LocalShards([read_shard(directory, manifest, n) for n in range(manifest.shards)])


def load_gradient_shard(
    directory: str | Path, manifest: GradientManifest, number: int, max_bytes: int | None = None
) -> IndexShard:
    """Shard ``number`` alone (what one Ray actor holds), refused before it is read when it exceeds this
    machine's memory or ``max_bytes``."""
    rows, what = manifest.counts[number], f"{directory}: shard {number} of the gradient index"
    check_resident(manifest.shard_bytes(number), max_bytes, rows, manifest.dim, what=what)
    return read_shard(directory, manifest, number)


def read_shard(directory: str | Path, manifest: GradientManifest, number: int) -> IndexShard:
    """Shard ``number``'s files, checked against the manifest."""
    count, dim, hidden = manifest.counts[number], manifest.dim, manifest.hidden(number)
    normed = manifest.norms is not None
    return load_shard(directory, manifest.shards, number, count, dim, manifest.layout, hidden, normed)


def built_grid_rank(spec: dict[str, Any]) -> int | None:
    """A manifest's projection rank per side: its ``grid_rank``, or for an index built before the grids could
    be wider than the index (none recorded), its ``rank``."""
    return spec.get("grid_rank") or spec.get("rank")


def read_projection(
    directory: str | Path, manifest: GradientManifest
) -> tuple[Projection, IndexCurvature | None]:
    """The index's projection: its seeded rank, or its stored ``kfac`` bases and inverse (checked against
    the manifest's SHA-256, so a swapped or torn file is refused rather than silently projecting queries
    differently)."""
    spec = manifest.spec
    if manifest.projection_sha256 is None:
        return Projection(spec.get("rank"), spec.get("seed", 0)), None
    bases = _read_checked(Path(directory) / PROJECTION_FILE, manifest.projection_sha256, "projection bases")
    inverse = bases.pop(INVERSE_KEY)
    projection = Projection(built_grid_rank(spec), spec.get("seed", 0), bases)
    damping = float(spec["damping"])
    return projection, IndexCurvature(projection, inverse, damping, manifest.projection_sha256)


def read_inverse(directory: str | Path, manifest: GradientManifest) -> np.ndarray:
    """The ``(C + damping I)^-1`` the index's rows were preconditioned with (rows added later get the same),
    checked against its SHA-256; refused for an index built before it was kept."""
    if manifest.projection_sha256 is not None:
        _, curvature = read_projection(directory, manifest)
        assert curvature is not None  # a kfac index: its inverse is beside the bases
        return np.asarray(curvature.inverse)
    if manifest.inverse_sha256 is None:
        raise IndexMismatchError(
            f"{directory}: this index was built before it kept its preconditioner; rebuild it with "
            "`influence index build --kind gradient` to add rows to it"
        )
    stored = _read_checked(Path(directory) / PRECONDITIONER_FILE, manifest.inverse_sha256, "preconditioner")
    return stored[INVERSE_KEY]


def _read_checked(path: Path, digest: str, what: str) -> dict[str, np.ndarray]:
    """A safetensors file of the index whose SHA-256 (``bases_digest``) must be the manifest's."""
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(path))
    except (OSError, ValueError) as error:
        raise IndexMismatchError(f"{path}: unreadable {what} ({error}); rebuild the index") from error
    if bases_digest(arrays) != digest:
        raise IndexMismatchError(
            f"{path}: the {what} do not match the manifest's SHA-256; rebuild the index with "
            "`influence index build --kind gradient`"
        )
    return arrays
