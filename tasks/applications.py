"""What influence scores are for (FastIF, Guo et al. 2021, sections 5-6), as runs with typed reports:

* :func:`self_influence_and_loss` and :func:`audit_report`: rank training rows by self-influence
  ``g~_z^T (C + damping I)^-1 g~_z`` (the gradient index's own projection and preconditioner), by
  loss, and by their rank average; the list is ordered by loss unless asked otherwise, because on SST-2
  the loss finds the most flipped labels (README: 0.72 of them in its top 10%, self-influence 0.29).
  :func:`noisy_training_file` and :func:`flip_recall` are the check: flip a seeded share of labels,
  retrain, count the flips each ranking puts in its top share.
* :func:`influence_map`: for a set of test points (by default the evaluation set's errors), the bipartite
  graph of their top helpful and harmful training rows; rows shared by many test points first.
* :func:`error_correction`: for misclassified points of one half of the evaluation set, fine-tune the
  tracked layers briefly on their most helpful training rows and measure accuracy on the other half,
  against the same budget of random rows and of the most harmful ones, over several seeds.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from engine.builds import fit_inverse, fit_projection, gradient_spec, over_examples, projected_gradients
from engine.pipeline import Engine, answer_query
from index.vectors import preconditioned_norms
from interpret.cancellation import checkpoint as step_boundary
from interpret.checkpoint import DEFAULT_MAX_LENGTH
from interpret.config import (
    AuditRanking,
    EvaluationConfig,
    GradientIndexConfig,
    MethodUnavailableError,
    QueryConfig,
    SimulationLabels,
)
from interpret.data import ExampleSet
from interpret.influence.query import InfluentialExample
from interpret.models import TrackedModel, length_sorted_batches
from interpret.training import TrainConfig, accuracy, fine_tune, predict_labels
from tasks.reports import (
    AuditReport,
    AugmentationReport,
    CorrectionReport,
    InfluenceMapReport,
    MapEdge,
    MapNode,
    RankedRow,
    SimulatabilityReport,
)


# ----------------------------------------------------------------------------------------------- audit
def self_influence_and_loss(
    engine: Engine, work_dir: str | Path, config: GradientIndexConfig | None = None, progress=None
) -> tuple[np.ndarray, np.ndarray]:
    """Self-influence ``g~_z . (C + damping I)^-1 g~_z`` and loss of every training row.

    The gradients are the gradient index's (same projection, same shards kept in ``work_dir`` so a rerun
    resumes), and ``C`` its Fisher: a row's self-influence is its score against itself."""
    config = config or GradientIndexConfig()
    spec = gradient_spec(engine, config)
    projection = fit_projection(engine, work_dir, config)
    gradients = projected_gradients(engine, work_dir, config, projection, progress)
    inverse = fit_inverse(engine, gradients, spec, projection).numpy()
    self_influence = np.concatenate(
        [((block.astype(np.float64) @ inverse) * block).sum(axis=1) for block in gradients.blocks()]
    )
    examples = engine.training_examples()
    probabilities = over_examples(engine.backend.predict, examples)
    loss = -np.log(np.clip(probabilities[np.arange(len(examples)), examples.labels], 1e-12, None))
    return self_influence, loss


def flip_recall(scores: np.ndarray, flipped: np.ndarray, share: float) -> float:
    """Share of the flipped rows among the ``share`` highest-scored rows (recall of the flips)."""
    top = np.argsort(-scores, kind="stable")[: max(1, round(share * len(scores)))]
    return float(flipped[top].sum() / max(1, flipped.sum()))


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """Each row's rank among ``scores``, 1 for the lowest, equal scores sharing their mean rank."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    _, group, sizes = np.unique(scores, return_inverse=True, return_counts=True)
    return (np.bincount(group, weights=ranks) / sizes)[group]


def rank_average(*scores: np.ndarray) -> np.ndarray:
    """``mean_k rank_k(z) / n``: each row's mean rank percentile under every score, so rows high on all of
    them come first whatever each score's scale (self-influence spans decades, the loss does not)."""
    return np.mean([average_ranks(values) / len(values) for values in scores], axis=0)


