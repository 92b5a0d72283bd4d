"""ASGI middleware: the HTTP edge (header and body limits, slow bodies) and the request metrics.

Both are plain ASGI, not Starlette's ``BaseHTTPMiddleware``, so a route can still see its client
disconnect (``Request.is_disconnected``) and cancel the work it started.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.errors import (
    HeadersTooLargeError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServiceError,
    error_response,
)
from service.settings import Settings


async def _refuse(error: ServiceError, scope, receive, send) -> None:
    response = error_response(error.status, error.code, error.message, error.detail, error.headers)
    await response(scope, receive, send)


class RequestLimits:
    """Refuse oversized headers (431) and bodies (413, by Content-Length or as they stream in, chunked
    included), and bodies that stall (408: shorter than their Content-Length, or a trickle). The body is
    read here, whole and bounded, before any route sees it, then handed on unchanged."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    def _too_large(self, size: int | str) -> PayloadTooLargeError:
        limit = self.settings.max_body_bytes
        return PayloadTooLargeError(
            f"request body of {size} bytes exceeds this server's limit of {limit} bytes "
            "(INFLUENCE_MAX_BODY_BYTES): send fewer inputs per request, or a job",
            {"field": "body", "limit": limit},
        )

    def _header_problem(self, headers: list[tuple[bytes, bytes]]) -> HeadersTooLargeError | None:
        size, settings = sum(len(k) + len(v) for k, v in headers), self.settings
        if len(headers) <= settings.max_headers and size <= settings.max_header_bytes:
            return None
        return HeadersTooLargeError(
            f"{len(headers)} request headers of {size} bytes exceed this server's limits of "
            f"{settings.max_headers} headers and {settings.max_header_bytes} bytes "
            "(INFLUENCE_MAX_HEADERS, INFLUENCE_MAX_HEADER_BYTES)",
            {"field": "headers", "limit": settings.max_header_bytes},
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        problem = self._header_problem(scope["headers"])
        if problem is not None:
            return await _refuse(problem, scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.settings.max_body_bytes:
            return await _refuse(self._too_large(int(length)), scope, receive, send)
        body, settings = bytearray(), self.settings
        # A gap of body_timeout_s between two parts, or body_deadline_s in all (a trickle of one byte every
        # few seconds never stalls a gap but cannot hold the connection past the total).
        deadline = time.monotonic() + settings.body_deadline_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(settings.body_timeout_s, remaining)))
            except TimeoutError:
                if remaining <= settings.body_timeout_s:
                    why = f"took more than {settings.body_deadline_s:g} s in all (INFLUENCE_BODY_DEADLINE_S)"
                else:
                    why = f"stalled for {settings.body_timeout_s:g} s after {len(body)} bytes"
                    why += " (INFLUENCE_BODY_TIMEOUT_S)"
                stalled = RequestTimeoutError(f"the request body {why}", {"field": "body"})
                stalled.message += ": send the whole body at once, with a correct Content-Length"
                return await _refuse(stalled, scope, receive, send)
            if message["type"] == "http.disconnect":
                return None  # the client left before its request was complete: nobody to answer
            body += message.get("body", b"")
            if len(body) > self.settings.max_body_bytes:
                return await _refuse(self._too_large(f"more than {len(body) - 1}"), scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:  # later reads: the client's disconnect, as the server reports it
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


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
        self.replacements = Gauge(
            "influence_worker_replacements", "Workers killed and replaced since start", registry=self.registry
        )


def route_label(scope) -> str:
    """The path with its parameters as templates (``/v1/jobs/{job_id}``): bounded label cardinality."""
    if scope.get("route") is None:
        return "unmatched"
    path = scope["path"]
    for name, value in scope.get("path_params", {}).items():
        path = path.replace(f"/{value}", f"/{{{name}}}")
    return path


class MeasureRequests:
    """Count requests by route and status, and time them."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = route_label(scope)  # the router filled in the route on this very scope
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
