"""The contract's settings, each default and bound defined once: influence queries and per-method parameters.

Frozen pydantic models, importable without torch. The interpret functions take their defaults from them,
and the REST request models (``service.schemas``) are subclasses of them, so a change to a default, a bound
or a description is one edit here, seen by the library, the CLI and the API alike. Validation is
pydantic's alone (strict: no coercion, unknown names refused, floats finite); a bad value raises its
``ValidationError`` (a ``ValueError``) naming the field, which :func:`describe_errors` puts on one line.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

SEED_MAX = 2**32 - 1
"""numpy and torch seeds are 32-bit; a larger seed is refused rather than truncated."""

DEFAULT_FACTORY = "Flat"
"""Every index's FAISS factory string by default: an exact search (IVF or HNSW trade recall for speed)."""
IndexKind = typing.Literal["knn", "gradient"]
DEFAULT_INDEX_KIND: IndexKind = "knn"
"""What ``influence index build`` and an ``index_build`` job build unless told: FastIF's kNN index."""
JobKind = typing.Literal[
    "influence", "saliency", "attack", "evaluate", "index_build", "index_remove", "index_add"
]
"""What a service job runs (the wire's ``kind``; deadlines and scheduling classes are set per kind)."""
JOB_KINDS: tuple[str, ...] = typing.get_args(JobKind)
Metric = typing.Literal["l2", "ip"]
DEFAULT_KNN_METRIC: Metric = "l2"
"""The kNN index's distance (FastIF's); the gradient index is always inner product."""


class Config(BaseModel):
    """A group of settings: frozen (hashable, so a cache can key on it), strict (``"1"`` and ``true`` are
    not the integer 1), unknown names refused, floats finite. Built by keyword only."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    @classmethod
    def default(cls, name: str) -> typing.Any:
        """Field ``name``'s default: what a function's keyword or a command's option defaults to."""
        return cls.model_fields[name].get_default(call_default_factory=True)

    @classmethod
    def of(cls, source: BaseModel) -> Self:
        """This config's fields taken from ``source``: a request model that extends it with its own."""
        return cls(**{name: getattr(source, name) for name in cls.model_fields})

    def replace(self, **changes: object) -> Self:
        """A copy with ``changes``, validated again (``model_copy(update=...)`` would skip the checks)."""
        return type(self)(**{**dict(self), **changes})