def flip_auc(scores: np.ndarray, flipped: np.ndarray) -> float:
    """``P(score(flipped row) > score(kept row))``, ties counting half: the Mann-Whitney
    ``U = sum_{flipped} rank - n_1 (n_1 + 1) / 2`` over ``n_1 n_0``. 0.5 is chance."""
    flipped = np.asarray(flipped, dtype=bool)
    n_flipped, n_kept = int(flipped.sum()), int((~flipped).sum())
    if not n_flipped or not n_kept:
        return float("nan")
    wins = average_ranks(scores)[flipped].sum() - n_flipped * (n_flipped + 1) / 2
    return float(wins / (n_flipped * n_kept))


def recall_curve(scores: np.ndarray, flipped: np.ndarray, points: int = 100) -> list[float]:
    order = np.argsort(-scores, kind="stable")
    found = np.cumsum(flipped[order]) / max(1, flipped.sum())
    marks = np.linspace(0, len(scores), points + 1)[1:].round().astype(int) - 1
    return [0.0, *found[marks].tolist()]


def audit_report(
    examples: ExampleSet,
    self_influence: np.ndarray,
    loss: np.ndarray,
    flipped: np.ndarray | None = None,
    seed: int = 0,
    config: dict | None = None,
    rank_by: AuditRanking = "loss",
) -> AuditReport:
    """Every training row, highest ``rank_by`` score first (loss, self-influence, or their rank average);
    with ``flipped`` (a noise-injection check), what each ranking finds against random."""
    scores = {"self_influence": self_influence, "loss": loss, "combined": rank_average(self_influence, loss)}
    order = np.argsort(-scores[rank_by], kind="stable")
    ranked = [
        RankedRow(
            row=int(row),
            id=examples.ids[row],
            text=examples.texts[row],
            label=int(examples.labels[row]),
            self_influence=float(self_influence[row]),
            loss=float(loss[row]),
            flipped=None if flipped is None else bool(flipped[row]),
        )
        for row in order
    ]
    report = AuditReport(config=config or {}, rank_by=rank_by, ranked=ranked)
    if flipped is not None:
        rankings = {**scores, "random": np.random.default_rng(seed).random(len(examples))}
        report.curves = {name: recall_curve(values, flipped) for name, values in rankings.items()}
        report.top10_recall = {name: flip_recall(values, flipped, 0.10) for name, values in rankings.items()}
        for name, values in rankings.items():
            report.summary[f"{name}_top10_recall"] = report.top10_recall[name]
            report.summary[f"{name}_top5_recall"] = flip_recall(values, flipped, 0.05)
            report.summary[f"{name}_auc"] = flip_auc(values, flipped)
        report.summary["flipped"] = float(flipped.sum())
    return report


