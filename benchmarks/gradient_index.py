"""The gradient index on full SST-2 against a converged full scan, and its query latency through REST.

    python benchmarks/gradient_index.py [--queries 20] [--cg-rows 500] [--rest-queries 4] [--table-rows 8000]
        [--rank 16] [--grid-rank 64] [--coordinates N]   # the index measured: by default rank
                                        # 16's width chosen from rank-64 grids (--grid-rank 16: uniform)
    python benchmarks/gradient_index.py --only rerank|curvature   # one part again, the rest kept

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
   The rerank sweep: the ``index`` solver's rerank at K = 150, ``FAST_RERANK`` (250), 500 and 1000 from one
   scoring of the top 1000 per side, and a second CG reference (other seeded rows) scored on the same rows:
   how far the reference agrees with itself. ``table_curvature``: damping, per-layer ranks by gradient-norm
   share and a Fisher over a wider subspace, at today's bytes per row, all cut from one rank-64 pass.
4. **REST**: one in-process server on loopback answers ``gradient`` (all queries), ``gradient`` with
   ``rerank=1000`` (default solver: the index's curvature; and with ``solver=lissa``) and ``fastif``
   (k=1,000, the default LiSSA preset) for ``--rest-queries`` queries each, and the fast rerank
   (``rerank=250``) for twice as many (different sentences, so none finds another's ``s_test`` in the
   service's cache), side by side; recall@100 of each answer is read from its reply.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
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
from interpret.config import FAST_RERANK, GradientIndexConfig, QueryConfig
from interpret.data import load_examples, sst2_spec
from interpret.influence import metrics
from interpret.influence.cg import cg_rows, cg_s_test
from interpret.influence.preconditioner import gradient_index_scores, inverse_damped, second_moment
from interpret.influence.projection import Projector
from interpret.influence.scoring import score_rows

CACHE = Path("artifacts/bench-gradient")
RECALL_AT = (10, 100)
RERANK_SWEEP = (150, FAST_RERANK, 500, 1000)
"""The K of each side that the rerank sweep rescores (``rerank_sweep``)."""
AGREEMENT_SEED = 1
"""The seed of the second CG reference's rows (the first's is 0): an equally good reference."""


def top_rows(scores: np.ndarray, rows: np.ndarray, m: int, side: str) -> np.ndarray:
    return rows[metrics.top_rows(scores, m, side)]


def recalls(reference: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> dict:
    """recall@m of (rows, scores) against the full reference, per side (``influence evaluate recall``'s)."""
    return metrics.top_lists_recall(reference, scores, rows, RECALL_AT)


def mean_of(dicts: list[dict]) -> dict:
    return {key: float(np.mean([d[key] for d in dicts])) for key in dicts[0]}


def candidate_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """The rows of the top ``k`` of each side of one query's scores over every row: what ``rerank=k``
    rescores."""
    every = np.arange(len(scores))
    return np.union1d(*(top_rows(scores, every, k, side) for side in ("helpful", "harmful")))


# ------------------------------------------------------------------------------------------ stages


def fresh(read, directory: Path, fingerprint: str) -> bool:
    try:
        return read(directory).model_fingerprint == fingerprint
    except IndexMismatchError:
        return False


def forget_another_models_cache(fingerprint: str) -> None:
    """Empty ``CACHE`` when another model filled it (its ``s_test``, reference scores and build seconds are
    that model's; the cache's file names do not say which), then mark it as this model's."""
    marker = CACHE / "model_fingerprint.txt"
    if CACHE.is_dir() and (not marker.is_file() or marker.read_text() != fingerprint):
        print(f"{CACHE}: another model's cache, emptied", flush=True)
        shutil.rmtree(CACHE)
    CACHE.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)


