"""The exact influence of every training row on a small binary classifier, at every damping at once, from
one Gram matrix of unprojected gradients: what the gradient index approximates, with nothing projected.

A softmax classifier's per-example gradients on two classes are multiples of one vector. With
``g_zc = J_z^T (p_z - e_c)`` the gradient of row ``z``'s cross-entropy under label ``c`` and
``u_z = g_z1 - g_z0 = J_z^T (e_0 - e_1)``:

    g_z0 = -p_z1 u_z,   g_z1 = p_z0 u_z,   so   g_zy = a_z u_z  with  a_z = p_z0 if y = 1 else -p_z1.

So both curvatures over the ``M`` training rows are rank-one sums of the ``u_z``:

* the Gauss-Newton matrix (a softmax cross-entropy's true Fisher) ``G = (1/M) sum_z p_z0 p_z1 u_z u_z^T``;
* the empirical Fisher (the index's curvature, there projected) ``F = (1/M) sum_z a_z^2 u_z u_z^T``.

Either is ``C = W^T W`` with ``W = diag(sqrt(w / M)) U`` and weights ``w``, and by Woodbury

    (C + d I)^-1 v = (v - W^T (W W^T + d I)^-1 W v) / d.

Every vector involved is a multiple of some ``u``, so with ``K = U U^T`` over the training rows and test
points and ``S = diag(sqrt(w / M))``, the influence of row ``z`` on test point ``t`` is

    I(z, t) = -g_z . (C + d I)^-1 g_t = -(a_z a_t / d) (K_zt - K_zn S (S K_nn S + d I)^-1 S K_nt),

and one eigendecomposition ``S K_nn S = E diag(l) E^T`` serves every damping:
``(S K_nn S + d I)^-1 = E diag(1 / (l + d)) E^T``.

    python benchmarks/exact_curvature.py [--points 50] [--subsets 100] [--hessian-points 20]

On the LDS model of ``benchmarks/evaluate.py`` (MiniLM on 2,000 SST-2 rows, default tracked set, 3.7M
parameters) and its cached retrains: ``u`` of every training row and of the ``peers`` part's selection and
held-out dev points (true labels), each the difference of two exact per-example gradients (the unprojected
projector with LayerNorms, as ``gradient_index.py``'s reference scan), written to a float32 file on disk
(about 31 GB, deleted once the Gram is summed from it in column chunks; the Gram is cached). Then, for
each curvature and damping: the LDS of the exact influence, and the recall@100 (helpful, harmful) and
Spearman of the gradient index, at its default damping and at the LDS-best 0.1 of the ``peers`` sweep,
against the exact influence of the same damping, and of the ``projections`` part's variants (per-layer
ranks, rank 32, and the ``top`` ones: the rank-64 grid coordinates of largest second moment, at today's
width and twice it, the first checked against the product's own index built with ``coordinates``)
likewise, with the LDS of the ``top`` variant at today's width; and the exact influence with the
curvature summed over 250, 500 or 1,000 sampled rows against the one over every row and against a second
sample (how much a sampled reference, like ``gradient_index.py``'s, moves the answer).

The fast rerank (the ``index`` solver's ``s_test``, exact gradients of the index's top ``FAST_RERANK`` rows
per side) against the same exact influence (``rerank_scores``: every row's rerank score from the Gram and
the projected gradients, checked against the product's own query on a few points), and all of them against
the exact Hessian on ``--hessian-points`` selection points: ``(H + 5 I)^-1 g_t`` by CG over every training
row (no sampled rows; about 200 s a point, cached), every row scored in forward mode. The caches live in
``artifacts/evaluate-small/exact/<model fingerprint>/``. ``exact_curvature.json``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result
from interpret.config import GradientIndexConfig

UNIFORM = f"uniform {GradientIndexConfig().rank}"
"""The uniform variant: every coordinate of the default rank's grids (the default index before the ``top``
coordinates; the ``projections`` part's name for it)."""

DAMPINGS = (0.1, 1.0, 5.0)
"""The exact influence's dampings: the index's LDS-best (``lds_peers.json``), one between, its default."""
RERANK_CHECK_POINTS = 3
"""Points on which ``rerank_scores`` is checked against the product's own fast rerank (about 2 s each)."""
CHUNK_COLUMNS = 100_000
"""Coordinates of ``U`` read at once while the Gram is summed (float32 products over this many terms,
accumulated in float64)."""


