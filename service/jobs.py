"""Long work as jobs: submitted at once, run on a small thread pool, polled, listed and cancelled by id.

A job belongs to the service, not to the HTTP request that made it, so it survives a client disconnect;
it belongs to one client (its API key and address), who alone can see, list and cancel it. Memory stays
bounded: at most ``max_jobs`` jobs, ``max_jobs_per_client`` per client; a succeeded job's result is
handed out once (the fetch that sees it finished removes it) or dropped ``ttl_s`` after it finished,
and a failed or cancelled job is dropped after ``failed_ttl_s``. When the table is full, ``Retry-After``
says when a place frees up (the next expiry), not a fixed guess.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from interpret.cancellation import RequestCancelled, RequestContext
from service.errors import BusyError, NotFoundError, describe_error
from service.schemas import ErrorBody, JobStatus

Progress = Callable[[int, int], None]
Work = Callable[[Progress, RequestContext], object]


@dataclass
class Job:
    id: str
    kind: str
    owner: str
    state: str = "queued"
    done: int = 0
    total: int = 1
    result: object = None
    error: ErrorBody | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def progress(self) -> float:
        return 1.0 if self.state == "succeeded" else (self.done / self.total if self.total else 0.0)

    def status(self, with_result: bool = True) -> JobStatus:
        return JobStatus(
            id=self.id,
            kind=self.kind,
            state=self.state,
            progress=self.progress,
            done=self.done,
            total=self.total,
            result=self.result if with_result else None,
            error=self.error,
            created_at=self.created_at,
            finished_at=self.finished_at,
        )


class JobManager:
    def __init__(
        self,
        max_jobs: int,
        ttl_s: float,
        threads: int = 1,
        retry_after_s: int = 5,
        max_per_client: int | None = None,
        failed_ttl_s: float | None = None,
        cancel: Callable[[str], None] | None = None,
        deadline_s: Callable[[str], float] | None = None,
    ):
        self.max_jobs, self.ttl_s, self.retry_after_s = max_jobs, ttl_s, retry_after_s
        self.max_per_client = max_per_client or max_jobs
        self.failed_ttl_s = failed_ttl_s if failed_ttl_s is not None else ttl_s
        self._cancel_work = cancel or (lambda request_id: None)
        self.deadline_s = deadline_s
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="influence-job")

    def _expiry(self, job: Job) -> float | None:
        if job.finished_at is None:
            return None
        return job.finished_at + (self.ttl_s if job.state == "succeeded" else self.failed_ttl_s)

    def _expire(self) -> None:
        now = time.time()
        for job_id, job in list(self._jobs.items()):
            expiry = self._expiry(job)
            if expiry is not None and now > expiry:
                del self._jobs[job_id]

    def _full(self, jobs: list[Job], limit: int, what: str) -> BusyError:
        """The refusal, with ``Retry-After`` = seconds until the first of ``jobs`` expires."""
        expiries = [e for e in (self._expiry(job) for job in jobs) if e is not None]
        wait = max(1, math.ceil(min(expiries) - time.time())) if expiries else self.retry_after_s
        return BusyError(
            f"{len(jobs)} jobs are {what} (limit {limit}): fetch or cancel finished ones "
            f"(GET or DELETE /v1/jobs/{{id}}), or retry after {wait} s",
            headers={"Retry-After": str(wait)},
        )

    def submit(self, kind: str, work: Work, owner: str) -> JobStatus:
        """Queue ``work(progress, context)``; a failure becomes the job's error body (``describe_error``)."""
        with self._lock:
            self._expire()
            own = [job for job in self._jobs.values() if job.owner == owner]
            if len(own) >= self.max_per_client:
                raise self._full(own, self.max_per_client, "yours, queued, running or unfetched")
            if len(self._jobs) >= self.max_jobs:
                raise self._full(list(self._jobs.values()), self.max_jobs, "queued, running or unfetched")
            job = Job(uuid.uuid4().hex, kind, owner)
            self._jobs[job.id] = job
        self._executor.submit(self._run, job, work)
        return job.status()

    def _run(self, job: Job, work: Work) -> None:
        with self._lock:
            if job.state != "queued":  # cancelled while it waited
                return
            job.state = "running"
        # The job's id is its request id (DELETE cancels by it); its deadline (by kind) runs from its start
        # and bounds the whole job: every worker call it makes carries this context.
        deadline = time.time() + self.deadline_s(job.kind) if self.deadline_s is not None else None
        context = RequestContext(job.id, deadline)

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            result, state = work(progress, context), "succeeded"
        except RequestCancelled:
            result, state = None, "cancelled"
        except Exception as error:  # any failure is the job's outcome, reported to whoever polls
            job.error = ErrorBody(**describe_error(error))
            result, state = None, "failed"
        with self._lock:
            job.result, job.state, job.finished_at = result, state, time.time()

    def _own(self, job_id: str, owner: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:  # another client's job does not exist for you
            raise NotFoundError(
                f"no job {job_id!r}: it never existed, was already fetched, or expired "
                f"({self.ttl_s:g} s after success, {self.failed_ttl_s:g} s after failure)",
                {"field": "id", "value": job_id},
            )
        return job

    def fetch(self, job_id: str, owner: str) -> JobStatus:
        """The job's status; a finished job is removed by the fetch that returns it."""
        with self._lock:
            self._expire()
            job = self._own(job_id, owner)
            if job.finished_at is not None:
                del self._jobs[job_id]
            return job.status()

    def list(self, owner: str) -> list[JobStatus]:
        """The client's own jobs, oldest first, without their results (fetch one to get it)."""
        with self._lock:
            self._expire()
            own = sorted(
                (job for job in self._jobs.values() if job.owner == owner), key=lambda j: j.created_at
            )
            return [job.status(with_result=False) for job in own]

    def cancel(self, job_id: str, owner: str) -> JobStatus:
        """Stop a queued or running job (its work stops at the next step boundary); forget a finished one."""
        with self._lock:
            self._expire()
            job = self._own(job_id, owner)
            if job.state == "queued":
                job.state, job.finished_at = "cancelled", time.time()
            elif job.finished_at is not None:
                del self._jobs[job_id]
            running = job.state == "running"
        if running:
            self._cancel_work(job.id)
        return job.status(with_result=False)

    def shutdown(self) -> None:
        with self._lock:
            running = [job.id for job in self._jobs.values() if job.state == "running"]
        for request_id in running:
            self._cancel_work(request_id)
        self._executor.shutdown(wait=False, cancel_futures=True)
