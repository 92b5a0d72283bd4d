"""Long work as jobs: submitted at once, run on a small thread pool, polled by id, kept until fetched.

A job belongs to the service, not to the HTTP request that made it, so it survives a client disconnect.
A finished job's result is handed out once (the fetch that sees it finished removes it) or dropped
``ttl_s`` after it finished, whichever comes first; so memory stays bounded by ``max_jobs``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.errors import BusyError, NotFoundError, describe_error
from service.schemas import ErrorBody, JobStatus

Progress = Callable[[int, int], None]


@dataclass
class Job:
    id: str
    kind: str
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

    def status(self) -> JobStatus:
        return JobStatus(
            id=self.id,
            kind=self.kind,
            state=self.state,
            progress=self.progress,
            done=self.done,
            total=self.total,
            result=self.result,
            error=self.error,
            created_at=self.created_at,
            finished_at=self.finished_at,
        )


class JobManager:
    def __init__(self, max_jobs: int, ttl_s: float, threads: int = 1, retry_after_s: int = 5):
        self.max_jobs, self.ttl_s, self.retry_after_s = max_jobs, ttl_s, retry_after_s
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="influence-job")

    def _expire(self) -> None:
        now = time.time()
        for job_id, job in list(self._jobs.items()):
            if job.finished_at is not None and now - job.finished_at > self.ttl_s:
                del self._jobs[job_id]

    def submit(self, kind: str, work: Callable[[Progress], object]) -> JobStatus:
        """Queue ``work(progress)``; a failure becomes the job's error body (``describe_error``)."""
        with self._lock:
            self._expire()
            if len(self._jobs) >= self.max_jobs:
                raise BusyError(
                    f"{len(self._jobs)} jobs are queued or unfetched (limit {self.max_jobs}): fetch finished "
                    "jobs or retry later",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            job = Job(uuid.uuid4().hex, kind)
            self._jobs[job.id] = job
        self._executor.submit(self._run, job, work)
        return job.status()

    def _run(self, job: Job, work: Callable[[Progress], object]) -> None:
        job.state = "running"

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            job.result = work(progress)
            job.state = "succeeded"
        except Exception as error:  # any failure is the job's outcome, reported to whoever polls
            job.error = ErrorBody(**describe_error(error))
            job.state = "failed"
        job.finished_at = time.time()

    def fetch(self, job_id: str) -> JobStatus:
        """The job's status; a finished job is removed by the fetch that returns it."""
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFoundError(
                    f"no job {job_id!r}: it never existed, was already fetched, or expired after "
                    f"{self.ttl_s:g} s",
                    {"field": "id", "value": job_id},
                )
            if job.finished_at is not None:
                del self._jobs[job_id]
            return job.status()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
