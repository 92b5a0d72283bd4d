"""Where a request's model compute runs: the :class:`Backend` protocol and its in-process implementation.

Both backends, :class:`LocalBackend` here and ``workers.pool.WorkerPool`` on Ray, run the same
:class:`~interpret.explainer.Explainer` methods (in this process, or on actors that are that class), so
they give the same answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from index.gradient import GradientManifest, local_shards
from index.shards import ShardSearcher
from interpret.attacks import AttackResult
from interpret.cancellation import RequestContext, current_context
from interpret.config import Config, QueryConfig
from interpret.data import AddedRows, DataSpec
from interpret.explainer import Explainer, Identity, STest, STestSummary, result_as
from interpret.influence import TestPoint
from interpret.influence.preconditioner import IndexCurvature
from interpret.influence.projection import Projection
from interpret.s_test_plan import PlannedCall, finished_s_test, s_test_plan
from interpret.saliency import SaliencyMap

T = TypeVar("T")


class Backend(Protocol):
    """Where the model compute of a request runs: in this process, or on a Ray worker pool.

    ``context`` is the request's (its id and wall-clock deadline; never a cached value's): every call stops
    at its next step boundary once the request is cancelled (``cancel``) or past its deadline. A call given
    none runs under the context of the thread's request (a job's, installed by ``Cancellations.scope``),
    else under a fresh one."""

    identity: Identity
    num_workers: int
    replacements: int
    """Workers killed and replaced so far (a dead or hung one; never a cancelled or late request)."""

    def ping(self) -> list[str | None]: ...

    def load_added_rows(self, train_spec: DataSpec, added: AddedRows | None) -> None:
        """Serve ``train_spec``'s rows with ``added`` after them on every worker (those started later
        too), and take the identity that names them."""
        ...

    def prepare(
        self, text: str, pair: str | None, label: int | None, context: RequestContext | None = None
    ) -> TestPoint: ...

    def start_s_test(
        self,
        text: str,
        pair: str | None,
        label: int | None,
        config: QueryConfig,
        context: RequestContext | None = None,
        curvature: IndexCurvature | None = None,
    ) -> object:
        """Start the ``s_test`` ``config.solver`` asks for (``index`` uses ``curvature``)."""
        ...

    def finish_s_test(self, pending: Any, progress: bool = False) -> STest: ...  # its own start's

    def score(
        self,
        s_test: STest,
        rows: np.ndarray,
        block_size: int,
        progress: bool = False,
        context: RequestContext | None = None,
    ) -> np.ndarray: ...

    def s_test_nbytes(self, config: QueryConfig) -> int: ...

    def projected_test_gradient(
        self,
        text: str,
        pair: str | None,
        label: int,
        projection: Projection,
        context: RequestContext | None = None,
    ) -> np.ndarray: ...

    def gradient_shards(
        self, chunks: list[np.ndarray], projection: Projection, context: RequestContext | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(chunk number, projected gradients)`` as each chunk of training rows finishes, in order."""
        ...

    def kfac_factor_shards(
        self, chunks: list[np.ndarray], rank: int, context: RequestContext | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(chunk number, Kronecker factor sums)`` of each chunk of training rows, in order."""
        ...

    def projected_training_hessian(
        self, projection: Projection, context: RequestContext | None = None
    ) -> np.ndarray: ...

    def projection_layers(
        self, projection: Projection, context: RequestContext | None = None
    ) -> list[dict]: ...

    def predict(
        self, texts: list[str], pairs: list[str] | None, context: RequestContext | None = None
    ) -> np.ndarray: ...

    def encode(
        self, texts: list[str], pairs: list[str] | None, context: RequestContext | None = None
    ) -> np.ndarray: ...

    def saliency(
        self, text: str, pair: str | None, method: str, label: int | None, params: Config, context=None
    ) -> SaliencyMap: ...

    def attack(
        self, text: str, pair: str | None, method: str, label, target, params: Config, context=None
    ) -> AttackResult: ...

    def cancel(self, request_id: str) -> None: ...

    def running_requests(self) -> list[str]:
        """The requests with a call running on the workers (sorted ids)."""
        ...

    def serve_shards(
        self, directory: Path, manifest: GradientManifest, max_bytes: int | None
    ) -> ShardSearcher:
        """Who holds a gradient index's shards (``index.gradient.ServeShards``): this process, or one Ray
        actor per shard."""
        ...

    def shutdown(self) -> None: ...


@dataclass
class _LocalPending:
    config: QueryConfig
    calls: list[PlannedCall]
    context: RequestContext | None


class LocalBackend:
    """One :class:`Explainer` in this process, one repetition after another: the single-process reference.
    Calls run on the caller's thread; ``cancel`` (from any thread) stops them at the next step boundary."""

    num_workers = 1
    replacements = 0

    def __init__(self, explainer: Explainer):
        self.explainer = explainer
        self.identity = explainer.identity()

    def _run(self, context: RequestContext | None, method: Callable[..., T], *args, **kwargs) -> T:
        """``Explainer.run`` under the given context, else the one this thread works under (a job's)."""
        return self.explainer.run(context or current_context(), method, *args, **kwargs)

    def ping(self) -> list[str | None]:
        return [self.explainer.ping()]

    def load_added_rows(self, train_spec: DataSpec, added: AddedRows | None) -> None:
        self.identity = self.explainer.load_added_rows(train_spec, added)

    def prepare(
        self, text: str, pair: str | None, label: int | None, context: RequestContext | None = None
    ) -> TestPoint:
        return self._run(context, Explainer.prepare, text, pair, label)

    def start_s_test(
        self, text, pair, label, config: QueryConfig, context: RequestContext | None = None, curvature=None
    ) -> _LocalPending:
        # Computed in finish_s_test (with its progress bar): in one process nothing runs alongside.
        return _LocalPending(config, s_test_plan(text, pair, label, config, curvature), context)

    def finish_s_test(self, pending: _LocalPending, progress: bool = False) -> STest:
        results = [
            call.named(
                self._run(
                    pending.context,
                    call.method,
                    *call.args,
                    **({"progress": progress} if call.reports_progress else {}),
                )
            )
            for call in pending.calls
        ]

        def summarize(vectors: tuple[object, ...]) -> STestSummary:
            return self.explainer.summarize(*(result_as(np.ndarray, vector) for vector in vectors))

        return finished_s_test(pending.config, results, summarize)

    def score(self, s_test: STest, rows, block_size: int, progress: bool = False, context=None) -> np.ndarray:
        rows = np.asarray(rows)
        return self._run(context, Explainer.score_shard, rows, block_size, *s_test.vectors, progress=progress)

    def s_test_nbytes(self, config: QueryConfig) -> int:
        return config.s_test_vectors * self.explainer.theta.numel() * self.explainer.theta.element_size()

    def projected_test_gradient(self, text, pair, label, projection: Projection, context=None) -> np.ndarray:
        return self._run(context, Explainer.projected_test_gradient, text, pair, label, projection)

    def gradient_shards(
        self, chunks, projection: Projection, context=None
    ) -> Iterator[tuple[int, np.ndarray]]:
        for number, rows in enumerate(chunks):
            yield number, self._run(context, Explainer.gradient_shard, rows, projection)

    def kfac_factor_shards(self, chunks, rank: int, context=None) -> Iterator[tuple[int, dict]]:
        for number, rows in enumerate(chunks):
            yield number, self._run(context, Explainer.kfac_factors, rows, rank)

    def projected_training_hessian(self, projection: Projection, context=None) -> np.ndarray:
        return self._run(context, Explainer.projected_training_hessian, projection)

    def projection_layers(self, projection: Projection, context=None) -> list[dict]:
        return self._run(context, Explainer.projection_layers, projection)

    def predict(self, texts, pairs, context=None) -> np.ndarray:
        return self._run(context, Explainer.predict, texts, pairs)

    def encode(self, texts, pairs, context=None) -> np.ndarray:
        return self._run(context, Explainer.encode, texts, pairs)

    def saliency(self, text, pair, method, label, params: Config, context=None) -> SaliencyMap:
        return self._run(context, Explainer.saliency, text, pair, method, label, params)

    def attack(self, text, pair, method, label, target, params: Config, context=None) -> AttackResult:
        return self._run(context, Explainer.attack, text, pair, method, label, target, params)

    def cancel(self, request_id: str) -> None:
        self.explainer.cancel(request_id)

    def running_requests(self) -> list[str]:
        return self.explainer.running_requests()

    def serve_shards(
        self, directory: Path, manifest: GradientManifest, max_bytes: int | None
    ) -> ShardSearcher:
        return local_shards(directory, manifest, max_bytes)

    def shutdown(self) -> None:
        pass