def describe_errors(errors: Sequence[typing.Mapping[str, object]]) -> str:
    """Pydantic's errors (``ValidationError.errors()``) as one line: the first one's dotted field and
    message, and how many more there are (request fields in ``body`` are named without it)."""
    first = errors[0] if errors else {}
    location = first.get("loc", ())
    parts = location if isinstance(location, tuple | list) else ()
    field = ".".join(str(part) for part in parts if part != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{field}: {first.get('msg', 'invalid')}{more}"


def resolve_label(value: int | str | None, names: Sequence[str], field: str = "label") -> int | None:
    """A label given by index or by name (``names``: the model's, :func:`interpret.models.label_names`) as
    its index; a name the model does not have is one error listing the names."""
    if value is None or isinstance(value, int):
        check_label(value, len(names), field)
        return value
    if value in names:
        return list(names).index(value)
    raise ValueError(
        f"{field}={value!r} is not a label of this model: use an index 0..{len(names) - 1} or one of its "
        f"names {list(names)}"
    )


def check_label(value: int | None, num_labels: int, field: str = "label") -> None:
    """A label (or target) the model has: ``0..num_labels-1``; the one label check, every caller's."""
    if value is not None and not 0 <= value < num_labels:
        raise ValueError(f"{field}={value} is not a label of this model: use 0..{num_labels - 1}")


MAX_DAMPING = 1e6
"""Above this the damping term is all there is (scores ~ g.v / lambda) and the answer is no longer about
the model: the bound keeps every response a finite, meaningful number."""


class LissaConfig(Config):
    """LiSSA knobs, named as in FastIF (Guo et al. 2021) and Koh & Liang (2017).

    ``damping`` is the lambda added to the Hessian: LiSSA estimates ``(H + damping * I)^-1 v``.
    FastIF's and Koh & Liang's code use ``h <- v + (1 - d) h - H h / scale`` instead, whose fixed point is
    ``(H + d * scale * I)^-1 v``: their ``d`` equals our ``damping / scale``. torch-influence's damping
    is ours. ``scale`` must exceed half the largest eigenvalue of ``H + damping*I`` on one sampled batch,
    or the recursion diverges.

    The defaults are the FastIF preset: one example per step (B=1) and a medium depth, which the paper
    found faster than one large-batch run. ``scale`` is measured unless given: the largest top eigenvalue
    (plus damping) of a few sampled B-row batches' Hessians by power iteration
    (``interpret.influence.lissa.curvature_scale``), so a model whose curvature is far from MiniLM's does
    not diverge at the defaults; the quality block reports the scale used. Single SST-2 examples reach
    eigenvalues near 1000 on MiniLM's last two layers, which is FastIF's fixed ``scale=1000``. What that
    buys: the deterministic part of the recursion contracts by at least ``1 - damping/scale`` per step, so
    by J=1000 it is within 0.7% of its fixed point, but the *sampling* noise is not averaged away: against a
    converged conjugate-gradient solve of the same damped system (Hessian over 2,000 SST-2 rows) one
    repetition is 22% off in relative norm (cosine 0.977), and J=500 with B=4 17% (cosine 0.987)
    (``benchmarks/results/influence_query.json``, ``lissa_tradeoff``). Raise
    ``num_repetitions`` (in parallel on workers) or ``batch_size`` to cut it; ``exact`` (small tracked
    sets) has none. FastIF's published ``damp=5e-3, scale=1e4`` is ``damping=50`` here.
    """

    recursion_depth: int = Field(1000, ge=1, description="J: recursion steps per repetition.")
    batch_size: int = Field(1, ge=1, le=4096, description="B: training examples per Hessian-vector product.")
    num_repetitions: int = Field(1, ge=1, description="T: independent repetitions, averaged.")
    damping: float = Field(5.0, gt=0, le=MAX_DAMPING, description="lambda in (H + lambda I)^-1.")
    scale: float | None = Field(
        None,
        gt=0,
        le=1e12,
        description="Must exceed half the largest batch Hessian eigenvalue; null: measured on sampled "
        "batches (power iteration), reported in the quality block.",
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Repetition r is seeded by (seed, r).")


LISSA_DIVERGENCE_BOUND = 10.0
"""LiSSA stops when ``||h|| > LISSA_DIVERGENCE_BOUND * scale * ||v|| / damping``: no convergent run with a
positive semi-definite Hessian exceeds that bound (the geometric series of ``I - (H + damping I) /
scale``) by this factor. A safety margin, not a knob a request sets."""

SCORE_BATCH_SIZE = 128
"""Candidates scored per forward-mode pass (``interpret.influence.scoring``): bounds a scoring shard's
memory, not its result."""

FROZEN_CACHE_BYTES = 256 * 2**20
"""Training rows' frozen-bottom outputs a scorer keeps between queries (``ExampleStates``' cache, least
recently used out; a row holds tokens x hidden float32s, 1.5 kB a token at MiniLM's width). Reranks score
the same rows again and again: ``benchmarks/gradient_index.py`` measures how much the candidates of
successive queries overlap."""

MAX_CACHED_SCORING_ROWS = 10_000
"""A scoring call over more rows than this (a full scan) bypasses the cache: it would only push the rows
that queries share out of it."""

FAST_RERANK = 250
"""The interactive ``rerank``: the index's top 250 of each side rescored exactly. On full SST-2 (2 CPU
cores) it answers in 1.8 s through REST (p50, the frozen cache warm; 2.6 s with none) and finds nearly
what ``rerank=1000`` finds with 4 times the scoring (their recall@100 against the CG reference differs by
about 0.01), because the rows a rerank promotes into the top 100 already sit near the top of the index's
own list. ``benchmarks/gradient_index.py`` measures the sweep over K; ``influence query --rerank fast`` and
the page's "fast" choice name it."""

FASTIF_PRESET = LissaConfig()
"""B=1, J=1000, T=1: the default; see ``benchmarks/influence_query.py`` for the depth/batch trade-off."""


QueryMethod = typing.Literal["gradient", "fastif", "full"]
"""``gradient``: one search of the gradient index; ``fastif``: kNN candidates + ``s_test`` + scoring;
``full``: ``s_test`` and every training example scored (the reference)."""

Solver = typing.Literal["lissa", "cg", "index"]
"""How ``s_test`` is solved: ``lissa`` (the FastIF preset), ``cg`` (conjugate gradient on exact HVPs), or
``index`` (the loaded ``kfac`` gradient index's own curvature, ``subspace_s_test``: one backward)."""


class QueryConfig(Config):
    """One influence query: which method, how many candidates, how ``s_test`` is solved, top-n to return.

    ``method=None`` picks ``gradient`` when a gradient index is loaded, else ``fastif`` (or ``full`` with
    ``k=None``); :func:`resolve_method` is that rule."""

    method: QueryMethod | None = Field(
        None, description="gradient | fastif | full; null: gradient when its index is loaded, else fastif."
    )
    k: int | None = Field(
        1000, ge=1, description="fastif: kNN candidates to score; null: every training example."
    )
    top: int = Field(10, ge=1, description="Helpful and harmful examples to return.")
    rerank: int | None = Field(
        None,
        ge=1,
        description="gradient: rescore the top K of each side with s_test (solver), best of the 2K; "
        f"{FAST_RERANK} answers in about 2 s on full SST-2, 1000 is the most precise (about 4x the cost).",
    )
    solver: Solver | None = Field(
        None,
        description="How s_test is solved: lissa (the FastIF preset), cg, or index (the kfac gradient "
        "index's own curvature); null: index for a gradient rerank when the index has it, else lissa.",
    )
    cg_rows: int | None = Field(
        2000, ge=1, description="cg: training rows the Hessian is taken over (seeded); null: all of them."
    )
    cg_tolerance: float = Field(1e-4, gt=0, le=1, description="cg: stop at this relative residual.")
    lissa: LissaConfig = Field(default_factory=LissaConfig)
    exact: bool = Field(False, description="Exact s_test by an explicit Hessian (small tracked sets).")
    normalize: bool = Field(
        False,
        description="gradient: rank and score by the cosine of the test and training gradients in the "
        "index's preconditioned space (RelatIF's relative influence, in [-1, 1]), not the raw influence, "
        "which favours rows with large gradients.",
    )

    @property
    def s_test_vectors(self) -> int:
        """Vectors one finished ``s_test`` holds: T repetitions for LiSSA, one for a solve."""
        return 1 if self.exact or self.solver in ("cg", "index") else self.lissa.num_repetitions

    @property
    def s_test_key(self) -> tuple[object, ...]:
        """What an ``s_test`` depends on besides the input: the cache key's config part."""
        if self.exact:
            return ("exact", self.lissa.damping)
        if self.solver == "cg":
            return ("cg", self.lissa.damping, self.cg_rows, self.cg_tolerance)
        if self.solver == "index":
            return ("index",)  # the index's own damping and curvature: the caller adds which index
        return ("lissa", self.lissa)


class MethodUnavailableError(ValueError):
    """The query's method needs an index that is not loaded; ``field`` names the request field to change."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def resolve_solver(config: QueryConfig, method: QueryMethod, has_index_curvature: bool) -> Solver:
    """The solver an ``s_test`` uses: the one asked for, else ``index`` for a gradient rerank when the loaded
    index holds its curvature (a ``kfac`` index), else ``lissa``. ``index`` without one is refused."""
    if config.solver == "index" and not has_index_curvature:
        raise MethodUnavailableError(
            "solver='index' needs a gradient index built with projection='kfac' (it stores the curvature "
            "the solve uses): build one with `influence index build --kind gradient`, or use solver='lissa' "
            "or 'cg'",
            "solver",
        )
    if config.solver is not None:
        return config.solver
    rerank = method == "gradient" and config.rerank is not None
    return "index" if rerank and has_index_curvature else "lissa"


def resolve_method(config: QueryConfig, has_gradient_index: bool, has_knn_index: bool) -> QueryMethod:
    """The method a query runs: the one asked for, else gradient when its index is loaded, else fastif
    (``full`` when ``k`` is null). A method whose index is not loaded is refused, naming the field."""
    method = config.method
    if method is None:
        method = "gradient" if has_gradient_index else "fastif"
    if method == "fastif" and config.k is None:
        method = "full"
    if method == "gradient" and not has_gradient_index:
        raise MethodUnavailableError(
            "method='gradient' needs a gradient index and none is loaded: build one with `influence index "
            "build --kind gradient` (or POST /v1/jobs kind=index_build, index_kind=gradient), or use "
            "method='fastif'",
            "method",
        )
    if method == "fastif" and not has_knn_index:
        raise MethodUnavailableError(
            f"k={config.k} asks for FastIF's kNN candidates but no index is loaded: build one with "
            "`influence index build`, give k=null (a full scan), or use method='gradient'",
            "k" if config.method is None else "method",
        )
    return method


def solves_s_test(method: QueryMethod, rerank: int | None) -> bool:
    """Whether a query solves an ``s_test``: fastif and full always, the gradient index only to rerank."""
    return method != "gradient" or rerank is not None


def normalizes(method: QueryMethod, rerank: int | None) -> bool:
    """Whether a query can give the normalised view: the gradient index without rerank (its scores are
    the index's own, and it keeps the norms they are divided by)."""
    return method == "gradient" and rerank is None


def unused_knobs(config: QueryConfig, method: QueryMethod, solver: Solver) -> list[tuple[str, str]]:
    """The settings of ``config`` moved off their defaults that the query it resolves to (``method``,
    ``solver``) never reads, each with what would read it. A query is strict: a knob that would be
    silently ignored (``k`` with the gradient index, ``rerank`` with a scan, ``cg_rows`` with LiSSA) is
    refused instead, naming who uses it. A value equal to its default is never refused, so a client that
    sends every field is served.

    An ``s_test`` is solved by fastif and full, and by gradient only with ``rerank``; ``exact`` replaces
    the solver; ``lissa.damping`` is read by the lissa, cg and exact solves, the other LiSSA fields by the
    lissa solver only; the index solver takes its damping from the index."""
    default, unused = QueryConfig(), []

    def moved(name: str) -> bool:
        return bool(getattr(config, name) != getattr(default, name))

    if method != "fastif" and config.k is not None and moved("k"):
        unused.append(("k", "method='fastif' (its kNN candidates)"))
    if method != "gradient" and config.rerank is not None:
        unused.append(("rerank", "method='gradient' (the index's top K rescored)"))
    if config.normalize and not normalizes(method, config.rerank):
        unused.append(("normalize", "method='gradient' without rerank (the index's own vectors and norms)"))
    if not solves_s_test(method, config.rerank):
        solving = "method='fastif' or 'full', or method='gradient' with rerank"
        for name in ("exact", "solver", "cg_rows", "cg_tolerance", "lissa"):
            if moved(name):
                unused.append((name, f"an s_test solve: {solving}"))
        return unused
    if config.exact and config.solver is not None:
        unused.append(("solver", "exact=false (exact=true solves with the explicit Hessian)"))
    if (solver != "cg" or config.exact) and (moved("cg_rows") or moved("cg_tolerance")):
        unused.append(("cg_rows" if moved("cg_rows") else "cg_tolerance", "solver='cg'"))
    lissa, lissa_default = config.lissa.model_dump(), default.lissa.model_dump()
    moved_lissa = [name for name in lissa if lissa[name] != lissa_default[name]]
    reads = {"damping"} if solver in ("lissa", "cg") or config.exact else set()
    if solver == "lissa" and not config.exact:
        reads = set(lissa)
    for name in moved_lissa:
        if name not in reads:
            user = "solver='lissa' or 'cg'" if name == "damping" else "solver='lissa'"
            unused.append((f"lissa.{name}", user))
    return unused


IndexStorage = typing.Literal["float32", "float16", "sq8", "ivf-pq", "pca-sq8"]
"""How a gradient index holds its vectors (``index.storage``): bytes per row against recall."""
DEFAULT_STORAGE: IndexStorage = "float32"
DEFAULT_PCA_DIM = 256
"""pca-sq8's principal directions: ``benchmarks/scale.py`` finds 128 and 256 both at recall 1.0 on SST-2
and 0.999 on 1M synthetic rows; 256 keeps 93% of the SST-2 vectors' energy (128: 87%), for a margin on
other models."""
Preconditioner = typing.Literal["fisher", "identity", "hessian"]
IntegratedGradientsBaseline = typing.Literal["auto", "zero", "mask"]
ProjectionKind = typing.Literal["kfac", "random"]


GRID_RANK_FACTOR = 4
"""A ``kfac`` index's default ``grid_rank``: 4 x its ``rank``. Choosing today's width (rank 16's) from rank-64
grids by second moment raised recall@100 against the exact Hessian from 0.82 / 0.87 to 0.90 / 0.93 at the
same bytes (``benchmarks/exact_curvature.py``); wider grids were not measured."""
MAX_KEPT_COORDINATES = 1 << 20
"""A gradient index's ``coordinates`` at most (4 MiB a row in float32)."""
DEFAULT_CHUNK_ROWS = 1024
"""Training rows whose gradients a build (or an add) computes and saves at a time."""
MAX_SHARDS = 1024
"""Shards of one gradient index at most: one Ray actor each."""
AUTO_SHARDS = 16
"""The most shards a build picks by itself to fit the budget; more must be asked for."""


class GradientIndexConfig(Config):
    """How a gradient index is built (``interpret.influence.projection`` and ``.preconditioner``).

    Defaults chosen by ``benchmarks/gradient_index.py`` (its table compares ranks and preconditioners
    against a converged full scan); ``damping`` is the same lambda as LiSSA's."""

    rank: int | None = Field(
        16,
        ge=1,
        le=256,
        description="The index's width: as many coordinates per row as rank x rank grids of the tracked "
        "linear layers hold (kfac chooses them from grid_rank's grids; random: its Gaussian sides' rank); "
        "null: none (tiny models).",
    )
    projection: ProjectionKind = Field(
        "kfac",
        description="kfac (top eigenvectors of each layer's Kronecker factors, fitted on fit_rows training "
        "rows) or random (seeded Gaussian).",
    )
    fit_rows: int = Field(
        2000, ge=1, description="kfac: training rows (seeded sample) the Kronecker factors are summed over."
    )
    grid_rank: int | None = Field(
        None,
        ge=1,
        le=256,
        description="kfac: the eigenbasis rank per side of each layer whose grid coordinates the index "
        "chooses from: it keeps as many as rank x rank grids would hold, those of largest second moment over "
        "the fit_rows rows, whichever layer they are in; equal to rank: every coordinate of rank x rank "
        f"grids (the uniform index); null: {GRID_RANK_FACTOR} x rank, at most 256.",
    )
    coordinates: int | None = Field(
        None,
        ge=1,
        le=MAX_KEPT_COORDINATES,
        description="kfac: keep exactly this many coordinates of the grid_rank grids instead of rank's "
        "width; null: as many as rank x rank grids hold.",
    )
    seed: int = Field(
        0, ge=0, le=SEED_MAX, description="Seed of the random projections and of kfac's sample."
    )
    preconditioner: Preconditioner = Field(
        "fisher",
        description="fisher (empirical Fisher of the projected gradients), identity, or hessian (the "
        "projected explicit training Hessian: small tracked sets; unprojected, the exact influence).",
    )
    damping: float = Field(5.0, gt=0, le=MAX_DAMPING, description="lambda in (C + lambda I)^-1.")
    factory: str = Field(
        DEFAULT_FACTORY,
        description="FAISS factory string of the inner-product index (storage=float32 only: the other "
        "storages name their own).",
    )
    chunk_rows: int = Field(
        DEFAULT_CHUNK_ROWS,
        ge=1,
        description="Training rows per chunk of gradients: the resume and progress grain.",
    )
    storage: IndexStorage = Field(
        DEFAULT_STORAGE,
        description="How the vectors are held in memory: float32 (exact), float16, sq8 (FAISS's 8-bit "
        "scalar quantiser), ivf-pq (IVF lists of product codes) or pca-sq8 (8-bit codes of the vectors' "
        "top principal directions); the last two re-score each answer's candidates exactly against float16 "
        "vectors kept on disk.",
    )
    ivf_lists: int | None = Field(
        None, ge=1, le=1_000_000, description="ivf-pq: coarse lists (nlist); null: sqrt(N), at most N/39."
    )
    pq_bytes: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="ivf-pq: code bytes per row (8-bit sub-quantisers; must divide the width); null: the "
        "divisor of the width nearest width/8.",
    )
    nprobe: int = Field(32, ge=1, le=65_536, description="ivf-pq: lists searched per query.")
    pca_dim: int | None = Field(
        None,
        ge=1,
        le=4096,
        description=f"pca-sq8: principal directions kept (bytes per row); null: {DEFAULT_PCA_DIM}, at most "
        "the width.",
    )
    shards: int | None = Field(
        None,
        ge=1,
        le=MAX_SHARDS,
        description="Shards the index is cut into (contiguous runs of rows, searched alone and merged: the "
        "same answers); a Ray pool holds each on its own actor. null: one, or as many (up to "
        f"{AUTO_SHARDS}) as it takes for each to fit INFLUENCE_MAX_INDEX_BYTES.",
    )

    @model_validator(mode="after")
    def _one_factory(self) -> Self:
        if self.storage != "float32" and self.factory != DEFAULT_FACTORY:
            raise ValueError(
                f"factory={self.factory!r} applies to storage='float32'; storage={self.storage!r} names its "
                "own index: drop factory"
            )
        if self.pca_dim is not None and self.storage != "pca-sq8":
            raise ValueError(f"pca_dim applies to storage='pca-sq8', not {self.storage!r}: drop pca_dim")
        for name in ("grid_rank", "coordinates"):
            if getattr(self, name) is not None and not self.fitted:
                raise ValueError(
                    f"{name} chooses among a kfac projection's grid coordinates: set projection='kfac' and a "
                    f"rank, or drop {name}"
                )
        if self.grid_rank is not None and self.rank is not None and self.grid_rank < self.rank:
            raise ValueError(
                f"grid_rank={self.grid_rank} is below rank={self.rank}: the kept coordinates are chosen from "
                f"grids at least as wide as the index; set grid_rank to {self.rank} or more"
            )
        return self

    @property
    def basis_rank(self) -> int | None:
        """The projection's rank per side: ``grid_rank`` (default ``GRID_RANK_FACTOR x rank``, at most 256)
        for ``kfac``, else ``rank``."""
        if not self.fitted or self.rank is None:
            return self.rank
        return self.grid_rank or min(GRID_RANK_FACTOR * self.rank, 256)

    @property
    def fitted(self) -> bool:
        """Whether the projection is fitted to the data (``kfac`` with a rank) rather than seeded."""
        return self.projection == "kfac" and self.rank is not None

    @property
    def identity(self) -> dict[str, object]:
        """The settings that change the stored gradients (a resumed build must share them)."""
        kfac = {"fit_rows": self.fit_rows, "grid_rank": self.basis_rank} if self.fitted else {}
        if self.coordinates is not None:
            kfac["coordinates"] = self.coordinates
        return {"rank": self.rank, "seed": self.seed, "projection": self.projection, **kfac}


EvaluatedMethod = typing.Literal[
    "gradient", "gradient_normalized", "gradient_rerank", "fastif", "full", "exact"
]
"""What an evaluation measures: a query method, ``gradient_normalized`` (the gradient index's normalised
view), ``gradient_rerank`` (the index's scores with its top ``rerank`` of each side, by default
:data:`FAST_RERANK`, rescored with ``s_test``) or ``exact`` (the explicit Hessian's influence)."""


def evaluated_query(config: QueryConfig, method: EvaluatedMethod) -> QueryConfig:
    """The query that gives an evaluated method's scores of every training row (no rerank but for
    ``gradient_rerank``; fastif keeps its ``k``)."""
    if method == "gradient_rerank":
        return config.replace(method="gradient", rerank=config.rerank or FAST_RERANK, normalize=False)
    if method == "exact":
        return config.replace(method="full", exact=True, k=None, rerank=None, normalize=False)
    if method == "gradient_normalized":
        return config.replace(method="gradient", normalize=True, rerank=None)
    return config.replace(
        method=method, k=None if method == "full" else config.k, rerank=None, normalize=False
    )


EvaluationTask = typing.Literal[
    "loo",
    "lds_head",
    "recall",
    "influence_map",
    "audit",
    "error_correction",
    "simulatability",
    "augmentation",
]
"""What ``influence evaluate`` and the applications run (``tasks.evaluation``, ``tasks.applications``)."""


SimulationLabels = typing.Literal["data", "model"]
"""Which labels a simulator sees on the rows it is shown: the training data's, or the model's predictions."""

AuditRanking = typing.Literal["loss", "self_influence", "combined"]
"""How the audit orders training rows: by loss, by self-influence, or by their rank average."""


class EvaluationConfig(Config):
    """Sizes and seeds of an evaluation or application run; the defaults fit 2 CPU cores (README)."""

    m: int = Field(
        10, ge=1, le=100, description="loo: most influential rows removed, one at a time, per test point."
    )
    subsets: int = Field(50, ge=2, le=1000, description="lds: random subsets of the training rows retrained.")
    fraction: float = Field(0.5, gt=0, le=0.99, description="lds: share of the training rows in each subset.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the subsets, samples and splits.")
    damping: float = Field(
        FASTIF_PRESET.damping,
        gt=0,
        le=MAX_DAMPING,
        description="loo, lds: the convex head's L2 term (= the influence damping).",
    )
    top: int = Field(
        5,
        ge=1,
        le=100,
        description="influence_map: rows per side per test point; error_correction: helpful rows per error; "
        "simulatability: rows per strategy per test point; augmentation: pool rows per anchor.",
    )
    seeds: int = Field(
        3,
        ge=1,
        le=20,
        description="error_correction: random splits of the test points; augmentation: random draws of the "
        "anchors (seeds 0..n-1).",
    )
    anchor_count: int = Field(
        20,
        ge=1,
        le=1000,
        description="augmentation: anchors drawn per seed (all of them if fewer are given).",
    )
    learning_rate: float = Field(
        2e-5, gt=0, le=1, description="error_correction, augmentation: learning rate of the brief fine-tune."
    )
    normalize: bool = Field(
        False,
        description="influence_map, error_correction, simulatability, augmentation: rank rows by the "
        "normalised view (cosine in the preconditioned space) instead of raw influence; needs the gradient "
        "index.",
    )
    simulator_rows: int = Field(
        4000,
        ge=10,
        le=100_000,
        description="simulatability: training rows, labelled by the model, that the simulator learns from "
        "(4,000: on SST-2 the simulator then agrees with the model on 0.94 of the benchmark's dev "
        "sentences: README).",
    )
    simulation_learning_rate: float = Field(
        1e-4, gt=0, le=1, description="simulatability: learning rate of the simulator's fine-tune per point."
    )
    simulation_labels: SimulationLabels = Field(
        "data",
        description="simulatability: the labels on the rows the simulator is shown: data (each row with its "
        "label, as an answer shows it) or model (the model's prediction; raw influence's top rows are often "
        "rows the model gets wrong, so they then teach the opposite label: README).",
    )
    limit: int = Field(1000, ge=1, le=1_000_000, description="audit: rows of the ranked list returned.")
    rank_by: AuditRanking = Field(
        "loss",
        description="audit: the order of the ranked list: loss, self_influence, or combined (their mean rank "
        "percentile). Loss by default: it found the most flipped labels on SST-2 (README).",
    )


# ---------------------------------------------------------------------------------------------- saliency


class NoParameters(Config):
    """A method without tunable parameters."""


class IntegratedGradientsParams(Config):
    steps: int = Field(10, ge=1, description="Gauss-Legendre points on the path (AllenNLP takes 10 steps).")
    baseline: IntegratedGradientsBaseline = Field(
        "auto",
        description="zero (AllenNLP: the all-zero embedding), mask (each word-piece's embedding replaced by "
        "the mask token's; special tokens kept), or auto: zero, unless its completeness gap exceeds 0.05 (a "
        "scale-invariant norm makes the path from zero degenerate: ModernBERT, Llama, Qwen2), then mask.",
    )


class SmoothGradientParams(Config):
    num_samples: int = Field(10, ge=1, description="Noisy copies averaged.")
    stdev: float = Field(
        0.01, ge=0, le=10, description="Noise stdev as a fraction of the embeddings' range (AllenNLP: 0.01)."
    )
    seed: int = Field(0, ge=0, le=SEED_MAX)


class LimeParams(Config):
    num_samples: int = Field(200, ge=2, description="Word-deletion masks sampled.")
    kernel_width: float = Field(
        0.25, gt=0, le=100, description="Width of the exponential kernel on cosine distance."
    )
    ridge: float = Field(1.0, gt=0, le=1e6, description="L2 penalty of the weighted linear fit.")
    seed: int = Field(0, ge=0, le=SEED_MAX)


SaliencyMethod = typing.Literal[
    "simple_gradient", "integrated_gradients", "smooth_gradient", "leave_one_out", "lime"
]
SALIENCY_PARAMETERS: dict[str, type[Config]] = {
    "simple_gradient": NoParameters,
    "integrated_gradients": IntegratedGradientsParams,
    "smooth_gradient": SmoothGradientParams,
    "leave_one_out": NoParameters,
    "lime": LimeParams,
}
"""Saliency method name -> its parameters (the names the API, the CLI and ``interpret.saliency`` use)."""


# ----------------------------------------------------------------------------------------------- attacks


class HotFlipParams(Config):
    max_flips: int | None = Field(None, ge=1, description="Flips at most; null: every editable piece.")
    candidates: int = Field(10, ge=1, description="First-order best replacements re-ranked by real loss.")


class InputReductionParams(Config):
    beam_size: int = Field(3, ge=1, description="Beam width (capped at the input length minus 3).")


TRIGGER_BATCH_SIZE = 32
"""Search examples per iteration of a trigger search (each candidate is scored on one such batch)."""


class TriggerParams(Config):
    """Defaults sized for a synchronous request (a minute on a one-CPU MiniLM worker: see
    ``benchmarks/results/soak.json``); Wallace et al. search longer: raise ``iterations``/``candidates``
    in a job."""

    num_tokens: int = Field(3, ge=1, description="Trigger length in word-pieces.")
    iterations: int = Field(3, ge=1, description="Search iterations.")
    candidates: int = Field(10, ge=1, description="Replacement candidates per position and iteration.")
    num_examples: int = Field(64, ge=1, description="Training examples of the class searched on.")
    held_out: int = Field(64, ge=1, description="Other examples of the class the error rate is measured on.")
    seed: int = Field(0, ge=0, le=SEED_MAX)


AttackMethod = typing.Literal["hotflip", "input_reduction", "triggers"]
ATTACK_PARAMETERS: dict[str, type[Config]] = {
    "hotflip": HotFlipParams,
    "input_reduction": InputReductionParams,
    "triggers": TriggerParams,
}
"""Attack name -> its parameters."""

TARGETED_ATTACKS = ("hotflip", "triggers")
"""Attacks that take a target label (Input Reduction keeps the label it starts with)."""


def method_parameters(
    kind: str, registry: dict[str, type[Config]], method: str, given: dict[str, object]
) -> Config:
    """``registry[method](**given)``, with unknown methods and names reported by name."""
    if method not in registry:
        raise ValueError(f"method must be one of {sorted(registry)}, got {method!r}")
    params_class = registry[method]
    known = list(params_class.model_fields)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(
            f"parameters {unknown} are not parameters of {kind} {method!r}; it takes {known or 'none'}"
        )
    return params_class(**given)
