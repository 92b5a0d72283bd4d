"""Python clients of the REST service: :class:`InfluenceClient` and its async mirror.

    with InfluenceClient("http://127.0.0.1:8000", api_key="...") as client:
        answer = client.influence("a gorgeous, witty, seductive movie.", k=1000, top=10)
        print(answer.results[0].helpful[0].text)

Both speak the service's own pydantic schemas (``service.schemas``), retry 429/503 answers (honouring
``Retry-After``) and dropped connections up to ``max_retries`` times, and raise
:class:`InfluenceAPIError` subclasses that carry the server's ``code``, ``message`` and ``detail``.
Pass ``transport=`` (e.g. ``httpx.ASGITransport``) or a ready ``http=`` client to talk to an app in the
same process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import httpx
from pydantic import BaseModel
from tqdm.auto import tqdm

from interpret.cancellation import DEFAULT_DEADLINE_S
from interpret.config import (
    DEFAULT_FACTORY,
    DEFAULT_INDEX_KIND,
    EvaluationTask,
    GradientIndexConfig,
    IndexKind,
    JobKind,
    LissaConfig,
    QueryConfig,
)
from service.schemas import (
    ATTACK_REQUEST,
    SALIENCY_REQUEST,
    AddedRow,
    AttackResponse,
    EvaluateRequest,
    IndexAddRequest,
    IndexRemoveRequest,
    InfluenceRequest,
    InfluenceResponse,
    JobList,
    JobRequest,
    JobStatus,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    SaliencyResponse,
    TextInput,
)

JobBody = BaseModel
"""A job's request: an ``InfluenceRequest``, ``EvaluateRequest``, saliency or attack request, or an
``IndexRemoveRequest`` or ``IndexAddRequest``, by the job's kind."""
DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = (429, 503)
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
"""Transport failures before the request reached the server: any request may be retried."""
DROPPED = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
"""The connection broke mid-exchange (e.g. a keep-alive connection the server was closing): the server
may have started the work, so only requests that are safe to repeat are retried (every call but
``submit_job``, which would start a second job). Timeouts are never retried: a slow answer asked again
only doubles the load."""
Inputs = str | TextInput | dict | Sequence[str | TextInput | dict]


class InfluenceAPIError(Exception):
    """An error answer of the service: ``status``, ``code``, ``message``, ``detail``."""

    def __init__(self, status: int, code: str, message: str, detail=None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.detail = status, code, message, detail


class BadRequestError(InfluenceAPIError):
    """4xx: the request was wrong (a field out of range, over a limit, ...); the message names it."""


class TrainingDataMissingError(BadRequestError):
    """409 ``training_data_missing``: the server was started without the model's training data, so it
    answers prediction, saliency and attacks but not influence (the message names the setting)."""


class AuthenticationError(InfluenceAPIError):
    """401: missing or wrong API key."""


class PermissionDeniedError(InfluenceAPIError):
    """403: this server keeps the request for other callers (heavy jobs: ``INFLUENCE_HEAVY_JOB_CALLERS``)."""


class NotFoundError(InfluenceAPIError):
    """404: no such job (or route)."""


class RateLimitedError(InfluenceAPIError):
    """429 after all retries: the server is at its in-flight limit."""


class ServerError(InfluenceAPIError):
    """5xx: workers failed, a deadline passed, or a bug."""


class JobFailedError(InfluenceAPIError):
    """A job ended in state ``failed``; its error is in ``code``/``message``."""


_ERROR_BY_STATUS = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitedError,
}
_ERROR_BY_CODE = {"training_data_missing": TrainingDataMissingError}


def _error(response: httpx.Response) -> InfluenceAPIError:
    try:
        body = response.json()
        code, message, detail = (
            body.get("code", "error"),
            body.get("message", response.text),
            body.get("detail"),
        )
    except ValueError:
        code, message, detail = "error", response.text or response.reason_phrase, None
    default = ServerError if response.status_code >= 500 else BadRequestError
    kind = _ERROR_BY_CODE.get(code) or _ERROR_BY_STATUS.get(response.status_code, default)
    return kind(response.status_code, code, message, detail)


def _as_inputs(inputs: Inputs) -> list[TextInput]:
    items = [inputs] if isinstance(inputs, str | TextInput | dict) else list(inputs)
    return [
        item
        if isinstance(item, TextInput)
        else TextInput(text=item)
        if isinstance(item, str)
        else TextInput(**item)
        for item in items
    ]


