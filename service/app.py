"""The FastAPI application: thin routes over :class:`service.core.InfluenceService`.

uvicorn --factory service.app:create_app      (settings from INFLUENCE_* variables)
"""

from __future__ import annotations

import hmac
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from fastapi.security import APIKeyHeader
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from service import errors
from service.core import InfluenceService
from service.errors import PayloadTooLargeError, UnauthorizedError, error_response
from service.schemas import (
    AttackRequest,
    AttackResponse,
    ErrorBody,
    InfluenceRequest,
    InfluenceResponse,
    JobRequest,
    JobStatus,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    Readiness,
    SaliencyRequest,
    SaliencyResponse,
)
from service.settings import Settings

API_KEY_HEADER = "X-API-Key"
PAGE = Path(__file__).with_name("page.html")
ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 413, 422, 429, 503, 504)}


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` (by Content-Length, or while streaming) with 413."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: int | str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body of {size} bytes exceeds this server's limit of {self.max_bytes} bytes "
            "(INFLUENCE_MAX_BODY_BYTES): send fewer inputs per request, or a job",
            {"field": "body", "limit": self.max_bytes},
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(self._too_large(int(length)), scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise self._too_large(f"more than {self.max_bytes}")
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, error: PayloadTooLargeError, scope, receive, send):
        response = error_response(error.status, error.code, error.message, error.detail)
        await response(scope, receive, send)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "influence_requests", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "influence_request_seconds", "Request latency", ["route"], registry=self.registry
        )
        self.in_flight = Gauge("influence_in_flight", "Requests computing now", registry=self.registry)
        self.cache_hits = Gauge("influence_s_test_cache_hits", "s_test cache hits", registry=self.registry)
        self.cache_entries = Gauge(
            "influence_s_test_cache_entries", "s_test cache size", registry=self.registry
        )


def _route_label(request: Request) -> str:
    """The path with its parameters as templates (``/v1/jobs/{job_id}``): bounded label cardinality."""
    if request.scope.get("route") is None:
        return "unmatched"
    path = request.url.path
    for name, value in request.scope.get("path_params", {}).items():
        path = path.replace(f"/{value}", f"/{{{name}}}")
    return path


def _require_key(settings: Settings):
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)

    async def check(key: str | None = Depends(header)) -> None:
        expected = settings.api_key
        if expected is None:
            return
        if key is None or not hmac.compare_digest(key, expected.get_secret_value()):
            raise UnauthorizedError(
                f"missing or wrong {API_KEY_HEADER} header: this server requires an API key",
                {"field": API_KEY_HEADER},
            )

    return check


def _routes(service_of) -> APIRouter:
    router = APIRouter()

    async def computing(request: Request, function, body):
        service: InfluenceService = service_of(request)
        with service.in_flight.slot():
            return await run_in_threadpool(function, body)

    @router.post("/influence", response_model=InfluenceResponse, responses=ERRORS)
    async def influence(body: InfluenceRequest, request: Request) -> InfluenceResponse:
        """Which training examples made each prediction (FastIF: kNN candidates + LiSSA s_test)."""
        return await computing(request, service_of(request).influence, body)

    @router.post("/predict", response_model=PredictResponse, responses=ERRORS)
    async def predict(body: PredictRequest, request: Request) -> PredictResponse:
        return await computing(request, service_of(request).predict, body)

    @router.post("/saliency", response_model=SaliencyResponse, responses=ERRORS)
    async def saliency(body: Annotated[SaliencyRequest, Body()], request: Request) -> SaliencyResponse:
        """Which input words mattered (AllenNLP Interpret semantics); parameters depend on the method."""
        return await computing(request, service_of(request).saliency, body)

    @router.post("/attack", response_model=AttackResponse, responses=ERRORS)
    async def attack(body: Annotated[AttackRequest, Body()], request: Request) -> AttackResponse:
        """HotFlip, Input Reduction or universal triggers (AllenNLP Interpret semantics)."""
        return await computing(request, service_of(request).attack, body)

    @router.get("/models", response_model=ModelsResponse, responses=ERRORS)
    async def models(request: Request) -> ModelsResponse:
        return await run_in_threadpool(service_of(request).models)

    @router.post("/jobs", response_model=JobStatus, status_code=202, responses=ERRORS)
    async def submit_job(body: JobRequest, request: Request) -> JobStatus:
        """Start an influence query over many inputs, or an index build; poll GET /v1/jobs/{id}."""
        return await run_in_threadpool(service_of(request).submit_job, body)

    @router.get("/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
    async def job(job_id: str, request: Request) -> JobStatus:
        """State and progress; a finished job's result is returned once, then forgotten."""
        return service_of(request).jobs.fetch(job_id)

    return router


def create_app(settings: Settings | None = None, service: InfluenceService | None = None) -> FastAPI:
    """The app; with ``service`` given (tests), it is used as is and not shut down with the app."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        owned = service is None
        if owned:
            from workers import connect

            connect()  # on the main thread, where Ray can install its signal handlers
        app.state.service = service or await run_in_threadpool(InfluenceService, settings)
        yield
        if owned:
            app.state.service.shutdown()

    app = FastAPI(
        title="fastif-service",
        version="1",
        description="Why did my text classifier say that? Influence, saliency and attacks.",
        lifespan=lifespan,
    )
    errors.install(app)
    if service is not None:  # usable without a lifespan run (httpx.ASGITransport does not run one)
        app.state.service = service

    def service_of(request: Request) -> InfluenceService:
        return request.app.state.service

    app.include_router(_routes(service_of), prefix="/v1", dependencies=[Depends(_require_key(settings))])

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, responses=ERRORS)
    async def readyz(request: Request) -> Readiness:
        return await run_in_threadpool(service_of(request).readiness)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request):
        service = service_of(request)
        metrics.in_flight.set(service.in_flight.count)
        metrics.cache_hits.set(service.cache.stats.hits)
        metrics.cache_entries.set(len(service.cache))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text())

    @app.middleware("http")
    async def measure(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        path = _route_label(request)
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
