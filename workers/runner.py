"""Run calls on the pool's actors for a request, re-running a call whose actor died.

A :class:`Call` holds the explainer method, its arguments, the request it serves, the slot to run on, and
its outputs by name; outputs listed in ``keep`` stay in Ray's object store (their references are
returned), the others are fetched. Every call runs through ``Explainer.run`` under its request's context,
so at the request's deadline (or when the request is cancelled) the worker stops it at the next step
boundary and is free again at once: :class:`WorkerTimeoutError` (or ``RequestCancelled``) reaches the
caller and nothing is killed. Only a worker still busy ``GRACE_S`` after the deadline (hung in one step)
is replaced. When an actor dies, its call is re-run on a fresh actor (at most ``max_retries`` times, then
:class:`WorkerPoolError` names the call and the worker). When a request fails, its other calls are
cancelled: their answers could not be used.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayTaskError
from tqdm.auto import tqdm

from interpret.cancellation import DeadlineExceeded, RequestContext, current_context
from workers.cluster import WorkerPoolError, WorkerTimeoutError
from workers.lifecycle import WORKER_FAILURES, WorkerSet

GRACE_S = 30.0
"""How long past the deadline a call may take to reach its next step boundary before its worker is
presumed hung and replaced (a LiSSA step or a scoring block takes well under a second on MiniLM)."""


@dataclass
class Call:
    """One retryable unit of work: an explainer method run on one slot's actor for one request."""

    name: str
    """How errors and progress name it: "LiSSA repetition 0", "scoring shard 2 (500 rows)"."""
    method: Callable
    """The :class:`~interpret.explainer.Explainer` method itself (the actor's ``run`` checks it is one)."""
    args: tuple
    slot: int
    context: RequestContext
    outputs: tuple[str, ...] = ("value",)
    keep: tuple[str, ...] = ()
    """Outputs left in the object store: the result holds their references."""
    group: str | None = None
    """Concurrency group (``light`` for one-sentence calls); ``None``: the default, one at a time."""
    attempts: int = 0
    refs: dict[str, ray.ObjectRef] = field(default_factory=dict)
    actor: Any = None
    """The Ray actor handle running it (its remote methods are attributes Ray makes at run time)."""
    worker: str = "?"
    result: dict[str, object] | None = None

    @property
    def watched(self) -> ray.ObjectRef:
        """The output waited on: a fetched one if any (all outputs of one call finish together)."""
        fetched = [name for name in self.outputs if name not in self.keep]
        return self.refs[(fetched or list(self.outputs))[0]]

    @property
    def hard_limit(self) -> float:
        """The monotonic time after which the call's worker is presumed hung."""
        remaining = self.context.remaining()
        return time.monotonic() + (float("inf") if remaining is None else remaining + GRACE_S)


class Runner:
    def __init__(self, workers: WorkerSet, max_retries: int, deadline_s: float):
        self.workers, self.max_retries, self.deadline_s = workers, max_retries, deadline_s

    def context(self, context: RequestContext | None = None) -> RequestContext:
        """The request's context: the one given, else the one this thread works under (a job's), else one
        for a request starting now (a fresh id, the default deadline)."""
        return context or current_context() or RequestContext(uuid.uuid4().hex, time.time() + self.deadline_s)

    def start(self, calls: list[Call]) -> list[Call]:
        for call in calls:
            self._submit(call)
        return calls

    def _submit(self, call: Call) -> None:
        call.actor = self.workers.get(call.slot, call.hard_limit)
        call.worker = self.workers.names[call.slot]
        options: dict[str, object] = {"num_returns": len(call.outputs)}
        if call.group is not None:
            options["concurrency_group"] = call.group
        refs = call.actor.run.options(**options).remote(call.context, call.method, *call.args)
        call.refs = dict(zip(call.outputs, refs if len(call.outputs) > 1 else [refs], strict=True))

    def finish(self, calls: list[Call], progress: str | None = None) -> list[dict[str, object]]:
        """Wait for every call; each result maps output names to values (or references, for ``keep``)."""
        pending = {call.watched: call for call in calls if call.result is None}
        bar = tqdm(total=len(calls), desc=progress, unit="part", disable=progress is None)
        try:
            while pending:
                limit = min(call.hard_limit for call in pending.values())
                wait = None if limit == float("inf") else max(0.0, limit - time.monotonic())
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait)
                if not ready:
                    self._abandon(list(pending.values()), len(calls))
                call = pending.pop(ready[0])
                if self._read(call):
                    bar.update(1)
                else:
                    pending[call.watched] = call
        except BaseException:
            for request_id in {call.context.request_id for call in pending.values()}:
                self.workers.cancel(request_id)  # the request failed: its other calls are wasted work
            raise
        finally:
            bar.close()
        finished: list[dict[str, object]] = []
        for call in calls:
            assert call.result is not None  # every call was read, or this raised
            finished.append(call.result)
        return finished

    def run(self, calls: list[Call], progress: str | None = None) -> list[dict]:
        return self.finish(self.start(calls), progress)

    def _read(self, call: Call) -> bool:
        """Store the call's result; ``False`` when it was resubmitted after its actor died."""
        try:
            fetched = {name: ray.get(ref) for name, ref in call.refs.items() if name not in call.keep}
        except RayTaskError as error:  # the method itself raised: a user error, re-raised as such
            cause = error.cause or error
            if isinstance(cause, DeadlineExceeded):  # stopped by the worker itself, which is free again
                raise WorkerTimeoutError(f"{call.name}: {cause}") from None
            raise cause from None
        except WORKER_FAILURES as error:
            call.attempts += 1
            self.workers.replace(call.slot, call.actor)
            if call.attempts > self.max_retries:
                raise WorkerPoolError(
                    f"{call.name} failed on worker {call.worker} {call.attempts} time(s) "
                    f"(max_retries={self.max_retries}): {type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}"
                ) from error
            self._submit(call)
            return False
        call.result = {name: call.refs[name] for name in call.keep} | fetched
        return True

    def _abandon(self, calls: list[Call], total: int) -> None:
        for call in calls:
            self.workers.replace(call.slot, call.actor)
        raise WorkerTimeoutError(
            f"{len(calls)} of {total} parts ({calls[0].name}, ...) did not stop within {GRACE_S:g} s of "
            "the deadline; those workers were restarted. Raise the deadline or lower recursion_depth / k."
        )
