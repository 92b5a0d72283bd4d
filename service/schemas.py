"""Request and response bodies: one pydantic model per role. Pydantic only, so clients can import it.

Static bounds here are what every deployment shares (types, ranges that are always wrong); the
operator's limits (max k, max batch, max tokens, ...) are checked by ``service.limits`` against
``Settings``, so each violation names the field and the configured limit.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SaliencyMethod = Literal[
    "simple_gradient", "integrated_gradients", "smooth_gradient", "leave_one_out", "lime"
]
AttackMethod = Literal["hotflip", "input_reduction", "triggers"]
JobState = Literal["queued", "running", "succeeded", "failed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextInput(_Strict):
    text: str = Field(min_length=1, description="The sentence (or premise) to explain.")
    text_pair: str | None = Field(None, min_length=1, description="Second sentence of a pair (hypothesis).")
    label: int | None = Field(None, ge=0, description="Label to explain; default: the predicted one.")


class LissaParams(_Strict):
    """LiSSA knobs (FastIF names); defaults are the FastIF preset. See the README's conventions."""

    recursion_depth: int = Field(1000, ge=1)
    batch_size: int = Field(1, ge=1, le=4096)
    num_repetitions: int = Field(1, ge=1)
    damping: float = Field(5.0, gt=0, allow_inf_nan=False)
    scale: float = Field(1000.0, gt=0, allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class InfluenceRequest(_Strict):
    inputs: list[TextInput] = Field(min_length=1, description="One or more inputs, answered in order.")
    k: int | None = Field(1000, ge=1, description="kNN candidates to score; null: every training example.")
    top: int = Field(10, ge=1, description="Helpful and harmful examples to return.")
    exact: bool = Field(False, description="Exact s_test by an explicit Hessian (small tracked sets).")
    lissa: LissaParams = Field(default_factory=LissaParams)


class Prediction(BaseModel):
    label: int
    probabilities: list[float]


class InfluentialExampleOut(BaseModel):
    row: int
    id: str
    text: str
    text_pair: str | None
    label: int
    score: float = Field(description="Positive = harmful (up-weighting raises the test loss).")
    distance: float | None = Field(description="kNN distance in feature space; null for full scans.")


class LissaQuality(BaseModel):
    config: LissaParams
    final_norm: list[float] = Field(description="Last ||h_J|| / scale of each repetition.")
    norm_trace: list[list[float]] = Field(description="||h_j|| / scale per repetition, every 1/50 of J.")
    relative_spread: float = Field(description="Mean ||s_r - s_test|| / ||s_test|| over repetitions.")
    s_test_norm: float
    seconds: list[float]
    workers: list[str] | None


class Quality(BaseModel):
    timings_s: dict[str, float]
    candidates: int
    k: int | None
    exact: bool
    cached_s_test: bool
    lissa: LissaQuality | None


class InfluenceResult(BaseModel):
    prediction: Prediction
    label_used: int
    helpful: list[InfluentialExampleOut]
    harmful: list[InfluentialExampleOut]
    quality: Quality


class InfluenceResponse(BaseModel):
    results: list[InfluenceResult]


class PredictRequest(_Strict):
    inputs: list[TextInput] = Field(min_length=1)


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class SaliencyRequest(TextInput):
    method: SaliencyMethod
    parameters: dict[str, float | int | bool] = Field(
        default_factory=dict,
        description="integrated_gradients: steps; smooth_gradient: num_samples, stdev, seed; "
        "lime: num_samples, kernel_width, ridge, seed.",
    )


class SaliencyResponse(BaseModel):
    """AllenNLP semantics: one score per word-piece, normalised to sum to 1 in absolute value."""

    method: SaliencyMethod
    tokens: list[str]
    word_ids: list[int | None] = Field(description="Word index of each token; null for special tokens.")
    scores: list[float]
    raw_scores: list[float]
    label_explained: int
    prediction: Prediction
    extra: dict[str, float] = Field(default_factory=dict)


class AttackRequest(TextInput):
    method: AttackMethod
    target: int | None = Field(
        None, ge=0, description="Label to flip to (HotFlip, triggers); default: any other."
    )
    parameters: dict[str, float | int | bool] = Field(
        default_factory=dict,
        description="hotflip: max_flips, candidates; input_reduction: beam_size; triggers: num_tokens, "
        "iterations, candidates, num_examples, held_out, seed.",
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
    tracked_parameters: int
    tracked_layers: int | str
    workers: int
    num_training_examples: int


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class JobRequest(_Strict):
    kind: Literal["influence", "index_build"]
    influence: InfluenceRequest | None = Field(None, description="The query, for kind=influence.")
    factory: str = Field("Flat", description="FAISS factory string, for kind=index_build.")


class JobStatus(BaseModel):
    id: str
    kind: str
    state: JobState
    progress: float = Field(ge=0, le=1)
    done: int
    total: int
    result: InfluenceResponse | dict | None = None
    error: ErrorBody | None = None
    created_at: float
    finished_at: float | None = None


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. limit_exceeded, busy.")
    message: str = Field(description="What went wrong and how to fix it, naming the field.")
    detail: list[dict] | dict | None = None


JobStatus.model_rebuild()
