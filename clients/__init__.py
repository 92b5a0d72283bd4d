"""HTTP clients of the influence service (httpx, sync and async), with typed errors."""

from clients.client import (
    AsyncInfluenceClient,
    AuthenticationError,
    BadRequestError,
    InfluenceAPIError,
    InfluenceClient,
    JobFailedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    TrainingDataMissingError,
    add_request,
    evaluate_request,
    influence_request,
    remove_request,
)

__all__ = [
    "AsyncInfluenceClient",
    "AuthenticationError",
    "BadRequestError",
    "InfluenceAPIError",
    "InfluenceClient",
    "JobFailedError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "ServerError",
    "TrainingDataMissingError",
    "add_request",
    "evaluate_request",
    "influence_request",
    "remove_request",
]
