"""The request path in one place (:func:`answer_query`), over an in-process or a Ray-pool backend.

1. encode the query: prediction, the label explained (the predicted one unless given), kNN features;
2. start ``s_test`` when the method needs one (fastif, full, gradient with rerank; on workers it is not
   awaited: it does not depend on the search);
3. search: the gradient index (one projected test gradient, the top of each side), the kNN index (k
   candidates), or every training row;
4. score the candidates with the one averaged ``s_test`` (unless the gradient index's scores are the
   answer), and rank: top helpful / harmful, with timings and the quality of what answered.

Both backends present :class:`~engine.backends.Backend` and run the same
:class:`~interpret.explainer.Explainer` methods, so they give the same answers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.backends import Backend, LocalBackend
from engine.cache import STestCache
from index import FeatureIndex, IndexMismatchError, load_index, read_manifest
from index.gradient import GradientIndex, load_gradient_index, read_gradient_manifest
from index.storage import IndexTooLargeError
from interpret.cancellation import RequestContext
from interpret.checkpoint import (
    TrainingDataMissingError,
    card_data_spec,
    missing_data_message,
    read_card,
)
from interpret.config import (
    SCORE_BATCH_SIZE,
    MethodUnavailableError,
    QueryConfig,
    normalizes,
    resolve_method,
    resolve_solver,
    solves_s_test,
)
from interpret.data import AddedRows, DataSpec, ExampleSet, load_examples, with_added_rows
from interpret.explainer import Explainer, Identity
from interpret.influence import InfluenceAnswer, rank


@dataclass
class Engine:
    """A backend, the training examples (for texts), the kNN index, the gradient index and the card."""

    backend: Backend
    examples: ExampleSet | None
    """``None``: served without training data (prediction, saliency and attacks only)."""
    index: FeatureIndex | None
    card: dict
    gradient_index: GradientIndex | None = None
    model_dir: str = ""

    @property
    def identity(self) -> Identity:
        return self.backend.identity

    @property
    def num_examples(self) -> int:
        return 0 if self.examples is None else len(self.examples)

    def training_examples(self, what: str = "influence") -> ExampleSet:
        """The training examples, or one line naming how to give them."""
        if self.examples is None:  # the folder's name only: a served answer shows no server paths
            raise TrainingDataMissingError(missing_data_message(Path(self.model_dir).name, what))
        return self.examples

    def data_fingerprint(self, what: str = "influence") -> str:
        """The training data's fingerprint (what an index records), or one line naming how to give it."""
        fingerprint = self.identity.data_fingerprint
        if fingerprint is None:
            raise TrainingDataMissingError(missing_data_message(Path(self.model_dir).name, what))
        return fingerprint

    @property
    def removed_rows(self) -> np.ndarray:
        """Training rows removed from answers (``influence index remove`` on the gradient index): left out
        whatever the method, so a removed row never comes back through the kNN index or a full scan."""
        manifest = None if self.gradient_index is None else self.gradient_index.manifest
        return np.asarray([] if manifest is None else manifest.removed_rows or [], dtype=np.int64)

    def load_added_rows(self, train_spec: DataSpec, added: AddedRows | None) -> None:
        """Serve ``train_spec``'s rows with ``added`` after them (a gradient index grew under this engine):
        on the workers first, then the texts here; load the grown index after it."""
        self.backend.load_added_rows(train_spec, added)
        self.examples = with_added_rows(load_examples(train_spec), added)

    def shutdown(self) -> None:
        if self.gradient_index is not None:
            self.gradient_index.close()
        self.backend.shutdown()


def _data_fingerprint(directory: str | Path, identity: Identity, kind: str) -> str | None:
    """The training data an index in ``directory`` must match; ``None`` for a model served without
    training data, whose index is never loaded (its rows would have no texts): passed over with a warning
    (influence routes then say what is missing)."""
    if identity.data_fingerprint is None:
        logging.getLogger("influence.service").warning(
            "%s: not loaded, the model has no training data (pass it to use the %s index)", directory, kind
        )
    return identity.data_fingerprint


def knn_index_for(index_dir: str | Path | None, identity: Identity) -> FeatureIndex | None:
    data = None if index_dir is None else _data_fingerprint(index_dir, identity, "kNN")
    if index_dir is None or data is None:
        return None
    return load_index(index_dir, identity.model_fingerprint, data)


def gradient_index_for(
    directory: str | Path | None, backend: Backend, optional: bool = False, max_bytes: int | None = None
) -> GradientIndex | None:
    """The gradient index, its shards held where the backend says (this process, or one Ray actor each),
    refused loudly when it does not fit the model, or the memory of the process holding a shard or
    ``max_bytes`` (``INFLUENCE_MAX_INDEX_BYTES``); an ``optional`` one (a default folder nobody named,
    perhaps left by another model) is passed over with a warning instead."""
    identity = backend.identity
    data = None if directory is None else _data_fingerprint(directory, identity, "gradient")
    if directory is None or data is None:
        return None
    fingerprint, tracked = identity.model_fingerprint, identity.tracked_layers
    try:
        return load_gradient_index(directory, fingerprint, data, tracked, max_bytes, backend.serve_shards)
    except (IndexMismatchError, IndexTooLargeError) as error:
        if not optional:
            raise
        logging.getLogger("influence.service").warning("%s; answering without a gradient index", error)
        return None