def woodbury_scores(
    gram: np.ndarray,
    train_coefficients: np.ndarray,
    test_coefficients: np.ndarray,
    weights: np.ndarray,
    dampings: list[float],
    curvature_rows: np.ndarray | None = None,
) -> dict[float, np.ndarray]:
    """``I(z, t) = -g_z . (C + d I)^-1 g_t`` for every training row ``z`` and test point ``t`` and each
    damping ``d``, from the Gram ``K = U U^T`` (``[N + T, N + T]``, the ``N`` training rows first) of the
    vectors ``u`` that every gradient is a multiple of (``g = a u``, ``a`` in ``train_coefficients [N]`` and
    ``test_coefficients [T]``), with ``C = (1/M) sum_m w_m u_m u_m^T`` over the ``M`` training rows
    ``curvature_rows`` (all by default; ``weights [N]``):

        I(z, t) = -(a_z a_t / d) (K_zt - K_zM S (S K_MM S + d I)^-1 S K_Mt),   S = diag(sqrt(w_M / M)).

    Returns ``{d: [T, N]}`` in float64 (positive: the row raises the test loss)."""
    n = len(train_coefficients)
    rows = np.arange(n) if curvature_rows is None else np.asarray(curvature_rows)
    gram = np.asarray(gram, dtype=np.float64)
    scale = np.sqrt(np.asarray(weights, dtype=np.float64)[rows] / len(rows))
    inner = scale[:, None] * gram[np.ix_(rows, rows)] * scale[None, :]
    eigenvalues, vectors = np.linalg.eigh(0.5 * (inner + inner.T))
    left = vectors.T @ (scale[:, None] * gram[rows, n:])  # E^T S K_Mt   [M, T]
    out = {}
    for damping in dampings:
        if not damping > 0:
            raise ValueError(f"damping must be > 0, got {damping!r}")
        correction = gram[:n, rows] @ (scale[:, None] * (vectors @ (left / (eigenvalues + damping)[:, None])))
        solved = (gram[:n, n:] - correction) / damping  # [N, T]: u_z . (C + d I)^-1 u_t
        out[damping] = -(np.outer(test_coefficients, train_coefficients) * solved.T)
    return out


