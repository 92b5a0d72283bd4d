"""The FastAPI application: thin routes over :class:`service.core.InfluenceService`.

uvicorn --factory service.app:create_app      (settings from INFLUENCE_* variables)
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import math
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import errors
from service.core import InfluenceService
from service.errors import UnauthorizedError
from service.jobs import Client
from service.middleware import MeasureRequests, Metrics, RequestLimits
from service.schemas import (
    AttackRequest,
    AttackResponse,
    ErrorBody,
    InfluenceRequest,
    InfluenceResponse,
    JobList,
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
STATIC = Path(__file__).with_name("static")
"""The page's script and style, served as they are (no build step; linted by Biome in the test command)."""
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 408, 409, 413, 422, 429, 431, 499, 503, 504)
}
DISCONNECT_POLL_S = 0.5
"""How often a computing route checks that its client is still there (a gone client's work is cancelled)."""


def _trusted(address: str, proxies: list[str]) -> bool:
    for proxy in proxies:
        try:
            if ipaddress.ip_address(address) in ipaddress.ip_network(proxy, strict=False):
                return True
        except ValueError:  # a host name (or a malformed address): compared as text
            if address == proxy:
                return True
    return False


def client_address(request: Request, proxies: list[str]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the nearest address in
    ``X-Forwarded-For`` that is not one (a client can prepend anything to the header, not append)."""
    address = request.client.host if request.client else "unknown"
    if not _trusted(address, proxies):
        return address
    hops = [hop.strip() for hop in request.headers.get("x-forwarded-for", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        address = hop[:64]  # an identity, not an echo of whatever was sent
        if not _trusted(hop, proxies):
            break
    return address


def client_of(request: Request) -> str:
    """Who owns a job (set by the key check every ``/v1`` route runs first)."""
    return request.state.client.id


def _identify(settings: Settings):
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)
    keys = settings.named_keys()

    async def identify(request: Request, key: str | None = Depends(header)) -> None:
        if not keys:  # no keys: an X-API-Key header proves nothing, so it names no one
            address = client_address(request, settings.trusted_proxies)
            request.state.client = Client(f"address:{address}", keyed=False)
            return
        # every key compared in constant time, so the timing does not tell which one nearly matched
        matches = [
            name
            for name, expected in keys.items()
            if hmac.compare_digest((key or "").encode(), expected.encode())
        ]
        if not matches:
            raise UnauthorizedError(
                f"missing or wrong {API_KEY_HEADER} header: this server requires an API key",
                {"field": API_KEY_HEADER},
            )
        request.state.client = Client(f"key:{matches[0]}", keyed=True)

    return identify


def _with_retry_after(status: JobStatus, response: Response) -> JobStatus:
    """A queued job's estimated start as ``Retry-After``: when polling again is worth it."""
    if status.estimated_start_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(status.estimated_start_s)))
    return status


def _routes(service_of) -> APIRouter:
    router = APIRouter()

    async def computing(request: Request, function, body):
        """Run ``function(body, context)`` on a thread while holding an in-flight slot; if the client
        disconnects first, cancel the work (it stops at its next step boundary) and free the slot."""
        service: InfluenceService = service_of(request)
        with service.in_flight.slot():
            context = service.new_context()
            work = asyncio.ensure_future(run_in_threadpool(function, body, context))
            while not work.done():
                await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
                if not work.done() and await request.is_disconnected():
                    service.cancel(context.request_id)
                    break
            return await work

    @router.post("/influence", response_model=InfluenceResponse, responses=ERRORS)
    async def influence(body: InfluenceRequest, request: Request) -> InfluenceResponse:
        """Which training examples made each prediction: the gradient index (one search; the default when
        one is loaded), FastIF's kNN candidates scored against a LiSSA ``s_test``, or a full scan."""
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
    async def submit_job(body: JobRequest, request: Request, response: Response) -> JobStatus:
        """Start a job: an influence query over many inputs, an index build, or a saliency map or attack
        beyond the synchronous budget. Poll GET /v1/jobs/{id}; DELETE cancels it."""
        status = await run_in_threadpool(service_of(request).submit_job, body, request.state.client)
        return _with_retry_after(status, response)

    @router.get("/jobs", response_model=JobList, responses=ERRORS)
    async def jobs(request: Request) -> JobList:
        """Your jobs (this API key's, or this address's on a server without keys), without their results."""
        return service_of(request).list_jobs(client_of(request))

    @router.get("/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
    async def job(job_id: str, request: Request, response: Response) -> JobStatus:
        """State and progress (a queued job's place and estimated start, also as ``Retry-After``); a
        finished job's result is returned once, then forgotten."""
        return _with_retry_after(service_of(request).jobs.fetch(job_id, client_of(request)), response)

    @router.delete("/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
    async def cancel_job(job_id: str, request: Request) -> JobStatus:
        """Cancel a queued or running job (its work stops at the next step boundary), or forget a
        finished one."""
        return service_of(request).jobs.cancel(job_id, client_of(request))

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

    # FastAPI, with /docs (Swagger UI) served from the package: no CDN, works offline. No /redoc: ReDoc's
    # bundle loads its logo from cdn.redoc.ly on every visit, whatever its options.
    app = FastAPIOffline(
        redoc_url=None,
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

    identify = Depends(_identify(settings))
    app.include_router(_routes(service_of), prefix="/v1", dependencies=[identify])

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, responses=ERRORS)
    async def readyz(request: Request) -> Readiness:
        return await run_in_threadpool(service_of(request).readiness)

    @app.get("/metrics", include_in_schema=False, dependencies=[identify])
    async def prometheus(request: Request):
        """Counters for Prometheus; on a server with keys, behind one (they count other clients' cache
        hits), so a scrape config sends ``X-API-Key`` (``http_headers``)."""
        service = service_of(request)
        metrics.in_flight.set(service.in_flight.count)
        metrics.cache_hits.set(service.cache.stats.hits)
        metrics.cache_entries.set(len(service.cache))
        metrics.replacements.set(service.engine.backend.replacements)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text())

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_middleware(MeasureRequests, metrics=metrics)
    app.add_middleware(RequestLimits, settings=settings)  # outermost: nothing runs for a refused request
    return app
