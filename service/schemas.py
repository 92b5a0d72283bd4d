"""Request and response bodies: one pydantic model per role. Pydantic and ``interpret.config`` only (no
torch), so clients can import it.

Request defaults and bounds are not written here: they are read from the ``interpret.config`` dataclasses
the library itself uses (LiSSA, k/top, each saliency method's and attack's parameters), so the API, the
CLI and the library cannot disagree. Requests are strict (no coercion, unknown fields refused, finite
floats). The operator's limits (max k, max batch, max tokens, ...) are checked by ``service.limits``
against ``Settings``, so each violation names the field and the configured limit.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from interpret.config import (
    ATTACK_PARAMETERS,
    DEFAULT_FACTORY,
    DEFAULT_INDEX_KIND,
    SALIENCY_PARAMETERS,
    TARGETED_ATTACKS,
    EvaluationConfig,
    EvaluationTask,
    GradientIndexConfig,
    IndexKind,
    JobKind,
    LissaConfig,
    QueryConfig,
    type_hints,
)
from tasks.reports import (
    AuditReport,
    CorrectionReport,
    InfluenceMapReport,
    LdsReport,
    LooReport,
    RecallReport,
)

SaliencyMethod = Literal[tuple(SALIENCY_PARAMETERS)]
AttackMethod = Literal[tuple(ATTACK_PARAMETERS)]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class _Strict(BaseModel):
    """Requests: unknown fields refused, no coercion (``"1"`` and ``true`` are not the integer 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _fields_of(config_class: type) -> dict[str, tuple]:
    """Pydantic fields from an ``interpret.config`` dataclass: its defaults, bounds and descriptions."""
    out = {}
    hints = type_hints(config_class)
    for spec in dataclasses.fields(config_class):
        meta = spec.metadata
        if "api" not in meta or not meta["api"]:
            continue  # an internal knob, or a nested config the caller lays out itself
        bounds = {key: meta[key] for key in ("ge", "gt", "le") if meta.get(key) is not None}
        if "float" in str(hints[spec.name]):
            bounds["allow_inf_nan"] = False
        out[spec.name] = (hints[spec.name], Field(spec.default, description=meta["doc"] or None, **bounds))
    return out


def _model_of(config_class: type, name: str, doc: str) -> type[_Strict]:
    return create_model(name, __base__=_Strict, __doc__=doc, **_fields_of(config_class))


class TextInput(_Strict):
    text: str = Field(min_length=1, description="The sentence (or premise) to explain.")
    text_pair: str | None = Field(
        None, min_length=1, description="Second sentence of a pair (hypothesis); only for pair models."
    )
    label: int | str | None = Field(
        None,
        description="Label to explain, by index or by name (as /v1/models lists them); default: the "
        "predicted one.",
    )


LissaParams = _model_of(
    LissaConfig,
    "LissaParams",
    "LiSSA knobs (FastIF names); defaults are the FastIF preset (README conventions).",
)

GradientIndexParams = _model_of(
    GradientIndexConfig,
    "GradientIndexParams",
    "How the gradient index is built (projection kind, rank and seed, preconditioner, damping, FAISS "
    "factory).",
)

InfluenceRequest = create_model(
    "InfluenceRequest",
    __base__=_Strict,
    inputs=(list[TextInput], Field(min_length=1, description="One or more inputs, answered in order.")),
    **_fields_of(QueryConfig),
    lissa=(LissaParams, Field(default_factory=LissaParams)),
)


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


def _method_requests(kind: str, registry: dict[str, type], extra) -> dict[str, type[_Strict]]:
    """One request model per method: ``method`` is its tag, ``parameters`` its own typed model."""
    requests = {}
    for method, params_class in registry.items():
        params = _model_of(params_class, f"{_camel(method)}Parameters", f"Parameters of {kind} {method}.")
        requests[method] = create_model(
            f"{_camel(method)}Request",
            __base__=TextInput,
            method=(Literal[method], ...),
            parameters=(params, Field(default_factory=params)),
            **extra(method),
        )
    return requests


def _target(method: str) -> dict:
    if method not in TARGETED_ATTACKS:
        return {}
    description = "Label to flip to, by index or by name; default: any other."
    return {"target": (int | str | None, Field(None, description=description))}


SALIENCY_REQUESTS = _method_requests("saliency method", SALIENCY_PARAMETERS, lambda method: {})
ATTACK_REQUESTS = _method_requests("attack", ATTACK_PARAMETERS, _target)
SaliencyRequest = Annotated[Union[tuple(SALIENCY_REQUESTS.values())], Field(discriminator="method")]  # noqa: UP007
AttackRequest = Annotated[Union[tuple(ATTACK_REQUESTS.values())], Field(discriminator="method")]  # noqa: UP007
SALIENCY_REQUEST = TypeAdapter(SaliencyRequest)
"""``SALIENCY_REQUEST.validate_python({...})`` builds the right method's request (clients use it)."""
ATTACK_REQUEST = TypeAdapter(AttackRequest)


class Prediction(BaseModel):
    label: int
    label_name: str = Field(description="The label's name (the model's id2label; 'label k' without one).")
    probabilities: list[float]


class InfluentialExampleOut(BaseModel):
    row: int
    id: str
    text: str
    text_pair: str | None
    label: int
    label_name: str
    score: float = Field(description="Positive = harmful (up-weighting raises the test loss).")
    distance: float | None = Field(description="kNN distance in feature space; null for full scans.")


class LissaQuality(BaseModel):
    config: LissaParams  # type: ignore[valid-type]
    final_norm: list[float] = Field(description="Last ||h_J|| / scale of each repetition.")
    norm_trace: list[list[float]] = Field(description="||h_j|| / scale per repetition, every 1/50 of J.")
    relative_spread: float = Field(description="Mean ||s_r - s_test|| / ||s_test|| over repetitions.")
    s_test_norm: float
    seconds: list[float]
    workers: list[str] | None = Field(
        None, description="The worker of each repetition (the CLI only: the service does not name them)."
    )
    scales: list[float] | None = Field(
        description="Per repetition, the scale it ran at (config.scale is the largest)."
    )
    scale_measured: bool = Field(
        description="Whether the scale was measured on sampled batches' Hessians (none was given)."
    )


class CGQuality(BaseModel):
    relative_residual: float = Field(description="||(H_M + damping I) x - v|| / ||v|| at the end.")
    iterations: int
    rows: int = Field(description="M: training rows the Hessian was taken over.")
    seconds: float


class GradientIndexQuality(BaseModel):
    dim: int = Field(description="Width of the projected gradients.")
    count: int
    rank: int | None = Field(description="Projection rank per side of each linear layer.")
    projection: str = Field(
        "random", description="kfac (Kronecker-factor eigenvectors, fitted) or random (seeded Gaussian)."
    )
    fit_rows: int | None = Field(
        None, description="kfac: training rows the Kronecker factors were fitted on."
    )
    seed: int
    preconditioner: str
    damping: float
    tracked_layers: int | str
    fidelity: dict | None = Field(
        description="Measured against a converged full scan (benchmarks/gradient_index.py); null if never."
    )


class Quality(BaseModel):
    method: Literal["gradient", "fastif", "full"] = Field(description="Which method answered.")
    timings_s: dict[str, float]
    candidates: int = Field(description="Training examples scored (gradient: the whole index).")
    k: int | None
    rerank: int | None = None
    solver: str | None = Field(None, description="How s_test was solved; null when none was needed.")
    exact: bool
    cached_s_test: bool | None = Field(
        description="Whether s_test came from the cache; null when not disclosed."
    )
    lissa: LissaQuality | None
    cg: CGQuality | None = None
    gradient_index: GradientIndexQuality | None = None


class InfluenceResult(BaseModel):
    prediction: Prediction
    label_used: int
    label_used_name: str
    helpful: list[InfluentialExampleOut]
    harmful: list[InfluentialExampleOut]
    quality: Quality


class InfluenceResponse(BaseModel):
    results: list[InfluenceResult]


class PredictRequest(_Strict):
    inputs: list[TextInput] = Field(min_length=1)


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class SaliencyResponse(BaseModel):
    """AllenNLP semantics: one score per word-piece, normalised to sum to 1 in absolute value."""

    method: SaliencyMethod
    tokens: list[str]
    word_ids: list[int | None] = Field(description="Word index of each token; null for special tokens.")
    scores: list[float]
    raw_scores: list[float]
    label_explained: int
    label_explained_name: str
    prediction: Prediction
    pieces: list[str] = Field(
        default_factory=list,
        description="Each token as the text it covers, without the tokenizer's ##, Ġ or ▁ markers (special "
        "tokens as themselves); tokens keeps the raw pieces.",
    )
    extra: dict[str, float | str] = Field(
        default_factory=dict,
        description="Integrated gradients: completeness_gap, the baseline used, zero_baseline_gap (auto).",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What makes the map less trustworthy than it looks (a completeness gap above 0.1).",
    )


class WordEdit(BaseModel):
    position: int = Field(description="Word-piece index (in ``final`` for insertions).")
    before: str | None = Field(description="The piece replaced or removed; null for an insertion.")
    after: str | None = Field(description="The new piece; null for a removal.")


class AttackResponse(BaseModel):
    """AllenNLP semantics: ``original`` and ``final`` token lists, model outputs before and after."""

    method: AttackMethod
    original: list[str]
    final: list[list[str]]
    outputs_before: Prediction
    outputs_after: list[Prediction]
    edits: list[WordEdit]
    success: bool
    extra: dict[str, float | str] = Field(
        default_factory=dict, description="e.g. the trigger and its held-out error rates (triggers)."
    )


class ModelInfo(BaseModel):
    model_dir: str
    card: dict
    index_manifest: dict | None
    gradient_index_manifest: dict | None = None
    tracked_parameters: int
    tracked_layers: int | str
    workers: int
    num_training_examples: int
    influence_unavailable: str | None = Field(
        None,
        description="Why influence (queries, indexes, evaluation, triggers) cannot run on this server: "
        "it was started without the model's training data; null when it can.",
    )
    num_labels: int
    labels: list[str] = Field(
        default_factory=list, description="Label names in label order (id2label; 'label k' without one)."
    )
    takes_pairs: bool = Field(description="Whether inputs take a text_pair (NLI-style pair models).")
    full_scan_allowed: bool = Field(
        False,
        description="Whether method='full' (every training row scored) is open (INFLUENCE_ALLOW_FULL_SCAN).",
    )
    limits: dict[str, int] = Field(
        default_factory=dict, description="This server's size limits (INFLUENCE_MAX_*), by setting name."
    )
    parameter_limits: dict[str, int] = Field(
        default_factory=dict,
        description="The largest value this server takes for each bounded request parameter (k, top, "
        "recursion_depth, a saliency method's steps, ...): what a form may offer.",
    )


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


EvaluateRequest = create_model(
    "EvaluateRequest",
    __base__=_Strict,
    __doc__="An evaluation (loo, lds_head, recall) or an application (influence_map, audit, error_correction)"
    ".",
    task=(EvaluationTask, Field(description="Which run.")),
    inputs=(
        list[TextInput],
        Field(
            default_factory=list,
            description="Test points. loo, lds_head, recall and error_correction need each one's true label; "
            "influence_map explains each input's given or predicted label; audit takes none.",
        ),
    ),
    methods=(
        list[Literal["gradient", "fastif"]],
        Field(default_factory=lambda: ["gradient"], min_length=1, description="recall: methods measured."),
    ),
    **_fields_of(EvaluationConfig),
)


class JobRequest(_Strict):
    """A job: an influence query over many inputs, an index build, or a saliency map or an attack too
    costly for a synchronous request. The field named after the kind holds its request."""

    kind: JobKind
    influence: InfluenceRequest | None = Field(None, description="The query, for kind=influence.")  # type: ignore[valid-type]
    saliency: SaliencyRequest | None = Field(None, description="The request, for kind=saliency.")
    attack: AttackRequest | None = Field(None, description="The request, for kind=attack.")
    evaluate: EvaluateRequest | None = Field(None, description="The run, for kind=evaluate.")  # type: ignore[valid-type]
    factory: str = Field(DEFAULT_FACTORY, description="FAISS factory string, for kind=index_build (kNN).")
    index_kind: IndexKind = Field(DEFAULT_INDEX_KIND, description="Which index, for kind=index_build.")
    gradient: GradientIndexParams | None = Field(  # type: ignore[valid-type]
        None, description="Gradient index settings, for kind=index_build with index_kind=gradient."
    )


class IndexBuildResult(BaseModel):
    index_manifest: dict


class Readiness(BaseModel):
    """Ready when an index (kNN or gradient; if configured) is loaded and every worker answers; counts,
    not names."""

    ready: bool
    index_loaded: bool = Field(description="Whether a kNN or a gradient index is loaded.")
    training_data: bool = Field(
        True, description="Whether training data is loaded (without it: prediction, saliency, attacks)."
    )
    workers: int
    workers_answering: int


class JobStatus(BaseModel):
    id: str
    kind: str
    state: JobState
    progress: float = Field(ge=0, le=1)
    done: int
    total: int
    result: (
        InfluenceResponse
        | IndexBuildResult
        | SaliencyResponse
        | AttackResponse
        | LooReport
        | LdsReport
        | RecallReport
        | AuditReport
        | InfluenceMapReport
        | CorrectionReport
        | None
    ) = None
    error: ErrorBody | None = None
    created_at: float
    finished_at: float | None = None
    queue_position: int | None = Field(
        None, ge=0, description="A queued job's place in the order its class starts jobs (0: next)."
    )
    estimated_start_s: float | None = Field(
        None, ge=0, description="A queued job's estimated seconds until it starts (also in Retry-After)."
    )


class JobList(BaseModel):
    jobs: list[JobStatus] = Field(description="Your jobs, oldest first, without results.")


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. limit_exceeded, busy.")
    message: str = Field(description="What went wrong and how to fix it, naming the field.")
    detail: list[dict] | dict | None = None


JobStatus.model_rebuild()
JobList.model_rebuild()