def influence_request(
    inputs: Inputs,
    k: int | None = QueryConfig.default("k"),
    top: int = QueryConfig.default("top"),
    exact: bool = False,
    lissa: LissaConfig | dict | None = None,
    **options,
) -> InfluenceRequest:
    """The request; ``options`` are its other fields by name: ``method`` (gradient | fastif | full),
    ``rerank``, ``solver`` (lissa | cg | index), ``cg_rows``, ``cg_tolerance``, ``normalize`` (the
    gradient index's cosine view)."""
    lissa = lissa if isinstance(lissa, LissaConfig) else LissaConfig(**(lissa or {}))
    return InfluenceRequest(inputs=_as_inputs(inputs), k=k, top=top, exact=exact, lissa=lissa, **options)


def job_request(
    request,
    kind: JobKind,
    factory: str,
    index_kind: IndexKind,
    gradient: GradientIndexConfig | dict | None,
) -> JobRequest:
    """The job, with ``request`` in the field named after its kind (none for an index build)."""
    body = {kind: request} if request is not None and kind != "index_build" else {}
    settings = GradientIndexConfig(**gradient) if isinstance(gradient, dict) else gradient
    return JobRequest(kind=kind, factory=factory, index_kind=index_kind, gradient=settings, **body)


def remove_request(rows: list[int] | None = None, ids: list[str] | None = None) -> IndexRemoveRequest:
    """A ``kind="index_remove"`` job: training rows (an answer's ``row``) or ids (its ``id``) to leave out of
    every later answer of the served gradient index."""
    return IndexRemoveRequest(rows=rows, ids=ids)


def add_request(rows: Sequence[AddedRow | dict]) -> IndexAddRequest:
    """A ``kind="index_add"`` job: training rows (``{"text", "label"}``, with ``text_pair`` and ``id`` as
    the training data has them) appended to the served gradient index and served from then on."""
    return IndexAddRequest(rows=[row if isinstance(row, AddedRow) else AddedRow(**row) for row in rows])


def evaluate_request(task: EvaluationTask, inputs: Inputs = (), **fields) -> EvaluateRequest:
    """A ``kind="evaluate"`` run: ``task`` (loo, lds_head, recall, influence_map, audit,
    error_correction, simulatability), its test points, and the rest of ``EvaluateRequest`` by name
    (``m``, ``subsets``, ``damping``, ``top``, ``seeds``, ``methods``, ...)."""
    return EvaluateRequest(task=task, inputs=_as_inputs(inputs) if inputs else [], **fields)


def saliency_request(text: str, method: str, text_pair=None, label=None, **parameters):
    """The method's own request model (its parameters typed and checked here, before sending)."""
    fields = {"text": text, "text_pair": text_pair, "label": label, "method": method}
    return SALIENCY_REQUEST.validate_python({**fields, "parameters": parameters})


def attack_request(text: str, method: str, text_pair=None, label=None, target=None, **parameters):
    fields = {"text": text, "text_pair": text_pair, "label": label, "method": method}
    if target is not None:  # only targeted attacks have the field
        fields["target"] = target
    return ATTACK_REQUEST.validate_python({**fields, "parameters": parameters})


