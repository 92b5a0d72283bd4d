"""The Ray actor: :class:`~interpret.explainer.Explainer` with placement added, nothing rewritten.

The actor loads the checkpoint on the GPU Ray assigned it, or on the CPU with as many torch threads as
CPUs Ray assigned it, and names itself by node, process and device. Every other method is the
explainer's own; the pool chooses each call's concurrency group (``CONCURRENCY_GROUPS``): one-sentence
calls run in ``light`` beside a long LiSSA repetition, ``ping`` in ``health`` so a busy worker still
answers, and the heavy calls one at a time in the default group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import ray
import torch

from interpret.checkpoint import load_checkpoint
from interpret.concurrency import trim_heap_periodically
from interpret.data import AddedRows, DataSpec
from interpret.explainer import Explainer
from interpret.models import TrackedScope


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
    added: AddedRows | None = None
    """Rows a gradient index added after the training data (``interpret.data.with_added_rows``)."""

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float64", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, float64, bfloat16 or float16, got {self.dtype!r}")

    def with_absolute_paths(self) -> WorkerSpec:
        """Local relative paths made absolute: actors may run in another working directory."""
        spec = self
        if Path(spec.model_dir).exists():
            spec = replace(spec, model_dir=str(Path(spec.model_dir).resolve()))
        if spec.train_spec is not None:
            spec = replace(spec, train_spec=spec.train_spec.with_absolute_source())
        return spec  # added rows' sources are recorded absolute (index.growth.append_rows)


class InfluenceWorker(Explainer):
    """An :class:`Explainer` placed by Ray: device and threads from the actor's assignment."""

    CONCURRENCY_GROUPS: ClassVar[dict[str, int]] = {"health": 1, "light": 1}

    def __init__(self, spec: WorkerSpec):
        context = ray.get_runtime_context()
        torch.set_num_threads(spec.threads or max(1, int(context.get_assigned_resources().get("CPU", 1))))
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        checkpoint = load_checkpoint(
            spec.model_dir,
            spec.train_spec,
            spec.tracked_layers,
            getattr(torch, spec.dtype),
            device,
            spec.trust_remote_code,
            spec.added,
        )
        super().__init__(checkpoint, name=f"{context.get_node_id()[:12]}/pid{os.getpid()}/{device}")
        trim_heap_periodically()
