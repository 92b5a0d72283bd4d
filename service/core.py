"""What the routes call: the engine (Ray pool), the s_test cache, the in-flight bound, the jobs.

Every method here is blocking and runs on a worker thread (routes use ``run_in_threadpool``), so the
event loop stays free for health checks and 429s while workers compute.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from index import build_index, load_index, read_manifest
from interpret.attacks import ATTACK_METHODS
from interpret.checkpoint import read_card
from interpret.concurrency import serialized
from interpret.data import DataSpec
from interpret.influence import LissaConfig, QueryConfig
from interpret.saliency import SALIENCY_METHODS
from service.cache import STestCache
from service.errors import BusyError, LimitExceededError, NotReadyError
from service.jobs import JobManager, Progress
from service.limits import check_influence, check_inputs, check_method_parameters, check_text
from service.pipeline import Engine, answer_to_dict, attack_to_dict, saliency_to_dict
from service.schemas import (
    AttackRequest,
    InfluenceRequest,
    JobRequest,
    ModelInfo,
    PredictRequest,
    SaliencyRequest,
)
from service.settings import Settings

ENCODE_CHUNK = 2048  # training texts per encode call of an index-build job (its progress granularity)


def build_engine(settings: Settings) -> Engine:
    """The Ray-pool engine the deployment runs: every model computation happens on the workers."""
    from service.pipeline import PooledEngine
    from workers import PoolSettings

    pool_settings = PoolSettings(
        num_workers=settings.workers,
        cpus_per_worker=settings.cpus_per_worker,
        gpus_per_worker=settings.gpus_per_worker,
        max_retries=settings.max_retries,
        deadline_s=settings.deadline_s,
    )
    train_spec = DataSpec(settings.train_data) if settings.train_data else None
    index_dir = settings.index_dir if settings.index_dir and Path(settings.index_dir).exists() else None
    tracked = settings.tracked_layers
    scope = int(tracked) if tracked is not None and tracked.isdigit() else tracked
    return PooledEngine(settings.model_dir, train_spec, index_dir, scope, settings=pool_settings)


class InFlight:
    """At most ``limit`` requests computing at once; the next one is refused with 429 + Retry-After."""

    def __init__(self, limit: int, retry_after_s: int):
        self.limit, self.retry_after_s, self.count = limit, retry_after_s, 0
        self._lock = threading.Lock()

    @contextmanager
    def slot(self):
        with self._lock:
            if self.count >= self.limit:
                raise BusyError(
                    f"{self.count} requests are computing (limit {self.limit}); retry after "
                    f"{self.retry_after_s} s or submit a job (POST /v1/jobs)",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self.count += 1
        try:
            yield
        finally:
            with self._lock:
                self.count -= 1


class InfluenceService:
    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine if engine is not None else build_engine(settings)
        # For the limit checks, which every request thread runs at once.
        tokenizer = AutoTokenizer.from_pretrained(
            str(settings.model_dir), trust_remote_code=settings.trust_remote_code
        )
        self.tokenizer = serialized(tokenizer)
        self.cache = STestCache(settings.s_test_cache_entries, settings.s_test_cache_bytes)
        self.in_flight = InFlight(settings.max_in_flight, settings.retry_after_s)
        self.jobs = JobManager(settings.max_jobs, settings.job_ttl_s, retry_after_s=settings.retry_after_s)
        self._index_lock = threading.Lock()
        self._progress_lock = threading.Lock()

    # ---------------------------------------------------------------- influence

    def _query_config(self, request: InfluenceRequest) -> QueryConfig:
        lissa = LissaConfig(**request.lissa.model_dump())
        return QueryConfig(request.k, request.top, lissa, request.exact)

    def check_influence(self, request: InfluenceRequest) -> None:
        engine = self.engine
        check_influence(request, self.settings, self.tokenizer, engine.num_labels, len(engine.examples))
        if request.k is not None and engine.index is None:
            raise LimitExceededError(
                "k was given but this server has no kNN index: give k=null (full scan) or build one "
                "(POST /v1/jobs with kind=index_build)",
                {"field": "k", "value": request.k},
            )

    def influence(self, request: InfluenceRequest, progress: Progress | None = None) -> dict:
        """Answer every input; several inputs run at once (up to one per worker), answered in order."""
        config = self._query_config(request)
        done = 0

        def answer(item) -> dict:
            nonlocal done
            result = answer_to_dict(
                self.engine.query(item.text, item.text_pair, item.label, config, cache=self.cache), config
            )
            with self._progress_lock:
                done += 1
                if progress is not None:
                    progress(done, len(request.inputs))
            return result

        threads = max(1, min(len(request.inputs), self.engine.num_workers))
        with ThreadPoolExecutor(threads, thread_name_prefix="influence-query") as executor:
            return {"results": list(executor.map(answer, request.inputs))}

    # ---------------------------------------------------------------- the rest

    def predict(self, request: PredictRequest) -> dict:
        check_inputs(request.inputs, self.settings, self.tokenizer, self.engine.num_labels)
        texts = [item.text for item in request.inputs]
        pairs = [item.text_pair or "" for item in request.inputs]
        has_pairs = any(item.text_pair is not None for item in request.inputs)
        probabilities = self.engine.backend.predict(texts, pairs if has_pairs else None)
        return {
            "predictions": [
                {"label": int(row.argmax()), "probabilities": [float(p) for p in row]}
                for row in probabilities
            ]
        }

    def saliency(self, request: SaliencyRequest) -> dict:
        check_text(request, self.settings, self.tokenizer, self.engine.num_labels)
        function = SALIENCY_METHODS[request.method]
        check_method_parameters(
            "saliency method", request.method, function, request.parameters, self.settings
        )
        result = self.engine.backend.saliency(
            request.text, request.text_pair, request.method, request.label, dict(request.parameters)
        )
        return saliency_to_dict(result)

    def attack(self, request: AttackRequest) -> dict:
        check_text(request, self.settings, self.tokenizer, self.engine.num_labels)
        if request.target is not None and request.target >= self.engine.num_labels:
            raise LimitExceededError(
                f"target={request.target} is not a label of this model: use 0..{self.engine.num_labels - 1}",
                {"field": "target", "value": request.target},
            )
        function = ATTACK_METHODS[request.method]
        parameters = dict(request.parameters)
        if request.target is not None:
            parameters["target"] = request.target  # checked like the rest: input_reduction takes none
        check_method_parameters("attack", request.method, function, parameters, self.settings)
        parameters.pop("target", None)
        result = self.engine.backend.attack(
            request.text, request.text_pair, request.method, request.label, request.target, parameters
        )
        return attack_to_dict(result)

    def models(self) -> dict:
        engine = self.engine
        manifest = read_manifest(self.settings.index_dir).__dict__ if engine.index is not None else None
        info = ModelInfo(
            model_dir=str(self.settings.model_dir),
            card=read_card(self.settings.model_dir),
            index_manifest=manifest,
            tracked_parameters=engine.num_parameters,
            tracked_layers=engine.tracked_layers,
            workers=engine.num_workers,
            num_training_examples=len(engine.examples),
        )
        return {"models": [info.model_dump()]}

    def readiness(self) -> dict:
        workers = self.engine.ping()
        index_expected = self.settings.index_dir is not None
        status = {"index_loaded": self.engine.index is not None, "workers": workers}
        if None in workers or (index_expected and self.engine.index is None):
            raise NotReadyError(
                "not ready: "
                + ("a worker does not answer" if None in workers else "no index loaded (build one)"),
                status,
            )
        return status

    # ---------------------------------------------------------------- jobs

    def submit_job(self, request: JobRequest) -> dict:
        if request.kind == "influence":
            query = request.influence
            if query is None:
                raise LimitExceededError(
                    "kind=influence needs the query in the 'influence' field", {"field": "influence"}
                )
            self.check_influence(query)
            job = self.jobs.submit("influence", lambda progress: self.influence(query, progress))
            return job.status()
        if not self.settings.allow_index_build_jobs or self.settings.index_dir is None:
            raise LimitExceededError(
                "index builds are disabled on this server (INFLUENCE_ALLOW_INDEX_BUILD_JOBS, "
                "INFLUENCE_INDEX_DIR)",
                {"field": "kind", "value": "index_build"},
            )
        factory = request.factory
        job = self.jobs.submit("index_build", lambda progress: self.build_index(factory, progress))
        return job.status()

    def build_index(self, factory: str, progress: Progress) -> dict:
        """Encode the training set on the workers, write the index atomically, then swap it in."""
        examples, engine = self.engine.examples, self.engine
        chunks = range(0, len(examples), ENCODE_CHUNK)
        parts = []
        for done, start in enumerate(chunks):
            texts = examples.texts[start : start + ENCODE_CHUNK]
            pairs = examples.pairs[start : start + ENCODE_CHUNK] if examples.pairs is not None else None
            parts.append(engine.backend.encode(texts, pairs))
            progress(done + 1, len(chunks) + 1)
        with self._index_lock:
            index_dir = self.settings.index_dir
            manifest = build_index(
                np.concatenate(parts), index_dir, engine.fingerprint, examples.fingerprint, factory
            )
            engine.index = load_index(index_dir, engine.fingerprint, examples.fingerprint)
        return {"index_manifest": manifest.__dict__}

    def shutdown(self) -> None:
        self.jobs.shutdown()
        if hasattr(self.engine, "shutdown"):
            self.engine.shutdown()