def build_stage(args, engine) -> dict:
    fingerprint = engine.identity.model_fingerprint
    if not fresh(read_manifest, args.index, fingerprint):
        build_knn_index(engine, args.index)
    out = {}
    config = GradientIndexConfig(rank=args.rank, grid_rank=args.grid_rank, coordinates=args.coordinates)
    wanted = asdict(gradient_spec(engine, config))
    same_spec = fresh(read_gradient_manifest, args.gradient_index, fingerprint) and (
        read_gradient_manifest(args.gradient_index).spec == wanted
    )
    if not same_spec or args.rebuild or not (CACHE / "build_seconds.txt").is_file():  # timed, or rebuilt
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


def reference_s_tests(
    args, engine, queries: list[str], seed: int = 0
) -> tuple[np.ndarray, list[int], list[dict]]:
    """CG ``s_test`` of each query over ``args.cg_rows`` rows drawn with ``seed`` (cached), its label (the
    predicted one) and its CG report."""
    explainer = engine.backend.explainer
    vectors, labels, reports = [], [], []
    for q, text in enumerate(queries):
        seeded = "" if seed == 0 else f"seed{seed}_"
        path = CACHE / f"s_test_cg_{args.cg_rows}_{seeded}{q}.npy"
        point = explainer.prepare(text, None, None)
        labels.append(point.label)
        if path.is_file():
            vectors.append(np.load(path))
            reports.append({"cached": True})
            continue
        v = torch.from_numpy(explainer.test_gradient(text, None, point.label))
        start = time.perf_counter()
        train = explainer.checkpoint.train
        result = cg_s_test(explainer.tracked, explainer.theta, v, train, 5.0, args.cg_rows, 1e-4, seed=seed)
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
        rows = candidate_rows(gradient_scores[q], 1000)
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


def rerank_sweep(engine, queries, labels, reference, gradient_scores, second: np.ndarray) -> dict:
    """The exact rerank (the ``index`` solver's ``s_test``, each candidate's exact gradient) at each K of
    ``RERANK_SWEEP``, from one scoring of the index's top ``max(K)`` rows per side: a smaller K rescores a
    subset of the same rows with the same scores, as a query with that K does.

    ``second`` (a CG reference over other seeded rows, as good as the first) is scored on the same rows:
    its recall against the first is how far the reference agrees with itself, the most any method can
    show against it (on these rows; a full scan could only find it more rows to miss)."""
    explainer = engine.backend.explainer
    curvature, train = engine.gradient_index.curvature, explainer.checkpoint.train
    per_k: dict[int, list[dict]] = {k: [] for k in RERANK_SWEEP}
    agreement = []
    for q, text in enumerate(queries):
        rows = candidate_rows(gradient_scores[q], max(RERANK_SWEEP))
        index_s = explainer.index_solve(
            text, None, labels[q], curvature.projection, curvature.inverse, curvature.damping
        )
        s_tests = torch.from_numpy(np.stack([index_s, second[q]])).to(explainer.theta.dtype)
        scores = score_rows(explainer.tracked, explainer.theta, s_tests, train, rows)
        for k in RERANK_SWEEP:
            keep = np.isin(rows, candidate_rows(gradient_scores[q], k))
            per_k[k].append(recalls(reference[q], scores[0][keep], rows[keep]))
        agreement.append(recalls(reference[q], scores[1], rows))
        print(f"sweep query {q}: {per_k[FAST_RERANK][-1]} agreement {agreement[-1]}", flush=True)
    return {
        "solver": "index",
        "recall_by_k": {str(k): mean_of(found) for k, found in per_k.items()},
        "reference_agreement": mean_of(agreement) | {"rows": f"the index's top {max(RERANK_SWEEP)} per side"},
    }


def candidate_overlap(gradient_scores: np.ndarray, k: int) -> dict:
    """How much the queries' ``rerank=k`` candidates overlap, in query order: the share of each query's
    candidates that an earlier query had already scored (what the frozen cache can serve), and the distinct
    rows all of them touched."""
    seen: set[int] = set()
    shares = []
    for scores in gradient_scores:
        rows = set(candidate_rows(scores, k).tolist())
        shares.append(len(rows & seen) / len(rows))
        seen |= rows
    return {"k": k, "seen_before_share": shares, "distinct_rows": len(seen)}