def coefficients(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``a`` with ``g_y = a u`` (``u = g_1 - g_0``): ``p_0`` for label 1, ``-p_1`` for label 0."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return np.where(np.asarray(labels) == 1, probabilities[:, 0], -probabilities[:, 1])


def curvature_weights(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row weights ``w`` of the two curvatures as sums of ``w_z u_z u_z^T``: Gauss-Newton
    ``p_0 p_1`` and the empirical Fisher ``a^2``."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return {
        "gauss_newton": probabilities[:, 0] * probabilities[:, 1],
        "empirical_fisher": coefficients(probabilities, labels) ** 2,
    }


def write_directions(exact, theta, blocks, out: np.ndarray) -> tuple[np.ndarray, float]:
    """Write ``u = g_1 - g_0`` of every row of ``blocks`` (``(positions, state)``, positions into ``out``'s
    rows) into ``out`` and return the rows' class probabilities ``[R, 2]``, with the largest relative
    difference between ``g_1`` and ``p_0 u`` (the identity above, checked on real gradients)."""
    import torch

    probabilities = np.empty((len(out), 2))
    worst = 0.0
    for positions, state in blocks:
        ones = torch.ones(len(positions), dtype=torch.long)
        gradient_one = exact.gradients(theta, state, ones)
        direction = gradient_one - exact.gradients(theta, state, torch.zeros_like(ones))
        with torch.no_grad():
            p = torch.softmax(exact.tracked.logits(theta, state).double(), dim=-1)
        expected = p[:, :1].to(direction.dtype) * direction
        worst = max(worst, float(((gradient_one - expected).norm(dim=1) / gradient_one.norm(dim=1)).max()))
        out[positions] = direction.numpy()
        probabilities[positions] = p.numpy()
    return probabilities, worst


def gram_of(directions: np.ndarray) -> np.ndarray:
    """``K = U U^T`` (float64) of a ``[R, D]`` float32 array read in ``CHUNK_COLUMNS`` column chunks."""
    gram = np.zeros((len(directions), len(directions)))
    for start in range(0, directions.shape[1], CHUNK_COLUMNS):
        chunk = np.ascontiguousarray(directions[:, start : start + CHUNK_COLUMNS])
        gram += (chunk @ chunk.T).astype(np.float64)
    return gram


def rerank_scores(inner: np.ndarray, gradients, tests, damping: float) -> np.ndarray:
    """The ``index`` solver's rerank of every row, exact gradients against ``s_t`` of
    ``interpret.influence.preconditioner.subspace_s_test``
    (``s_t = g_t / d + R^T ((C + d I)^-1 - I / d) R g_t``):

        -g_z . s_t = -(g_z . g_t / d + (R g_z)^T ((C + d I)^-1 - I / d) (R g_t)),

    from ``inner [T, N]`` (``g_t . g_z``, exact, from the Gram), the projected gradients ``R g`` of the rows
    (``gradients [N, d]``) and of the points (``tests [T, d]``), and their Fisher ``C = G^T G / N`` (the
    index's curvature). Inside the subspace the curvature is the index's, outside it is taken as zero
    (weight ``1 / d``). ``[T, N]`` float64, positive: the row raises the test loss."""
    import torch

    from interpret.influence.preconditioner import inverse_damped, second_moment

    block, points = gradients.double(), tests.double()
    inside = inverse_damped(second_moment(block) / len(block), damping)
    inside -= torch.eye(len(inside), dtype=torch.float64) / damping
    return -(np.asarray(inner, dtype=np.float64) / damping + (points @ inside @ block.T).numpy())


def candidate_agreement(reference: np.ndarray, scores: np.ndarray, shortlist: np.ndarray, k: int) -> dict:
    """Mean recall@10/@100 per side of ``scores [T, N]`` read only on each point's top ``k`` rows per side
    of ``shortlist [T, N]`` (what ``rerank=k`` rescores), against ``reference [T, N]``."""
    from benchmarks.gradient_index import candidate_rows, mean_of, recalls

    found = []
    for t in range(len(reference)):
        rows = candidate_rows(shortlist[t], k)
        found.append(recalls(reference[t], scores[t][rows], rows))
    return mean_of(found)


HESSIAN_DAMPING = 5.0
"""The damping of the Hessian reference (the index's default, and ``gradient_index.py``'s reference's): CG
at the LDS-best 0.1 is ill-conditioned and minutes longer per point."""


def hessian_s_tests(explainer, dev, rows: np.ndarray, folder: Path) -> tuple[np.ndarray, list[dict]]:
    """``s_t = (H + d I)^-1 g_t`` of each dev row (true label) with ``H`` the training loss's exact Hessian
    over every training row (no sampled rows: the only error left is CG's residual, 1e-4), ``d`` =
    ``HESSIAN_DAMPING``; each cached in ``folder`` (about 200 s a point on 2 cores for 2,000 rows).
    Returns ``[T, P]`` float32 and each point's CG report."""
    import torch

    from interpret.influence.cg import cg_s_test

    vectors, reports = [], []
    for row in rows:
        path = folder / f"hessian_cg_d{HESSIAN_DAMPING:g}_{row}.npz"
        if not path.is_file():
            label = int(dev.labels[row])
            v = torch.from_numpy(explainer.test_gradient(dev.texts[row], None, label))
            clock = time.perf_counter()
            train = explainer.checkpoint.train
            result = cg_s_test(explainer.tracked, explainer.theta, v, train, HESSIAN_DAMPING, None, 1e-4)
            seconds = time.perf_counter() - clock
            np.savez(
                path,
                s_test=result.s_test.numpy(),
                residual=result.relative_residual,
                iterations=result.iterations,
                seconds=seconds,
            )
            print(
                f"hessian CG, dev row {row}: {result.iterations} iterations, {seconds:.0f} s", file=sys.stderr
            )
        saved = np.load(path)
        vectors.append(saved["s_test"])
        reports.append({key: float(saved[key]) for key in ("residual", "iterations", "seconds")})
    return np.stack(vectors), reports


SAMPLED_ROWS = (250, 500, 1000)
"""Sizes of the sampled curvatures compared with the one over every row (two disjoint seeded samples each):
``gradient_index.py``'s reference solves its Hessian over 500 sampled rows of 67,349."""


def agreement(reference: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Mean over test points of recall@10/@100 per side and Spearman over all rows, of ``scores [T, N]``
    against ``reference [T, N]``."""
    from scipy.stats import spearmanr

    from benchmarks.gradient_index import mean_of, recalls

    rows = np.arange(reference.shape[1])
    return mean_of(
        [
            recalls(reference[t], scores[t], rows)
            | {"spearman_all": float(spearmanr(reference[t], scores[t])[0])}
            for t in range(len(reference))
        ]
    )


def sampled_curvature(gram, a_train, a_test, weights: dict[str, np.ndarray], exact_scores) -> dict:
    """How far a curvature summed over ``M`` sampled rows moves the exact influence: for each curvature,
    damping and ``M`` in ``SAMPLED_ROWS``, two disjoint seeded samples' scores against the scores with every
    row (``vs_every_row``, the first sample) and against each other (``between_two``: what a check of a
    sampled reference against a second one sees); ``weights`` per curvature (``curvature_weights``)."""
    draw = np.random.default_rng(0).permutation(len(a_train))  # each M's samples: its first 2M rows
    out: dict = {}
    for m in SAMPLED_ROWS:
        first, second = np.sort(draw[:m]), np.sort(draw[m : 2 * m])
        for name, by_damping in exact_scores.items():
            dampings = list(by_damping)
            one = woodbury_scores(gram, a_train, a_test, weights[name], dampings, first)
            two = woodbury_scores(gram, a_train, a_test, weights[name], dampings, second)
            for damping in dampings:
                out.setdefault(name, {}).setdefault(f"{damping:g}", {})[str(m)] = {
                    "vs_every_row": agreement(by_damping[damping], one[damping]),
                    "between_two": agreement(one[damping], two[damping]),
                }
    return out


def variant_key(variant: str, damping: float, curvature: str) -> str:
    """``variants_against_exact``'s key: one index variant at one damping against one exact curvature."""
    return f"{variant}, damping {damping:g} vs exact {curvature}"


def rerank_key(variant: str, damping: float, curvature: str) -> str:
    """``rerank_against_exact``'s key: one variant's ``s_test`` at one damping against one exact curvature."""
    return f"{variant} s_test, damping {damping:g} vs exact {curvature}"


def rerank_part(
    variants, tests, inner: np.ndarray, exact_scores: dict, index_scores: dict
) -> tuple[dict, dict]:
    """The ``index`` solver's rerank against the exact influence of the same damping: its ``FAST_RERANK``
    candidates per side (the index's top rows) and every row rescored (``rerank_scores``), with ``s_test``
    from today's projection at each of ``DAMPINGS``, and at the default damping from the rank-32 one (a
    wider curvature: the rows stored stay as they are) and from each ``top`` variant (its own rows and
    curvature). ``index_scores`` holds the variants' scores by ``(variant, damping)`` (those missing are
    computed and added). Returns the agreements and, by ``(variant, damping)``, ``(index scores, rerank
    scores)``."""
    from benchmarks.evaluate import PROJECTION_KEPT_WIDTHS, top_variant, variant_scores
    from interpret.config import FAST_RERANK

    config = GradientIndexConfig()
    width = len(variants.keep[UNIFORM])
    tops = [top_variant(multiple * width) for multiple in PROJECTION_KEPT_WIDTHS]
    out: dict = {}
    scored: dict = {}
    for name, dampings in (
        (UNIFORM, DAMPINGS),
        *((other, (config.damping,)) for other in ["uniform 32", *tops]),
    ):
        rows, points = variants.gradients[:, variants.keep[name]], tests[:, variants.keep[name]]
        for damping in dampings:
            if (name, damping) not in index_scores:
                index_scores[name, damping] = variant_scores(rows, points, damping)["raw"]
            shortlist = index_scores[name, damping]
            scores = rerank_scores(inner, rows, points, damping)
            scored[name, damping] = (shortlist, scores)
            for curvature, by_damping in exact_scores.items():
                out[rerank_key(name, damping, curvature)] = {
                    f"rerank_{FAST_RERANK}": candidate_agreement(
                        by_damping[damping], scores, shortlist, FAST_RERANK
                    ),
                    "every_row": agreement(by_damping[damping], scores),
                }
    return out, scored


def rerank_check(engine, dev, rows: np.ndarray, shortlist: np.ndarray, scores: np.ndarray) -> dict:
    """``rerank_scores`` against the product's own ``rerank=FAST_RERANK`` query on dev ``rows`` (true labels):
    the largest relative difference of the scores on its candidates, and whether its candidates are the
    index's top rows per side that ``candidate_agreement`` reads."""
    from benchmarks.gradient_index import candidate_rows
    from engine.pipeline import answer_query
    from interpret.config import FAST_RERANK, QueryConfig

    worst, same = 0.0, True
    for t, row in enumerate(rows):
        config = QueryConfig(method="gradient", rerank=FAST_RERANK, top=100)
        answer = answer_query(engine, dev.texts[row], None, int(dev.labels[row]), config)
        expected = scores[t][answer.candidate_rows]
        difference = np.abs(np.asarray(answer.candidate_scores) - expected).max() / np.abs(expected).max()
        worst = max(worst, float(difference))
        same &= bool(
            np.array_equal(np.sort(answer.candidate_rows), candidate_rows(shortlist[t], FAST_RERANK))
        )
    return {"points": len(rows), "max_relative_difference": worst, "same_candidates": same}


def top_variant_check(model, dev, rows: np.ndarray, expected: np.ndarray, width: int) -> dict:
    """The product's own index with ``coordinates=width`` at rank 64 (built and cached beside the others)
    against the ``top`` variant cut from the wide pass: the largest relative difference of their scores on
    ``rows`` (the same bases, kept coordinates, Fisher and scores, up to float32 storage)."""
    from benchmarks.evaluate import PROJECTION_WIDE_RANK, SMALL
    from engine.pipeline import local_engine
    from tasks.evaluation import ensure_indexes, method_scores

    config = GradientIndexConfig(grid_rank=PROJECTION_WIDE_RANK, coordinates=width)
    clock = time.perf_counter()
    engine = ensure_indexes(local_engine(model), ["gradient"], SMALL / f"top{width}", config)
    build_seconds = time.perf_counter() - clock
    built = method_scores(engine, dev, rows, "gradient")
    difference = float(np.abs(built - expected).max() / np.abs(expected).max())
    return {"config": config.identity, "max_relative_difference": difference, "seconds": build_seconds}


def hessian_part(
    engine, model, dev, rows: np.ndarray, subsets: int, exact_scores: dict, scored: dict, folder: Path
) -> dict:
    """The exact-Hessian reference on the first selection ``rows``: every row scored against
    ``hessian_s_tests`` (forward mode, exact), then the index, its fast rerank, each ``top`` variant's index
    and rerank (``scored``, by ``(variant, damping)``) and the exact empirical Fisher and Gauss-Newton
    influence (all at ``HESSIAN_DAMPING``) against it, and their LDS on these points."""
    import torch

    from benchmarks.evaluate import lds_beside_index
    from interpret.config import FAST_RERANK
    from interpret.influence.scoring import score_rows

    explainer, count = engine.backend.explainer, len(rows)
    s_tests, reports = hessian_s_tests(explainer, dev, rows, folder)
    clock = time.perf_counter()
    hessian = score_rows(
        explainer.tracked,
        explainer.theta,
        torch.from_numpy(s_tests),
        explainer.checkpoint.train,
        np.arange(engine.num_examples),
    )
    scan_seconds = time.perf_counter() - clock
    shortlist, fast = (scores[:count] for scores in scored[UNIFORM, HESSIAN_DAMPING])
    exact = {name: by_damping[HESSIAN_DAMPING][:count] for name, by_damping in exact_scores.items()}
    against = {
        "index": agreement(hessian, shortlist),
        f"rerank_{FAST_RERANK}": candidate_agreement(hessian, fast, shortlist, FAST_RERANK),
        "rerank, every row": agreement(hessian, fast),
        **{f"exact {name}": agreement(hessian, scores) for name, scores in exact.items()},
    }
    given = {f"exact hessian, damping {HESSIAN_DAMPING:g}": hessian}
    for name in [
        variant for variant, damping in scored if variant.startswith("top ") and damping == HESSIAN_DAMPING
    ]:
        top_index, top_rerank = (scores[:count] for scores in scored[name, HESSIAN_DAMPING])
        against[f"{name}: index"] = agreement(hessian, top_index)
        against[f"{name}: rerank_{FAST_RERANK}"] = candidate_agreement(
            hessian, top_rerank, top_index, FAST_RERANK
        )
        given[f"{name}, damping {HESSIAN_DAMPING:g}"] = top_index
    given |= {f"exact {name}, damping {HESSIAN_DAMPING:g}": scores for name, scores in exact.items()}
    return {
        "points": count,
        "damping": HESSIAN_DAMPING,
        "cg": reports,
        "scan_seconds": scan_seconds,
        "against_hessian": against,
        "lds": lds_beside_index(engine, model, dev, rows, subsets, given),
    }


def fast_rerank_headline(reranks: dict, hessian: dict, variants_against: dict, top: str) -> dict[str, float]:
    """Recall@100 at the default damping against each noise-free reference: the fast rerank's, and the
    ``top`` variant's index alone (``variants_against_exact``, ``hessian``)."""
    from interpret.config import FAST_RERANK

    config = GradientIndexConfig()
    fast = f"rerank_{FAST_RERANK}"
    curvatures = ("empirical_fisher", "gauss_newton")
    found = {
        f"rerank_fast_vs_exact_{name}": reranks[rerank_key(UNIFORM, config.damping, name)][fast]
        for name in curvatures
    }
    found["rerank_fast_vs_exact_hessian"] = hessian["against_hessian"][fast]
    slug = top.replace(" ", "_")
    for name in curvatures:
        found[f"index_{slug}_vs_exact_{name}"] = variants_against[variant_key(top, config.damping, name)]
    found[f"index_{slug}_vs_exact_hessian"] = hessian["against_hessian"][f"{top}: index"]
    return {
        f"{name}_recall_at_100_{side}": agreement[f"recall_at_100_{side}"]
        for name, agreement in found.items()
        for side in ("helpful", "harmful")
    }


def main() -> None:
    import torch

    from benchmarks.evaluate import (
        SMALL,
        ProjectionVariants,
        _index_at,
        lds_beside_index,
        peer_points,
        small_model,
        top_variant,
        variant_scores,
    )
    from interpret.data import load_examples, sst2_spec
    from interpret.influence.projection import Projector
    from tasks.evaluation import method_scores

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000, help="the LDS model's training rows")
    parser.add_argument("--points", type=int, default=50, help="dev points in each of the two sets")
    parser.add_argument("--subsets", type=int, default=100, help="retrains of the LDS")
    parser.add_argument(
        "--hessian-points", type=int, default=20, help="selection points scored against the exact Hessian"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = small_model(args.rows)
    dev = load_examples(sst2_spec("dev"))
    points = peer_points(len(dev), args.points)
    test_rows = np.concatenate([points["selection"], points["held_out"]])
    engine = _index_at(model, GradientIndexConfig().damping)
    explainer = engine.backend.explainer
    tracked, theta, train = explainer.tracked, explainer.theta, explainer.checkpoint.train
    exact = Projector(tracked, None, layer_norms=True, max_identity_dim=math.inf)
    if (labels := tracked.model.config.num_labels) != 2:
        raise SystemExit(f"the algebra above is for two classes; this model has {labels}")
    if exact.dim != tracked.num_parameters:
        raise SystemExit(f"the exact projector holds {exact.dim} of {tracked.num_parameters} coordinates")
    # the caches (the Gram, the Hessian's s_test) belong to this model: a retrained one starts afresh
    n, folder = engine.num_examples, SMALL / "exact" / engine.identity.model_fingerprint[:16]
    folder.mkdir(parents=True, exist_ok=True)
    cached = folder / f"gram_{n}_{len(test_rows)}.npz"
    clock = time.perf_counter()
    if not cached.is_file():
        path = folder / "directions.f32"
        directions = np.lib.format.open_memmap(path, "w+", np.float32, (n + len(test_rows), exact.dim))
        train_blocks = ((positions, state) for positions, state, _ in train.iter_blocks(np.arange(n), 32))
        tests = (
            (np.array([n + i]), tracked.frozen(tracked.encode([dev.texts[r]], None)))
            for i, r in enumerate(test_rows)
        )
        probabilities, worst = write_directions(
            exact, theta, itertools.chain(train_blocks, tests), directions
        )
        directions.flush()
        print(f"directions: {time.perf_counter() - clock:.0f} s, identity check {worst:.2e}", file=sys.stderr)
        gram = gram_of(directions)
        del directions
        path.unlink()
        seconds = time.perf_counter() - clock
        np.savez(cached, gram=gram, probabilities=probabilities, identity_check=worst, seconds=seconds)
    saved = np.load(cached)
    gram, probabilities = saved["gram"], saved["probabilities"]
    train_labels = np.asarray(engine.training_examples().labels)
    test_labels = np.asarray(dev.labels)[test_rows]
    a_train = coefficients(probabilities[:n], train_labels)
    a_test = coefficients(probabilities[n:], test_labels)
    weights = curvature_weights(probabilities[:n], train_labels)
    exact_scores = {
        name: woodbury_scores(gram, a_train, a_test, weights[name], list(DAMPINGS)) for name in weights
    }
    variants = ProjectionVariants.of(engine)
    tests = variants.test_gradients(dev, test_rows)
    default = GradientIndexConfig().damping
    index_scores = {  # (variant, damping) -> [T, N]
        (name, damping): variant_scores(variants.gradients[:, coordinates], tests[:, coordinates], damping)[
            "raw"
        ]
        for name, coordinates in variants.keep.items()
        for damping in (default, 0.1)
    }
    top = top_variant(len(variants.keep[UNIFORM]))
    sides = {"selection": slice(0, args.points), "held_out": slice(args.points, 2 * args.points)}
    lds = {}
    for side, part in sides.items():
        given = {
            f"{name}, damping {damping:g}": scores[part]
            for name, by_damping in exact_scores.items()
            for damping, scores in by_damping.items()
        }
        given |= {
            f"{top}, damping {damping:g}": index_scores[top, damping][part] for damping in (default, 0.1)
        }
        lds[side] = lds_beside_index(engine, model, dev, points[side], args.subsets, given)
        print(f"exact {side}: {lds[side]}", file=sys.stderr)
    agreement_of, variants_against_exact = {}, {}
    for damping in (default, 0.1):
        scores = method_scores(_index_at(model, damping), dev, test_rows, "gradient")
        for name, by_damping in exact_scores.items():
            reference = by_damping[damping]
            agreement_of[f"index at damping {damping:g} vs exact {name}"] = agreement(reference, scores)
    for (name, damping), scores in index_scores.items():
        for curvature, by_damping in exact_scores.items():
            variants_against_exact[variant_key(name, damping, curvature)] = agreement(
                by_damping[damping], scores
            )
    product = top_variant_check(model, dev, test_rows, index_scores[top, default], len(variants.keep[top]))
    inner = np.outer(a_test, a_train) * gram[n:, :n]  # g_t . g_z of every point and row, exact
    reranks, scored = rerank_part(variants, tests, inner, exact_scores, index_scores)
    check = rerank_check(
        engine,
        dev,
        test_rows[:RERANK_CHECK_POINTS],
        *(s[:RERANK_CHECK_POINTS] for s in scored[UNIFORM, default]),
    )
    hessian_rows = points["selection"][: args.hessian_points]
    hessian = hessian_part(engine, model, dev, hessian_rows, args.subsets, exact_scores, scored, folder)
    sampled = sampled_curvature(gram, a_train, a_test, weights, exact_scores)
    exact_lds = {
        name: row["lds"] for name, row in lds["selection"].items() if name.split(",")[0] in exact_scores
    }
    best = max(exact_lds, key=exact_lds.__getitem__)
    write_result(
        "exact_curvature",
        {
            "command": "python benchmarks/exact_curvature.py " + " ".join(sys.argv[1:]),
            "summary": {  # issue 26's names; it names none for the exact influence (``headline``)
                "lds_tracked_gradient": lds["selection"]["gradient"]["lds"],
                "lds_retrains": args.subsets,
                "lds_test_points": args.points,
            },
            "headline": {
                "lds_exact_best": exact_lds[best],
                "exact_best": best,
                "lds_exact_best_held_out": lds["held_out"][best]["lds"],
                **fast_rerank_headline(reranks, hessian, variants_against_exact, top),
            },
            "lds": lds,
            "index_against_exact": agreement_of,
            "variants_against_exact": variants_against_exact,
            "variant_ranks": variants.ranks,
            "variant_widths": variants.widths,
            "top_variant_check": product,
            "rerank_against_exact": reranks,
            "rerank_check": check,
            "hessian": hessian,
            "sampled_curvature": sampled,
            "identity_check_max_relative_difference": float(saved["identity_check"]),
            "gram_seconds": float(saved["seconds"]),  # the directions and the Gram, when first computed
            "model_rows": n,
        },
    )


if __name__ == "__main__":
    main()
