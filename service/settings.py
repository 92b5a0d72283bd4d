"""Deployment settings, read from ``INFLUENCE_*`` environment variables (or a ``.env`` file).

Algorithm settings (LiSSA, k, top) arrive per request and are frozen dataclasses in ``interpret``; these
are the operator's: where the model, data and index live, how many workers, and the request limits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.cache import DEFAULT_MAX_BYTES
from interpret.cancellation import DEFAULT_DEADLINE_S
from interpret.config import JOB_KINDS
from interpret.data import DataSpec

HEAVY_JOB_DEADLINE_S = {"evaluate": 14_400.0, "index_build": 14_400.0}
"""A heavy job's default deadline: four hours (a full audit or gradient-index build of SST-2 takes tens of
minutes on CPUs). The other kinds get ``deadline_s``, as long as a synchronous query may take."""


class Settings(BaseSettings):
    # Empty variables count as unset (compose passes ``INFLUENCE_WORKERS=`` when .env leaves it blank).
    model_config = SettingsConfigDict(
        env_prefix="INFLUENCE_",
        env_file=".env",
        extra="ignore",
        env_ignore_empty=True,
        use_attribute_docstrings=True,  # each field's docstring is its description (docs/cli.md)
    )

    model_dir: Path = Path("artifacts/model")
    """Fine-tuned model folder with ``card.json`` (``influence train``)."""
    index_dir: Path | None = Path("artifacts/index")
    """kNN index folder (``influence index build``); ``None``: full scans only."""
    gradient_index_dir: Path | None = Path("artifacts/gradient-index")
    """Gradient index folder (``influence index build --kind gradient``); when it exists it is loaded and
    ``gradient`` becomes the default method."""
    max_index_bytes: int | None = Field(None, gt=0)
    """Resident bytes a gradient index may take in this process (checked before a load or a build, which
    is refused naming the storages that fit); ``None``: the machine's available memory."""
    train_data: str | None = None
    """The model's training data (file or ``hub:NAME[/CFG]:SPLIT``); default: the one its card names. With
    neither, the service answers prediction, saliency and attacks, and says influence needs it."""
    train_text_column: str = "text"
    """Column of ``INFLUENCE_TRAIN_DATA`` holding the text."""
    train_pair_column: str | None = None
    """Column holding the second text of a pair (NLI); ``None``: single texts."""
    train_label_column: str = "label"
    """Column holding integer labels (or the model's label names)."""
    train_id_column: str | None = None
    """Column holding example ids; ``None``: row numbers."""
    train_max_examples: int | None = Field(None, ge=1)
    """The seeded subset of this many rows the model was trained on (``influence train --max-examples``)."""
    tracked_layers: str | None = None
    """Tracked set (``2``, ``classifier``, ``lora``, ``modules:PATTERN,...``); ``None``: the card's."""

    workers: int | None = None
    """Ray actors; ``None``: one per GPU, else min(4, CPUs). ``RAY_ADDRESS`` joins a cluster."""
    cpus_per_worker: float = 1.0
    """CPUs each Ray actor reserves."""
    gpus_per_worker: float | None = None
    """GPUs each Ray actor reserves; ``None``: one where the cluster has GPUs."""
    max_retries: int = 2
    """Times a part of a query whose actor died is re-run on a fresh actor."""
    deadline_s: float = Field(DEFAULT_DEADLINE_S, gt=0)
    """Seconds a query may take on the workers before it stops with a timeout."""

    api_key: SecretStr | None = None
    """When set, every ``/v1`` request needs the ``X-API-Key`` header (this key is the client named
    ``default``)."""
    api_keys: dict[str, SecretStr] = Field(default_factory=dict)
    """Named API keys (JSON, ``{"alice": "KEY", ...}``): each name is one client, with its own job quota.
    When any key is set (this or ``api_key``) every ``/v1`` request needs one; with none, a client is its
    address and an ``X-API-Key`` header is ignored."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses or networks (``10.0.0.0/8``) of reverse proxies whose ``X-Forwarded-For`` names the
    client; from any other peer the header is ignored."""
    max_body_bytes: int = Field(1_000_000, gt=0)
    """Largest request body (413 beyond)."""
    body_timeout_s: float = Field(10.0, gt=0)
    """Seconds a client may take between two parts of its request body (a body shorter than its
    Content-Length, or a trickle, gets 408 instead of holding a connection forever)."""
    header_deadline_s: float = Field(10.0, gt=0)
    """Seconds a client may take to send a request's line and headers under ``influence serve`` (a
    trickle is disconnected; plain ``uvicorn`` has no such limit)."""
    body_deadline_s: float = Field(30.0, gt=0)
    """Seconds a client may take to send its whole request body (a trickle that never stalls
    ``body_timeout_s`` is cut here: 408)."""
    max_header_bytes: int = Field(16_384, gt=0)
    """Largest total size of a request's headers (431 beyond)."""
    max_headers: int = Field(100, gt=0)
    """Most headers in one request (431 beyond)."""
    max_input_chars: int = Field(4_096, gt=0)
    """Characters per text (and per pair), checked before any tokenizer runs."""
    max_input_tokens: int = Field(128, gt=0)
    """Word-pieces per input the model sees (longer inputs are truncated)."""
    max_batch: int = Field(32, gt=0)
    """Inputs per request."""
    max_k: int = Field(10_000, gt=0)
    """fastif candidates per query; also bounds a full scan and ``rerank``."""
    allow_full_scan: bool = False
    """Whether a query may score every training row (``method=full``, or ``k=null``) and an evaluate
    ``recall`` job may compare with one: the exact reference, but minutes of every worker per request."""
    max_top: int = Field(100, gt=0)
    """Helpful and harmful examples a query may return."""
    max_recursion_depth: int = Field(5_000, gt=0)
    """LiSSA depth J per request."""
    max_cg_rows: int = Field(5_000, gt=0)
    """Training rows a CG solve may take its Hessian over (each CG iteration is one pass over them)."""
    max_repetitions: int = Field(8, gt=0)
    """LiSSA repetitions T per request."""
    max_samples: int = Field(256, gt=0)
    """Saliency steps / samples per request (integrated gradients, SmoothGrad, LIME)."""
    max_attack_search: int = Field(100, gt=0)
    """Attack search sizes: HotFlip candidates and flips, beam size, trigger tokens/iterations/candidates."""
    max_trigger_examples: int = Field(512, gt=0)
    """Training examples a trigger search may use (num_examples + held_out)."""
    max_sync_forward_passes: int = Field(4_000, gt=0)
    """Estimated example forward passes a synchronous saliency or attack request may cost (the default
    trigger search, about 3,300, takes a minute on a one-CPU MiniLM worker); a costlier one is refused
    with 422 and runs as a job instead."""
    max_in_flight: int = Field(8, gt=0)
    """Requests computing at once; one more gets 429 with Retry-After instead of a queue."""
    retry_after_s: int = Field(5, gt=0)
    """Seconds a 429 tells the client to wait (``Retry-After``) when no job will expire sooner."""
    keep_alive_s: int = Field(75, gt=0)
    """Seconds ``influence serve`` keeps an idle HTTP connection open. Longer than clients keep theirs
    (httpx: 5 s), so the client drops an idle connection first: with uvicorn's own default of 5 s, a
    client retrying after ``Retry-After: 5`` sent its request down a connection the server was closing
    and got a ReadError (seen once in 36 requests of benchmarks/service_load.py)."""
    s_test_cache_entries: int = Field(64, ge=0)
    """``s_test`` vectors kept for repeated queries (0: no cache)."""
    s_test_cache_bytes: int = Field(DEFAULT_MAX_BYTES, ge=0)
    """Bytes the ``s_test`` cache may hold."""
    job_ttl_s: float = Field(600.0, gt=0)
    """Seconds a succeeded job's result waits to be fetched."""
    failed_job_ttl_s: float = Field(60.0, gt=0)
    """Seconds a failed or cancelled job's status is kept."""
    max_jobs: int = Field(100, gt=0)
    """Jobs the service keeps at once (queued, running or unfetched)."""
    max_jobs_per_client: int = Field(10, gt=0)
    """Jobs one client (API key and address) may have queued, running or unfetched."""
    job_deadline_s: dict[str, float] = Field(default_factory=lambda: dict(HEAVY_JOB_DEADLINE_S))
    """Seconds a whole job may run from its start, by kind (JSON, e.g. ``{"evaluate": 3600}``): every
    worker call it makes stops at this deadline. Kinds left out: evaluate and index_build 14400, the others
    ``deadline_s``."""
    scratch_dir: Path | None = None
    """Where jobs keep their intermediate files (the gradient shards of an audit or an index build, each
    whole, so a rerun resumes), apart from the served indexes; ``None``: ``scratch`` beside the model
    folder."""
    interactive_jobs: int | None = Field(None, gt=0)
    """Interactive jobs (influence, saliency, attack) running at once; ``None``: max(2, workers)."""
    heavy_jobs: int = Field(1, gt=0)
    """Heavy jobs (evaluate, index builds) running at once."""
    heavy_job_callers: Literal["everyone", "keyed", "nobody"] = "everyone"
    """Who may submit heavy jobs: anyone, only callers with a configured API key, or nobody."""
    allow_index_build_jobs: bool = True
    """Whether ``POST /v1/jobs`` may build indexes (into the configured folders)."""
    trust_remote_code: bool = False
    """Run model code shipped in the model folder (``auto_map``); off unless set."""

    @field_validator("job_deadline_s")
    @classmethod
    def _known_kinds(cls, given: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(given) - set(JOB_KINDS))
        if unknown:
            raise ValueError(f"job_deadline_s names unknown job kinds {unknown}: use {', '.join(JOB_KINDS)}")
        if any(not (seconds > 0 and math.isfinite(seconds)) for seconds in given.values()):
            raise ValueError("job_deadline_s values must be finite seconds > 0")
        return {**HEAVY_JOB_DEADLINE_S, **given}

    @field_validator("api_keys")
    @classmethod
    def _distinct_keys(cls, given: dict[str, SecretStr]) -> dict[str, SecretStr]:
        values = [key.get_secret_value() for key in given.values()]
        if any(not name.strip() for name in given) or not all(values):
            raise ValueError("api_keys needs a non-empty name and a non-empty key for each client")
        if len(set(values)) < len(values):
            raise ValueError("api_keys gives two clients the same key: each client needs its own")
        return given

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, given: list[str]) -> list[str]:
        for entry in given:
            if not entry.strip() or any(character.isspace() for character in entry):
                raise ValueError(f"trusted_proxies entry {entry!r} is not an address, a network or a host")
        return given

    def named_keys(self) -> dict[str, str]:
        """Every configured API key by client name (``api_key`` is ``default``)."""
        keys = {name: key.get_secret_value() for name, key in self.api_keys.items()}
        if self.api_key is not None:
            keys.setdefault("default", self.api_key.get_secret_value())
        return keys

    def job_deadline(self, kind: str) -> float:
        """Seconds a whole job of ``kind`` may run."""
        return self.job_deadline_s.get(kind, self.deadline_s)

    @property
    def job_scratch_dir(self) -> Path:
        return self.scratch_dir if self.scratch_dir is not None else Path(self.model_dir).parent / "scratch"

    def train_spec(self) -> DataSpec | None:
        """``INFLUENCE_TRAIN_DATA`` and its columns as a data spec; ``None``: the card's."""
        if self.train_data is None:
            return None
        columns = (self.train_text_column, self.train_pair_column, self.train_label_column)
        return DataSpec(self.train_data, *columns, self.train_id_column, self.train_max_examples)

    def check_model(self) -> None:
        """The model folder must hold a model and its tokenizer: said in one line before anything starts."""
        from interpret.models import resolve_model_path

        resolve_model_path(self.model_dir)