class _Common:
    """What the sync and async clients share: headers, retry policy, error mapping, parsing."""

    def __init__(self, api_key: str | None, max_retries: int, backoff_s: float):
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.headers = {"X-API-Key": api_key} if api_key else {}

    def _delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying, or ``None`` to stop and return/raise."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        retry_after = response.headers.get("Retry-After", "")
        return float(retry_after) if retry_after.isdigit() else self.backoff_s * 2**attempt

    def _transport_delay(self, error: httpx.TransportError, attempt: int, repeatable: bool) -> float | None:
        """Seconds to wait before resending after a transport failure, or ``None`` to raise it."""
        retryable = NEVER_SENT + DROPPED if repeatable else NEVER_SENT
        if not isinstance(error, retryable) or attempt >= self.max_retries:
            return None
        return self.backoff_s * 2**attempt

    def _settle(self, outcome, attempt: int, repeatable: bool, model: type[BaseModel]):
        """After one attempt (its response, or the transport error it raised): ``(answer, None)`` when
        done, ``(None, seconds)`` to wait and try again; raises when the failure is final."""
        if isinstance(outcome, httpx.TransportError):
            delay = self._transport_delay(outcome, attempt, repeatable)
            if delay is None:
                raise outcome
            return None, delay
        delay = self._delay(outcome, attempt)
        return (self._parse(outcome, model), None) if delay is None else (None, delay)

    @staticmethod
    def _parse(response: httpx.Response, model: type[BaseModel]):
        if response.is_error:
            raise _error(response)
        return model.model_validate(response.json())

    @staticmethod
    def _body(request: BaseModel) -> dict:
        return request.model_dump(mode="json", exclude_none=False)

    @staticmethod
    def _show(status: JobStatus, bar) -> None:
        """The bar follows the job's progress; while it waits, it shows its place in the queue."""
        bar.update(status.progress - bar.n)
        if status.state == "queued" and status.queue_position is not None:
            bar.set_postfix_str(f"queued, {status.queue_position} ahead, ~{status.estimated_start_s:g} s")
        else:
            bar.set_postfix_str(status.state)

    @staticmethod
    def _finished(status: JobStatus) -> JobStatus | None:
        if status.state == "failed":
            error = status.error
            raise JobFailedError(
                200, error.code if error else "failed", error.message if error else "", status.id
            )
        if status.state == "cancelled":
            raise JobFailedError(200, "cancelled", "the job was cancelled (DELETE /v1/jobs/{id})", status.id)
        return status if status.state == "succeeded" else None


class InfluenceClient(_Common):
    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = DEFAULT_DEADLINE_S,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ):
        super().__init__(api_key, max_retries, backoff_s)
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout, transport=transport)
        self.http.headers.update(self.headers)

    def __enter__(self) -> InfluenceClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(
        self, method: str, path: str, model: type[BaseModel], body: dict | None = None, repeatable=True
    ):
        for attempt in range(self.max_retries + 1):
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = self.http.request(method, path, json=body)
            except httpx.TransportError as error:
                outcome = error
            answer, delay = self._settle(outcome, attempt, repeatable, model)
            if delay is None:
                return answer
            time.sleep(delay)
        raise AssertionError("unreachable")

    def influence(
        self,
        inputs: Inputs,
        k: int | None = QueryConfig.default("k"),
        top: int = QueryConfig.default("top"),
        exact: bool = False,
        lissa=None,
        **options,
    ):
        """Most helpful and harmful training examples for each input (``InfluenceResponse``)."""
        body = self._body(influence_request(inputs, k, top, exact, lissa, **options))
        return self._call("POST", "/v1/influence", InfluenceResponse, body)

    def saliency(self, text: str, method: str, text_pair=None, label=None, **parameters) -> SaliencyResponse:
        request = saliency_request(text, method, text_pair, label, **parameters)
        return self._call("POST", "/v1/saliency", SaliencyResponse, self._body(request))

    def attack(self, text: str, method: str, text_pair=None, label=None, target=None, **parameters):
        request = attack_request(text, method, text_pair, label, target, **parameters)
        return self._call("POST", "/v1/attack", AttackResponse, self._body(request))

    def predict(self, inputs: Inputs) -> PredictResponse:
        body = self._body(PredictRequest(inputs=_as_inputs(inputs)))
        return self._call("POST", "/v1/predict", PredictResponse, body)

    def models(self) -> ModelsResponse:
        return self._call("GET", "/v1/models", ModelsResponse)

    def submit_job(
        self,
        request: JobBody | None = None,
        kind: JobKind = "influence",
        factory: str = DEFAULT_FACTORY,
        index_kind: IndexKind = DEFAULT_INDEX_KIND,
        gradient: GradientIndexConfig | dict | None = None,
    ):
        """Start a job: an ``InfluenceRequest`` over many inputs, a saliency or attack request,
        ``kind="evaluate"`` with an ``evaluate_request(...)``, ``kind="index_build"`` (the kNN index, or
        ``index_kind="gradient"`` with its settings in ``gradient``), ``kind="index_remove"`` with a
        ``remove_request(...)``, or ``kind="index_add"`` with an ``add_request(...)``."""
        body = self._body(job_request(request, kind, factory, index_kind, gradient))
        return self._call("POST", "/v1/jobs", JobStatus, body, repeatable=False)

    def job(self, job_id: str) -> JobStatus:
        return self._call("GET", f"/v1/jobs/{job_id}", JobStatus)

    def jobs(self) -> JobList:
        """Your jobs (this API key and address), without their results."""
        return self._call("GET", "/v1/jobs", JobList)

    def cancel_job(self, job_id: str) -> JobStatus:
        """Cancel a queued or running job, or forget a finished one."""
        return self._call("DELETE", f"/v1/jobs/{job_id}", JobStatus)

    def wait_job(self, job_id: str, poll_s: float = 1.0, timeout: float | None = None, progress: bool = True):
        """Poll until the job succeeds (its status, with the result) or fails (``JobFailedError``)."""
        limit = None if timeout is None else time.monotonic() + timeout
        with tqdm(total=1.0, desc=f"job {job_id[:8]}", disable=not progress, unit="") as bar:
            while True:
                status = self.job(job_id)
                self._show(status, bar)
                if self._finished(status) is not None:
                    return status
                if limit is not None and time.monotonic() > limit:
                    raise TimeoutError(f"job {job_id} still {status.state} after {timeout:g} s")
                time.sleep(poll_s)


