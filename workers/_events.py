"""The pool's lifecycle events: what happened to a worker, a job or a schedule, for one hook."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from procman._proc.events import event_line

from ._futures import Outcome

log = logging.getLogger("workers")


class PoolEventKind(StrEnum):
    WORKER_STARTED = "worker-started"
    WORKER_CRASHED = "worker-crashed"  # died while running a job
    WORKER_EXITED = "worker-exited"  # died while idle or starting
    WORKER_RECYCLED = "worker-recycled"  # retired after max_tasks / max_memory
    JOB_TIMED_OUT = "job-timed-out"
    JOB_RETRY = "job-retry"
    RUN_SKIPPED = "run-skipped"  # a schedule's run overlapped a running instance
    RUN_QUEUED = "run-queued"  # ... and was queued behind it
    RUN_MISSED = "run-missed"  # later than the misfire grace
    RUN_FAILED = "run-failed"  # a schedule's run raised or crashed (the schedule goes on)
    RUN_DONE = "run-done"  # a schedule's run returned (``result`` holds its value)
    RUN_INTERRUPTED = "run-interrupted"  # its host died while it ran (a store's run or timed job)
    STORE_ROW_UNLOADABLE = "store-row-unloadable"  # a stored schedule or job cannot run here: kept
    POOL_BROKEN = "pool-broken"


@dataclass(frozen=True)
class PoolEvent:
    kind: PoolEventKind
    name: str = ""  # the job's or schedule's name
    pid: int | None = None
    reason: str = ""
    error: BaseException | None = None
    time: float = field(default_factory=time.time)
    result: Any = None  # RUN_DONE: what the run returned
    duration: float | None = None  # RUN_DONE / RUN_FAILED: seconds the run took in its worker


def log_pool_event(event: PoolEvent) -> None:
    """The default hook: one log line per event on the ``workers`` logger."""
    level = (
        logging.INFO
        if event.kind in (PoolEventKind.WORKER_STARTED, PoolEventKind.WORKER_RECYCLED, PoolEventKind.RUN_DONE)
        else logging.WARNING
    )
    if event.kind is PoolEventKind.POOL_BROKEN:
        level = logging.ERROR
    head = f"{event.kind.value} [{event.name}]" if event.name else event.kind.value
    # A failed run nobody awaits: its traceback (the worker's, as the cause) is the only trace of it.
    exc_info = event.error if event.kind is PoolEventKind.RUN_FAILED else None
    log.log(level, event_line(head, event.pid, event.reason, event.error), exc_info=exc_info)


class LazyEvent:
    """A PoolEvent made on the event thread, where a job's outcome may be unpickled (see Outcome)."""

    __slots__ = ("duration", "kind", "name", "outcome", "reason")

    def __init__(
        self,
        kind: PoolEventKind,
        name: str,
        outcome: Outcome,
        *,
        reason: str = "",
        duration: float | None = None,
    ) -> None:
        self.kind, self.name, self.outcome = kind, name, outcome
        self.reason, self.duration = reason, duration

    def build(self) -> PoolEvent:
        value, error = self.outcome.get()
        kind, reason = self.kind, self.reason
        if kind is PoolEventKind.RUN_DONE:
            if error is not None:
                kind, reason = PoolEventKind.RUN_FAILED, str(error)
            elif self.duration is not None:
                reason = f"took {self.duration:.3g}s"
        return PoolEvent(kind, self.name, reason=reason, error=error, result=value, duration=self.duration)


def outcome_of(error: BaseException | Outcome) -> Outcome:
    return error if isinstance(error, Outcome) else Outcome.known(None, error)
