"""The Ray actor: one loaded checkpoint answering encode / predict / LiSSA / scoring calls.

The actor holds no math: every method is a thin wrapper over ``interpret``. Vectors cross the object
store as numpy arrays (zero-copy reads on the same node); a LiSSA repetition returns its vector and its
small report as two separate objects, so the driver reads the report and only passes the vector on.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import ray
import torch

from interpret.attacks import AttackResult, attack
from interpret.checkpoint import load_checkpoint
from interpret.data import DataSpec
from interpret.influence.config import LissaConfig
from interpret.influence.exact import exact_s_test, training_hessian
from interpret.influence.lissa import average_repetitions, lissa_repetition, relative_spread
from interpret.influence.query import TestPoint, prepare_test_point
from interpret.influence.scoring import score_rows
from interpret.models import TrackedScope, encode_features
from interpret.saliency import SaliencyMap, TextClassifier, saliency

IDENTITY_FIELDS = (
    "model_fingerprint",
    "parameters_digest",
    "num_parameters",
    "tracked_layers",
    "num_labels",
    "dtype",
    "data_fingerprint",
    "num_examples",
)
"""What must be identical on every worker of a pool (and match the index manifest where one is loaded)."""


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads: the same model folder and training data (absolute paths on each node)."""

    model_dir: str
    train_spec: DataSpec | None = None
    tracked_layers: TrackedScope | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    threads: int | None = None
    """torch intra-op threads; ``None``: the CPUs Ray assigned to the actor."""

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float64", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, float64, bfloat16 or float16, got {self.dtype!r}")

    def with_absolute_paths(self) -> WorkerSpec:
        """Local relative paths made absolute: actors may run in another working directory."""
        spec = self
        if Path(spec.model_dir).exists():
            spec = replace(spec, model_dir=str(Path(spec.model_dir).resolve()))
        if spec.train_spec is not None and Path(spec.train_spec.source).exists():
            spec = replace(
                spec, train_spec=replace(spec.train_spec, source=str(Path(spec.train_spec.source).resolve()))
            )
        return spec


