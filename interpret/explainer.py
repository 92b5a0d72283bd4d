"""The one adapter: a loaded checkpoint answering every model question a request asks.

:class:`Explainer` holds the model, tokenizer and training data and answers prepare / predict / encode /
saliency / attack / test_gradient / one LiSSA repetition / the exact solve / a scoring shard. The local
backend (``engine.backends.LocalBackend``) calls it directly; the Ray actor (``workers.actor``) is this
class with placement added, and the pool picks each call's concurrency group. Vectors go in and out as
numpy arrays so the same methods serve both: on Ray they cross the object store, read zero-copy on a node.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from interpret.attacks import AttackResult, attack
from interpret.cancellation import Cancellations, RequestContext
from interpret.cancellation import checkpoint as step_boundary
from interpret.checkpoint import Checkpoint, load_checkpoint, with_training
from interpret.classifier import TextClassifier
from interpret.config import Config, LissaConfig
from interpret.data import AddedRows, DataSpec
from interpret.influence.cg import CGReport, CGResult, cg_s_test
from interpret.influence.exact import exact_s_test, training_hessian
from interpret.influence.lissa import (
    LissaReport,
    average_repetitions,
    curvature_scale,
    lissa_repetition,
    relative_spread,
)
from interpret.influence.preconditioner import projected_hessian, subspace_s_test
from interpret.influence.projection import Projection, Projector
from interpret.influence.query import TestPoint, prepare_test_point
from interpret.influence.scoring import score_rows
from interpret.models import TrackedScope, adapter_summary, encode_features, label_count, label_names
from interpret.saliency import SaliencyMap, saliency

T = TypeVar("T")

MAX_PROJECTORS = 4
"""Projectors an explainer keeps built (one per loaded gradient index, plus a build's)."""


@dataclass(frozen=True)
class Identity:
    """What a loaded explainer is: every field but ``worker`` and ``device`` must agree across a pool."""

    model_fingerprint: str
    parameters_digest: str
    num_parameters: int
    tracked_layers: TrackedScope
    num_labels: int
    label_names: tuple[str, ...]
    """From ``config.id2label`` (``label k`` where there are none)."""
    feature_dim: int
    """Width of the kNN features (the final linear layer's input)."""
    dtype: str
    data_fingerprint: str | None
    """``None``: loaded without training data (prediction, saliency and attacks only)."""
    num_examples: int
    takes_pairs: bool
    """Whether inputs may take a text_pair: the training data's form (any, when there is none)."""
    adapter: str | None
    """The PEFT adapter over the base (``interpret.models.adapter_summary``); ``None`` for a plain model."""
    worker: str
    device: str

    def mismatch(self, reference: Identity) -> str | None:
        """The first field (other than where it runs) that differs from ``reference``, as a sentence."""
        for spec in fields(self):
            if spec.name in ("worker", "device"):
                continue
            mine, theirs = getattr(self, spec.name), getattr(reference, spec.name)
            if mine != theirs:
                return f"worker {self.worker} has {spec.name}={mine!r}, expected {theirs!r}"
        return None


@dataclass(frozen=True)
class RepetitionReport:
    """What the driver reads of one LiSSA repetition (its vector stays where it was computed)."""

    trace: np.ndarray
    """``||h_j|| / scale`` per step."""
    seconds: float
    worker: str
    scale: float
    """The scale it ran at (``interpret.influence.lissa``)."""


@dataclass(frozen=True)
class STestSummary:
    relative_spread: float
    s_test_norm: float


@dataclass
class STest:
    """A finished ``s_test``: the per-repetition vectors (arrays in-process, object-store references on a
    pool: the scorer averages them where it runs) and the report (``None`` for the exact solve)."""

    vectors: list
    report: LissaReport | None
    cg: CGReport | None = None
    seconds: float | None = None
    """Wall time of the solve that made it (kept with it in the cache)."""


def result_as(kind: type[T], value: object) -> T:
    """A remote call's result (results travel as ``object``) as the type its ``Explainer`` method
    returns; anything else is a bug, refused by name."""
    if not isinstance(value, kind):
        raise TypeError(f"expected a {kind.__name__}, got {type(value).__name__}")
    return value


def parameters_digest(theta: torch.Tensor) -> str:
    """SHA-256 of the tracked parameter vector's bytes: equal digests mean bit-identical ``theta``."""
    return hashlib.sha256(theta.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def is_explainer_method(method: object) -> bool:
    """Whether ``method`` is a public :class:`Explainer` method. Compared by qualified name, not identity:
    a function sent to a Ray actor may arrive as a copy."""
    name = getattr(method, "__name__", "")
    own = getattr(Explainer, name, None) if isinstance(name, str) and not name.startswith("_") else None
    return callable(own) and getattr(own, "__qualname__", None) == getattr(method, "__qualname__", 0)


class Explainer:
    """One checkpoint, every question: the methods are thin calls into ``interpret`` (no math here)."""

    def __init__(self, checkpoint: Checkpoint, name: str = "in-process"):
        self.checkpoint = checkpoint
        self.tracked = checkpoint.tracked
        self.theta = self.tracked.parameters()
        self.classifier = TextClassifier.of(self.tracked)
        self.name = name
        self.cancellations = Cancellations()
        self._hessian: torch.Tensor | None = None
        self._projectors: dict[tuple, Projector] = {}
        self._scales: dict[tuple, float] = {}
        self._scales_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        train_spec: DataSpec | None = None,
        tracked_layers: TrackedScope | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
        added: AddedRows | None = None,
    ) -> Explainer:
        return cls(
            load_checkpoint(model_dir, train_spec, tracked_layers, dtype, device, trust_remote_code, added)
        )

    def identity(self) -> Identity:
        checkpoint, tracked, examples = self.checkpoint, self.tracked, self.checkpoint.examples
        return Identity(
            checkpoint.fingerprint,
            parameters_digest(self.theta),
            tracked.num_parameters,
            tracked.tracked_layers,
            label_count(tracked.model.config),
            tuple(label_names(tracked.model.config)),
            tracked.feature_dim,
            str(tracked.dtype).removeprefix("torch."),
            None if examples is None else examples.fingerprint,
            0 if examples is None else len(examples),
            examples is None or examples.pairs is not None,
            adapter_summary(tracked.model),
            self.name,
            str(tracked.device),
        )

    def ping(self) -> str:
        return self.name

    def load_added_rows(self, train_spec: DataSpec, added: AddedRows | None) -> Identity:
        """Serve ``train_spec``'s rows with ``added`` after them (a gradient index grew under a running
        server): the checkpoint is swapped whole, so a call sees the old set or the new one, and what was
        cached over the old set (the training Hessian, LiSSA's scales) is dropped. Its new identity."""
        self.checkpoint = with_training(self.checkpoint, train_spec, added)
        self._hessian = None
        with self._scales_lock:
            self._scales = {}
        return self.identity()

    def run(self, context: RequestContext | None, method: Callable[..., T], *args, **kwargs) -> T:
        """``method(self, *args)`` on behalf of a request, ``method`` being one of this class's own (passed
        by reference, ``Explainer.prepare``, so a reader can follow a pool's call to it): it stops at its
        next step boundary (raising ``RequestCancelled`` or ``DeadlineExceeded``) once the request is
        cancelled or past its deadline."""
        if not is_explainer_method(method):
            raise TypeError(f"{method!r} is not a public method of Explainer")
        with self.cancellations.scope(context):
            # Looked up by name on the instance, so that an override (a subclass's, a test's) runs.
            return getattr(self, method.__name__)(*args, **kwargs)

    def cancel(self, request_id: str) -> int:
        """Stop every call of ``request_id``, running or still to come; returns how many were running."""
        return self.cancellations.cancel(request_id)

    def running_requests(self) -> list[str]:
        """The requests with a call running here (a cancelled job's id leaves at its next step boundary)."""
        return self.cancellations.requests()

    # ------------------------------------------------------------------------------ one sentence

    def _v(self, text: str, pair: str | None, label: int | None) -> torch.Tensor:
        """``v = grad L(z_test)`` over the tracked parameters."""
        v = prepare_test_point(self.tracked, self.theta, text, pair, label).v
        assert v is not None  # prepare_test_point computes it unless told not to
        return v

    def prepare(self, text: str, pair: str | None, label: int | None) -> TestPoint:
        """Prediction, the label explained and the kNN features, with no gradient: ``v`` is computed where
        it is needed (cheaper than shipping it), and a gradient query takes its own, projected one."""
        return prepare_test_point(self.tracked, self.theta, text, pair, label, gradient=False)

    def test_gradient(self, text: str, pair: str | None, label: int | None) -> np.ndarray:
        """``v = grad L(z_test)`` over the tracked parameters."""
        return self._v(text, pair, label).cpu().numpy()

    def predict(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        return self.tracked.probabilities(texts, pairs)

    def encode(self, texts: list[str], pairs: list[str] | None, progress: bool = False) -> np.ndarray:
        return encode_features(self.tracked, texts, pairs, progress=progress)

    def saliency(
        self, text: str, pair: str | None, method: str, label: int | None, params: Config
    ) -> SaliencyMap:
        return saliency(self.classifier, text, method, pair, label, params)

    def attack(
        self, text: str, pair: str | None, method: str, label: int | None, target: int | None, params: Config
    ) -> AttackResult:
        examples = self.checkpoint.training("a trigger search")[0] if method == "triggers" else None
        return attack(self.classifier, text, method, pair, label, target, examples, params)

    # ------------------------------------------------------------------------------ s_test and scores

    def lissa_repetition(
        self,
        text: str,
        pair: str | None,
        label: int | None,
        config: LissaConfig,
        repetition: int,
        progress: bool = False,
    ) -> tuple[np.ndarray, RepetitionReport]:
        """One repetition of ``s_test``, seeded by ``(config.seed, repetition)``: (vector, report)."""
        start = time.perf_counter()
        v = self._v(text, pair, label)
        train = self.checkpoint.training("influence")[1]
        measured = None if config.scale is not None else self._measured_scale(config)
        vector, trace, scale = lissa_repetition(
            self.tracked, self.theta, v, train, config, repetition, progress, measured
        )
        return vector.cpu().numpy(), RepetitionReport(trace, time.perf_counter() - start, self.name, scale)

    def _measured_scale(self, config: LissaConfig) -> float:
        """``curvature_scale``, once per (seed, batch size, damping) for this model: it depends on nothing
        else, and every repetition and query with those settings needs the same value."""
        key = (config.seed, config.batch_size, config.damping)
        with self._scales_lock:
            if key not in self._scales:
                train = self.checkpoint.training("influence")[1]
                self._scales[key] = curvature_scale(self.tracked, self.theta, train, config)
            return self._scales[key]

    def solve(self, text: str, pair: str | None, label: int | None, damping: float) -> np.ndarray:
        """The exact ``(H + damping I)^-1 v`` (explicit training Hessian, built once; small tracked sets)."""
        v = self._v(text, pair, label)
        return exact_s_test(self._training_hessian(), v, damping).cpu().numpy()

    def cg_solve(
        self, text: str, pair: str | None, label: int | None, damping: float, num_rows, tolerance: float
    ) -> tuple[np.ndarray, CGReport]:
        """``(H_M + damping I)^-1 v`` by conjugate gradient over a seeded subset of M training rows."""
        start = time.perf_counter()
        v, train = self._v(text, pair, label), self.checkpoint.training("influence")[1]
        result: CGResult = cg_s_test(self.tracked, self.theta, v, train, damping, num_rows, tolerance)
        report = CGReport(
            result.relative_residual, result.iterations, len(result.rows), time.perf_counter() - start
        )
        return result.s_test.cpu().numpy(), report

    def index_solve(
        self,
        text: str,
        pair: str | None,
        label: int | None,
        projection: Projection,
        inverse: np.ndarray,
        damping: float,
    ) -> np.ndarray:
        """``s_test`` from a ``kfac`` gradient index's curvature (``subspace_s_test``): one backward."""
        v = self._v(text, pair, label)
        curvature = torch.tensor(inverse, device=v.device)  # off the object store: a read-only view
        return subspace_s_test(v, self.projector(projection), curvature, damping).cpu().numpy()

    # ------------------------------------------------------------------------------ gradient index

    def projector(self, projection: Projection) -> Projector:
        """The projector of ``projection``, built once (the last few are kept; the oldest goes first)."""
        key = projection.key
        if key not in self._projectors:
            if len(self._projectors) >= MAX_PROJECTORS:
                self._projectors.pop(next(iter(self._projectors)))
            self._projectors[key] = Projector(
                self.tracked, projection.rank, projection.seed, bases=projection.bases
            )
        return self._projectors[key]

    def projection_layers(self, projection: Projection) -> list[dict]:
        return self.projector(projection).describe()

    def kfac_factors(self, rows: np.ndarray, rank: int, block_size: int = 32) -> dict[str, np.ndarray]:
        """The Kronecker factors of every side a rank-``rank`` projection would compress, summed over the
        tokens of training ``rows`` (float64; :meth:`Projector.factors`): what ``kfac`` bases are fit on."""
        projector = self.projector(Projection(rank, 0))
        total: dict[str, torch.Tensor] = {}
        train = self.checkpoint.training("a gradient index")[1]
        for _, states, labels in train.iter_blocks(np.asarray(rows, dtype=np.int64), block_size):
            step_boundary()
            for name, factor in projector.factors(self.theta, states, labels).items():
                total[name] = total[name] + factor if name in total else factor
        return {name: factor.cpu().numpy() for name, factor in total.items()}

    def gradient_shard(self, rows: np.ndarray, projection: Projection, block_size: int = 32) -> np.ndarray:
        """Projected per-example gradients of training ``rows`` (in that order), float32 ``[len, dim]``."""
        projector = self.projector(projection)
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), projector.dim), dtype=np.float32)
        train = self.checkpoint.training("a gradient index")[1]
        for positions, states, labels in train.iter_blocks(rows, block_size):
            step_boundary()
            out[positions] = projector.gradients(self.theta, states, labels).float().cpu().numpy()
        return out

    def projected_test_gradient(
        self, text: str, pair: str | None, label: int, projection: Projection
    ) -> np.ndarray:
        """``g~_test``: the test loss's gradient through the same projection as the index."""
        tracked = self.tracked
        state = tracked.frozen(tracked.encode([text], [pair] if pair is not None else None))
        labels = torch.tensor([label], device=tracked.device)
        return self.projector(projection).gradients(self.theta, state, labels)[0].cpu().numpy()

    def projected_training_hessian(self, projection: Projection) -> np.ndarray:
        """``R H R^T`` from the explicit training Hessian (the ``hessian`` preconditioner; small sets)."""
        matrix = self.projector(projection).dense_matrix()
        return projected_hessian(self._training_hessian(), matrix).cpu().numpy()

    def _training_hessian(self) -> torch.Tensor:
        """The explicit training Hessian, computed once (small tracked sets only)."""
        if self._hessian is None:
            train = self.checkpoint.training("the training Hessian")[1]
            self._hessian = training_hessian(self.tracked, self.theta, train)
        return self._hessian

    def _average(self, repetitions: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # Arrays read from the object store are read-only views; torch needs its own copy.
        like = self.theta
        vectors = [torch.tensor(r, dtype=like.dtype, device=like.device) for r in repetitions]
        return average_repetitions(vectors), vectors

    def score_shard(
        self, rows: np.ndarray, block_size: int, *repetitions: np.ndarray, progress: bool = False
    ) -> np.ndarray:
        """Scores of ``rows`` against the mean of the repetitions: the all-reduce happens here, where the
        scores are computed, in repetition order, so the result is the same wherever it runs."""
        s_test, _ = self._average(repetitions)
        train = self.checkpoint.training("influence")[1]
        return score_rows(self.tracked, self.theta, s_test, train, rows, block_size, progress=progress)

    def summarize(self, *repetitions: np.ndarray) -> STestSummary:
        s_test, vectors = self._average(repetitions)
        return STestSummary(relative_spread(vectors, s_test), float(s_test.norm()))

    def average(self, *repetitions: np.ndarray) -> np.ndarray:
        """The averaged ``s_test`` itself (tests, benchmarks)."""
        return self._average(repetitions)[0].cpu().numpy()
