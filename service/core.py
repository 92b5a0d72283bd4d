"""What the routes call: one method per route, over the engine, the s_test cache, the in-flight bound, jobs.

Every method here is blocking and runs on a worker thread (routes use ``run_in_threadpool``), limit
checks included (they tokenise), so the event loop stays free for health checks and 429s. Each method
takes the route's request model and returns its response model.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from engine.builds import (
    add_to_gradient_index,
    build_gradient_index,
    build_knn_index,
    check_gradient_factory,
    resolved_preconditioner,
)
from engine.cache import STestCache
from engine.pipeline import (
    Engine,
    answer_query,
    gradient_index_for,
    knn_index_for,
    local_engine,
    pooled_engine,
)
from index import empty_index
from index.gradient import GradientIndex
from index.growth import check_growable, remove_gradient_rows
from index.storage import check_storage_rows
from interpret.cancellation import Cancellations, RequestContext
from interpret.checkpoint import TrainingDataMissingError, card_data_spec
from interpret.config import (
    Config,
    GradientIndexConfig,
    MethodUnavailableError,
    QueryConfig,
    evaluated_query,
    resolve_method,
    resolve_solver,
    solves_s_test,
    unused_knobs,
)
from interpret.data import DataFileError, DataSpec, load_examples, write_rows
from interpret.models import parse_scope
from service.errors import BusyError, ForbiddenError, LimitExceededError, NotReadyError, field_prefix
from service.jobs import JOB_CLASSES, Client, JobManager, Progress, Work
from service.limits import (
    check_full_scan,
    check_influence,
    check_inputs,
    check_method_parameters,
    check_sync_work,
    check_text,
    parameter_limits,
)
from service.responses import attack_response, influence_result, prediction, saliency_response
from service.schemas import (
    AttackResponse,
    IndexAddRequest,
    IndexBuildResult,
    IndexRemoveRequest,
    InfluenceResponse,
    JobList,
    JobRequest,
    JobStatus,
    ModelInfo,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    Readiness,
    SaliencyResponse,
)
from service.settings import Settings
from tasks.registry import QUERYING_TASKS, TASKS, HeadCache, run_job


def build_engine(settings: Settings) -> Engine:
    """The Ray-pool engine the deployment runs: every model computation happens on the workers."""
    from workers import PoolSettings

    pool_settings = PoolSettings(
        num_workers=settings.workers,
        cpus_per_worker=settings.cpus_per_worker,
        gpus_per_worker=settings.gpus_per_worker,
        max_retries=settings.max_retries,
        deadline_s=settings.deadline_s,
    )
    settings.check_model()
    train_spec = settings.train_spec()
    index_dir = _existing(settings.index_dir)
    tracked = settings.tracked_layers
    scope = parse_scope(tracked) if tracked is not None else None
    return pooled_engine(
        settings.model_dir,
        train_spec,
        index_dir,
        scope,
        settings=pool_settings,
        trust_remote_code=settings.trust_remote_code,
        gradient_index_dir=_existing(settings.gradient_index_dir),
        # the default folder may hold another model's index: passed over, unlike one the operator named
        gradient_index_optional="gradient_index_dir" not in settings.model_fields_set,
        max_index_bytes=settings.max_index_bytes,
    )


def _existing(directory: Path | None) -> Path | None:
    return directory if directory is not None and Path(directory).exists() else None


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


def public_card(card: dict) -> dict:
    """The model card as callers see it: data files by name, never this server's absolute paths."""
    shown = {key: value for key, value in card.items() if key != "data_source"}
    spec = card.get("data_spec")
    if spec and not str(spec.get("source", "")).startswith("hub:"):
        shown["data_spec"] = {**spec, "source": Path(spec["source"]).name}
    return shown


