"""Every error leaves the service in one JSON shape, ``{"code", "message", "detail"}``, made here.

Domain errors subclass builtins (``ValueError`` for bad input, ``ArithmeticError`` for a diverging LiSSA,
``TimeoutError`` for deadlines) and map to HTTP codes in :data:`STATUS_BY_ERROR`, most specific first.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from interpret.cancellation import RequestCancelled
from interpret.checkpoint import TrainingDataMissingError
from interpret.config import describe_errors
from interpret.influence.lissa import LissaDivergenceError
from workers.cluster import WorkerMismatchError, WorkerPoolError, WorkerTimeoutError

logger = logging.getLogger("influence.service")


class ServiceError(Exception):
    """An error with its own status and code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, detail: dict | list | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message, self.detail, self.headers = message, detail, headers


@contextmanager
def field_prefix(prefix: str):
    """Errors raised inside name their field by its full path in the request (a job's body sits under its
    kind: ``saliency.parameters.steps``, ``evaluate.inputs[0].label``)."""
    try:
        yield
    except ServiceError as error:
        detail = error.detail
        if isinstance(detail, dict) and detail.get("field") and not detail["field"].startswith(f"{prefix}."):
            detail["field"] = f"{prefix}.{detail['field']}"
        raise


class LimitExceededError(ServiceError, ValueError):
    status, code = 422, "limit_exceeded"


class PayloadTooLargeError(ServiceError):
    status, code = 413, "payload_too_large"


class UnauthorizedError(ServiceError):
    status, code = 401, "unauthorized"


class ForbiddenError(ServiceError):
    status, code = 403, "forbidden"


class BusyError(ServiceError):
    status, code = 429, "busy"


class NotFoundError(ServiceError, LookupError):
    status, code = 404, "not_found"


class NotReadyError(ServiceError):
    status, code = 503, "not_ready"


class RequestTimeoutError(ServiceError):
    status, code = 408, "request_timeout"


class HeadersTooLargeError(ServiceError):
    status, code = 431, "headers_too_large"


CLIENT_CLOSED = 499
"""nginx's code for "the client closed the connection": a cancelled request's answer that nobody reads."""


STATUS_BY_ERROR: list[tuple[type[Exception], int, str]] = [
    (WorkerTimeoutError, 504, "deadline_exceeded"),
    (WorkerPoolError, 503, "workers_failed"),
    (WorkerMismatchError, 409, "workers_mismatch"),
    (RequestCancelled, CLIENT_CLOSED, "cancelled"),
    (LissaDivergenceError, 422, "lissa_diverged"),
    (ArithmeticError, 422, "numerical_error"),
    (TimeoutError, 504, "deadline_exceeded"),
    (TrainingDataMissingError, 409, "training_data_missing"),
    (ValueError, 422, "invalid_input"),
]


def describe_error(error: Exception) -> dict:
    """A failed job's error, in the API's error shape: the same codes the handlers below answer with."""
    if isinstance(error, ServiceError):
        return {"code": error.code, "message": error.message, "detail": error.detail}
    for kind, _, code in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return {"code": code, "message": str(error), "detail": None}
    return {"code": "internal_error", "message": f"{type(error).__name__}: {error}", "detail": None}


ECHO_CHARS = 200
"""The most characters of a client's value an error echoes (a 100 kB id is not sent back twice)."""


def capped(value):
    """A client's value as an error may echo it: long strings cut to ``ECHO_CHARS``."""
    if isinstance(value, str) and len(value) > ECHO_CHARS:
        return f"{value[:ECHO_CHARS]}... ({len(value)} characters)"
    return value


def error_response(status: int, code: str, message: str, detail=None, headers=None) -> JSONResponse:
    if isinstance(detail, dict) and "value" in detail:
        detail = {**detail, "value": capped(detail["value"])}
    body = {"code": code, "message": message, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(app, scope) -> list[str]:
    """Every method some route serves at this path (a 405's ``Allow``: Starlette names only the first
    route's, though ``/v1/jobs/{id}`` serves GET and DELETE from two)."""
    from starlette.routing import Match

    return [
        method
        for method in HTTP_METHODS
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in app.routes)
    ]


def install(app: FastAPI) -> None:
    """Register the handlers: the only place where exceptions become HTTP responses."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JSONResponse:
        return error_response(error.status, error.code, error.message, error.detail, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {key: value for key, value in e.items() if key in ("loc", "msg", "type")} for e in error.errors()
        ]
        return error_response(422, "invalid_request", describe_errors(errors), errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
        return error_response(error.status_code, code, str(error.detail), headers=headers or None)

    def domain_handler(status: int, code: str):
        async def handler(request: Request, error: Exception) -> JSONResponse:
            return error_response(status, code, str(error))

        return handler

    # Starlette picks the handler of the most specific class in the error's MRO.
    for kind, status, code in STATUS_BY_ERROR:
        app.add_exception_handler(kind, domain_handler(status, code))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal_error", f"{type(error).__name__}: {error}")