def noisy_training_file(
    examples: ExampleSet, path: str | Path, rows: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``rows`` seeded training rows to a TSV (``id``, ``text``[, ``text_pair``], ``label``) with a
    ``noise`` share of labels flipped to another class; return the rows taken and which were flipped."""
    if not 0 < noise < 1:
        raise ValueError(f"noise must be in (0, 1), got {noise!r}")
    rng = np.random.default_rng(seed)
    taken = np.sort(rng.choice(len(examples), min(rows, len(examples)), replace=False))
    flipped = np.zeros(len(taken), dtype=bool)
    flipped[rng.choice(len(taken), round(noise * len(taken)), replace=False)] = True
    labels = examples.labels[taken].copy()
    classes = max(2, examples.num_labels)
    offsets = rng.integers(1, classes, flipped.sum())
    labels[flipped] = (labels[flipped] + offsets) % classes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    with scratch.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        header = ["id", "text", *(["text_pair"] if examples.pairs is not None else []), "label"]
        writer.writerow(header)
        for position, row in enumerate(taken):
            pair = [examples.pairs[row]] if examples.pairs is not None else []
            writer.writerow([examples.ids[row], examples.texts[row], *pair, int(labels[position])])
    scratch.replace(path)
    return taken, flipped


def retrain_with_noise(
    card: dict, work: str | Path, rows: int, noise: float, seed: int
) -> tuple[Path, np.ndarray, np.ndarray]:
    """The audit's check: ``rows`` of the card's training data with a ``noise`` share of labels flipped
    (a TSV in ``work``), and the card's model retrained on them the way the card says (cached in
    ``work``). Returns the noisy model's folder, the source rows taken and which were flipped."""
    from interpret.checkpoint import card_data_spec
    from interpret.data import DataSpec, load_examples
    from interpret.training import save_classifier, train_classifier

    source = card_data_spec(card)
    if source is None or "base_model" not in card:
        raise ValueError("the audit's noise check retrains the model: give one saved by `influence train`")
    work = Path(work)
    noisy_file = work / f"noisy-{rows}-{noise:g}-{seed}.tsv"
    taken, flipped = noisy_training_file(load_examples(source), noisy_file, rows, noise, seed)
    spec = DataSpec(str(noisy_file), id_column="id")
    model = work / f"model-{rows}-{noise:g}-{seed}"
    if not (model / "card.json").is_file():
        noisy, config = load_examples(spec), TrainConfig(**card.get("train_config", {}))
        tracked, report = train_classifier(
            card["base_model"], noisy, card["tracked_layers"], config, num_labels=card.get("num_labels")
        )
        save_classifier(model, tracked, card["base_model"], noisy, config, report, spec)
    return model, taken, flipped


# ----------------------------------------------------------------------------------------- influence map
def evaluation_errors(engine: Engine, test: ExampleSet) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels of the evaluation set and the rows it gets wrong."""
    predicted = over_examples(engine.backend.predict, test).argmax(axis=1)
    return predicted, np.flatnonzero(predicted != test.labels)


def influence_map(
    engine: Engine,
    test: ExampleSet,
    rows: np.ndarray | None = None,
    top: int = EvaluationConfig().top,
    config: QueryConfig | None = None,
    max_points: int = 50,
    progress=None,
) -> InfluenceMapReport:
    """Each test point's ``top`` helpful and harmful training rows for its *predicted* label (what drove
    the prediction it made); ``rows=None`` takes the evaluation set's errors (at most ``max_points``)."""
    predicted, errors = evaluation_errors(engine, test)
    rows = errors[:max_points] if rows is None else np.asarray(rows)
    config = (config or QueryConfig()).replace(top=top)
    nodes: dict[str, MapNode] = {}
    edges: list[MapEdge] = []
    method = None
    for position, row in enumerate(rows):
        step_boundary()
        pair = test.pairs[row] if test.pairs is not None else None
        answer = answer_query(engine, test.texts[row], pair, None, config)
        method = answer.method
        test_id = f"test:{test.ids[row]}"
        nodes[test_id] = MapNode(
            id=test_id,
            kind="test",
            row=int(row),
            text=test.texts[row],
            label=int(test.labels[row]),
            predicted=int(predicted[row]),
            degree=0,
        )
        sides: tuple[tuple[Literal["helpful", "harmful"], list[InfluentialExample]], ...] = (
            ("helpful", answer.helpful),
            ("harmful", answer.harmful),
        )
        for side, examples in sides:
            for example in examples:
                train_id = f"train:{example.id}"
                node = nodes.setdefault(
                    train_id,
                    MapNode(
                        id=train_id,
                        kind="train",
                        row=example.row,
                        text=example.text,
                        label=example.label,
                        degree=0,
                    ),
                )
                node.degree += 1
                nodes[test_id].degree += 1
                edges.append(MapEdge(source=test_id, target=train_id, score=example.score, side=side))
        if progress is not None:
            progress(position + 1, len(rows))
    tests = [n for n in nodes.values() if n.kind == "test"]
    trains = sorted((n for n in nodes.values() if n.kind == "train"), key=lambda n: (-n.degree, n.row))
    shared = sum(1 for n in trains if n.degree > 1)
    return InfluenceMapReport(
        config={"top": top, "method": method, "test_rows": [int(r) for r in rows]},
        nodes=tests + trains,
        edges=edges,
        summary={
            "test_points": float(len(tests)),
            "training_rows": float(len(trains)),
            "shared_training_rows": float(shared),
            "max_degree": float(trains[0].degree if trains else 0),
        },
    )


