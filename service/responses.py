"""The response models of ``service.schemas``, built once from the library's answers (API and CLI alike)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from interpret.attacks import AttackResult
from interpret.config import QueryConfig, solves_s_test
from interpret.influence import InfluenceAnswer, LissaReport
from interpret.saliency import SaliencyMap
from service.schemas import (
    AttackResponse,
    CGQuality,
    GradientIndexQuality,
    InfluenceResult,
    InfluentialExampleOut,
    LissaQuality,
    Prediction,
    Quality,
    SaliencyResponse,
    WordEdit,
)

TRACE_POINTS = 50
"""Points of each repetition's norm trace sent back: enough to see convergence, not J floats."""


def prediction(probabilities, names: Sequence[str]) -> Prediction:
    values = [float(p) for p in probabilities]
    label = int(np.argmax(values))
    return Prediction(label=label, label_name=names[label], probabilities=values)


def lissa_quality(report: LissaReport, disclose: bool = True) -> LissaQuality:
    traces = report.norm_traces
    step = max(1, traces.shape[1] // TRACE_POINTS)
    return LissaQuality(
        config=report.config,
        final_norm=[float(t[-1]) for t in traces],
        norm_trace=[[float(x) for x in t[step - 1 :: step]] for t in traces],
        relative_spread=report.relative_spread,
        s_test_norm=report.s_test_norm,
        seconds=report.seconds,
        workers=report.workers if disclose else None,
        scales=report.scales,
        scale_measured=report.scale_measured,
    )


def influence_result(
    answer: InfluenceAnswer, config: QueryConfig, names: Sequence[str], disclose: bool = True
) -> InfluenceResult:
    """An answer as the API's ``InfluenceResult`` (also what ``influence query --json`` prints); ``names``
    are the model's label names. ``disclose=False`` (the service) leaves out what only the machine's owner
    may see: whether the ``s_test`` came from the cache (another caller's history) and which workers, by
    node and PID, ran the repetitions."""

    def example(e) -> InfluentialExampleOut:
        return InfluentialExampleOut(**asdict(e), label_name=names[e.label])

    predicted = answer.predicted_label
    return InfluenceResult(
        prediction=Prediction(
            label=predicted, label_name=names[predicted], probabilities=answer.probabilities
        ),
        label_used=answer.label_used,
        label_used_name=names[answer.label_used],
        helpful=[example(e) for e in answer.helpful],
        harmful=[example(e) for e in answer.harmful],
        quality=quality(answer, config, disclose),
    )


def quality(answer: InfluenceAnswer, config: QueryConfig, disclose: bool) -> Quality:
    """Which method answered, how, and how well: timings, the solver's report, the index's fidelity."""
    solved = solves_s_test(answer.method, config.rerank)
    index = answer.gradient_index
    timings = dict(answer.timings)
    if not disclose and answer.s_test_seconds is not None and "s_test" in timings:
        # Another caller's cached s_test must not show as a 0.003 s solve: report the solve's own time
        # (the one that made it), and the total it implies.
        timings["total"] += answer.s_test_seconds - timings["s_test"]
        timings["s_test"] = answer.s_test_seconds
    return Quality(
        method=answer.method,
        timings_s=timings,
        candidates=index["count"] if index is not None and not solved else len(answer.candidate_rows),
        k=config.k if answer.method == "fastif" else None,
        rerank=config.rerank if answer.method == "gradient" else None,
        normalize=config.normalize,
        solver=answer.solver,
        exact=config.exact and solved,
        cached_s_test=answer.s_test_cached if disclose and solved else None,
        lissa=lissa_quality(answer.lissa, disclose) if answer.lissa is not None else None,
        cg=CGQuality(**asdict(answer.cg)) if answer.cg is not None else None,
        gradient_index=GradientIndexQuality(**index) if index is not None else None,
    )


def saliency_response(result: SaliencyMap, names: Sequence[str]) -> SaliencyResponse:
    """The API's map; scores that are not finite (parameters that overflow the model) are refused, never
    sent as ``null`` where the schema promises numbers."""
    if not (np.isfinite(result.scores).all() and np.isfinite(result.raw_scores).all()):
        raise ArithmeticError(
            f"{result.method} gave scores that are not finite numbers: its parameters push the model out of "
            "range (a smaller stdev, fewer steps); lower them"
        )
    return SaliencyResponse(
        method=result.method,
        tokens=result.tokens,
        word_ids=result.word_ids,
        scores=result.scores,
        raw_scores=result.raw_scores,
        label_explained=result.label,
        label_explained_name=names[result.label],
        prediction=prediction(result.probabilities, names),
        extra=result.extra,
        pieces=result.pieces,
        warnings=result.warnings,
    )


def attack_response(result: AttackResult, names: Sequence[str]) -> AttackResponse:
    return AttackResponse(
        method=result.method,
        original=result.original,
        final=result.final,
        outputs_before=prediction(result.outputs_before, names),
        outputs_after=[prediction(p, names) for p in result.outputs_after],
        edits=[WordEdit(**asdict(edit)) for edit in result.edits],
        success=result.success,
        extra=result.extra,
    )
