"""Request and response bodies: one pydantic model per role. Pydantic and ``interpret.config`` only (no
torch), so clients can import it.

Request defaults, bounds and descriptions are not written here: the request models are subclasses of the
``interpret.config`` models the library itself takes (``InfluenceRequest`` is a ``QueryConfig`` with
inputs, each method's ``parameters`` is its library parameters model), so the API, the CLI and the
library cannot disagree, and one validation engine checks them all. Requests are strict (no coercion,
unknown fields refused, finite floats). The operator's limits (max k, max batch, max tokens, ...) are
checked by ``service.limits`` against ``Settings``, so each violation names the field and the configured
limit.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from interpret.config import (
    DEFAULT_FACTORY,
    DEFAULT_INDEX_KIND,
    DEFAULT_STORAGE,
    AttackMethod,
    EvaluationConfig,
    EvaluationTask,
    GradientIndexConfig,
    HotFlipParams,
    IndexKind,
    IndexStorage,
    InputReductionParams,
    IntegratedGradientsParams,
    JobKind,
    LimeParams,
    LissaConfig,
    NoParameters,
    QueryConfig,
    SaliencyMethod,
    SmoothGradientParams,
    TriggerParams,
)
from tasks.reports import TaskReport

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
MAX_REMOVED_ROWS = 1_000_000
"""Rows one index_remove job names at most."""
MAX_ADDED_ROWS = 100_000
"""Rows one index_add job carries at most (a larger set: ``influence index add`` on a file)."""


class _Strict(BaseModel):
    """Requests: unknown fields refused, no coercion (``"1"`` and ``true`` are not the integer 1)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


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


class InfluenceRequest(QueryConfig):
    """Which training examples made each prediction: the library's query settings, and the inputs."""

    inputs: list[TextInput] = Field(min_length=1, description="One or more inputs, answered in order.")

    def config(self) -> QueryConfig:
        """The query settings alone, as the library takes them."""
        return QueryConfig.of(self)


# ------------------------------------------------------------------------- saliency: one model per method


class SimpleGradientRequest(TextInput):
    method: Literal["simple_gradient"]
    parameters: NoParameters = Field(default_factory=NoParameters)


class IntegratedGradientsRequest(TextInput):
    method: Literal["integrated_gradients"]
    parameters: IntegratedGradientsParams = Field(default_factory=IntegratedGradientsParams)


class SmoothGradientRequest(TextInput):
    method: Literal["smooth_gradient"]
    parameters: SmoothGradientParams = Field(default_factory=SmoothGradientParams)


class LeaveOneOutRequest(TextInput):
    method: Literal["leave_one_out"]
    parameters: NoParameters = Field(default_factory=NoParameters)


class LimeRequest(TextInput):
    method: Literal["lime"]
    parameters: LimeParams = Field(default_factory=LimeParams)


# --------------------------------------------------------------------------- attacks: one model per method


class _Targeted(TextInput):
    target: int | str | None = Field(
        None, description="Label to flip to, by index or by name; default: any other."
    )


class HotflipRequest(_Targeted):
    method: Literal["hotflip"]
    parameters: HotFlipParams = Field(default_factory=HotFlipParams)


class InputReductionRequest(TextInput):
    method: Literal["input_reduction"]
    parameters: InputReductionParams = Field(default_factory=InputReductionParams)


class TriggersRequest(_Targeted):
    method: Literal["triggers"]
    parameters: TriggerParams = Field(default_factory=TriggerParams)


SaliencyRequest = Annotated[
    SimpleGradientRequest
    | IntegratedGradientsRequest
    | SmoothGradientRequest
    | LeaveOneOutRequest
    | LimeRequest,
    Field(discriminator="method"),
]
AttackRequest = Annotated[
    HotflipRequest | InputReductionRequest | TriggersRequest, Field(discriminator="method")
]


def _by_method(*requests: type[TextInput]) -> dict[str, type[TextInput]]:
    """Method name -> its request model (the ``method`` tag's one value)."""
    return {request.model_fields["method"].annotation.__args__[0]: request for request in requests}  # type: ignore[union-attr]


SALIENCY_REQUESTS = _by_method(
    SimpleGradientRequest, IntegratedGradientsRequest, SmoothGradientRequest, LeaveOneOutRequest, LimeRequest
)
ATTACK_REQUESTS = _by_method(HotflipRequest, InputReductionRequest, TriggersRequest)
SALIENCY_REQUEST: TypeAdapter[SaliencyRequest] = TypeAdapter(SaliencyRequest)
"""``SALIENCY_REQUEST.validate_python({...})`` builds the right method's request (clients use it)."""
ATTACK_REQUEST: TypeAdapter[AttackRequest] = TypeAdapter(AttackRequest)


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
    score: float = Field(
        description="Positive = harmful (up-weighting raises the test loss); with normalize, the cosine in "
        "the preconditioned space, in [-1, 1]."
    )
    distance: float | None = Field(description="kNN distance in feature space; null for full scans.")


