"""Pool settings, its errors, and joining a Ray cluster: what callers configure and catch.

Importing this module does not import ray (``connect`` does, when called), so the service can map these
errors to HTTP codes without starting anything.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from interpret.cancellation import DEFAULT_DEADLINE_S


class WorkerPoolError(RuntimeError):
    """A part of a query could not be finished by any worker (retries exhausted)."""


class WorkerTimeoutError(TimeoutError):
    """A call ran past its deadline; the busy workers were replaced."""


class WorkerMismatchError(ValueError):
    """Workers disagree on the model, tracked parameters or data, or differ from the index."""


@dataclass(frozen=True)
class PoolSettings:
    """How many actors, what each one gets, and how hard to try."""

    num_workers: int | None = None
    """``None``: one per GPU when the cluster has GPUs, else ``min(4, CPUs // cpus_per_worker)``."""
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None
    """``None``: 1 when the cluster has GPUs, else 0."""
    max_retries: int = 2
    deadline_s: float = DEFAULT_DEADLINE_S
    num_shards: int | None = None
    """Candidate shards per scoring call; ``None``: one per worker."""

    def __post_init__(self) -> None:
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")
        if self.num_shards is not None and self.num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {self.num_shards}")


def secure_token_file(path: Path | None = None) -> None:
    """Make the cluster's token file (``~/.ray/auth_token``) readable by its owner only: Ray writes it
    world-readable (0644), and it is the key to the whole cluster."""
    token = path or Path.home() / ".ray" / "auth_token"
    if token.is_file() and token.stat().st_mode & 0o077:
        token.chmod(0o600)


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``); otherwise start a local one, no dashboard.

    Worker logs stay in Ray's session logs (not this process's console, which may be printing JSON);
    a worker's exception still reaches the caller as itself.
    """
    import ray

    if ray.is_initialized():
        return
    # Ray's driver takes SIGTERM over with a handler that exits at once, which under ``influence serve``
    # cut uvicorn's graceful shutdown short (in-flight requests dropped, lifespan never closed): give
    # SIGTERM back to whoever held it. Ray is still shut down at exit.
    on_main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    if sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)
    secure_token_file()
