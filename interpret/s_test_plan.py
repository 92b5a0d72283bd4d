"""The one ``s_test`` plan: which :class:`~interpret.explainer.Explainer` calls each solver needs, and how
their results make an :class:`~interpret.explainer.STest`.

Both backends execute the same plan: ``engine.backends.LocalBackend`` one call after another in this
process, ``workers.pool.WorkerPool`` as parallel calls on Ray actors (LiSSA's T repetitions at once). A new
solver is one branch here and an explainer method, nothing in either backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from interpret.config import LissaConfig, QueryConfig
from interpret.explainer import Explainer, RepetitionReport, STest, STestSummary, result_as
from interpret.influence.cg import CGReport
from interpret.influence.lissa import LissaReport, ran_at
from interpret.influence.preconditioner import IndexCurvature


@dataclass(frozen=True)
class PlannedCall:
    """One explainer call of a plan, with its outputs by name."""

    name: str
    """How errors and progress name it: "LiSSA repetition 0"."""
    method: Callable[..., object]
    """The :class:`Explainer` method itself (unbound), so a reader or a tool can follow it."""
    args: tuple[object, ...]
    outputs: tuple[str, ...] = ("value",)
    """Names of the method's return values (a tuple when there are several)."""
    keep: tuple[str, ...] = ()
    """Outputs a pool leaves in the object store: vectors the scorer reads where it runs."""
    reports_progress: bool = False
    """The method takes ``progress=``: in one process it draws its own bar."""

    def named(self, value: object) -> dict[str, object]:
        """The method's return value by output name."""
        values = value if isinstance(value, tuple) and len(self.outputs) > 1 else (value,)
        return dict(zip(self.outputs, values, strict=True))


def _keep_array(_key: str, array: np.ndarray) -> object:
    return array


def s_test_plan(
    text: str,
    pair: str | None,
    label: int | None,
    config: QueryConfig,
    curvature: IndexCurvature | None = None,
    share: Callable[[str, np.ndarray], object] = _keep_array,
) -> list[PlannedCall]:
    """The calls that make the ``s_test`` ``config`` asks for: the exact solve, the index's curvature
    (``curvature``; ``share(digest, inverse)`` lets a pool send the inverse once per curvature), conjugate
    gradient, or LiSSA's T independent repetitions."""
    point = (text, pair, label)
    args: tuple[object, ...]
    if config.exact:
        args = (*point, config.lissa.damping)
        return [PlannedCall("exact s_test", Explainer.solve, args, keep=("value",))]
    if config.solver == "index":
        if curvature is None:
            raise ValueError("solver='index' needs the gradient index's curvature")
        inverse = share(curvature.digest, curvature.inverse)
        args = (*point, curvature.projection, inverse, curvature.damping)
        return [PlannedCall("index s_test", Explainer.index_solve, args, keep=("value",))]
    if config.solver == "cg":
        args = (*point, config.lissa.damping, config.cg_rows, config.cg_tolerance)
        return [PlannedCall("CG s_test", Explainer.cg_solve, args, ("vector", "report"), ("vector",))]
    return [
        PlannedCall(
            f"LiSSA repetition {r}",
            Explainer.lissa_repetition,
            (*point, config.lissa, r),
            ("vector", "report"),
            ("vector",),
            reports_progress=True,
        )
        for r in range(config.lissa.num_repetitions)
    ]


def finished_s_test(
    config: QueryConfig,
    results: Sequence[Mapping[str, object]],
    summarize: Callable[[tuple[object, ...]], STestSummary],
) -> STest:
    """The :class:`STest` from the plan's results (in plan order). LiSSA's repetitions are summarised by
    ``summarize(vectors)`` where the vectors are (a worker, on a pool)."""
    if config.exact or config.solver == "index":
        return STest([results[0]["value"]], None)
    if config.solver == "cg":
        return STest([results[0]["vector"]], None, result_as(CGReport, results[0]["report"]))
    vectors = [result["vector"] for result in results]
    reports = [result_as(RepetitionReport, result["report"]) for result in results]
    return STest(vectors, lissa_report(config.lissa, reports, summarize(tuple(vectors))))


def lissa_report(
    config: LissaConfig, repetitions: list[RepetitionReport], summary: STestSummary
) -> LissaReport:
    """The caller's view of T repetitions, wherever they ran."""
    scales = [r.scale for r in repetitions]
    return LissaReport(
        ran_at(config, scales),
        np.stack([r.trace for r in repetitions]),
        summary.relative_spread,
        summary.s_test_norm,
        [r.seconds for r in repetitions],
        [r.worker for r in repetitions],
        scales,
        config.scale is None,
    )