class LissaQuality(BaseModel):
    config: LissaConfig
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
    rank: int | None = Field(
        description="The index's width as a rank: as many coordinates as rank x rank grids per linear layer."
    )
    projection: str = Field(
        "random", description="kfac (Kronecker-factor eigenvectors, fitted) or random (seeded Gaussian)."
    )
    fit_rows: int | None = Field(
        None, description="kfac: training rows the Kronecker factors were fitted on."
    )
    coordinates: int | None = Field(
        None, description="kfac: grid coordinates kept (largest second moment); null: every one."
    )
    grid_rank: int | None = Field(
        None, description="kfac: the eigenbasis rank per side the coordinates were chosen from; null: rank."
    )
    seed: int
    preconditioner: str
    damping: float
    tracked_layers: int | str
    fidelity: dict | None = Field(
        description="Measured against a converged full scan (benchmarks/gradient_index.py); null if never."
    )
    storage: IndexStorage = Field(
        DEFAULT_STORAGE,
        description="How the index holds its vectors (float32, float16, sq8, ivf-pq, pca-sq8).",
    )
    storage_recall: dict | None = Field(
        None,
        description="A compressed storage's recall@100 (helpful, harmful) against the exact search over its "
        "own vectors, measured at build time; null for an exact index.",
    )


class Quality(BaseModel):
    method: Literal["gradient", "fastif", "full"] = Field(description="Which method answered.")
    timings_s: dict[str, float]
    candidates: int = Field(description="Training examples scored (gradient: the whole index).")
    k: int | None
    rerank: int | None = None
    normalize: bool = Field(
        False, description="Whether scores are cosines in the preconditioned space (the normalised view)."
    )
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


RecallMethod = Literal["gradient", "gradient_normalized", "gradient_rerank", "fastif"]


def _gradient_only() -> list[RecallMethod]:
    return ["gradient"]


class EvaluateRequest(EvaluationConfig):
    """An evaluation (loo, lds_head, recall) or an application (influence_map, audit, error_correction,
    simulatability, augmentation):
    the library's sizes and seeds, the task and its test points."""

    task: EvaluationTask = Field(description="Which run.")
    inputs: list[TextInput] = Field(
        default_factory=list,
        description="Test points. loo, lds_head, recall, error_correction and augmentation need each one's "
        "true label; "
        "influence_map and simulatability explain each input's predicted label (influence_map: its given "
        "label if any); audit takes none.",
    )
    anchors: list[TextInput] = Field(
        default_factory=list,
        max_length=MAX_ADDED_ROWS,
        description="augmentation: labelled examples of the shifted distribution (inputs are its held-out "
        "test points); `anchor_count` of them are drawn per seed.",
    )
    pool: list[TextInput] = Field(
        default_factory=list,
        max_length=MAX_ADDED_ROWS,
        description="augmentation: labelled rows the model never trained on, scored by their influence on "
        "the anchors.",
    )
    methods: list[RecallMethod] = Field(
        default_factory=_gradient_only,
        min_length=1,
        description="recall: methods measured (gradient_normalized: the gradient index's normalised view; "
        "gradient_rerank: its top `rerank` of each side, by default 250, rescored with s_test).",
    )

    def config(self) -> EvaluationConfig:
        """The sizes and seeds alone, as the library takes them."""
        return EvaluationConfig.of(self)


class IndexRemoveRequest(_Strict):
    """Training rows to leave out of every later answer (``influence index remove``), by row or by id."""

    rows: list[int] | None = Field(
        None, min_length=1, max_length=MAX_REMOVED_ROWS, description="Training rows (an answer's row)."
    )
    ids: list[str] | None = Field(
        None, min_length=1, max_length=MAX_REMOVED_ROWS, description="Training example ids (an answer's id)."
    )

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if (self.rows is None) == (self.ids is None):
            raise ValueError("name the rows to remove by rows or by ids (one of them)")
        return self


class AddedRow(TextInput):
    """A training row to add: its text (and second text, exactly when the training data has one) and its
    label; its id when the training data has an id column."""

    label: int | str = Field(description="Its label, by index or by name (as /v1/models lists them).")
    id: str | None = Field(
        None, min_length=1, description="Its id: required when the training data has ids, else left out."
    )


class IndexAddRequest(_Strict):
    """Training rows to append to the served gradient index (``influence index add``): projected with its
    projection, preconditioned with its kept Fisher, then served with their texts."""

    rows: list[AddedRow] = Field(min_length=1, max_length=MAX_ADDED_ROWS, description="The new rows.")


class JobRequest(_Strict):
    """A job: an influence query over many inputs, an index build, or a saliency map or an attack too
    costly for a synchronous request. The field named after the kind holds its request."""

    kind: JobKind
    influence: InfluenceRequest | None = Field(None, description="The query, for kind=influence.")
    saliency: SaliencyRequest | None = Field(None, description="The request, for kind=saliency.")
    attack: AttackRequest | None = Field(None, description="The request, for kind=attack.")
    evaluate: EvaluateRequest | None = Field(None, description="The run, for kind=evaluate.")
    factory: str = Field(DEFAULT_FACTORY, description="FAISS factory string, for kind=index_build (kNN).")
    index_kind: IndexKind = Field(DEFAULT_INDEX_KIND, description="Which index, for kind=index_build.")
    gradient: GradientIndexConfig | None = Field(
        None, description="Gradient index settings, for kind=index_build with index_kind=gradient."
    )
    index_remove: IndexRemoveRequest | None = Field(
        None, description="The rows to leave out of the gradient index's answers, for kind=index_remove."
    )
    index_add: IndexAddRequest | None = Field(
        None, description="The rows to append to the gradient index, for kind=index_add."
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


JobResult = InfluenceResponse | IndexBuildResult | SaliencyResponse | AttackResponse | TaskReport
"""What a succeeded job holds: the response of the route it stands for, or a task's report."""


class JobStatus(BaseModel):
    id: str
    kind: str
    state: JobState
    progress: float = Field(ge=0, le=1)
    done: int
    total: int
    result: JobResult | None = None
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