class AsyncInfluenceClient(_Common):
    """The async mirror of :class:`InfluenceClient` (same methods, awaited)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = DEFAULT_DEADLINE_S,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
        http: httpx.AsyncClient | None = None,
    ):
        super().__init__(api_key, max_retries, backoff_s)
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)
        self.http.headers.update(self.headers)

    async def __aenter__(self) -> AsyncInfluenceClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(
        self, method: str, path: str, model: type[BaseModel], body: dict | None = None, repeatable=True
    ):
        for attempt in range(self.max_retries + 1):
            try:
                outcome: httpx.Response | httpx.TransportError
                outcome = await self.http.request(method, path, json=body)
            except httpx.TransportError as error:
                outcome = error
            answer, delay = self._settle(outcome, attempt, repeatable, model)
            if delay is None:
                return answer
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def influence(
        self,
        inputs: Inputs,
        k: int | None = QueryConfig.default("k"),
        top: int = QueryConfig.default("top"),
        exact: bool = False,
        lissa=None,
        **options,
    ):
        body = self._body(influence_request(inputs, k, top, exact, lissa, **options))
        return await self._call("POST", "/v1/influence", InfluenceResponse, body)

    async def saliency(self, text: str, method: str, text_pair=None, label=None, **parameters):
        request = saliency_request(text, method, text_pair, label, **parameters)
        return await self._call("POST", "/v1/saliency", SaliencyResponse, self._body(request))

    async def attack(self, text: str, method: str, text_pair=None, label=None, target=None, **parameters):
        request = attack_request(text, method, text_pair, label, target, **parameters)
        return await self._call("POST", "/v1/attack", AttackResponse, self._body(request))

    async def predict(self, inputs: Inputs) -> PredictResponse:
        body = self._body(PredictRequest(inputs=_as_inputs(inputs)))
        return await self._call("POST", "/v1/predict", PredictResponse, body)

    async def models(self) -> ModelsResponse:
        return await self._call("GET", "/v1/models", ModelsResponse)

    async def submit_job(
        self,
        request: JobBody | None = None,
        kind: JobKind = "influence",
        factory: str = DEFAULT_FACTORY,
        index_kind: IndexKind = DEFAULT_INDEX_KIND,
        gradient: GradientIndexConfig | dict | None = None,
    ):
        body = self._body(job_request(request, kind, factory, index_kind, gradient))
        return await self._call("POST", "/v1/jobs", JobStatus, body, repeatable=False)

    async def job(self, job_id: str) -> JobStatus:
        return await self._call("GET", f"/v1/jobs/{job_id}", JobStatus)

    async def jobs(self) -> JobList:
        return await self._call("GET", "/v1/jobs", JobList)

    async def cancel_job(self, job_id: str) -> JobStatus:
        return await self._call("DELETE", f"/v1/jobs/{job_id}", JobStatus)

    async def wait_job(
        self, job_id: str, poll_s: float = 1.0, timeout: float | None = None, progress: bool = True
    ):
        limit = None if timeout is None else time.monotonic() + timeout
        with tqdm(total=1.0, desc=f"job {job_id[:8]}", disable=not progress, unit="") as bar:
            while True:
                status = await self.job(job_id)
                self._show(status, bar)
                if self._finished(status) is not None:
                    return status
                if limit is not None and time.monotonic() > limit:
                    raise TimeoutError(f"job {job_id} still {status.state} after {timeout:g} s")
                await asyncio.sleep(poll_s)
