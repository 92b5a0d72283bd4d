"""Run calls on the pool's actors within a deadline, re-running a call whose actor died.

A :class:`Call` names the explainer method, its arguments, the slot to run on, and its outputs by name;
outputs listed in ``keep`` stay in Ray's object store (their references are returned), the others are
fetched. When an actor dies, its call is re-run on a fresh actor (at most ``max_retries`` times, then
:class:`WorkerPoolError` names the call and the worker); at the deadline, the actors still busy are
replaced and :class:`WorkerTimeoutError` is raised, so the next query finds a full pool.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayTaskError
from tqdm.auto import tqdm

from workers.cluster import WorkerPoolError, WorkerTimeoutError
from workers.lifecycle import WORKER_FAILURES, WorkerSet


@dataclass
class Call:
    """One retryable unit of work: an explainer method run on one slot's actor."""

    name: str
    """How errors and progress name it: "LiSSA repetition 0", "scoring shard 2 (500 rows)"."""
    method: str
    args: tuple
    slot: int
    outputs: tuple[str, ...] = ("value",)
    keep: tuple[str, ...] = ()
    """Outputs left in the object store: the result holds their references."""
    group: str | None = None
    """Concurrency group (``light`` for one-sentence calls); ``None``: the default, one at a time."""
    attempts: int = 0
    refs: dict[str, ray.ObjectRef] = field(default_factory=dict)
    actor: object = None
    worker: str = "?"
    result: dict[str, object] | None = None

    @property
    def watched(self) -> ray.ObjectRef:
        """The output waited on: a fetched one if any (all outputs of one call finish together)."""
        fetched = [name for name in self.outputs if name not in self.keep]
        return self.refs[(fetched or list(self.outputs))[0]]


class Runner:
    def __init__(self, workers: WorkerSet, max_retries: int, deadline_s: float):
        self.workers, self.max_retries, self.deadline_s = workers, max_retries, deadline_s

    def deadline(self) -> float:
        """A fresh absolute deadline (monotonic clock) for a request starting now."""
        return time.monotonic() + self.deadline_s

    def start(self, calls: list[Call], deadline: float) -> list[Call]:
        for call in calls:
            self._submit(call, deadline)
        return calls

    def _submit(self, call: Call, deadline: float) -> None:
        call.actor = self.workers.get(call.slot, deadline)
        call.worker = self.workers.names[call.slot]
        options = {"num_returns": len(call.outputs)}
        if call.group is not None:
            options["concurrency_group"] = call.group
        refs = getattr(call.actor, call.method).options(**options).remote(*call.args)
        call.refs = dict(zip(call.outputs, refs if len(call.outputs) > 1 else [refs], strict=True))

    def finish(
        self, calls: list[Call], deadline: float, progress: str | None = None
    ) -> list[dict[str, object]]:
        """Wait for every call; each result maps output names to values (or references, for ``keep``)."""
        pending = {call.watched: call for call in calls if call.result is None}
        bar = tqdm(total=len(calls), desc=progress, unit="part", disable=progress is None)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                self._abandon(list(pending.values()), len(calls))
            call = pending.pop(ready[0])
            if self._read(call, deadline):
                bar.update(1)
            else:
                pending[call.watched] = call
        bar.close()
        return [call.result for call in calls]

    def run(
        self, calls: list[Call], deadline: float | None = None, progress: str | None = None
    ) -> list[dict]:
        deadline = deadline or self.deadline()
        return self.finish(self.start(calls, deadline), deadline, progress)

    def _read(self, call: Call, deadline: float) -> bool:
        """Store the call's result; ``False`` when it was resubmitted after its actor died."""
        try:
            fetched = {name: ray.get(ref) for name, ref in call.refs.items() if name not in call.keep}
        except RayTaskError as error:  # the method itself raised: a user error, re-raised as such
            raise (error.cause or error) from None
        except WORKER_FAILURES as error:
            call.attempts += 1
            self.workers.replace(call.slot, call.actor)
            if call.attempts > self.max_retries:
                raise WorkerPoolError(
                    f"{call.name} failed on worker {call.worker} {call.attempts} time(s) "
                    f"(max_retries={self.max_retries}): {type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}"
                ) from error
            self._submit(call, deadline)
            return False
        call.result = {name: call.refs[name] for name in call.keep} | fetched
        return True

    def _abandon(self, calls: list[Call], total: int) -> None:
        for call in calls:
            self.workers.replace(call.slot, call.actor)
        raise WorkerTimeoutError(
            f"{len(calls)} of {total} parts ({calls[0].name}, ...) were not done within the "
            f"{self.deadline_s:g} s deadline; those workers were restarted. Raise the deadline or lower "
            "recursion_depth / k."
        )