def parameters_digest(theta: torch.Tensor) -> str:
    """SHA-256 of the tracked parameter vector's bytes: equal digests mean bit-identical ``theta``."""
    return hashlib.sha256(theta.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _as_tensor(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    # Arrays read from the object store are read-only views; torch needs its own copy.
    return torch.tensor(array, dtype=like.dtype, device=like.device)


class InfluenceWorker:
    """Loads the checkpoint once (on the GPU Ray assigned, else the CPU) and serves one heavy call at a
    time (LiSSA, scoring, encoding); one-sentence calls (``prepare``, ``predict``) run in the ``light``
    concurrency group beside it, so they do not wait behind a minute-long repetition, and ``ping`` in
    ``health``. The model is only read, never written, by these calls."""

    CONCURRENCY_GROUPS: ClassVar[dict[str, int]] = {"health": 1, "light": 1}

    def __init__(self, spec: WorkerSpec):
        threads = spec.threads or max(
            1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
        )
        torch.set_num_threads(threads)
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.checkpoint = load_checkpoint(
            spec.model_dir,
            spec.train_spec,
            spec.tracked_layers,
            getattr(torch, spec.dtype),
            device,
            spec.trust_remote_code,
        )
        self.tracked = self.checkpoint.tracked
        self.classifier = TextClassifier.of(self.tracked)
        self.theta = self.tracked.parameters()
        self.name = f"{ray.get_runtime_context().get_node_id()[:12]}/pid{os.getpid()}/{device}"
        self._hessian: torch.Tensor | None = None

    def identity(self) -> dict:
        return {
            "model_fingerprint": self.checkpoint.fingerprint,
            "parameters_digest": parameters_digest(self.theta),
            "num_parameters": self.tracked.num_parameters,
            "tracked_layers": self.tracked.tracked_layers,
            "num_labels": int(self.tracked.model.config.num_labels),
            "dtype": str(self.tracked.dtype).removeprefix("torch."),
            "data_fingerprint": self.checkpoint.examples.fingerprint,
            "num_examples": len(self.checkpoint.examples),
            "worker": self.name,
            "device": str(self.tracked.device),
        }

    @ray.method(concurrency_group="health")
    def ping(self) -> str:
        """Answered on its own thread, so a worker busy with a long repetition still shows alive."""
        return self.name

    @ray.method(concurrency_group="light")
    def prepare(self, text: str, pair: str | None, label: int | None) -> TestPoint:
        point = prepare_test_point(self.tracked, self.theta, text, pair, label)
        point.v = None  # the driver needs the prediction and features only; each worker rebuilds v
        return point

    def encode(self, texts: list[str], pairs: list[str] | None, batch_size: int = 256) -> np.ndarray:
        return encode_features(self.tracked, texts, pairs, batch_size, progress=False)

    @ray.method(concurrency_group="light")
    def predict(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        return self.tracked.probabilities(texts, pairs)

    def _v(self, text: str, pair: str | None, label: int | None) -> torch.Tensor:
        return prepare_test_point(self.tracked, self.theta, text, pair, label).v

    @ray.method(num_returns=2)
    def lissa_repetition(
        self, text: str, pair: str | None, label: int | None, config: LissaConfig, repetition: int
    ) -> tuple[np.ndarray, dict]:
        """One repetition of ``s_test``, seeded by ``(config.seed, repetition)``: (vector, report)."""
        start = time.perf_counter()
        v = self._v(text, pair, label)
        vector, trace = lissa_repetition(
            self.tracked, self.theta, v, self.checkpoint.train, config, repetition
        )
        report = {"trace": trace, "seconds": time.perf_counter() - start, "worker": self.name}
        return vector.cpu().numpy(), report

    def exact_s_test(self, text: str, pair: str | None, label: int | None, damping: float) -> np.ndarray:
        if self._hessian is None:
            self._hessian = training_hessian(self.tracked, self.theta, self.checkpoint.train)
        return exact_s_test(self._hessian, self._v(text, pair, label), damping).cpu().numpy()

    def _average(self, repetitions: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        vectors = [_as_tensor(r, self.theta) for r in repetitions]
        return average_repetitions(vectors), vectors

    def score(self, rows: np.ndarray, block_size: int, *repetitions: np.ndarray) -> np.ndarray:
        """Scores of ``rows`` against the mean of the repetitions (the all-reduce happens here, on the
        worker, so the averaged vector never visits the driver)."""
        s_test, _ = self._average(repetitions)
        return score_rows(self.tracked, self.theta, s_test, self.checkpoint.train, rows, block_size)

    def summarize(self, *repetitions: np.ndarray) -> dict:
        s_test, vectors = self._average(repetitions)
        return {"relative_spread": relative_spread(vectors, s_test), "s_test_norm": float(s_test.norm())}

    def averaged(self, *repetitions: np.ndarray) -> np.ndarray:
        """The averaged ``s_test`` itself, for callers that want it (tests, the s_test cache)."""
        return self._average(repetitions)[0].cpu().numpy()

    @ray.method(concurrency_group="light")
    def saliency(
        self, text: str, pair: str | None, method: str, label: int | None, parameters: dict
    ) -> SaliencyMap:
        return saliency(self.classifier, text, method, pair, label, **parameters)

    @ray.method(concurrency_group="light")
    def attack(
        self,
        text: str,
        pair: str | None,
        method: str,
        label: int | None,
        target: int | None,
        parameters: dict,
    ) -> AttackResult:
        """HotFlip / Input Reduction: one sentence, well under a second on MiniLM."""
        return attack(
            self.classifier, text, method, pair, label, target, self.checkpoint.examples, **parameters
        )

    def search_attack(self, *arguments) -> AttackResult:
        """``attack`` (same arguments) in the default group: a universal-trigger search runs over many
        training examples, so it queues with the heavy calls instead of holding up the light ones."""
        return self.attack(*arguments)