def added_rows_of(directory: str | Path | None) -> AddedRows | None:
    """The rows the gradient index in ``directory`` added after its training data (``influence index add``),
    which an engine loads after it; None without an index there or additions."""
    if directory is None or not (Path(directory) / "manifest.json").is_file():
        return None
    try:
        return read_gradient_manifest(directory).added_rows
    except IndexMismatchError:  # a kNN index or a torn manifest: loading the index says so
        return None


def local_engine(
    model_dir: str | Path,
    train_spec: DataSpec | None = None,
    index_dir: str | Path | None = None,
    tracked_layers: int | str | None = None,
    dtype: torch.dtype = torch.float32,
    gradient_index_dir: str | Path | None = None,
    gradient_index_optional: bool = False,
    trust_remote_code: bool = False,
    max_index_bytes: int | None = None,
) -> Engine:
    """The model, the training examples (and the rows the gradient index added) and the indexes, all in
    this process."""
    added = added_rows_of(gradient_index_dir)
    explainer = Explainer.load(
        model_dir, train_spec, tracked_layers, dtype, trust_remote_code=trust_remote_code, added=added
    )
    backend = LocalBackend(explainer)
    checkpoint, identity = explainer.checkpoint, backend.identity
    return Engine(
        backend,
        checkpoint.examples,
        knn_index_for(index_dir, identity),
        checkpoint.card,
        gradient_index_for(gradient_index_dir, backend, gradient_index_optional, max_index_bytes),
        str(model_dir),
    )


def pooled_engine(
    model_dir: str | Path,
    train_spec: DataSpec | None = None,
    index_dir: str | Path | None = None,
    tracked_layers: int | str | None = None,
    dtype: str = "float32",
    settings=None,
    trust_remote_code: bool = False,
    gradient_index_dir: str | Path | None = None,
    gradient_index_optional: bool = False,
    max_index_bytes: int | None = None,
) -> Engine:
    """Model compute on a Ray worker pool; this process holds only the texts and the indexes."""
    from workers import PoolSettings, WorkerPool, WorkerSpec

    card = read_card(model_dir)
    train_spec = train_spec or card_data_spec(card)
    added = added_rows_of(gradient_index_dir)
    examples = with_added_rows(load_examples(train_spec), added) if train_spec is not None else None
    expected = {"data_fingerprint": None if examples is None else examples.fingerprint}
    # every worker must hold the weights the indexes were built with (none is loaded without data)
    if examples is not None and index_dir is not None:
        expected["model_fingerprint"] = read_manifest(index_dir).model_fingerprint
    elif examples is not None and gradient_index_dir is not None and not gradient_index_optional:
        expected["model_fingerprint"] = read_gradient_manifest(gradient_index_dir).model_fingerprint
    spec = WorkerSpec(str(model_dir), train_spec, tracked_layers, dtype, trust_remote_code, added=added)
    pool = WorkerPool(spec, settings or PoolSettings(), expected)
    try:
        indexes = (
            knn_index_for(index_dir, pool.identity),
            gradient_index_for(gradient_index_dir, pool, gradient_index_optional, max_index_bytes),
        )
        return Engine(pool, examples, indexes[0], card, indexes[1], str(model_dir))
    except BaseException:
        pool.shutdown()
        raise


def gradient_index_quality(index: GradientIndex) -> dict:
    """What the quality block says of the gradient index that answered: its settings and fidelity."""
    manifest = index.manifest
    return {
        "dim": manifest.dim,
        "count": manifest.count,
        **manifest.spec,
        "fidelity": manifest.fidelity,
        "storage": manifest.storage,
        "storage_recall": manifest.storage_recall,
    }


@dataclass
class _Candidates:
    """Rows to answer from: their scores when the method gave them (gradient, no rerank), else the rows an
    ``s_test`` must score; kNN distances for fastif."""

    rows: np.ndarray
    scores: np.ndarray | None = None
    distances: np.ndarray | None = None

    def without(self, removed: np.ndarray) -> _Candidates:
        """These candidates less the ``removed`` rows."""
        keep = ~np.isin(self.rows, removed)
        return _Candidates(
            self.rows[keep],
            None if self.scores is None else self.scores[keep],
            None if self.distances is None else self.distances[keep],
        )


def _gradient_candidates(
    engine: Engine, text, pair, label, config: QueryConfig, context, timings: dict
) -> _Candidates:
    """One test gradient, projected like the index, and one search per side: with ``rerank=K`` the top K
    of each side become candidates for ``s_test`` scoring, else the index's scores are the answer."""
    index = engine.gradient_index
    assert index is not None  # resolve_method chose gradient: its index is loaded
    clock = time.perf_counter()
    gradient = engine.backend.projected_test_gradient(text, pair, label, index.projection, context)
    timings["test_gradient"] = time.perf_counter() - clock
    helpful, harmful = index.search(gradient, config.rerank or config.top, config.normalize)
    rows = np.concatenate([helpful[0], harmful[0]])
    scores = np.concatenate([helpful[1], harmful[1]])
    rows, first = np.unique(rows, return_index=True)  # both sides meet only when top > N/2
    return _Candidates(rows, None if config.rerank else scores[first])