def table_stage(engine, queries, labels, reference, rows: int, ranks: list[int]) -> list[dict]:
    """Projection kinds x ranks x preconditioners on the first ``rows`` training rows (reference restricted
    to them); ``kfac`` bases are fitted on the build's seeded 2,000-row sample of the whole set."""
    explainer, subset, out = engine.backend.explainer, np.arange(rows), []
    for kind in ("random", "kfac"):
        for rank in ranks:
            start = time.perf_counter()
            uniform = rank if kind == "kfac" else None  # every coordinate of rank x rank grids
            config = GradientIndexConfig(rank=rank, projection=kind, grid_rank=uniform)
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


def nested_coordinates(projector: Projector, ranks: list[int]) -> np.ndarray:
    """The coordinates of a wide ``kfac`` projection that hold a narrower one with rank ``ranks[l]`` on
    layer ``l``: its first ``k`` out and in directions. ``kfac`` bases are nested (each side's top-k
    eigenvectors of the same factor), so a narrower index is a sub-grid of a wider one's gradients; a side
    the wide projection keeps whole must be narrower than every rank asked for (MiniLM's classifier output,
    2 wide)."""
    out, start = [], 0
    for slot, rank in zip(projector.slots, ranks, strict=True):
        k_out, k_in = min(rank, slot.k_out), min(rank, slot.k_in)
        out.append((start + np.arange(k_out)[:, None] * slot.k_in + np.arange(k_in)[None, :]).ravel())
        start += slot.dim
    return np.concatenate(out)


def share_ranks(projector: Projector, gradients: torch.Tensor, dim: int, power: float, top: int) -> list[int]:
    """Per-layer ranks whose dims ``k^2`` follow each layer's share of the squared gradient norm raised to
    ``power`` (1: in proportion; 0.5: flatter), adding up to about ``dim``, each in ``[1, top]``."""
    start, shares = 0, []
    for slot in projector.slots:
        shares.append(float((gradients[:, start : start + slot.dim].double() ** 2).sum()))
        start += slot.dim
    weights = np.array(shares) ** power
    return [int(k) for k in np.clip(np.round(np.sqrt(dim * weights / weights.sum())), 1, top)]


def top_grid_coordinates(projector, gradients, width: int) -> np.ndarray:
    """The coordinates of a wide ``kfac`` projection's gradients ``[N, D]`` (the fit rows) that the product
    keeps with ``coordinates=width`` at that rank: ``top_coordinates`` of each layer's grid, offset to the
    layer's place in ``D``."""
    from interpret.influence.projection import KEEP_SUFFIX, top_coordinates

    moments = (gradients.double() ** 2).mean(0).numpy()
    kept = top_coordinates(moments, {slot.name: slot.dim for slot in projector.slots}, width)
    starts = np.cumsum([0, *(slot.dim for slot in projector.slots)])
    return np.concatenate(
        [start + kept[slot.name + KEEP_SUFFIX] for slot, start in zip(projector.slots, starts, strict=False)]
    )


