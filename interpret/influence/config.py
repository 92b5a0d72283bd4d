"""Frozen, validated settings of the influence algorithms (deployment settings live in ``service/``)."""

from __future__ import annotations

from dataclasses import dataclass, field


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class LissaConfig:
    """LiSSA knobs, named as in FastIF (Guo et al. 2021) and Koh & Liang (2017).

    ``damping`` is the lambda added to the Hessian: LiSSA estimates ``(H + damping * I)^-1 v``.
    FastIF's and Koh & Liang's code use ``h <- v + (1 - d) h - H h / scale`` instead, whose fixed point is
    ``(H + d * scale * I)^-1 v``: their ``d`` equals our ``damping / scale``. torch-influence's damping
    is ours. ``scale`` must exceed half the largest eigenvalue of ``H + damping*I`` on one sampled batch,
    or the recursion diverges.

    The defaults are the FastIF preset: one example per step (B=1) and a medium depth, which the paper
    found faster than one large-batch run at the same quality; raise ``num_repetitions`` (T, up to 4) to
    cut the variance, in parallel on workers. ``scale=1000`` because single SST-2 examples reach Hessian
    eigenvalues near 1000 on MiniLM's last two layers (power iteration); ``damping=5`` makes every
    direction contract by at least ``1 - 5/1000`` per step, so the trace is flat (0.7% left) by J=1000.
    FastIF's published ``damp=5e-3, scale=1e4`` is ``damping=50`` here: the same contraction, more damping.
    """

    recursion_depth: int = 1000
    batch_size: int = 1
    num_repetitions: int = 1
    damping: float = 5.0
    scale: float = 1000.0
    seed: int = 0
    divergence_bound: float = 10.0
    """Stop when ``||h|| > divergence_bound * scale * ||v|| / damping``: the bound no convergent run with a
    positive semi-definite Hessian can exceed (geometric series of ``I - (H + damping I) / scale``)."""

    def __post_init__(self) -> None:
        for name in ("recursion_depth", "batch_size", "num_repetitions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        _positive("damping", self.damping)
        _positive("scale", self.scale)
        _positive("divergence_bound", self.divergence_bound)


FASTIF_PRESET = LissaConfig()
"""B=1, J=1000, T=1: the default; see ``benchmarks/influence_query.py`` for the depth/batch trade-off."""


@dataclass(frozen=True)
class QueryConfig:
    """One FastIF query: ``k`` kNN candidates (``None``: score the whole training set), top-n to return."""

    k: int | None = 1000
    top: int = 10
    lissa: LissaConfig = field(default_factory=LissaConfig)
    exact: bool = False
    score_batch_size: int = 128

    def __post_init__(self) -> None:
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be an integer >= 1 or None (full scan), got {self.k!r}")
        if not isinstance(self.top, int) or self.top < 1:
            raise ValueError(f"top must be an integer >= 1, got {self.top!r}")
        if self.score_batch_size < 1:
            raise ValueError(f"score_batch_size must be >= 1, got {self.score_batch_size!r}")
