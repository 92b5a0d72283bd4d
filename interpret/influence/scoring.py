"""Influence of training examples on a test loss: ``I(z, z_test) = -s_test . grad L(z)``.

Sign convention: **positive = harmful**. ``I`` approximates ``d L(z_test) / d eps`` when the training
example ``z`` is up-weighted by ``eps`` (Koh & Liang 2017, eq. 2), so a positive score means training more
on ``z`` would raise the test loss; the most negative scores are the most helpful examples.

Two equal ways to compute a block of scores:

* ``"jvp"``: one forward-mode pass of the per-example losses along ``s_test`` (a directional derivative),
  no per-example gradient materialised; the fast path for one query.
* ``"per_example"``: ``vmap`` per-example gradients, then a matrix product; pays off when many
  ``s_test`` vectors (queries) share the same candidates.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch.func import jvp, vmap
from tqdm.auto import tqdm

from interpret.cancellation import checkpoint
from interpret.config import MAX_CACHED_SCORING_ROWS
from interpret.data import Rows
from interpret.influence.batches import ExampleStates
from interpret.influence.objective import per_example_gradients, per_example_losses
from interpret.models import FrozenState, TrackedModel

ScoringMethod = Literal["jvp", "per_example"]


def influence_scores(
    tracked: TrackedModel,
    theta: torch.Tensor,
    s_test: torch.Tensor,
    states: FrozenState,
    labels: torch.Tensor,
    method: ScoringMethod = "jvp",
) -> torch.Tensor:
    """Scores of one block: ``[B]`` for ``s_test [P]``, ``[Q, B]`` for ``s_test [Q, P]``."""
    if method == "per_example":
        return -(s_test @ per_example_gradients(tracked, theta, states, labels).T)
    if method != "jvp":
        raise ValueError(f"method must be 'jvp' or 'per_example', got {method!r}")

    def directional(tangent: torch.Tensor) -> torch.Tensor:
        derivative: torch.Tensor = jvp(
            lambda t: per_example_losses(tracked, t, states, labels), (theta,), (tangent,)
        )[1]
        return derivative

    return -(vmap(directional)(s_test) if s_test.dim() == 2 else directional(s_test))


def score_rows(
    tracked: TrackedModel,
    theta: torch.Tensor,
    s_test: torch.Tensor,
    train: ExampleStates,
    rows: Rows,
    block_size: int = 128,
    method: ScoringMethod = "jvp",
    progress: bool = False,
) -> np.ndarray:
    """Scores of training ``rows`` (in that order), float64 ``[len(rows)]`` or ``[Q, len(rows)]``."""
    rows = np.asarray(rows, dtype=np.int64)  # one copy, indexed by block positions below
    out = np.empty((*s_test.shape[:-1], len(rows)), dtype=np.float64)
    bar = tqdm(total=len(rows), desc="score", unit="ex", disable=not progress)
    cached = len(rows) <= MAX_CACHED_SCORING_ROWS  # candidates, not a full scan
    for positions, states, labels in train.iter_blocks(rows, block_size, cached):
        checkpoint()
        out[..., positions] = (
            influence_scores(tracked, theta, s_test, states, labels, method).cpu().double().numpy()
        )
        bar.update(len(positions))
    bar.close()
    return out