def curvature_table(engine, queries, labels, reference, rows: int, wide: int = 64) -> list[dict]:
    """Index-alone quality on the first ``rows`` rows (reference restricted to them) for projections and
    curvatures at about today's bytes per row, all cut from one rank-``wide`` ``kfac`` pass:

    * ``uniform``: every layer at one rank (16 is today's index), with the damping swept;
    * ``share``: per-layer ranks by each layer's share of the squared gradient norm (``share_ranks``), the
      same total dim as rank 16;
    * ``wider Fisher``: the Fisher and its inverse taken in the rank-32 subspace, the stored vector
      ``[(F_32 + damping I)^-1 g~_32]`` kept only on the rank-16 coordinates (today's bytes): the test
      gradient's rank-16 part meets a curvature that saw the wider subspace;
    * ``top``: the rank-``wide`` grid coordinates of largest second moment over the product's fit sample
      (``GradientIndexConfig.coordinates``), at today's width (float32: today's bytes) and twice it
      (float16: today's bytes)."""
    explainer = engine.backend.explainer
    whole = GradientIndexConfig(rank=wide, grid_rank=wide)
    projection = fit_projection(engine, CACHE / f"table-kfac-{wide}", whole)
    projector = explainer.projector(projection)
    subset = np.arange(rows)
    gradients = torch.from_numpy(explainer.gradient_shard(subset, projection))
    tests = torch.stack(
        [
            torch.from_numpy(explainer.projected_test_gradient(t, None, labels[q], projection))
            for q, t in enumerate(queries)
        ]
    ).double()
    layers = len(projector.slots)
    base = nested_coordinates(projector, [16] * layers)

    inverses: dict[tuple[bytes, float], torch.Tensor] = {}  # rank 32's is 13,376 wide: solved once

    def measured(
        name: str, keep: np.ndarray, damping: float, fisher_on: np.ndarray | None = None, value_bytes: int = 4
    ) -> dict:
        wider = keep if fisher_on is None else fisher_on
        block = gradients[:, wider].double()
        key = (wider.tobytes(), damping)
        if key not in inverses:
            inverses[key] = inverse_damped(second_moment(block) / len(block), damping)
        inverse = inverses[key]
        position = torch.from_numpy(np.searchsorted(wider, keep)) if fisher_on is not None else None
        per_query = []
        for q in range(len(queries)):
            test = tests[q, keep]
            solved = inverse @ test if position is None else inverse[:, position] @ test
            scores = -(block @ solved).numpy()
            ref = reference[q][subset]
            per_query.append({**recalls(ref, scores, subset), "spearman_all": spearmanr(ref, scores)[0]})
        row = {
            "variant": name,
            "dim": len(keep),
            "bytes_per_row": value_bytes * len(keep),
            "damping": damping,
        }
        print(row | mean_of(per_query), flush=True)
        return row | mean_of(per_query)

    out = [measured("uniform rank 16", base, damping) for damping in (1.0, 2.0, 5.0, 10.0, 20.0)]
    for power in (1.0, 0.5):
        ranks = share_ranks(projector, gradients, len(base), power, wide)
        keep = nested_coordinates(projector, ranks)
        out.append(measured(f"share^{power} ranks {ranks}", keep, 5.0))
    wider = nested_coordinates(projector, [32] * layers)
    out.append(measured("wider Fisher (rank 32), rank 16 stored", np.sort(base), 5.0, fisher_on=wider))
    out.append(measured("uniform rank 32 (4x bytes)", wider, 5.0))
    fit = cg_rows(engine.num_examples, GradientIndexConfig().fit_rows, GradientIndexConfig().seed)
    fitted = torch.from_numpy(explainer.gradient_shard(fit, projection))  # the product's fit sample
    for multiple, value_bytes, storage in ((1, 4, ""), (2, 2, ", float16")):
        width = multiple * len(base)
        keep = top_grid_coordinates(projector, fitted, width)
        out.append(measured(f"top {width} of rank {wide}{storage}", keep, 5.0, value_bytes=value_bytes))
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

    index = args.index if args.index.is_dir() else None  # --only builds no kNN index
    settings = Settings(
        model_dir=args.model,
        index_dir=index,
        gradient_index_dir=args.gradient_index,
        max_in_flight=4,
        deadline_s=3600,
    )
    engine = local_engine(args.model, index_dir=index, gradient_index_dir=args.gradient_index)
    app = create_app(settings, InfluenceService(settings, engine))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    return f"http://127.0.0.1:{port}", server