# -------------------------------------------------------------------------------------- error correction
def correction_training(learning_rate: float = EvaluationConfig().learning_rate) -> TrainConfig:
    """The brief fine-tune of error correction: one epoch, small batches, a small constant rate."""
    return TrainConfig(epochs=1, batch_size=16, learning_rate=learning_rate, warmup_ratio=0.0)


def error_correction(
    engine: Engine,
    tracked: TrackedModel,
    test: ExampleSet,
    seeds: list[int],
    top: int = EvaluationConfig().top,
    train_config: TrainConfig | None = None,
    config: QueryConfig | None = None,
    progress=None,
) -> CorrectionReport:
    """FastIF section 6. For each seed: split the evaluation set in two halves; take the misclassified
    points of the first half; fine-tune a fresh copy of the tracked parameters on (a) their top helpful
    training rows for the true label, (b) as many random rows, (c) as many top harmful rows; report the
    second half's accuracy change for each. ``tracked`` is a separate copy of the model (not the engine's,
    which keeps answering queries); its tracked parameters are restored after every run."""
    train_config = train_config or correction_training()
    config = (config or QueryConfig()).replace(top=top)
    original = tracked.parameters().clone()
    deltas: dict[str, list[float]] = {"helpful": [], "random": [], "harmful": []}
    baselines, budgets = [], []
    for number, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(test))
        first, held_out = np.sort(order[: len(test) // 2]), np.sort(order[len(test) // 2 :])
        predicted, _ = evaluation_errors(engine, test.subset(first))
        wrong = first[predicted != test.labels[first]]
        chosen: dict[str, dict[int, float]] = {"helpful": {}, "harmful": {}}  # row -> its strongest score
        for row in wrong:
            step_boundary()
            pair = test.pairs[row] if test.pairs is not None else None
            answer = answer_query(engine, test.texts[row], pair, int(test.labels[row]), config)
            for side in ("helpful", "harmful"):
                for example in getattr(answer, side):
                    best = chosen[side].get(example.row, 0.0)
                    chosen[side][example.row] = max(best, abs(example.score))
        helpful = np.array(sorted(chosen["helpful"]), dtype=np.int64)
        budget = len(helpful)
        # the same budget of the most harmful rows (strongest first), as many as there are
        strongest = sorted(chosen["harmful"], key=lambda row: -chosen["harmful"][row])
        harmful = np.array(strongest[:budget], dtype=np.int64)
        random_rows = rng.choice(engine.num_examples, budget, replace=False)
        held = test.subset(held_out)
        baseline = accuracy(tracked, held)
        baselines.append(baseline)
        budgets.append(budget)
        for name, rows in (("helpful", helpful), ("random", random_rows), ("harmful", harmful)):
            if len(rows) == 0:  # no errors in this half (or no rows of that side): nothing to train on
                deltas[name].append(0.0)
                continue
            fine_tune(
                tracked,
                engine.training_examples().subset(rows),
                None,
                replace(train_config, seed=seed),
                progress=False,
            )
            deltas[name].append(accuracy(tracked, held) - baseline)
            _restore(tracked, original)
        if progress is not None:
            progress(number + 1, len(seeds))
    summary = {f"error_correction_delta_{name}": float(np.mean(values)) for name, values in deltas.items()}
    summary["baseline_accuracy"] = float(np.mean(baselines))
    settings = {"top": top, "train": train_config.__dict__, "evaluation_rows": len(test)}
    return CorrectionReport(
        config=settings,
        seeds=list(seeds),
        baseline_accuracy=baselines,
        deltas=deltas,
        budgets=budgets,
        summary=summary,
    )


@torch.no_grad()
def _restore(tracked, theta: torch.Tensor) -> None:
    named = dict(tracked.model.named_parameters())
    for name, value in tracked.unflatten(theta).items():
        named[name].copy_(value)


# ---------------------------------------------------------------------------------------- simulatability
SIMULATION_EPOCHS = 1
"""Passes of the simulator over a test point's rows (one batch each). One: more passes drive the
simulator's probability to 1 on any rows of the label (SST-2: 5 passes gave the helpful rows +0.159 and
random rows of the model's label +0.156), so what the rows show beyond their label no longer shows."""


def model_labelled(engine: Engine, examples: ExampleSet) -> ExampleSet:
    """``examples`` with each label replaced by the model's prediction (what a simulator learns from)."""
    predicted = over_examples(engine.backend.predict, examples).argmax(axis=1).astype(np.int64)
    return replace(examples, labels=predicted, source=f"{examples.source} (labelled by the model)")


@torch.no_grad()
def label_probability(tracked: TrackedModel, examples: ExampleSet) -> np.ndarray:
    """``p(label | text)`` under ``tracked`` for each example's own label."""
    probabilities = np.empty(len(examples), dtype=np.float64)
    for rows in length_sorted_batches(examples.texts, 64, examples.pairs):
        pairs = [examples.pairs[i] for i in rows] if examples.pairs is not None else None
        logits = tracked.predict_logits(tracked.encode([examples.texts[i] for i in rows], pairs))
        chosen = torch.softmax(logits.double(), dim=-1)[torch.arange(len(rows)), examples.labels[rows]]
        probabilities[rows] = chosen.cpu().numpy()
    return probabilities


def simulation_training(
    learning_rate: float = EvaluationConfig().simulation_learning_rate, rows: int = EvaluationConfig().top
) -> TrainConfig:
    """How the simulator learns from a test point's ``rows`` rows: one step on them as one batch, at a
    constant rate."""
    return TrainConfig(
        epochs=SIMULATION_EPOCHS, batch_size=rows, learning_rate=learning_rate, warmup_ratio=0.0
    )


def train_simulator(
    engine: Engine, rows: int, seed: int, progress: bool = False
) -> tuple[TrackedModel, np.ndarray]:
    """FastIF section 6.1's simulator: ``rows`` seeded training rows labelled by the model's predictions
    rather than the truth, learnt with the model's tracked set and training recipe (its card) from the
    model's base (the card's ``base_model``; for a checkpoint trained elsewhere, the model itself with a
    fresh head). So it imitates the model, and how far a few rows move it toward the model's label measures
    how well they explain the model. Returns the simulator and the rows it learnt from."""
    from interpret.training import train_classifier

    card, tracked_layers = engine.card, engine.identity.tracked_layers
    if tracked_layers == "lora":
        raise ValueError("simulatability trains a simulator on the tracked layers: a LoRA adapter has none")
    examples = engine.training_examples("simulatability")
    sample = np.random.default_rng(seed).choice(len(examples), min(rows, len(examples)), replace=False)
    taken = np.sort(sample)
    simulator, _ = train_classifier(
        card.get("base_model") or engine.model_dir,
        model_labelled(engine, examples.subset(taken)),
        tracked_layers,
        replace(TrainConfig(**card.get("train_config", {})), seed=seed),
        num_labels=engine.identity.num_labels,
        max_length=card.get("max_length", DEFAULT_MAX_LENGTH),
        progress=progress,
    )
    return simulator, taken


def simulatability(
    engine: Engine,
    simulator: TrackedModel,
    test: ExampleSet,
    rows: np.ndarray,
    top: int = EvaluationConfig().top,
    train_config: TrainConfig | None = None,
    config: QueryConfig | None = None,
    seed: int = 0,
    labels: SimulationLabels = "data",
    progress=None,
) -> SimulatabilityReport:
    """FastIF section 6.1 (after Hase and Bansal 2020): do a test point's influential rows explain the
    model's prediction to someone who learns from them? For each test point ``t`` with the model's label
    ``y = f(t)``: fine-tune the simulator on (a) the ``top`` rows most helpful for ``y``, (b) ``top``
    random rows, (c) ``top`` random rows labelled ``y`` in the data (the control: helpful rows mostly carry
    ``y``, so this is what their label alone teaches), (d) the ``top`` most harmful rows, and measure the
    change of the simulator's ``p(y | t)``; the simulator is restored after each run. ``labels``: the rows
    carry their data labels (as an answer shows them) or the model's predictions."""
    train_config = train_config or simulation_training(rows=top)
    config = (config or QueryConfig()).replace(top=top)
    examples = engine.training_examples("simulatability")
    points = model_labelled(engine, test.subset(rows))
    original = simulator.parameters().clone()
    before = label_probability(simulator, points)
    after: dict[str, list[float]] = {"helpful": [], "random": [], "same_label": [], "harmful": []}
    for position in range(len(points)):
        rng = np.random.default_rng([seed, position])  # a point's random rows do not depend on the others
        step_boundary()
        pair = points.pairs[position] if points.pairs is not None else None
        label = int(points.labels[position])
        answer = answer_query(engine, points.texts[position], pair, label, config)
        of_label = np.flatnonzero(examples.labels == label)
        chosen = {
            "helpful": np.array([example.row for example in answer.helpful], dtype=np.int64),
            "random": rng.choice(len(examples), top, replace=False),
            "same_label": rng.choice(of_label, min(top, len(of_label)), replace=False),
            "harmful": np.array([example.row for example in answer.harmful], dtype=np.int64),
        }
        for name, training_rows in chosen.items():
            if len(training_rows) == 0:
                after[name].append(float(before[position]))
                continue
            shown = examples.subset(training_rows)
            fine_tune(
                simulator,
                model_labelled(engine, shown) if labels == "model" else shown,
                None,
                replace(train_config, seed=seed + position),
                progress=False,
            )
            after[name].append(float(label_probability(simulator, points.subset([position]))[0]))
            _restore(simulator, original)
        if progress is not None:
            progress(position + 1, len(points))
    summary = {
        f"simulatability_delta_{name}": float(np.mean(np.asarray(values) - before))
        for name, values in after.items()
    }
    summary["simulator_agreement"] = float(np.mean(predict_labels(simulator, points) == points.labels))
    summary["simulator_probability"] = float(np.mean(before))
    settings = {"top": top, "train": train_config.__dict__, "test_points": len(points), "labels": labels}
    return SimulatabilityReport(
        config=settings,
        test_rows=[int(row) for row in rows],
        model_labels=points.labels.tolist(),
        before=before.tolist(),
        after=after,
        summary=summary,
    )


# ------------------------------------------------------------------------------------------ augmentation
def pool_scores(
    engine: Engine, anchors: ExampleSet, pool: ExampleSet, normalize: bool = False, progress=None
) -> np.ndarray:
    """``[len(pool), len(anchors)]``: how much training on pool row ``z`` (with its label) would lower the
    loss of anchor ``a``, ``g~_a . u_z`` with ``u_z = (C + damping I)^-1 g~_z`` in the gradient index's
    projection and curvature: the index's own score for a row it never held (positive = helpful).
    ``normalize``: divided by ``||A^-1/2 g~_z|| = sqrt(g~_z . u_z)``, the normalised view's order (each
    anchor's own norm is one constant per column)."""
    index = engine.gradient_index
    if index is None:
        raise MethodUnavailableError(
            "augmentation scores the pool with the gradient index: build one with "
            "`influence index build --kind gradient`",
            "gradient_index",
        )

    def gradients(examples: ExampleSet, offset: int) -> np.ndarray:
        rows = []
        for row in range(len(examples)):
            step_boundary()
            pair = examples.pairs[row] if examples.pairs is not None else None
            label = int(examples.labels[row])
            rows.append(
                engine.backend.projected_test_gradient(examples.texts[row], pair, label, index.projection)
            )
            if progress is not None:
                progress(offset + row + 1, len(anchors) + len(pool))
        return np.stack(rows).astype(np.float64)

    anchor_gradients = gradients(anchors, 0)
    pool_gradients = gradients(pool, len(anchors))
    preconditioned = index.precondition(pool_gradients)
    scores = preconditioned @ anchor_gradients.T
    if normalize:
        norms = preconditioned_norms(pool_gradients, preconditioned).astype(np.float64)
        scores = scores / np.where(norms > 0, norms, 1.0)[:, None]
    return scores


def augmentation(
    engine: Engine,
    tracked: TrackedModel,
    anchors: ExampleSet,
    pool: ExampleSet,
    test: ExampleSet,
    seeds: list[int],
    anchor_count: int = EvaluationConfig().anchor_count,
    top: int = EvaluationConfig().top,
    train_config: TrainConfig | None = None,
    normalize: bool = False,
    progress=None,
    scoring_progress=None,
) -> AugmentationReport:
    """FastIF section 6.3, its second half: a model meets a shifted distribution; a few labelled ``anchors``
    from it and a ``pool`` of labelled rows it never trained on are at hand. Per seed, draw
    ``anchor_count`` anchors and fine-tune a fresh copy of the tracked parameters on (a) each anchor's
    ``top`` most helpful pool rows (their union), (b) as many random pool rows, (c) the anchors
    themselves; report the change of accuracy on ``test`` (the shifted side, held out), and the share of
    the helpful and random rows the model got wrong before (``*_rows_misclassified``). ``normalize``:
    the pool ranked by the normalised view. ``tracked`` is a separate copy of the model, restored after
    every run. ``progress`` counts seeds, ``scoring_progress`` the anchors' and pool rows' gradients."""
    train_config = train_config or correction_training()
    scores = pool_scores(engine, anchors, pool, normalize, scoring_progress)
    original = tracked.parameters().clone()
    baseline = accuracy(tracked, test)
    deltas: dict[str, list[float]] = {"helpful": [], "random": [], "anchors": []}
    misclassified: dict[str, list[float]] = {"helpful": [], "random": []}
    budgets: list[int] = []
    drawn: list[list[int]] = []
    for number, seed in enumerate(seeds):
        step_boundary()
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(anchors), min(anchor_count, len(anchors)), replace=False))
        ranked = np.argsort(-scores[:, chosen], axis=0, kind="stable")[:top]  # [top, anchors]
        helpful = np.unique(ranked)
        budget = len(helpful)
        runs = {
            "helpful": pool.subset(helpful),
            "random": pool.subset(np.sort(rng.choice(len(pool), budget, replace=False))),
            "anchors": anchors.subset(chosen),
        }
        for name in ("helpful", "random"):  # raw influence favours rows with large loss gradients
            wrong = predict_labels(tracked, runs[name]) != runs[name].labels
            misclassified[name].append(float(wrong.mean()))
        for name, rows in runs.items():
            fine_tune(tracked, rows, None, replace(train_config, seed=seed), progress=False)
            deltas[name].append(accuracy(tracked, test) - baseline)
            _restore(tracked, original)
        budgets.append(budget)
        drawn.append(chosen.tolist())
        if progress is not None:
            progress(number + 1, len(seeds))
    summary = {f"augmentation_delta_{name}": float(np.mean(values)) for name, values in deltas.items()}
    summary["baseline_accuracy"] = baseline
    for name, shares in misclassified.items():
        summary[f"{name}_rows_misclassified"] = float(np.mean(shares))
    settings = {
        "top": top,
        "anchors": anchor_count,
        "normalize": normalize,
        "train": train_config.__dict__,
        "pool_rows": len(pool),
        "test_rows": len(test),
        "anchor_rows": len(anchors),
    }
    return AugmentationReport(
        config=settings,
        seeds=list(seeds),
        baseline_accuracy=baseline,
        anchors=drawn,
        deltas=deltas,
        budgets=budgets,
        summary=summary,
    )
