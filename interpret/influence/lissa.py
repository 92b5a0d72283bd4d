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

Unless the caller gives ``scale``, it is measured (:func:`curvature_scale`): power iteration on the Hessians
of a few seeded B-row batches, ``scale = max_b (lambda_b + damping)``, which leaves a factor of 2 for a
batch more curved than any sampled. A repetition that still diverges at a measured scale restarts at twice
the scale (at most :data:`SCALE_DOUBLINGS` times); at a given scale the divergence is an error naming it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from interpret.cancellation import checkpoint
from interpret.config import LISSA_DIVERGENCE_BOUND, LissaConfig
from interpret.influence.batches import ExampleStates
from interpret.influence.objective import hessian_vector_product
from interpret.models import FrozenState, TrackedModel

_PREFETCH_EXAMPLES = 256
SCALE_BATCHES = 8
"""Batches whose top Hessian eigenvalue :func:`curvature_scale` measures."""
POWER_STEPS = 10
"""Power-iteration HVPs per batch: 80 in all, 8% of the default J=1000, once per model and settings."""
SCALE_DOUBLINGS = 3
"""Times a repetition that diverges at a measured scale restarts at twice the scale."""


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
    """As run: ``scale`` is the largest a repetition used (:func:`ran_at`)."""
    norm_traces: np.ndarray
    """``[T, J]``: ``||h_j|| / scale`` per repetition; a flat tail means the depth was enough."""
    relative_spread: float
    s_test_norm: float
    seconds: list[float]
    """Per repetition, as measured where it ran."""
    workers: list[str] | None = None
    """Per repetition, the worker that ran it (``None`` in-process)."""
    scales: list[float] | None = None
    """Per repetition, the scale it ran at (a measured one doubles where it diverged)."""
    scale_measured: bool = False
    """Whether the scale was measured (:func:`curvature_scale`) rather than given."""


@dataclass
class STestResult:
    """The averaged ``s_test``, each repetition's vector and norm trace, and the settings used."""

    s_test: torch.Tensor
    repetitions: list[torch.Tensor]
    norm_traces: np.ndarray
    config: LissaConfig
    """As asked (``scale`` ``None`` when it was to be measured)."""
    seconds: list[float]
    scales: list[float]
    """Per repetition, the scale it ran at."""

    @property
    def relative_spread(self) -> float:
        return relative_spread(self.repetitions, self.s_test)

    def report(self) -> LissaReport:
        return LissaReport(
            ran_at(self.config, self.scales),
            self.norm_traces,
            self.relative_spread,
            float(self.s_test.norm()),
            self.seconds,
            scales=self.scales,
            scale_measured=self.config.scale is None,
        )


def ran_at(config: LissaConfig, scales: list[float]) -> LissaConfig:
    """``config`` with the scale the repetitions ran at (the largest, if a measured one was doubled)."""
    return config.replace(scale=max(scales))


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


def top_eigenvalue(
    tracked: TrackedModel,
    theta: torch.Tensor,
    states: FrozenState,
    labels: torch.Tensor,
    steps: int,
    seed: int,
) -> float:
    """``|lambda|`` of largest magnitude of one batch's loss Hessian: ``steps`` power iterations
    ``u <- H u / ||H u||`` from a seeded Gaussian start, then ``||H u||`` (a lower bound that converges
    from below)."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(theta.shape, generator=generator, dtype=torch.float64).to(theta)
    u = u / u.norm()
    value = 0.0
    for _ in range(steps):
        product = hessian_vector_product(tracked, theta, states, labels, u)
        value = float(product.norm())
        if value == 0 or not np.isfinite(value):
            break
        u = product / value
    return value


def curvature_scale(
    tracked: TrackedModel, theta: torch.Tensor, train: ExampleStates, config: LissaConfig
) -> float:
    """The measured LiSSA scale: ``max_b (lambda_b + damping)`` over :data:`SCALE_BATCHES` batches of
    ``batch_size`` rows drawn with ``config.seed`` (not the repetition: every repetition, wherever it runs,
    measures the same scale)."""
    rng = np.random.default_rng([config.seed, 1 << 20])
    size = min(config.batch_size, len(train))
    largest = 0.0
    for batch in range(SCALE_BATCHES):
        checkpoint()
        rows = rng.choice(len(train), size=size, replace=False)
        states, labels = train.load(rows)
        value = top_eigenvalue(tracked, theta, states, labels, POWER_STEPS, config.seed * 1_000_003 + batch)
        largest = max(largest, value)
    return largest + config.damping


def _check(h: torch.Tensor, bound: float, step: int, config: LissaConfig, scale: float) -> float:
    norm = float(h.norm())
    if not np.isfinite(norm) or norm > bound:
        raise LissaDivergenceError(
            f"LiSSA diverged at step {step} of {config.recursion_depth} (||h|| = {norm:.3g}): increase scale "
            f"(now {scale:g}) above the largest Hessian eigenvalue of a {config.batch_size}-example "
            f"batch, or increase damping (now {config.damping:g}) above the most negative one"
        )
    return norm / scale


def lissa_repetition(
    tracked: TrackedModel,
    theta: torch.Tensor,
    v: torch.Tensor,
    train: ExampleStates,
    config: LissaConfig,
    repetition: int,
    progress: bool = False,
    measured_scale: float | None = None,
) -> tuple[torch.Tensor, np.ndarray, float]:
    """One repetition: ``(s_test_r, norm trace [J], the scale it ran at)``. Without ``config.scale`` the
    scale is ``measured_scale`` (or measured here), doubled on divergence (module docstring)."""
    given = config.scale is not None
    scale = config.scale or measured_scale or curvature_scale(tracked, theta, train, config)
    doublings = 0 if given else SCALE_DOUBLINGS
    for doubling in range(doublings + 1):
        try:
            vector, trace = _recursion(tracked, theta, v, train, config, repetition, scale, progress)
            return vector, trace, scale
        except LissaDivergenceError:
            if doubling == doublings:
                raise
            scale *= 2
    raise AssertionError("unreachable")


def _recursion(
    tracked: TrackedModel,
    theta: torch.Tensor,
    v: torch.Tensor,
    train: ExampleStates,
    config: LissaConfig,
    repetition: int,
    scale: float,
    progress: bool,
) -> tuple[torch.Tensor, np.ndarray]:
    bound = LISSA_DIVERGENCE_BOUND * scale * float(v.norm()) / config.damping
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
            h = v + h - (hv + config.damping * h) / scale
            trace[first + offset] = _check(h, bound, first + offset + 1, config, scale)
        bar.update(len(chunk))
        bar.set_postfix(norm=f"{trace[first + len(chunk) - 1]:.4g}")
    bar.close()
    return h / scale, trace


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
    measured = None if config.scale is not None else curvature_scale(tracked, theta, train, config)
    vectors, traces, seconds, scales = [], [], [], []
    for r in range(config.num_repetitions):
        start = time.perf_counter()
        vector, trace, scale = lissa_repetition(tracked, theta, v, train, config, r, progress, measured)
        vectors.append(vector)
        traces.append(trace)
        scales.append(scale)
        seconds.append(time.perf_counter() - start)
    return STestResult(average_repetitions(vectors), vectors, np.stack(traces), config, seconds, scales)