def rest_stage(args, queries, reference, only: tuple[str, ...] | None = None) -> dict:
    """Each run's p50 / p95 seconds through REST and the recall@100 of its answers (``only``: those runs)."""
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
        "gradient_rerank_fast": ({"method": "gradient", "rerank": FAST_RERANK}, range(3 * n, 5 * n)),
    }
    runs = {name: run for name, run in runs.items() if only is None or name in only}
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
    parser.add_argument(
        "--grid-rank",
        type=int,
        default=GradientIndexConfig.default("grid_rank"),
        help="of the full build: the eigenbasis grids its coordinates are chosen from (--rank: uniform)",
    )
    parser.add_argument(
        "--coordinates",
        type=int,
        default=GradientIndexConfig.default("coordinates"),
        help="of the full build: keep exactly this many grid coordinates instead of --rank's width",
    )
    parser.add_argument("--ranks", default="8,16,32", help="of the table; empty: keep the last run's table")
    parser.add_argument("--sizes", default="2000,8000")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument(
        "--only",
        choices=("rerank", "curvature"),
        help="measure one part again and keep the rest of the last full run (same index): rerank (the "
        "index alone, the reranks, the reference's agreement, REST's gradient runs) or curvature (its table)",
    )
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 2))
    engine = local_engine(args.model)
    forget_another_models_cache(engine.identity.model_fingerprint)
    dev = load_examples(sst2_spec("dev"))
    picks = np.sort(np.random.default_rng(0).choice(len(dev), args.queries, replace=False))
    queries = [dev.texts[i] for i in picks]

    previous = json.loads((RESULTS / "gradient_index.json").read_text()) if args.only else None
    if previous is None:
        build = build_stage(args, engine)
        print({k: v for k, v in build.items() if k != "manifest"}, flush=True)
    else:  # the index must be the one measured before: same model and spec
        build = previous["build"]
        if read_gradient_manifest(args.gradient_index).spec != build["manifest"]["spec"]:
            raise SystemExit("--only needs the index of the last full run: run without it")
    knn = args.index if previous is None else None
    engine = local_engine(args.model, index_dir=knn, gradient_index_dir=args.gradient_index)
    s_tests, labels, cg_reports = reference_s_tests(args, engine, queries)
    reference, check = reference_scores(args, engine, s_tests)
    result = dict(previous or {}) | {
        "command": "python benchmarks/gradient_index.py " + " ".join(sys.argv[1:]),
        "build": build,
    }
    if previous is not None:  # what this run did not measure is the last full run's
        result["kept_from"] = previous.get("kept_from", previous["command"])
    if args.only in (None, "rerank"):
        result |= rerank_parts(args, engine, queries, labels, reference, previous)
        result["reference"] = {
            "cg_rows": args.cg_rows,
            "damping": 5.0,
            "tolerance": 1e-4,
            "cg": cg_reports,
            "scan_check": check,
            "queries": queries,
            "labels": labels,
        }
    if previous is None:
        scaling = scaling_stage(engine, [int(n) for n in args.sizes.split(",")])
        scaling.append(
            {"rows": 67349, "seconds": build["build_seconds"], "note": "the whole build, fit and write"}
        )
        result["build_scaling"] = scaling
        if args.ranks:
            ranks = [int(r) for r in args.ranks.split(",")]
            table = table_stage(engine, queries, labels, reference, args.table_rows, ranks)
            result["table_rank_x_preconditioner"] = table
        result["layer_norm_share_of_squared_gradient_norm"] = layer_norm_share(engine)
    if args.only in (None, "curvature"):
        result["table_curvature"] = curvature_table(engine, queries, labels, reference, args.table_rows)
    result["default_config"] = GradientIndexConfig().model_dump()
    result["query_default"] = QueryConfig().model_dump()
    record_fidelity(args.gradient_index, fidelity(args, result))
    result["summary"] = summary(result, len(queries))
    write_result("gradient_index", {k: v for k, v in result.items() if k not in BENCHMARK_HEADER})


BENCHMARK_HEADER = ("benchmark", "created_at", "environment")
"""Keys ``write_result`` sets itself."""


