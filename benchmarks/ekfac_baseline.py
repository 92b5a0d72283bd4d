"""The peers' EK-FAC influence, computed by Kronfluence itself, as the baseline of issue 26's LDS.

EK-FAC (George et al. 2018; Grosse et al. 2023) keeps one curvature block per tracked linear layer: the
Kronecker factors ``A = E[a a^T]`` (inputs) and ``S = E[delta delta^T]`` (output gradients), their
eigenbases ``Q_A``, ``Q_S``, and per-coordinate eigenvalues refitted to the per-example gradients in that
basis, ``Lambda = E[(Q_S^T G Q_A)^2]``. The inverse-Hessian-vector product of a test gradient ``V`` is
``Q_S ((Q_S^T V Q_A) / (Lambda + damping)) Q_A^T``, and a training row's score is its dot with that
row's gradient. Kronfluence (Bae et al., 1.0.1) is the peers' reference implementation; running it on
the same model, tracked layers, rows and test points puts its LDS beside ours on the same retrains.

Kronfluence is a benchmark tool here, not a dependency of the product. Install it without its declared
dependencies: it asks for torchvision, which would replace the CPU torch with a CUDA build, and never
imports it::

    .venv/bin/pip install --no-deps kronfluence==1.0.1 accelerate einops einconv opt_einsum

Sign: Kronfluence scores ``g_test^T (H + damping)^-1 g_z`` (positive: up-weighting the row lowers the test
loss); this product's convention is the opposite (positive: harmful), so the scores are negated.
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from interpret.checkpoint import DEFAULT_MAX_LENGTH
from interpret.data import ExampleSet
from interpret.influence.projection import Projector
from interpret.models import TrackedModel, load_classifier

FIT_BATCH_SIZE = 32
QUERY_BATCH_SIZE = 100
"""Test points per pass over the training rows: one pass scores all of ``benchmarks/evaluate.py``'s 100
(50 to choose a damping on, 50 held out)."""


def tracked_linear_modules(tracked: TrackedModel) -> list[str]:
    """The tracked linear layers, as the gradient index takes them (its projector's slots): the only
    layers EK-FAC has factors for; both leave the norms out."""
    return [slot.name for slot in Projector(tracked, rank=1).slots]


class _Rows(Dataset):
    """Encoded rows (padded to the longest of the set) and their labels, one dict per row."""

    def __init__(self, encoded: dict[str, torch.Tensor], labels: np.ndarray):
        self.encoded, self.labels = encoded, torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        return {**{key: value[row] for key, value in self.encoded.items()}, "labels": self.labels[row]}


def _encoded(tracked: TrackedModel, examples: ExampleSet, rows: np.ndarray | None = None) -> _Rows:
    subset = examples if rows is None else examples.subset(rows)
    with torch.no_grad():
        encoded = tracked.encode(subset.texts, subset.pairs)
    return _Rows(encoded, subset.labels)


def _task(modules: list[str]):
    """Kronfluence's task: the summed cross-entropy on the rows' labels (or, when fitting the factors, on
    labels sampled from the model: the true Fisher, Kronfluence's default) and the test loss as the
    measurement."""
    from kronfluence.task import Task

    class ClassifierTask(Task):
        def _logits(self, batch: dict[str, torch.Tensor], model: nn.Module) -> torch.Tensor:
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            return model(**inputs).logits

        def compute_train_loss(self, batch, model, sample=False):
            logits = self._logits(batch, model)
            if sample:
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits.detach(), dim=-1), 1).flatten()
            else:
                labels = batch["labels"]
            return nn.functional.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            return nn.functional.cross_entropy(self._logits(batch, model), batch["labels"], reduction="sum")

        def get_influence_tracked_modules(self):
            return modules

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    return ClassifierTask()


def ekfac_scores(
    model_dir: str | Path,
    train: ExampleSet,
    test: ExampleSet,
    test_rows: np.ndarray,
    dampings: dict[str, float | None],
    tracked_layers: int,
    max_length: int = DEFAULT_MAX_LENGTH,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict]:
    """EK-FAC scores ``[T, N]`` of every training row on each test point's true label, one matrix per
    named damping (``None``: Kronfluence's heuristic, 0.1 times the mean eigenvalue), in this product's
    sign; and what was run (modules, seconds)."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    model, tokenizer = load_classifier(str(model_dir))
    tracked = TrackedModel(model, tokenizer, tracked_layers, max_length)
    modules = tracked_linear_modules(tracked)
    train_rows, query_rows = _encoded(tracked, train), _encoded(tracked, test, test_rows)
    task = _task(modules)
    model = prepare_model(model, task)
    torch.manual_seed(seed)  # the labels the true Fisher samples (two unseeded fits differed by 0.01 LDS)
    seconds: dict[str, float] = {}
    scores: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="kronfluence-") as folder:
        analyzer = Analyzer("lds", model, task, cpu=True, output_dir=folder, log_level=logging.WARNING)
        clock = time.perf_counter()
        analyzer.fit_all_factors(
            "ekfac",
            train_rows,
            per_device_batch_size=FIT_BATCH_SIZE,
            factor_args=FactorArguments(strategy="ekfac"),
        )
        seconds["factors"] = time.perf_counter() - clock
        for name, damping in dampings.items():
            clock = time.perf_counter()
            analyzer.compute_pairwise_scores(
                f"scores_{name}",
                "ekfac",
                query_rows,
                train_rows,
                per_device_query_batch_size=QUERY_BATCH_SIZE,
                per_device_train_batch_size=FIT_BATCH_SIZE,
                score_args=ScoreArguments(damping_factor=damping),
            )
            found = analyzer.load_pairwise_scores(f"scores_{name}")
            scores[name] = -found["all_modules"].double().numpy()
            seconds[f"scores_{name}"] = time.perf_counter() - clock
    run = {
        "library": f"kronfluence {importlib.metadata.version('kronfluence')}",
        "strategy": "ekfac",
        "fisher": "true (labels sampled from the model), Kronfluence's default",
        "seed": seed,
        "modules": modules,
        "dampings": dampings,
        "seconds": seconds,
    }
    return scores, run