class InfluenceService:
    def __init__(self, settings: Settings, engine: Engine | None = None):
        from transformers import AutoTokenizer

        from interpret.concurrency import serialized, trim_heap_periodically

        trim_heap_periodically()  # an audit or an index build peaks here, in the API process, too
        self.settings = settings
        self.engine = engine if engine is not None else build_engine(settings)
        # For the limit checks, which every request thread runs at once.
        tokenizer = AutoTokenizer.from_pretrained(
            str(settings.model_dir), trust_remote_code=settings.trust_remote_code
        )
        self.tokenizer = serialized(tokenizer)
        self.cache = STestCache(settings.s_test_cache_entries, settings.s_test_cache_bytes)
        self.in_flight = InFlight(settings.max_in_flight, settings.retry_after_s)
        interactive = settings.interactive_jobs or max(2, self.engine.backend.num_workers)
        self.jobs = JobManager(
            settings.max_jobs,
            settings.job_ttl_s,
            concurrency={"interactive": interactive, "heavy": settings.heavy_jobs},
            retry_after_s=settings.retry_after_s,
            max_per_client=settings.max_jobs_per_client,
            failed_ttl_s=settings.failed_job_ttl_s,
            cancel=self.cancel,
            deadline_s=settings.job_deadline,
        )
        self._index_lock = threading.Lock()
        self._heads = HeadCache()
        self._local_work = Cancellations()

    def new_context(self) -> RequestContext:
        """A request's id and deadline: every call it makes, and nothing it caches, is bound by them."""
        return RequestContext(uuid.uuid4().hex, time.time() + self.settings.deadline_s)

    def cancel(self, request_id: str) -> None:
        """Stop a request's work at its next step boundary (its client went away, its job was deleted)."""
        self.engine.backend.cancel(request_id)
        self._local_work.cancel(request_id)

    # ---------------------------------------------------------------- influence

    def check_influence(self, request) -> None:
        engine = self.engine
        engine.training_examples()
        curvature = engine.gradient_index is not None and engine.gradient_index.curvature is not None
        try:
            config = request.config()
            method = resolve_method(config, engine.gradient_index is not None, engine.index is not None)
            solver = resolve_solver(config, method, curvature)
            if config.normalize and method == "gradient" and engine.gradient_index is not None:
                engine.gradient_index.require_norms()
        except MethodUnavailableError as error:
            value = getattr(request, error.field)
            raise LimitExceededError(str(error), {"field": error.field, "value": value}) from None
        unused = unused_knobs(config, method, solver)
        if unused:
            solved = solves_s_test(method, config.rerank)
            ran = f"method='{method}'" + (
                f", solver='{'exact' if config.exact else solver}'" if solved else ""
            )
            reads = "; ".join(f"{name} is read by {user}" for name, user in unused)
            raise LimitExceededError(
                f"this query ({ran}) does not use {', '.join(name for name, _ in unused)}: {reads}. "
                "Leave it out, or ask for what reads it",
                {"field": unused[0][0], "method": method},
            )
        check_influence(
            request, self.settings, self.tokenizer, engine.identity, engine.num_examples, method, solver
        )

    def influence(
        self, request, context: RequestContext | None = None, progress: Progress | None = None
    ) -> InfluenceResponse:
        """Answer every input; several inputs run at once (up to one per worker), answered in order."""
        self.check_influence(request)
        config, context = request.config(), context or self.new_context()
        done, lock = 0, threading.Lock()

        def answer(item):
            nonlocal done
            arguments = (item.text, item.text_pair, item.label, config)
            found = answer_query(self.engine, *arguments, cache=self.cache, context=context)
            with lock:
                done += 1
                if progress is not None:
                    progress(done, len(request.inputs))
            names = self.engine.identity.label_names
            return influence_result(found, config, names, disclose=False)

        threads = max(1, min(len(request.inputs), self.engine.backend.num_workers))
        with ThreadPoolExecutor(threads, thread_name_prefix="influence-query") as executor:
            return InfluenceResponse(results=list(executor.map(answer, request.inputs)))

    # ---------------------------------------------------------------- the rest

    def predict(self, request: PredictRequest, context: RequestContext | None = None) -> PredictResponse:
        check_inputs(request.inputs, self.settings, self.tokenizer, self.engine.identity)
        texts = [item.text for item in request.inputs]
        pairs = [item.text_pair or "" for item in request.inputs]
        has_pairs = any(item.text_pair is not None for item in request.inputs)
        context = context or self.new_context()
        rows = self.engine.backend.predict(texts, pairs if has_pairs else None, context)
        names = self.engine.identity.label_names
        return PredictResponse(predictions=[prediction(row, names) for row in rows])

    def _check_method(self, request, job: bool) -> Config:
        """A saliency or attack request's text and parameters (the library's, already validated by their
        model) against the limits, the synchronous budget too unless it runs as a job: one check for the
        synchronous route and for a job's submission."""
        check_text(request, self.settings, self.tokenizer, self.engine.identity)
        params = request.parameters
        check_method_parameters(params, self.settings)
        if not job:
            check_sync_work(request.method, params, self.settings)
        return params

    def check_saliency(self, request, job: bool = False) -> Config:
        return self._check_method(request, job)

    def saliency(self, request, context: RequestContext | None = None, job: bool = False) -> SaliencyResponse:
        """A saliency map; ``job=True`` (a job's own run) lifts the synchronous budget."""
        params = self.check_saliency(request, job)
        arguments = (request.text, request.text_pair, request.method, request.label, params)
        found = self.engine.backend.saliency(*arguments, context or self.new_context())
        return saliency_response(found, self.engine.identity.label_names)

    def attack(self, request, context: RequestContext | None = None, job: bool = False) -> AttackResponse:
        """An attack; ``job=True`` (a job's own run) lifts the synchronous budget."""
        params = self.check_attack(request, job)
        target = getattr(request, "target", None)  # an index now: check_text resolved a name
        arguments = (request.text, request.text_pair, request.method, request.label, target, params)
        found = self.engine.backend.attack(*arguments, context or self.new_context())
        return attack_response(found, self.engine.identity.label_names)

    def check_attack(self, request, job: bool = False) -> Config:
        """As :meth:`_check_method`; a trigger search also needs the training examples of the class."""
        if request.method == "triggers":
            self.engine.training_examples("a trigger search")
        return self._check_method(request, job)

    def models(self) -> ModelsResponse:
        engine = self.engine
        manifest = asdict(engine.index.manifest) if engine.index is not None else None
        gradient = engine.gradient_index
        info = ModelInfo(
            model_dir=Path(self.settings.model_dir).name,
            card=public_card(engine.card),
            index_manifest=manifest,
            gradient_index_manifest=asdict(gradient.manifest) if gradient is not None else None,
            tracked_parameters=engine.identity.num_parameters,
            tracked_layers=engine.identity.tracked_layers,
            workers=engine.backend.num_workers,
            num_training_examples=engine.num_examples,
            influence_unavailable=self._missing_data("influence"),
            num_labels=engine.identity.num_labels,
            labels=list(engine.identity.label_names),
            takes_pairs=engine.identity.takes_pairs,
            limits=self.limits(),
            parameter_limits=parameter_limits(self.settings),
            full_scan_allowed=self.settings.allow_full_scan,
        )
        return ModelsResponse(models=[info])

    def _missing_data(self, what: str) -> str | None:
        """Why ``what`` cannot run here (no training data), or ``None`` when it can."""
        try:
            self.engine.training_examples(what)
        except TrainingDataMissingError as error:
            return str(error)
        return None

    def limits(self) -> dict[str, int]:
        """The operator's integer ``max_*`` settings: what a form (the web page) may offer."""
        values = self.settings.model_dump()
        return {
            name: value for name, value in values.items() if name.startswith("max_") and type(value) is int
        }

    def readiness(self) -> Readiness:
        answering = sum(name is not None for name in self.engine.backend.ping())
        workers = self.engine.backend.num_workers
        # Without training data no index is loaded, by design: the server still answers what needs none.
        # Either index serves influence (the gradient one alone is the README's own-model set-up).
        engine = self.engine
        loaded = engine.index is not None or engine.gradient_index is not None
        index_missing = self.settings.index_dir is not None and not loaded and engine.examples is not None
        status = Readiness(
            ready=answering == workers and not index_missing,
            index_loaded=loaded,
            training_data=self.engine.examples is not None,
            workers=workers,
            workers_answering=answering,
        )
        if not status.ready:
            reason = "a worker does not answer" if answering < workers else "no index loaded (build one)"
            raise NotReadyError(f"not ready: {reason}", status.model_dump())
        return status

    # ---------------------------------------------------------------- jobs

    def submit_job(self, request: JobRequest, client: Client) -> JobStatus:
        """Check the job's request now (a bad one is a 422, not a failed job), then queue it."""
        self._check_job_access(request.kind, client)
        body = getattr(request, request.kind, None)
        if request.kind != "index_build" and body is None:
            raise LimitExceededError(
                f"kind={request.kind} needs its request in the {request.kind!r} field",
                {"field": request.kind},
            )
        work: Work
        if request.kind == "index_build":
            if request.index_kind == "gradient":
                config = self._check_gradient_build(request.gradient)
                work = lambda progress, context: self.build_gradient_index(config, progress, context)  # noqa: E731
            else:
                self._check_index_build(request.factory)
                factory = request.factory
                work = lambda progress, context: self.build_index(factory, progress, context)  # noqa: E731
            return self.jobs.submit(request.kind, work, client.id)
        if request.kind == "index_remove":
            assert request.index_remove is not None  # checked above: the body is required
            rows = self._check_index_remove(request.index_remove)
            work = lambda progress, context: self.remove_rows(rows)  # noqa: E731
            return self.jobs.submit(request.kind, work, client.id)
        if request.kind == "index_add":
            assert request.index_add is not None  # checked above: the body is required
            added = self._check_index_add(request.index_add)
            work = lambda progress, context: self.add_rows(added, progress, context)  # noqa: E731
            return self.jobs.submit(request.kind, work, client.id)
        with field_prefix(request.kind):  # the body's fields are named by their path in the job
            if request.kind == "influence":
                self.check_influence(body)
                work = lambda progress, context: self.influence(body, context, progress)  # noqa: E731
            elif request.kind == "evaluate":
                self._check_evaluation(body)
                work = lambda progress, context: self.evaluate(body, progress, context)  # noqa: E731
            else:
                check = self.check_saliency if request.kind == "saliency" else self.check_attack
                check(body, job=True)
                run = self.saliency if request.kind == "saliency" else self.attack
                work = lambda progress, context: run(body, context, job=True)  # noqa: E731
        return self.jobs.submit(request.kind, work, client.id)

    def _check_job_access(self, kind: str, client: Client) -> None:
        """Heavy kinds (evaluate, index builds) as INFLUENCE_HEAVY_JOB_CALLERS allows."""
        callers = self.settings.heavy_job_callers
        if JOB_CLASSES[kind] != "heavy" or callers == "everyone" or (callers == "keyed" and client.keyed):
            return
        who = "nobody" if callers == "nobody" else "callers with an API key (X-API-Key)"
        raise ForbiddenError(
            f"kind={kind} is a heavy job, which this server runs for {who} only "
            "(INFLUENCE_HEAVY_JOB_CALLERS); run it offline with the CLI (`influence evaluate`, "
            "`influence index build`)",
            {"field": "kind", "value": kind},
        )

    def _check_builds_allowed(self, directory: Path | None, variable: str) -> None:
        self.engine.training_examples("an index build")
        if not self.settings.allow_index_build_jobs or directory is None:
            raise LimitExceededError(
                f"index builds are disabled on this server (INFLUENCE_ALLOW_INDEX_BUILD_JOBS, {variable})",
                {"field": "kind", "value": "index_build"},
            )

    def _check_index_build(self, factory: str) -> None:
        self._check_builds_allowed(self.settings.index_dir, "INFLUENCE_INDEX_DIR")
        try:  # before any work: a typo must not cost a full encode of the training set
            empty_index(self.engine.identity.feature_dim, factory)
        except ValueError as error:
            raise LimitExceededError(str(error), {"field": "factory", "value": factory}) from None

    def _check_gradient_build(self, params) -> GradientIndexConfig:
        self._check_builds_allowed(self.settings.gradient_index_dir, "INFLUENCE_GRADIENT_INDEX_DIR")
        config = params if params is not None else GradientIndexConfig()
        try:
            check_gradient_factory(config.factory)
        except ValueError as error:
            detail = {"field": "gradient.factory", "value": config.factory}
            raise LimitExceededError(f"gradient.{error}", detail) from None
        try:
            resolved_preconditioner(config.preconditioner, self.engine.identity.num_parameters)
        except ValueError as error:
            detail = {"field": "gradient.preconditioner", "value": config.preconditioner}
            raise LimitExceededError(str(error), detail) from None
        try:
            check_storage_rows(config.storage, self.engine.num_examples, config.ivf_lists)
        except ValueError as error:
            detail = {"field": "gradient.storage", "value": config.storage}
            raise LimitExceededError(f"gradient.{error}", detail) from None
        return config

    def _served_gradient_index(self, kind: str) -> GradientIndex:
        """The loaded gradient index a job of ``kind`` changes, where this server allows index jobs."""
        self._check_builds_allowed(self.settings.gradient_index_dir, "INFLUENCE_GRADIENT_INDEX_DIR")
        index = self.engine.gradient_index
        if index is None:
            raise LimitExceededError(
                f"kind={kind} needs a loaded gradient index: build one first (kind=index_build, "
                "index_kind=gradient)",
                {"field": "kind", "value": kind},
            )
        return index

    def _check_index_remove(self, request: IndexRemoveRequest) -> list[int]:
        """The training rows an index_remove job leaves out, each checked against the loaded gradient
        index before the job is queued (an unknown id or row is a 422 naming it)."""
        index = self._served_gradient_index("index_remove")
        rows = request.rows
        if request.ids is not None:
            try:
                rows = self.engine.training_examples().rows_of(request.ids).tolist()
            except ValueError as error:
                raise LimitExceededError(f"index_remove.{error}", {"field": "index_remove.ids"}) from None
        assert rows is not None  # IndexRemoveRequest holds rows or ids
        outside = [row for row in rows if not 0 <= row < index.manifest.count]
        if outside:
            raise LimitExceededError(
                f"index_remove.rows {outside[:5]} are not in the gradient index, which holds rows 0 to "
                f"{index.manifest.count - 1}",
                {"field": "index_remove.rows", "value": outside[:5]},
            )
        return rows

    def _train_spec(self) -> DataSpec:
        """The training data this server loaded: its setting, else the model card's."""
        spec = self.settings.train_spec() or card_data_spec(self.engine.card)
        assert spec is not None  # training_examples() refused a server without data before this
        return spec.with_absolute_source()

    def _check_index_add(self, request: IndexAddRequest) -> DataSpec:
        """The rows of an index_add job, checked one by one before it is queued (a 422 names the row and
        the field), then written as a file beside the gradient index (named by its content); its spec."""
        index, directory = self._served_gradient_index("index_add"), self.settings.gradient_index_dir
        assert directory is not None  # _served_gradient_index refused it otherwise
        examples, spec = self.engine.training_examples("an index add"), self._train_spec()
        known = set(examples.ids)
        for position, row in enumerate(request.rows):
            where = f"index_add.rows[{position}]"
            check_text(row, self.settings, self.tokenizer, self.engine.identity, where)
            if (row.text_pair is None) != (examples.pairs is None):
                has = "has no second text: leave" if examples.pairs is None else "has a second text: give"
                raise LimitExceededError(
                    f"{where}.text_pair: the training data {has} text_pair", {"field": f"{where}.text_pair"}
                )
            if (row.id is None) != (spec.id_column is None):
                has = "numbers its rows: leave the id out" if spec.id_column is None else "has ids: give one"
                raise LimitExceededError(f"{where}.id: the training data {has}", {"field": f"{where}.id"})
            if row.id is not None and row.id in known:
                raise LimitExceededError(
                    f"{where}.id {row.id!r} is already a training row's id", {"field": f"{where}.id"}
                )
            if row.id is not None:
                known.add(row.id)
        folder = directory.with_name(directory.name + ".added")
        added = write_rows(folder, [row.model_dump() for row in request.rows], spec)
        try:
            check_growable(directory, index.manifest, load_examples(added).fingerprint)
        except (ValueError, DataFileError) as error:
            raise LimitExceededError(f"index_add.rows: {error}", {"field": "index_add.rows"}) from None
        return added

    def _check_evaluation(self, request) -> None:
        """Everything a run needs, before it is queued: inputs (labelled where measured), sizes, switches."""
        task, inputs = request.task, request.inputs
        self.engine.training_examples(f"task={task}")
        if not TASKS[task].takes_inputs:
            if inputs:
                raise LimitExceededError(
                    f"task={task} ranks the training set and takes no inputs", {"field": "inputs"}
                )
            self._check_builds_allowed(self.settings.gradient_index_dir, "INFLUENCE_GRADIENT_INDEX_DIR")
            return
        if not inputs:
            raise LimitExceededError(f"task={task} needs test points in inputs", {"field": "inputs"})
        check_inputs(inputs, self.settings, self.tokenizer, self.engine.identity)
        if TASKS[task].needs_labels:
            for position, item in enumerate(inputs):
                if item.label is None:
                    raise LimitExceededError(
                        f"task={task} is measured on true labels: give inputs[{position}].label",
                        {"field": f"inputs[{position}].label"},
                    )
        if request.normalize:
            self._check_normalized_evaluation(task)
        if task == "augmentation":
            self._check_augmentation(request)
        elif request.anchors or request.pool:
            raise LimitExceededError(
                f"task={task} takes no anchors or pool (only task=augmentation does)", {"field": "pool"}
            )
        if task in ("error_correction", "simulatability", "augmentation"):  # each trains: gated like a build
            self._check_builds_allowed(self.settings.gradient_index_dir, "INFLUENCE_GRADIENT_INDEX_DIR")
        if task == "simulatability" and self.engine.identity.tracked_layers == "lora":
            raise LimitExceededError(
                "task=simulatability trains a simulator on the tracked layers, and a LoRA adapter has none: "
                "serve the merged model to run it",
                {"field": "task", "value": task},
            )
        if task == "recall":  # compares with a full scan of every training row
            check_full_scan(self.settings, self.engine.num_examples, "task")
        for method in request.methods if task == "recall" else []:
            try:
                query = evaluated_query(QueryConfig(), method)
                gradient_index = self.engine.gradient_index
                resolve_method(query, gradient_index is not None, self.engine.index is not None)
                if query.normalize and gradient_index is not None:
                    gradient_index.require_norms()
            except MethodUnavailableError as error:
                raise LimitExceededError(str(error), {"field": "methods", "value": method}) from None

    def _check_normalized_evaluation(self, task: str) -> None:
        """``normalize`` is read where rows are ranked for test points, from an index that keeps norms."""
        if task not in QUERYING_TASKS:
            raise LimitExceededError(
                f"normalize is read by the tasks {', '.join(QUERYING_TASKS)}, not by task={task}: "
                "leave it out",
                {"field": "normalize"},
            )
        gradient_index = self.engine.gradient_index
        if gradient_index is None:
            raise LimitExceededError(
                "normalize=true ranks rows by the gradient index's normalised view, and none is loaded: "
                "build one (kind=index_build, index_kind=gradient) or leave normalize out",
                {"field": "normalize"},
            )
        try:
            gradient_index.require_norms()
        except MethodUnavailableError as error:
            raise LimitExceededError(str(error), {"field": "normalize"}) from None

    def _check_augmentation(self, request) -> None:
        """Anchors and a pool, each row labelled and checked like an input; a gradient index to score them."""
        if self.engine.gradient_index is None:
            raise LimitExceededError(
                "task=augmentation scores the pool with the gradient index, and none is loaded: build one "
                "(kind=index_build, index_kind=gradient)",
                {"field": "task", "value": "augmentation"},
            )
        for name in ("anchors", "pool"):
            rows = getattr(request, name)
            if not rows:
                raise LimitExceededError(f"task=augmentation needs labelled rows in {name}", {"field": name})
            for position, item in enumerate(rows):
                check_text(item, self.settings, self.tokenizer, self.engine.identity, f"{name}[{position}]")
                if item.label is None:
                    raise LimitExceededError(
                        f"task=augmentation fine-tunes on labelled rows: give {name}[{position}].label",
                        {"field": f"{name}[{position}].label"},
                    )

    def evaluate(self, request, progress: Progress, context: RequestContext | None = None):
        """Run one evaluation or application (``tasks.registry.run_job``)."""
        # One at a time (the audit's gradient shards, the error correction's model copy). Under the job's
        # context: the loops that run here (refits, retrains, per-point queries) and every worker call they
        # make stop when the job is deleted or past its deadline.
        with self._index_lock, self._local_work.scope(context):
            return run_job(
                self.engine,
                request,
                self._heads,
                self.settings.job_scratch_dir,
                self.settings.model_dir,
                progress,
            )

    def list_jobs(self, owner: str) -> JobList:
        return JobList(jobs=self.jobs.list(owner))

    def build_index(
        self, factory: str, progress: Progress, context: RequestContext | None = None
    ) -> IndexBuildResult:
        """Encode the training set on the workers, write the index atomically, then swap it in."""
        engine, index_dir = self.engine, self.settings.index_dir
        assert index_dir is not None  # _check_builds_allowed refused the job otherwise
        with self._index_lock:  # one build at a time writes the folder
            manifest = build_knn_index(engine, index_dir, factory, progress=progress, context=context)
            engine.index = knn_index_for(index_dir, engine.identity)
        return IndexBuildResult(index_manifest=asdict(manifest))

    def build_gradient_index(
        self, config: GradientIndexConfig, progress: Progress, context: RequestContext | None = None
    ) -> IndexBuildResult:
        """Project every training gradient on the workers, write the gradient index, then swap it in."""
        engine, directory = self.engine, self.settings.gradient_index_dir
        assert directory is not None  # _check_builds_allowed refused the job otherwise
        with self._index_lock:
            scratch = self.settings.job_scratch_dir
            budget = self.settings.max_index_bytes
            manifest = build_gradient_index(engine, directory, config, progress, context, scratch, budget)
            self._swap_gradient_index(directory)
        return IndexBuildResult(index_manifest=asdict(manifest))

    def _swap_gradient_index(self, directory: Path) -> None:
        """Load the gradient index in ``directory`` (its budget checked) and serve it. The index it replaces
        is dropped, not closed: a query still searching it finishes, and Ray stops its shard actors once
        nothing refers to them."""
        budget = self.settings.max_index_bytes
        self.engine.gradient_index = gradient_index_for(directory, self.engine.backend, max_bytes=budget)

    def remove_rows(self, rows: list[int]) -> IndexBuildResult:
        """Record the rows in the gradient index's manifest (``index.gradient.remove_gradient_rows``), then
        load it again so its shards leave them out; queries keep the old index until it is swapped in."""
        directory = self.settings.gradient_index_dir
        assert directory is not None  # _check_builds_allowed refused the job otherwise
        with self._index_lock:
            manifest = remove_gradient_rows(directory, rows)
            self._swap_gradient_index(directory)
        return IndexBuildResult(index_manifest=asdict(manifest))

    def add_rows(self, added: DataSpec, progress: Progress, ctx: RequestContext) -> IndexBuildResult:
        """Project the added rows (``engine.builds.add_to_gradient_index``, on a model loaded here for
        them), append them to the gradient index, then serve them: the workers and this process load them
        after the training data, and the grown index is swapped in."""
        engine, directory = self.engine, self.settings.gradient_index_dir
        assert directory is not None  # _check_builds_allowed refused the job otherwise
        tracked = self.settings.tracked_layers
        with self._index_lock:
            newcomer = local_engine(
                self.settings.model_dir,
                added,
                tracked_layers=parse_scope(tracked) if tracked is not None else None,
                trust_remote_code=self.settings.trust_remote_code,
            )
            try:
                manifest = add_to_gradient_index(newcomer, directory, added, progress=progress, context=ctx)
            finally:
                newcomer.shutdown()
            engine.load_added_rows(self._train_spec(), manifest.added_rows)
            self._swap_gradient_index(directory)
        return IndexBuildResult(index_manifest=asdict(manifest))

    def shutdown(self) -> None:
        self.jobs.shutdown()
        self.engine.shutdown()
