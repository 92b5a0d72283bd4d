"""Speed and quality of FastIF queries on the default model over the full SST-2 training set.

    python benchmarks/influence_query.py [--model artifacts/model] [--index artifacts/index] [--queries 20]

Needs the demo's artifacts (``influence demo`` or ``benchmarks/train_sst2.py`` + ``influence index build``).
Reports, per query: s_test time (the FastIF preset), kNN search and scoring time at k in {100, 1000, 10000}
and for the full scan; scoring throughput as a ratio to plain forward inference over the same candidates;
LiSSA depth/batch trade-off against a long reference run; kNN recall@m (m = 10, 100) against the full scan
for ``--queries`` dev sentences beside a random candidate set of the same size; rank correlations.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result
from engine.pipeline import local_engine
from interpret.data import load_examples, sst2_spec
from interpret.influence import FASTIF_PRESET, LissaConfig, lissa_s_test, score_rows
from interpret.influence.cg import cg_s_test
from interpret.influence.metrics import correlations, recall_at_m
from interpret.influence.query import prepare_test_point
from interpret.models import length_sorted_batches

KS = (100, 1000, 10000)
CG_ROWS, CG_TOLERANCE = 2000, 1e-4


@dataclass
class Bench:
    """What the measurements read: the tracked model, training states and texts, the index, the card."""

    tracked: object
    train: object
    examples: object
    index: object
    card: dict

    @classmethod
    def load(cls, model: str, index: str) -> Bench:
        engine = local_engine(model, index_dir=index)
        checkpoint = engine.backend.explainer.checkpoint
        return cls(checkpoint.tracked, checkpoint.train, engine.examples, engine.index, engine.card)


MS = (10, 100)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    out = function(*args, **kwargs)
    return out, time.perf_counter() - start


def forward_seconds(engine: Bench, rows: np.ndarray, block_size: int = 128) -> float:
    """Plain inference (tokenise + full forward) over the same rows, length-sorted like scoring."""
    texts = [engine.examples.texts[i] for i in rows]
    start = time.perf_counter()
    for positions in length_sorted_batches(texts, block_size):
        engine.tracked.predict_logits(engine.tracked.encode([texts[i] for i in positions]))
    return time.perf_counter() - start


def speed(engine: Bench, point, theta, lissa: LissaConfig) -> dict:
    result, s_test_seconds = timed(lissa_s_test, engine.tracked, theta, point.v, engine.train, lissa)
    out = {"s_test_seconds": s_test_seconds, "lissa_final_norm": float(result.norm_traces[0, -1])}
    trace = result.norm_traces[0]
    out["lissa_norm_trace_every_100"] = [float(x) for x in trace[99::100]]
    per_k = {}
    for k in (*KS, None):
        if k is None:
            rows, search_seconds = np.arange(len(engine.train)), 0.0
        else:
            (rows, _), search_seconds = timed(engine.index.search, point.features, k)
        scores, score_seconds = timed(score_rows, engine.tracked, theta, result.s_test, engine.train, rows)
        entry = {"candidates": len(rows), "search_seconds": search_seconds, "score_seconds": score_seconds}
        if k == max(KS):
            forward = forward_seconds(engine, rows)
            entry |= {"forward_seconds": forward, "score_over_forward": score_seconds / forward}
        per_k["full_scan" if k is None else str(k)] = entry
    out["per_k"] = per_k
    return out | {"s_test": result.s_test, "full_scores": scores}


def tradeoff(engine: Bench, point, theta) -> dict:
    """Depth/batch settings against a converged solve of the same damped system: conjugate gradient with
    exact Hessian-vector products over a seeded subset of training rows (relative residual reported)."""
    damping = FASTIF_PRESET.damping
    solved, cg_seconds = timed(
        cg_s_test, engine.tracked, theta, point.v, engine.train, damping, CG_ROWS, CG_TOLERANCE
    )
    reference = solved.s_test
    settings = [(250, 1, 1), (1000, 1, 1), (1000, 1, 4), (250, 4, 1), (500, 4, 1)]
    out = []
    for depth, batch, repetitions in settings:
        config = FASTIF_PRESET.replace(recursion_depth=depth, batch_size=batch, num_repetitions=repetitions)
        result, seconds = timed(lissa_s_test, engine.tracked, theta, point.v, engine.train, config)
        error = float((result.s_test - reference).norm() / reference.norm())
        cosine = float(torch.nn.functional.cosine_similarity(result.s_test, reference, dim=0))
        out.append(
            {
                "J": depth,
                "B": batch,
                "T": repetitions,
                "seconds": seconds,
                "relative_error": error,
                "cosine": cosine,
                "seconds_if_T_parallel": seconds / repetitions,
            }
        )
    plain = float((point.v - reference).norm() / reference.norm())  # no curvature at all: s_test = v
    return {
        "reference": {
            "solver": "cg",
            "damping": damping,
            "hessian_rows": len(solved.rows),
            "relative_residual": solved.relative_residual,
            "iterations": solved.iterations,
            "seconds": cg_seconds,
        },
        "plain_gradient_relative_error": plain,
        "settings": out,
    }


def quality(engine: Bench, theta, queries: list, lissa: LissaConfig, rng) -> dict:
    """kNN recall@m against the full scan for many dev sentences; full scans share per-example gradients."""
    points = [prepare_test_point(engine.tracked, theta, q, None, None) for q in queries]
    s_tests = torch.stack(
        [lissa_s_test(engine.tracked, theta, p.v, engine.train, lissa).s_test for p in points]
    )
    everything = np.arange(len(engine.train))
    full, full_seconds = timed(
        score_rows, engine.tracked, theta, s_tests, engine.train, everything, 64, "per_example", True
    )
    recalls: dict = {}
    for k in KS:
        for m in MS:
            for mode in ("harmful", "helpful", "unsigned"):
                knn, random = [], []
                for p, scores in zip(points, full, strict=True):
                    rows, _ = engine.index.search(p.features, k)
                    knn.append(recall_at_m(rows, scores, m, mode))
                    baseline = rng.choice(len(everything), len(rows), replace=False)
                    random.append(recall_at_m(baseline, scores, m, mode))
                recalls[f"k={k},m={m},{mode}"] = {
                    "knn": float(np.mean(knn)),
                    "random": float(np.mean(random)),
                }
    return {
        "queries": len(queries),
        "full_scan_seconds_all_queries": full_seconds,
        "recall": recalls,
        "full_scores": full,
        "points": points,
        "s_tests": s_tests,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="artifacts/model")
    parser.add_argument("--index", default="artifacts/index")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recall-depth", type=int, default=250, help="LiSSA depth for the recall study")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    engine = Bench.load(args.model, args.index)
    theta = engine.tracked.parameters()
    dev = load_examples(sst2_spec("dev"))
    queries = [dev.texts[i] for i in rng.choice(len(dev), args.queries, replace=False)]
    lissa = FASTIF_PRESET
    first = prepare_test_point(engine.tracked, theta, queries[0], None, None)
    measured = speed(engine, first, theta, lissa)
    # Recall compares candidate sets under one s_test per query, so a shorter recursion serves (and keeps
    # 20 queries within minutes on 2 cores); the trade-off block shows what J=250 costs in accuracy.
    recall_lissa = lissa.replace(recursion_depth=args.recall_depth)
    quality_block = quality(engine, theta, queries, recall_lissa, rng)
    # Candidates' scores from the kNN path vs the same rows of the full scan, and vs a LiSSA re-run
    # with another seed (the estimator's own noise, the ceiling any restriction is measured against).
    rows, _ = engine.index.search(first.features, 1000)
    restricted = score_rows(engine.tracked, theta, measured["s_test"], engine.train, rows)
    reseeded = lissa_s_test(engine.tracked, theta, first.v, engine.train, lissa.replace(seed=lissa.seed + 1))
    rerun = score_rows(engine.tracked, theta, reseeded.s_test, engine.train, rows)
    write_result(
        "influence_query",
        {
            "command": "python benchmarks/influence_query.py " + " ".join(sys.argv[1:]),
            "model_card": {
                k: engine.card.get(k) for k in ("base_model", "tracked_layers", "model_fingerprint")
            },
            "train_examples": len(engine.train),
            "tracked_parameters": engine.tracked.num_parameters,
            "index": asdict(engine.index.manifest),
            "lissa_preset": lissa.model_dump(),
            "speed_one_query": {k: v for k, v in measured.items() if k not in ("s_test", "full_scores")},
            "lissa_tradeoff": tradeoff(engine, first, theta),
            "quality": {
                k: v for k, v in quality_block.items() if k not in ("full_scores", "points", "s_tests")
            }
            | {"lissa": recall_lissa.model_dump()},
            "k1000_candidates_vs_full_scan": correlations(restricted, measured["full_scores"][rows]),
            "k1000_candidates_lissa_seed_vs_seed": correlations(restricted, rerun),
        },
    )


if __name__ == "__main__":
    main()
