"""The gradient index on full SST-2 against a converged full scan, and its query latency through REST.

    python benchmarks/gradient_index.py [--queries 20] [--cg-rows 500] [--rest-queries 4] [--table-rows 8000]

Needs ``artifacts/model`` (``benchmarks/train_sst2.py``); builds ``artifacts/index`` (kNN) and
``artifacts/gradient-index`` when missing or stale. Everything expensive is cached under
``artifacts/bench-gradient/`` (the CG ``s_test`` of each query, the reference scores), so a rerun costs only
what changed. Stages, on the default tracked set (last 2 layers + pooler + classifier, 3.7M parameters):

1. **Build** the gradient index over all rows (kfac rank 16, Fisher, damping 5): seconds, bytes; and the
   shard pass at 3 sizes (linear growth).
2. **Reference**: for ``--queries`` dev sentences (seeded), ``s_test`` by conjugate gradient on
   ``(H_M + damping I) x = v`` (M = ``--cg-rows`` seeded training rows, relative residual 1e-4), then every
   training row scored with every exact per-example gradient (one batched backward per block: the
   unprojected projector with LayerNorms, checked against the forward-mode scorer on a sample).
3. **Quality**: recall@10/@100 of the top helpful and harmful lists and Spearman over all rows for the
   gradient index; the same recalls for FastIF's kNN candidates at k=1,000/10,000 and for random sets (their
   candidates scored with the reference ``s_test``: the best those candidate sets allow; the same for the
   gradient index's top 1,000 per side, the ceiling of ``rerank=1000``); ``rerank=1000`` itself (the
   default ``index`` solver) through the query pipeline on every query; a table of projection kinds x
   ranks x preconditioners on the first ``--table-rows`` rows.
4. **REST**: one in-process server on loopback answers ``gradient`` (all queries), ``gradient`` with
   ``rerank=1000`` (default solver: the index's curvature; and with ``solver=lissa``) and ``fastif``
   (k=1,000, the default LiSSA preset) for ``--rest-queries`` queries each (different sentences, so none
   finds another's ``s_test`` in the service's cache), side by side; recall@100 of each answer is read
   from its reply.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, write_result
from engine.builds import build_gradient_index, build_knn_index, fit_projection, gradient_spec
from engine.pipeline import answer_query, local_engine
from index.gradient import read_gradient_manifest, record_fidelity
from index.store import IndexMismatchError, read_manifest
from interpret.config import GradientIndexConfig, QueryConfig
from interpret.data import load_examples, sst2_spec
from interpret.influence import metrics
from interpret.influence.cg import cg_s_test
from interpret.influence.preconditioner import gradient_index_scores, inverse_damped, second_moment
from interpret.influence.projection import Projector
from interpret.influence.scoring import score_rows

CACHE = Path("artifacts/bench-gradient")
RECALL_AT = (10, 100)


def top_rows(scores: np.ndarray, rows: np.ndarray, m: int, side: str) -> np.ndarray:
    return rows[metrics.top_rows(scores, m, side)]


def recalls(reference: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> dict:
    """recall@m of (rows, scores) against the full reference, per side (``influence evaluate recall``'s)."""
    return metrics.top_lists_recall(reference, scores, rows, RECALL_AT)


def mean_of(dicts: list[dict]) -> dict:
    return {key: float(np.mean([d[key] for d in dicts])) for key in dicts[0]}


# ------------------------------------------------------------------------------------------ stages


def fresh(read, directory: Path, fingerprint: str) -> bool:
    try:
        return read(directory).model_fingerprint == fingerprint
    except IndexMismatchError:
        return False


def build_stage(args, engine) -> dict:
    fingerprint = engine.identity.model_fingerprint
    if not fresh(read_manifest, args.index, fingerprint):
        build_knn_index(engine, args.index)
    out = {}
    config = GradientIndexConfig(rank=args.rank)
    wanted = asdict(gradient_spec(engine, config))
    same_spec = fresh(read_gradient_manifest, args.gradient_index, fingerprint) and (
        read_gradient_manifest(args.gradient_index).spec == wanted
    )
    if not same_spec or args.rebuild:
        start = time.perf_counter()
        build_gradient_index(engine, args.gradient_index, config)
        out["build_seconds"] = time.perf_counter() - start
    else:
        out["build_seconds"] = float((CACHE / "build_seconds.txt").read_text())
    (CACHE / "build_seconds.txt").write_text(str(out["build_seconds"]))
    out["index_bytes"] = (args.gradient_index / "index.faiss").stat().st_size
    out["manifest"] = asdict(read_gradient_manifest(args.gradient_index))
    return out


def scaling_stage(engine, sizes: list[int]) -> list[dict]:
    """Seconds of the gradient pass (the built index's projection) over the first n rows, for each n."""
    explainer, out = engine.backend.explainer, []
    for n in sizes:
        start = time.perf_counter()
        explainer.gradient_shard(np.arange(n), engine.gradient_index.projection)
        seconds = time.perf_counter() - start
        out.append({"rows": n, "seconds": seconds, "seconds_per_1000_rows": 1000 * seconds / n})
        print(out[-1], flush=True)
    return out


def reference_s_tests(args, engine, queries: list[str]) -> tuple[np.ndarray, list[int], list[dict]]:
    """CG ``s_test`` of each query (cached), its label (the predicted one) and its CG report."""
    explainer = engine.backend.explainer
    vectors, labels, reports = [], [], []
    for q, text in enumerate(queries):
        path = CACHE / f"s_test_cg_{args.cg_rows}_{q}.npy"
        point = explainer.prepare(text, None, None)
        labels.append(point.label)
        if path.is_file():
            vectors.append(np.load(path))
            reports.append({"cached": True})
            continue
        v = torch.from_numpy(explainer.test_gradient(text, None, point.label))
        start = time.perf_counter()
        result = cg_s_test(
            explainer.tracked, explainer.theta, v, explainer.checkpoint.train, 5.0, args.cg_rows, 1e-4
        )
        seconds = time.perf_counter() - start
        report = {"residual": result.relative_residual, "iterations": result.iterations, "seconds": seconds}
        print(f"query {q}: CG {report}", flush=True)
        np.save(path, result.s_test.numpy())
        vectors.append(result.s_test.numpy())
        reports.append(report)
    return np.stack(vectors), labels, reports


def reference_scores(args, engine, s_tests: np.ndarray) -> tuple[np.ndarray, dict]:
    """``[Q, N]`` exact scores of every training row, from exact per-example gradients (cached)."""
    path = CACHE / f"reference_{args.cg_rows}_{len(s_tests)}.npy"
    explainer = engine.backend.explainer
    tracked, theta, train = explainer.tracked, explainer.theta, explainer.checkpoint.train
    exact = Projector(tracked, None, layer_norms=True, max_identity_dim=math.inf)
    arranged = torch.stack([exact.project_vector(torch.from_numpy(s)) for s in s_tests])
    check_rows = np.arange(0, len(train), len(train) // 16)[:16]
    if not path.is_file():
        scores = np.empty((len(s_tests), len(train)))
        start = time.perf_counter()
        for done, (positions, states, labels) in enumerate(train.iter_blocks(np.arange(len(train)), 32)):
            gradients = exact.gradients(theta, states, labels)
            scores[:, positions] = -(arranged @ gradients.T).double().numpy()
            if done % 200 == 0:
                print(f"reference scan: {done * 32} rows, {time.perf_counter() - start:.0f} s", flush=True)
        np.save(path, scores)
    scores = np.load(path)
    forward_mode = score_rows(tracked, theta, torch.from_numpy(s_tests[0]), train, check_rows)
    error = np.abs(scores[0, check_rows] - forward_mode).max() / np.abs(forward_mode).max()
    return scores, {"check_rows": len(check_rows), "max_relative_difference_vs_forward_mode": float(error)}


def gradient_quality(engine, index, queries, labels, reference) -> tuple[list[dict], np.ndarray]:
    """Recall and Spearman of the built index (its float32 vectors), per query."""
    explainer = engine.backend.explainer
    stored = torch.from_numpy(index.vectors())
    out, all_scores = [], []
    for q, text in enumerate(queries):
        test_gradient = torch.from_numpy(
            explainer.projected_test_gradient(text, None, labels[q], index.projection)
        )
        scores = gradient_index_scores(test_gradient, stored).numpy()
        all_scores.append(scores)
        rows = np.arange(len(scores))
        out.append(
            {**recalls(reference[q], scores, rows), "spearman_all": spearmanr(reference[q], scores)[0]}
        )
    return out, np.stack(all_scores)


def candidate_quality(engine, queries, reference, gradient_scores, seed: int = 0) -> dict:
    """Candidate sets scored with the reference ``s_test``: FastIF's kNN, random sets, and the
    gradient index's top 1,000 per side (what ``rerank=1000`` rescores: its recall with an exact
    ``s_test``, the ceiling of a LiSSA rerank)."""
    explainer, out = engine.backend.explainer, {}
    rng = np.random.default_rng(seed)
    per_side = []
    for q in range(len(queries)):
        rows = np.union1d(
            *(
                top_rows(gradient_scores[q], np.arange(reference.shape[1]), 1000, side)
                for side in ("helpful", "harmful")
            )
        )
        per_side.append(recalls(reference[q], reference[q][rows], rows))
    out["gradient_top1000_per_side"] = mean_of(per_side)
    for k in (1000, 10000):
        knn, random = [], []
        for q, text in enumerate(queries):
            features = explainer.prepare(text, None, None).features
            rows, _ = engine.index.search(features, k)
            knn.append(recalls(reference[q], reference[q][rows], rows))
            rows = rng.choice(reference.shape[1], k, replace=False)
            random.append(recalls(reference[q], reference[q][rows], rows))
        out[f"fastif_k{k}"], out[f"random_{k}"] = mean_of(knn), mean_of(random)
    return out


def rerank_quality(engine, queries, labels, reference, rerank: int = 1000) -> dict:
    """``rerank`` through the query pipeline (its default solver) on every query: recall of its answer."""
    per_query, seconds = [], []
    for q, text in enumerate(queries):
        config = QueryConfig(method="gradient", rerank=rerank, top=100)
        answer = answer_query(engine, text, None, labels[q], config)
        seconds.append(answer.timings["total"])
        per_query.append(recalls(reference[q], answer.candidate_scores, answer.candidate_rows))
        print(f"rerank query {q}: {answer.solver}, {seconds[-1]:.1f} s {per_query[-1]}", flush=True)
    return {"solver": answer.solver, "per_query": per_query, "seconds": seconds, **mean_of(per_query)}


def table_stage(engine, queries, labels, reference, rows: int, ranks: list[int]) -> list[dict]:
    """Projection kinds x ranks x preconditioners on the first ``rows`` training rows (reference restricted
    to them); ``kfac`` bases are fitted on the build's seeded 2,000-row sample of the whole set."""
    explainer, subset, out = engine.backend.explainer, np.arange(rows), []
    for kind in ("random", "kfac"):
        for rank in ranks:
            start = time.perf_counter()
            config = GradientIndexConfig(rank=rank, projection=kind)
            projection = fit_projection(engine, CACHE / f"table-{kind}-{rank}", config)
            fit_seconds = time.perf_counter() - start
            start = time.perf_counter()
            gradients = torch.from_numpy(explainer.gradient_shard(subset, projection))
            seconds = time.perf_counter() - start
            tests = [
                explainer.projected_test_gradient(t, None, labels[q], projection)
                for q, t in enumerate(queries)
            ]
            fisher = second_moment(gradients) / len(gradients)
            for name, curvature in (("identity", torch.zeros_like(fisher)), ("fisher", fisher)):
                inverse = inverse_damped(curvature, 5.0)
                per_query = []
                for q, test in enumerate(tests):
                    scores = -(gradients.double() @ (inverse @ torch.from_numpy(test).double())).numpy()
                    ref = reference[q][subset]
                    per_query.append(
                        {**recalls(ref, scores, subset), "spearman_all": spearmanr(ref, scores)[0]}
                    )
                row = {"projection": kind, "rank": rank, "dim": gradients.shape[1], "preconditioner": name}
                row |= {"rows": rows, "gradient_seconds": seconds, "fit_seconds": fit_seconds}
                row |= {"bytes_at_67349_rows": gradients.shape[1] * 4 * 67349}
                out.append(row | mean_of(per_query))
                print(out[-1], flush=True)
    return out


def layer_norm_share(engine, rows: int = 256) -> float:
    """Share of the squared gradient norm the index drops with the LayerNorms (exact per-example)."""
    explainer = engine.backend.explainer
    tracked, train = explainer.tracked, explainer.checkpoint.train
    exact = Projector(tracked, None, layer_norms=True, max_identity_dim=math.inf)
    linear = sum(slot.dim for slot in exact.slots)
    states, labels = train.load(np.arange(0, len(train), len(train) // rows)[:rows])
    gradients = exact.gradients(explainer.theta, states, labels)
    return float((gradients[:, linear:] ** 2).sum() / (gradients**2).sum())


# ------------------------------------------------------------------------------------------ REST


def serve(args) -> tuple[str, object]:
    import uvicorn

    from service.app import create_app
    from service.core import InfluenceService
    from service.settings import Settings

    settings = Settings(
        model_dir=args.model,
        index_dir=args.index,
        gradient_index_dir=args.gradient_index,
        max_in_flight=4,
        deadline_s=3600,
    )
    engine = local_engine(args.model, index_dir=args.index, gradient_index_dir=args.gradient_index)
    app = create_app(settings, InfluenceService(settings, engine))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    return f"http://127.0.0.1:{port}", server


def rest_stage(args, queries, reference) -> dict:
    from clients import InfluenceClient

    url, server = serve(args)
    # Each s_test-using run gets its own sentences: the service caches s_test per sentence, and
    # a run that reused another's sentences would time scoring alone.
    n = args.rest_queries
    runs = {
        "gradient": ({"method": "gradient"}, range(len(queries))),
        "fastif_k1000": ({"method": "fastif", "k": 1000}, range(n)),
        "gradient_rerank_1000": ({"method": "gradient", "rerank": 1000}, range(n, 2 * n)),
        "gradient_rerank_1000_lissa": (
            {"method": "gradient", "rerank": 1000, "solver": "lissa"},
            range(2 * n, 3 * n),
        ),
    }
    out = {}
    with InfluenceClient(url, timeout=3600) as client:
        client.influence(queries[0], top=100, method="gradient")  # warm-up: first-call costs
        for name, (options, picked) in runs.items():
            seconds, quality = [], []
            for q in picked:
                start = time.perf_counter()
                result = client.influence(queries[q], top=100, **options).results[0]
                seconds.append(time.perf_counter() - start)
                found = {
                    side: np.array([e.row for e in getattr(result, side)]) for side in ("helpful", "harmful")
                }
                quality.append(
                    {
                        f"recall_at_100_{s}": metrics.recall_at_m(found[s], reference[q], 100, s)
                        for s in ("helpful", "harmful")
                    }
                )
                print(f"REST {name} query {q}: {seconds[-1]:.2f} s {quality[-1]}", flush=True)
            out[name] = {
                "queries": list(picked),
                "p50_s": float(np.percentile(seconds, 50)),
                "p95_s": float(np.percentile(seconds, 95)),
                "seconds": seconds,
                **mean_of(quality),
            }
    server.should_exit = True
    return out


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path("artifacts/model"))
    parser.add_argument("--index", type=Path, default=Path("artifacts/index"))
    parser.add_argument("--gradient-index", type=Path, default=Path("artifacts/gradient-index"))
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--cg-rows", type=int, default=500)
    parser.add_argument("--rest-queries", type=int, default=4)
    parser.add_argument("--table-rows", type=int, default=8000)
    parser.add_argument(
        "--rank", type=int, default=GradientIndexConfig.default("rank"), help="of the full build"
    )
    parser.add_argument("--ranks", default="8,16,32", help="of the table; empty: keep the last run's table")
    parser.add_argument("--sizes", default="2000,8000")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 2))
    CACHE.mkdir(parents=True, exist_ok=True)
    engine = local_engine(args.model)
    dev = load_examples(sst2_spec("dev"))
    picks = np.sort(np.random.default_rng(0).choice(len(dev), args.queries, replace=False))
    queries = [dev.texts[i] for i in picks]

    build = build_stage(args, engine)
    print({k: v for k, v in build.items() if k != "manifest"}, flush=True)
    engine = local_engine(args.model, index_dir=args.index, gradient_index_dir=args.gradient_index)
    scaling = scaling_stage(engine, [int(n) for n in args.sizes.split(",")])
    scaling.append(
        {"rows": 67349, "seconds": build["build_seconds"], "note": "the whole build, fit and write"}
    )
    s_tests, labels, cg_reports = reference_s_tests(args, engine, queries)
    reference, check = reference_scores(args, engine, s_tests)
    per_query, gradient_scores = gradient_quality(engine, engine.gradient_index, queries, labels, reference)
    gradient = mean_of(per_query)
    candidates = candidate_quality(engine, queries, reference, gradient_scores)
    reranked = rerank_quality(engine, queries, labels, reference)
    if args.ranks:
        ranks = [int(r) for r in args.ranks.split(",")]
        table = table_stage(engine, queries, labels, reference, args.table_rows, ranks)
    else:  # measured by an earlier run on the same reference (its cache): kept as it was
        table = json.loads((RESULTS / "gradient_index.json").read_text())["table_rank_x_preconditioner"]
    norm_share = layer_norm_share(engine)
    rest = rest_stage(args, queries, reference)
    fidelity = {
        "recall_at_100_helpful": gradient["recall_at_100_helpful"],
        "recall_at_100_harmful": gradient["recall_at_100_harmful"],
        "spearman_all": gradient["spearman_all"],
        "recall_at_100_helpful_rerank_1000": reranked["recall_at_100_helpful"],
        "recall_at_100_harmful_rerank_1000": reranked["recall_at_100_harmful"],
        "reference": f"CG s_test (M={args.cg_rows}, residual 1e-4), exact full scan, {len(queries)} "
        "SST-2 dev sentences: benchmarks/results/gradient_index.json",
    }
    record_fidelity(args.gradient_index, fidelity)
    summary = {
        "gradient_query_p50_s": rest["gradient"]["p50_s"],
        "gradient_rerank_query_p50_s": rest["gradient_rerank_1000"]["p50_s"],
        "fastif_query_p50_s": rest["fastif_k1000"]["p50_s"],
        "recall_at_100_helpful": gradient["recall_at_100_helpful"],
        "recall_at_100_harmful": gradient["recall_at_100_harmful"],
        "recall_at_100_helpful_rerank": reranked["recall_at_100_helpful"],
        "recall_at_100_harmful_rerank": reranked["recall_at_100_harmful"],
        "fastif_recall_at_100_helpful": candidates["fastif_k1000"]["recall_at_100_helpful"],
        "fastif_recall_at_100_harmful": candidates["fastif_k1000"]["recall_at_100_harmful"],
        "spearman_all": gradient["spearman_all"],
        "build_seconds": build["build_seconds"],
        "index_bytes": build["index_bytes"],
        "num_queries": len(queries),
    }
    write_result(
        "gradient_index",
        {
            "command": "python benchmarks/gradient_index.py " + " ".join(sys.argv[1:]),
            "summary": summary,
            "speedup_gradient_vs_fastif_p50": rest["fastif_k1000"]["p50_s"] / rest["gradient"]["p50_s"],
            "build": build,
            "build_scaling": scaling,
            "reference": {
                "cg_rows": args.cg_rows,
                "damping": 5.0,
                "tolerance": 1e-4,
                "cg": cg_reports,
                "scan_check": check,
                "queries": queries,
                "labels": labels,
            },
            "gradient": {"mean": gradient, "per_query": per_query},
            "candidate_sets_scored_with_reference_s_test": candidates,
            "rerank_1000_all_queries": reranked,
            "rest": rest,
            "table_rank_x_preconditioner": table,
            "layer_norm_share_of_squared_gradient_norm": norm_share,
            "default_config": GradientIndexConfig().model_dump(),
            "query_default": QueryConfig().model_dump(),
        },
    )


if __name__ == "__main__":
    main()
