"""The reports of the evaluation tasks and applications: what a job returns and ``influence evaluate``
writes as JSON (and plots). Light (pydantic only), so the wire schemas and the clients import them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Interval(BaseModel):
    low: float
    high: float
    level: float = 0.95


class LooPoint(BaseModel):
    test_row: int
    train_rows: list[int]
    predicted: list[float]
    actual: list[float]


class LooReport(BaseModel):
    """Predicted vs actual leave-one-out change of the test loss on the convex head."""

    kind: Literal["loo"] = "loo"
    config: dict
    points: list[LooPoint]
    summary: dict[str, float]


class LdsReport(BaseModel):
    """Per method: LDS (mean over test points of the Spearman over subsets) with its interval."""

    kind: Literal["lds"] = "lds"
    scale: Literal["head", "tracked"]
    config: dict
    test_rows: list[int]
    per_test: dict[str, list[float | None]] = Field(description="Method -> Spearman per test point.")
    lds: dict[str, float]
    intervals: dict[str, Interval]
    seconds: dict[str, float] = Field(description="Retraining, and each method's scoring, in seconds.")
    summary: dict[str, float]


class RecallReport(BaseModel):
    kind: Literal["recall"] = "recall"
    config: dict
    per_test: dict[str, list[float]] = Field(
        description="'helpful@m' / 'harmful@m' -> one value per test point."
    )
    summary: dict[str, float]


class RankedRow(BaseModel):
    row: int
    id: str
    text: str
    label: int
    self_influence: float
    loss: float
    flipped: bool | None = None


class AuditReport(BaseModel):
    """Training rows ranked by loss, self-influence or both; with injected noise, what each finds."""

    kind: Literal["audit"] = "audit"
    config: dict
    rank_by: str = Field("loss", description="The ranking that orders ``ranked``.")
    ranked: list[RankedRow] = Field(description="Every row, highest rank_by score first.")
    curves: dict[str, list[float]] = Field(
        default_factory=dict, description="Ranking -> share of flipped labels found in its top 1%, 2%, ..."
    )
    top10_recall: dict[str, float] = Field(default_factory=dict)
    summary: dict[str, float] = Field(default_factory=dict)


class MapNode(BaseModel):
    id: str
    kind: Literal["test", "train"]
    row: int
    text: str
    label: int
    predicted: int | None = None
    degree: int = Field(description="Edges at this node: for a training row, the test points it reaches.")


class MapEdge(BaseModel):
    source: str
    target: str
    score: float
    side: Literal["helpful", "harmful"]


class InfluenceMapReport(BaseModel):
    """A bipartite graph: test points -> their top training rows (FastIF figure 5)."""

    kind: Literal["influence_map"] = "influence_map"
    config: dict
    nodes: list[MapNode] = Field(description="Test points, then training rows by degree (most shared first).")
    edges: list[MapEdge]
    summary: dict[str, float]


class CorrectionReport(BaseModel):
    kind: Literal["error_correction"] = "error_correction"
    config: dict
    seeds: list[int]
    baseline_accuracy: list[float] = Field(description="Held-out accuracy before fine-tuning, per seed.")
    deltas: dict[str, list[float]] = Field(description="Strategy -> held-out accuracy change, per seed.")
    budgets: list[int] = Field(
        description="Training rows fine-tuned on, per seed (the same for each strategy)."
    )
    summary: dict[str, float]


class SimulatabilityReport(BaseModel):
    """FastIF section 6.1: how far a simulator of the model moves toward the model's prediction on a test
    point after a brief fine-tune on that point's influential (or random, or harmful) rows."""

    kind: Literal["simulatability"] = "simulatability"
    config: dict
    test_rows: list[int]
    model_labels: list[int] = Field(description="The model's prediction on each test point (simulated).")
    before: list[float] = Field(description="The simulator's probability of the model's label, per point.")
    after: dict[str, list[float]] = Field(
        description="Strategy -> that probability after fine-tuning on the point's rows, per point."
    )
    summary: dict[str, float]


class AugmentationReport(BaseModel):
    """FastIF section 6.3: fine-tune on the pool rows most helpful for a few anchors of a shifted set, on
    random pool rows, or on the anchors; the change of accuracy on the shifted set."""

    kind: Literal["augmentation"] = "augmentation"
    config: dict
    seeds: list[int]
    baseline_accuracy: float = Field(description="Accuracy on the shifted test set before any fine-tune.")
    anchors: list[list[int]] = Field(description="The anchor rows drawn, per seed.")
    deltas: dict[str, list[float]] = Field(description="Strategy -> accuracy change, per seed.")
    budgets: list[int] = Field(description="Pool rows fine-tuned on, per seed (helpful and random alike).")
    summary: dict[str, float]


TaskReport = (
    LooReport
    | LdsReport
    | RecallReport
    | AuditReport
    | InfluenceMapReport
    | CorrectionReport
    | SimulatabilityReport
    | AugmentationReport
)
"""What a task returns (``tasks.registry``): one report model per task, each naming its ``kind``."""