def rerank_parts(args, engine, queries, labels, reference, previous: dict | None) -> dict:
    """The index alone, the reranks (the sweep over K, ``FAST_RERANK`` and 1000 through the pipeline), the
    reference's agreement with a second one, the candidate sets, and the REST runs (with ``previous``, only
    the gradient runs are measured again: kNN and LiSSA's are kept)."""
    second, _, _ = reference_s_tests(args, engine, queries, seed=AGREEMENT_SEED)
    per_query, gradient_scores = gradient_quality(engine, engine.gradient_index, queries, labels, reference)
    out = {"gradient": {"mean": mean_of(per_query), "per_query": per_query}}
    out["rerank_sweep"] = rerank_sweep(engine, queries, labels, reference, gradient_scores, second)
    out["candidate_overlap"] = candidate_overlap(gradient_scores, FAST_RERANK)
    out[f"rerank_{FAST_RERANK}_all_queries"] = rerank_quality(
        engine, queries, labels, reference, rerank=FAST_RERANK
    )
    if previous is None:
        out["candidate_sets_scored_with_reference_s_test"] = candidate_quality(
            engine, queries, reference, gradient_scores
        )
        out["rerank_1000_all_queries"] = rerank_quality(engine, queries, labels, reference)
        out["rest"] = rest = rest_stage(args, queries, reference)
        out["speedup_gradient_vs_fastif_p50"] = rest["fastif_k1000"]["p50_s"] / rest["gradient"]["p50_s"]
    else:  # the speed-up stays the full run's: a ratio is taken within one run
        again = ("gradient", "gradient_rerank_1000", "gradient_rerank_fast")
        out["rest"] = previous["rest"] | rest_stage(args, queries, reference, only=again)
        out["rerank_1000_all_queries"] = previous["rerank_1000_all_queries"]
    return out


def fidelity(args, result: dict) -> dict:
    """What the index's manifest records of its measured quality (queries report it)."""
    gradient, fast = result["gradient"]["mean"], result[f"rerank_{FAST_RERANK}_all_queries"]
    reranked = result["rerank_1000_all_queries"]
    return {
        "recall_at_100_helpful": gradient["recall_at_100_helpful"],
        "recall_at_100_harmful": gradient["recall_at_100_harmful"],
        "spearman_all": gradient["spearman_all"],
        "recall_at_100_helpful_rerank_1000": reranked["recall_at_100_helpful"],
        "recall_at_100_harmful_rerank_1000": reranked["recall_at_100_harmful"],
        f"recall_at_100_helpful_rerank_{FAST_RERANK}": fast["recall_at_100_helpful"],
        f"recall_at_100_harmful_rerank_{FAST_RERANK}": fast["recall_at_100_harmful"],
        "reference": f"CG s_test (M={args.cg_rows}, residual 1e-4), exact full scan, "
        f"{len(result['reference']['queries'])} SST-2 dev sentences: benchmarks/results/gradient_index.json",
    }


def summary(result: dict, num_queries: int) -> dict:
    """The headline numbers (issue 26's names among them)."""
    rest, gradient = result["rest"], result["gradient"]["mean"]
    fast, reranked = result[f"rerank_{FAST_RERANK}_all_queries"], result["rerank_1000_all_queries"]
    fastif = result["candidate_sets_scored_with_reference_s_test"]["fastif_k1000"]
    return {
        "gradient_query_p50_s": rest["gradient"]["p50_s"],
        "gradient_rerank_query_p50_s": rest["gradient_rerank_1000"]["p50_s"],
        "gradient_rerank_fast_query_p50_s": rest["gradient_rerank_fast"]["p50_s"],
        "fastif_query_p50_s": rest["fastif_k1000"]["p50_s"],
        "recall_at_100_helpful": gradient["recall_at_100_helpful"],
        "recall_at_100_harmful": gradient["recall_at_100_harmful"],
        "recall_at_100_helpful_rerank": reranked["recall_at_100_helpful"],
        "recall_at_100_harmful_rerank": reranked["recall_at_100_harmful"],
        "recall_at_100_helpful_rerank_fast": fast["recall_at_100_helpful"],
        "recall_at_100_harmful_rerank_fast": fast["recall_at_100_harmful"],
        "fastif_recall_at_100_helpful": fastif["recall_at_100_helpful"],
        "fastif_recall_at_100_harmful": fastif["recall_at_100_harmful"],
        "spearman_all": gradient["spearman_all"],
        "build_seconds": result["build"]["build_seconds"],
        "index_bytes": result["build"]["index_bytes"],
        "num_queries": num_queries,
    }


if __name__ == "__main__":
    main()
