"""Long work as jobs: submitted at once, scheduled fairly, polled, listed and cancelled by id.

A job belongs to the service, not to the HTTP request that made it, so it survives a client disconnect;
it belongs to one client, who alone can see, list and cancel it. Memory stays bounded: at most
``max_jobs`` jobs, ``max_per_client`` per client; a succeeded job's result is handed out once (the fetch
that sees it finished removes it) or dropped ``ttl_s`` after it finished, and a failed or cancelled job is
dropped after ``failed_ttl_s``. When the table is full, ``Retry-After`` says when a place frees up (the
next expiry), not a fixed guess.

Scheduling. Each kind belongs to a class (:data:`JOB_CLASSES`): *interactive* (influence, saliency,
attack) or *heavy* (evaluate, index builds), and each class runs up to its own number of jobs at once, so
a cheap query never waits behind a build. Within a class the next job to start is the oldest one of the
client with the fewest jobs of that class running, ties going to the client whose last job started
longest ago: every client gets its turn however many jobs another one queued. In a class with several
slots no client holds them all, so a newcomer finds one open. A queued job's status gives
its place in that order and an estimated start (from the recent run times of its class).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from interpret.cancellation import RequestCancelled, RequestContext
from service.errors import BusyError, NotFoundError, capped, describe_error
from service.schemas import ErrorBody, JobResult, JobState, JobStatus

Progress = Callable[[int, int], None]
Work = Callable[[Progress, RequestContext], JobResult]

JOB_CLASSES: dict[str, str] = {
    "influence": "interactive",
    "saliency": "interactive",
    "attack": "interactive",
    "evaluate": "heavy",
    "index_build": "heavy",
    "index_remove": "heavy",  # it rewrites the served index, so it is allowed as builds are
    "index_add": "heavy",
}
"""Each job kind's scheduling class."""
FIRST_ESTIMATE_S = {"interactive": 10.0, "heavy": 600.0}
"""A class's run time as estimated before any job of it has succeeded here."""
ESTIMATE_WEIGHT = 0.3
"""Weight of the latest succeeded job's run time in its class's estimate (an exponential average)."""


@dataclass(frozen=True)
class Client:
    """Who a request comes from: the name of the API key it carried (each with its own job quota), or,
    on a server without keys, its address (``X-Forwarded-For`` only from a trusted proxy)."""

    id: str
    keyed: bool


@dataclass
class Job:
    id: str
    kind: str
    owner: str
    work: Work | None = None
    state: JobState = "queued"
    done: int = 0
    total: int = 1
    result: JobResult | None = None
    error: ErrorBody | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def job_class(self) -> str:
        return JOB_CLASSES[self.kind]

    @property
    def progress(self) -> float:
        return 1.0 if self.state == "succeeded" else (self.done / self.total if self.total else 0.0)

    def status(
        self, with_result: bool = True, position: int | None = None, start_in: float | None = None
    ) -> JobStatus:
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
            queue_position=position,
            estimated_start_s=None if start_in is None else round(start_in, 1),
        )


def estimated_starts(remaining: list[float], slots: int, run_s: float, count: int) -> list[float]:
    """Seconds until each of ``count`` queued jobs starts, in order, when ``slots`` run at once, the
    running jobs need ``remaining`` more seconds each, and every job takes ``run_s``: each queued job takes
    the slot that frees first."""
    free = sorted(remaining)[:slots] + [0.0] * max(0, slots - len(remaining))
    heapq.heapify(free)
    starts = []
    for _ in range(count):
        start = heapq.heappop(free)
        starts.append(start)
        heapq.heappush(free, start + run_s)
    return starts


