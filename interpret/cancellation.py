"""Cooperative cancellation: long loops stop at their next step boundary when their request is cancelled
(a client went away, a job was deleted) or has run past its deadline, and the thread is free again.

A request's :class:`RequestContext` (an id and a wall-clock deadline) travels with every call it makes;
:meth:`Cancellations.scope` installs it for the running thread, and the loops of ``interpret`` (a LiSSA
step, a scoring block, a CG iteration, an attack or trigger iteration, a batch of perturbed inputs) call
:func:`checkpoint`. Nothing is killed: a worker that stops this way serves the next call at once. The
deadline is wall-clock time (``time.time()``) because it crosses processes and machines.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

DEFAULT_DEADLINE_S = 900.0
"""Seconds a request (a query, one worker call, a client's wait) may take unless told otherwise."""


class RequestCancelled(Exception):
    """The request was cancelled (its client disconnected, or its job was deleted)."""


class DeadlineExceeded(TimeoutError):
    """The request ran past its deadline; its work stopped at a step boundary."""


@dataclass(frozen=True)
class RequestContext:
    """What every call of one request carries: its id (to cancel it by) and its wall-clock deadline."""

    request_id: str
    deadline: float | None = None
    """``time.time()`` after which the work stops; ``None``: none."""

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()


@dataclass
class _Scope:
    context: RequestContext
    cancelled: threading.Event = field(default_factory=threading.Event)


_current = threading.local()


def current_context() -> RequestContext | None:
    """The request the running thread works for (the innermost :meth:`Cancellations.scope`), or ``None``.

    A call that is given no context inherits this one, so every worker call a job makes (an evaluation's
    per-point queries, an audit's gradient shards) is bound by the job's id and deadline, not a fresh pair."""
    scope: _Scope | None = getattr(_current, "scope", None)
    return None if scope is None else scope.context


def checkpoint() -> None:
    """Raise if the running thread's request was cancelled or is past its deadline (a step boundary)."""
    scope: _Scope | None = getattr(_current, "scope", None)
    if scope is None:
        return
    if scope.cancelled.is_set():
        raise RequestCancelled(f"request {scope.context.request_id} was cancelled")
    remaining = scope.context.remaining()
    if remaining is not None and remaining < 0:
        raise DeadlineExceeded(
            f"request {scope.context.request_id} ran {-remaining:.1f} s past its deadline and was stopped; "
            "raise the deadline, lower the work (recursion_depth, k, samples, iterations), or use a job"
        )


class Cancellations:
    """The requests running in one process, by id; ``cancel`` reaches them from any thread.

    A cancel that arrives before its request started is remembered (a bounded set), so the request stops
    at its first checkpoint instead of running to the end."""

    REMEMBERED = 1024

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[str, list[_Scope]] = {}
        self._cancelled: OrderedDict[str, None] = OrderedDict()

    @contextmanager
    def scope(self, context: RequestContext | None):
        """Run the body under ``context`` (no-op for ``None``)."""
        if context is None:
            yield
            return
        scope = _Scope(context)
        with self._lock:
            self._running.setdefault(context.request_id, []).append(scope)
            if context.request_id in self._cancelled:
                scope.cancelled.set()
        previous, _current.scope = getattr(_current, "scope", None), scope
        try:
            checkpoint()
            yield
        finally:
            _current.scope = previous
            with self._lock:
                scopes = self._running[context.request_id]
                scopes.remove(scope)
                if not scopes:
                    del self._running[context.request_id]

    def cancel(self, request_id: str) -> int:
        """Cancel every running and future call of ``request_id``; returns how many were running."""
        with self._lock:
            self._cancelled[request_id] = None
            while len(self._cancelled) > self.REMEMBERED:
                self._cancelled.popitem(last=False)
            scopes = self._running.get(request_id, [])
            for scope in scopes:
                scope.cancelled.set()
            return len(scopes)

    def running(self) -> int:
        with self._lock:
            return sum(len(scopes) for scopes in self._running.values())

    def requests(self) -> list[str]:
        """The ids of the requests with a call running here, sorted."""
        with self._lock:
            return sorted(self._running)