def answer_query(
    engine: Engine,
    text: str,
    pair: str | None = None,
    label: int | None = None,
    config: QueryConfig | None = None,
    progress: bool = False,
    cache: STestCache | None = None,
    context: RequestContext | None = None,
) -> InfluenceAnswer:
    """Which training examples made this prediction.

    ``gradient``: one search of the gradient index (with ``rerank=K``, its top K of each side rescored with
    ``s_test``); ``fastif``: the k nearest training examples in feature space, scored with ``s_test``;
    ``full``: every training example scored (the reference). ``s_test`` starts before any search (on
    workers it overlaps it); ``timings["s_test"]`` is the wall time until it was ready. With a ``cache``,
    an ``s_test`` already computed for the same model, input, label and solver config is reused. The
    ``context`` is this request's (id and deadline): a cached ``s_test`` carries none.
    """
    config = config or QueryConfig()
    backend, examples = engine.backend, engine.training_examples()
    method = resolve_method(config, engine.gradient_index is not None, engine.index is not None)
    curvature = engine.gradient_index.curvature if engine.gradient_index is not None else None
    solver = resolve_solver(config, method, curvature is not None)
    if solver != config.solver:
        config = config.replace(solver=solver)
    if config.normalize and not normalizes(method, config.rerank):
        raise MethodUnavailableError(
            f"normalize=true divides the gradient index's own scores by its rows' norms: it needs "
            f"method='gradient' without rerank, not method='{method}'"
            + (f" with rerank={config.rerank}" if config.rerank else ""),
            "normalize",
        )
    timings: dict[str, float] = {}
    start = time.perf_counter()
    # Encode first: a few milliseconds, and on a busy pool it would otherwise queue behind a repetition.
    point = backend.prepare(text, pair, label, context)
    timings["encode"] = time.perf_counter() - start
    needs_s_test = solves_s_test(method, config.rerank)
    identity = engine.identity  # the training set too: LiSSA samples it, and rows may be added under us
    key: tuple[object, ...] = (
        identity.model_fingerprint,
        identity.data_fingerprint,
        text,
        pair,
        point.label,
        config.s_test_key,
    )
    if curvature is not None and solver == "index":  # which index's curvature: a rebuilt one gives another
        key += (curvature.digest,)
    cached = cache.get(key) if cache is not None and needs_s_test else None
    clock = time.perf_counter()
    pending = None
    if needs_s_test and cached is None:
        pending = backend.start_s_test(text, pair, point.label, config, context, curvature)

    search_clock = time.perf_counter()
    if method == "gradient":
        candidates = _gradient_candidates(engine, text, pair, point.label, config, context, timings)
    elif method == "fastif":
        assert engine.index is not None and config.k is not None  # resolve_method: fastif has both
        rows, distances = engine.index.search(point.features, min(config.k, len(examples)))
        candidates = _Candidates(rows, None, distances)
    else:
        candidates = _Candidates(np.arange(len(examples)))
    if method != "gradient" and len(removed := engine.removed_rows):  # its shards left them out already
        candidates = candidates.without(removed)
    timings["search"] = time.perf_counter() - search_clock - timings.get("test_gradient", 0.0)

    s_test = cached
    if pending is not None:
        s_test = backend.finish_s_test(pending, progress)
        s_test.seconds = time.perf_counter() - clock
        if cache is not None:
            cache.put(key, s_test, backend.s_test_nbytes(config))
    scores = candidates.scores
    if needs_s_test:
        assert s_test is not None  # cached, or solved just above
        timings["s_test"] = time.perf_counter() - clock
        clock = time.perf_counter()
        scores = backend.score(s_test, candidates.rows, SCORE_BATCH_SIZE, progress, context)
        timings["score"] = time.perf_counter() - clock
    timings["total"] = time.perf_counter() - start
    assert scores is not None  # the index's own scores, or the s_test scores
    answered_by = engine.gradient_index if method == "gradient" else None
    helpful, harmful = rank(examples, candidates.rows, scores, candidates.distances, config.top)
    return InfluenceAnswer(
        point.predicted_label,
        point.probabilities,
        point.label,
        helpful,
        harmful,
        candidates.rows,
        scores,
        candidates.distances,
        None if s_test is None else s_test.report,
        method,
        timings,
        s_test_cached=cached is not None,
        cg=None if s_test is None else s_test.cg,
        gradient_index=None if answered_by is None else gradient_index_quality(answered_by),
        solver=("exact" if config.exact else solver) if needs_s_test else None,
        s_test_seconds=None if s_test is None else s_test.seconds,
    )
