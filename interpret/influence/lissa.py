"""``s_test = (H + damping I)^-1 v`` by LiSSA (Agarwal et al. 2017), as used by Koh & Liang and FastIF.

The recursion, for one repetition with seed ``(seed, r)``::

    h_0 = v
    h_j = v + h_{j-1} - (H_j h_{j-1} + damping * h_{j-1}) / scale      j = 1..J
    s_test_r = h_J / scale

``H_j`` is the Hessian of the mean loss on a batch of B training examples drawn uniformly (without
replacement inside a batch; a batch of the whole set is the exact Hessian). If ``H_j = H`` the fixed point
is ``h = scale (H + damping I)^-1 v``, reached when every eigenvalue of ``(H + damping I) / scale`` lies in
(0, 2): ``scale`` bounds curvature from above, ``damping`` from below. The T repetitions are independent
(seeded by ``(seed, r)``, so one repetition gives the same vector wherever it runs) and are averaged.
The per-step trace records ``||h_j|| / scale``; a flat tail means the depth J was enough.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from interpret.cancellation import checkpoint
from interpret.config import LissaConfig
from interpret.influence.batches import ExampleStates
from interpret.influence.objective import hessian_vector_product
from interpret.models import TrackedModel

_PREFETCH_EXAMPLES = 256


class LissaDivergenceError(ArithmeticError):
    """The recursion blew up; the message names the knob to turn."""


def relative_spread(repetitions: list[torch.Tensor], mean: torch.Tensor) -> float:
    """Mean ``||s_r - s_test|| / ||s_test||`` over repetitions (0 for T=1): the LiSSA noise level."""
    norm = float(mean.norm())
    if len(repetitions) < 2 or norm == 0:
        return 0.0
    return float(np.mean([float((r - mean).norm()) / norm for r in repetitions]))


@dataclass
class LissaReport:
    """What a caller sees of one ``s_test`` run (no vectors): convergence, noise, time, where it ran."""

    config: LissaConfig
    norm_traces: np.ndarray
    """``[T, J]``: ``||h_j|| / scale`` per repetition; a flat tail means the depth was enough."""
    relative_spread: float
    s_test_norm: float
    seconds: list[float]
    """Per repetition, as measured where it ran."""
    workers: list[str] | None = None
    """Per repetition, the worker that ran it (``None`` in-process)."""


@dataclass
class STestResult:
    """The averaged ``s_test``, each repetition's vector and norm trace, and the settings used."""

    s_test: torch.Tensor
    repetitions: list[torch.Tensor]
    norm_traces: np.ndarray
    config: LissaConfig
    seconds: list[float]

    @property
    def relative_spread(self) -> float:
        return relative_spread(self.repetitions, self.s_test)

    def report(self) -> LissaReport:
        return LissaReport(
            self.config, self.norm_traces, self.relative_spread, float(self.s_test.norm()), self.seconds
        )


def sample_batches(
    num_examples: int, config: LissaConfig, repetition: int, steps: int
) -> Iterator[np.ndarray]:
    """The training rows of one repetition, ``[steps, B]`` at a time (``J`` rows in all), drawn lazily
    from one generator seeded by ``(seed, repetition)``: the draws depend on nothing else, and a deep
    recursion costs no time or memory before its first step."""
    rng = np.random.default_rng([config.seed, repetition])
    for first in range(0, config.recursion_depth, steps):
        count = min(steps, config.recursion_depth - first)
        if config.batch_size >= num_examples:
            yield np.tile(np.arange(num_examples), (count, 1))
        else:
            yield np.stack(
                [rng.choice(num_examples, size=config.batch_size, replace=False) for _ in range(count)]
            )


def _check(h: torch.Tensor, bound: float, step: int, config: LissaConfig) -> float:
    norm = float(h.norm())
    if not np.isfinite(norm) or norm > bound:
        raise LissaDivergenceError(
            f"LiSSA diverged at step {step} of {config.recursion_depth} (||h|| = {norm:.3g}): increase scale "
            f"(now {config.scale:g}) above the largest Hessian eigenvalue of a {config.batch_size}-example "
            f"batch, or increase damping (now {config.damping:g}) above the most negative one"
        )
    return norm / config.scale


def lissa_repetition(
    tracked: TrackedModel,
    theta: torch.Tensor,
    v: torch.Tensor,
    train: ExampleStates,
    config: LissaConfig,
    repetition: int,
    progress: bool = False,
) -> tuple[torch.Tensor, np.ndarray]:
    """One repetition: ``(s_test_r, norm trace [J])``."""
    bound = config.divergence_bound * config.scale * float(v.norm()) / config.damping
    steps_per_load = max(1, _PREFETCH_EXAMPLES // config.batch_size)
    h = v.clone()
    trace = np.empty(config.recursion_depth)
    bar = tqdm(total=config.recursion_depth, desc=f"LiSSA r={repetition}", unit="step", disable=not progress)
    draws = sample_batches(len(train), config, repetition, steps_per_load)
    for first, chunk in zip(range(0, config.recursion_depth, steps_per_load), draws, strict=True):
        states, labels = train.load(chunk.reshape(-1))
        for offset in range(len(chunk)):
            checkpoint()  # a cancelled or late request stops here, between two steps
            rows = slice(offset * config.batch_size, (offset + 1) * config.batch_size)
            hv = hessian_vector_product(tracked, theta, states.select(rows), labels[rows], h)
            h = v + h - (hv + config.damping * h) / config.scale
            trace[first + offset] = _check(h, bound, first + offset + 1, config)
        bar.update(len(chunk))
        bar.set_postfix(norm=f"{trace[first + len(chunk) - 1]:.4g}")
    bar.close()
    return h / config.scale, trace


def average_repetitions(vectors: list[torch.Tensor]) -> torch.Tensor:
    """The all-reduce: the mean of the repetitions' ``s_test`` vectors."""
    return torch.stack(vectors).mean(dim=0)


def lissa_s_test(
    tracked: TrackedModel,
    theta: torch.Tensor,
    v: torch.Tensor,
    train: ExampleStates,
    config: LissaConfig,
    progress: bool = False,
) -> STestResult:
    """All T repetitions in this process, one after another (``workers/`` runs them in parallel)."""
    vectors, traces, seconds = [], [], []
    for r in range(config.num_repetitions):
        start = time.perf_counter()
        vector, trace = lissa_repetition(tracked, theta, v, train, config, r, progress)
        vectors.append(vector)
        traces.append(trace)
        seconds.append(time.perf_counter() - start)
    return STestResult(average_repetitions(vectors), vectors, np.stack(traces), config, seconds)