class JobManager:
    def __init__(
        self,
        max_jobs: int,
        ttl_s: float,
        concurrency: Mapping[str, int] | None = None,
        retry_after_s: int = 5,
        max_per_client: int | None = None,
        failed_ttl_s: float | None = None,
        cancel: Callable[[str], None] | None = None,
        deadline_s: Callable[[str], float] | None = None,
    ):
        self.max_jobs, self.ttl_s, self.retry_after_s = max_jobs, ttl_s, retry_after_s
        self.concurrency = {name: 1 for name in FIRST_ESTIMATE_S} | dict(concurrency or {})
        if any(slots < 1 for slots in self.concurrency.values()):
            raise ValueError(f"every job class needs at least one slot, got {self.concurrency}")
        self.max_per_client = max_per_client or max_jobs
        self.failed_ttl_s = failed_ttl_s if failed_ttl_s is not None else ttl_s
        self._cancel_work = cancel or (lambda request_id: None)
        self.deadline_s = deadline_s
        self._jobs: dict[str, Job] = {}  # in submission order
        self._lock = threading.Lock()
        self._starts = itertools.count()
        self._last_start: dict[tuple[str, str], int] = {}  # (class, owner) -> when it last started one
        self._run_s = dict(FIRST_ESTIMATE_S)
        self._executors = {
            name: ThreadPoolExecutor(max_workers=slots, thread_name_prefix=f"influence-{name}-job")
            for name, slots in self.concurrency.items()
        }

    # ------------------------------------------------------------------ the table

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

    # ------------------------------------------------------------------ the schedule

    def _running(self, job_class: str) -> list[Job]:
        return [job for job in self._jobs.values() if job.state == "running" and job.job_class == job_class]

    def _order(self, job_class: str) -> list[Job]:
        """The queued jobs of ``job_class`` in the order they will start (the fair order above)."""
        running = Counter(job.owner for job in self._running(job_class))
        last = {owner: tick for (name, owner), tick in self._last_start.items() if name == job_class}
        waiting: dict[str, list[Job]] = {}
        for job in self._jobs.values():
            if job.state == "queued" and job.job_class == job_class:
                waiting.setdefault(job.owner, []).append(job)
        order, tick = [], itertools.count(max(last.values(), default=0) + 1)
        while waiting:
            owner = min(waiting, key=lambda name: (running[name], last.get(name, -1)))
            order.append(waiting[owner].pop(0))
            if not waiting[owner]:
                del waiting[owner]
            running[owner] += 1
            last[owner] = next(tick)
        return order

    def _dispatch(self) -> None:
        """Start queued jobs while their class has a free slot (called with the lock held). A client runs
        at most ``slots - 1`` jobs of a class with several slots, so one is always open to the next client:
        without preemption, that is what keeps a newcomer's cheap job from waiting out a long one."""
        for job_class, slots in self.concurrency.items():
            running, cap = Counter(job.owner for job in self._running(job_class)), max(1, slots - 1)
            for job in self._order(job_class):
                if sum(running.values()) >= slots:
                    break
                if running[job.owner] >= cap:
                    continue
                running[job.owner] += 1
                job.state, job.started_at = "running", time.time()
                self._last_start[(job_class, job.owner)] = next(self._starts)
                self._executors[job_class].submit(self._run, job)

    def _schedule(self) -> dict[str, tuple[int, float]]:
        """Each queued job's place in its class's order (0: next) and seconds until its estimated start."""
        now, places = time.time(), {}
        for job_class, slots in self.concurrency.items():
            order = self._order(job_class)
            run_s = self._run_s[job_class]
            remaining = [
                max(0.0, run_s - (now - (job.started_at or now))) for job in self._running(job_class)
            ]
            starts = estimated_starts(remaining, slots, run_s, len(order))
            places.update({job.id: (position, starts[position]) for position, job in enumerate(order)})
        return places

    def _status(self, job: Job, with_result: bool = True, schedule=None) -> JobStatus:
        schedule = self._schedule() if schedule is None else schedule
        return job.status(with_result, *schedule.get(job.id, (None, None)))

    # ------------------------------------------------------------------ the routes

    def submit(self, kind: str, work: Work, owner: str) -> JobStatus:
        """Queue ``work(progress, context)``; a failure becomes the job's error body (``describe_error``)."""
        if kind not in JOB_CLASSES:
            raise ValueError(f"unknown job kind {kind!r}: one of {', '.join(JOB_CLASSES)}")
        with self._lock:
            self._expire()
            own = [job for job in self._jobs.values() if job.owner == owner]
            if len(own) >= self.max_per_client:
                raise self._full(own, self.max_per_client, "yours, queued, running or unfetched")
            if len(self._jobs) >= self.max_jobs:
                raise self._full(list(self._jobs.values()), self.max_jobs, "queued, running or unfetched")
            job = Job(uuid.uuid4().hex, kind, owner, work)
            self._jobs[job.id] = job
            self._dispatch()
            return self._status(job)

    def _run(self, job: Job) -> None:
        # The job's id is its request id (DELETE cancels by it); its deadline (by kind) runs from its start
        # and bounds the whole job: every worker call it makes carries this context.
        deadline = time.time() + self.deadline_s(job.kind) if self.deadline_s is not None else None
        context = RequestContext(job.id, deadline)

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        work = job.work
        assert work is not None  # dropped only once the job has finished
        result: JobResult | None
        state: JobState
        try:
            result, state = work(progress, context), "succeeded"
        except RequestCancelled:
            result, state = None, "cancelled"
        except Exception as error:  # any failure is the job's outcome, reported to whoever polls
            job.error = ErrorBody(**describe_error(error))
            result, state = None, "failed"
        with self._lock:
            job.result, job.state, job.finished_at, job.work = result, state, time.time(), None
            if state == "succeeded":
                seconds, job_class = job.finished_at - (job.started_at or job.finished_at), job.job_class
                self._run_s[job_class] += ESTIMATE_WEIGHT * (seconds - self._run_s[job_class])
            self._dispatch()

    def _own(self, job_id: str, owner: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:  # another client's job does not exist for you
            raise NotFoundError(
                f"no job {capped(job_id)!r}: it never existed, was already fetched, or expired "
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
            return self._status(job)

    def list(self, owner: str) -> list[JobStatus]:
        """The client's own jobs, oldest first, without their results (fetch one to get it)."""
        with self._lock:
            self._expire()
            schedule = self._schedule()
            own = sorted(
                (job for job in self._jobs.values() if job.owner == owner), key=lambda j: j.created_at
            )
            return [self._status(job, False, schedule) for job in own]

    def cancel(self, job_id: str, owner: str) -> JobStatus:
        """Stop a queued or running job (its work stops at the next step boundary); forget a finished one."""
        with self._lock:
            self._expire()
            job = self._own(job_id, owner)
            if job.state == "queued":
                job.state, job.finished_at, job.work = "cancelled", time.time(), None
            elif job.finished_at is not None:
                del self._jobs[job_id]
            running = job.state == "running"
            status = self._status(job, with_result=False)
        if running:
            self._cancel_work(job.id)
        return status

    def shutdown(self) -> None:
        with self._lock:
            running = [job.id for job in self._jobs.values() if job.state == "running"]
            for job in self._jobs.values():
                if job.state == "queued":
                    job.state, job.finished_at, job.work = "cancelled", time.time(), None
        for request_id in running:
            self._cancel_work(request_id)
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
