"""Recurring jobs: the loop-side record of a schedule, and the handle the caller holds."""

from __future__ import annotations

import threading
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from ._futures import Outcome
from ._triggers import Trigger

if TYPE_CHECKING:
    from ._pool import Pool

DEFAULT_MISFIRE_GRACE = 300.0  # seconds; APScheduler's 1 s silently drops runs on a busy host
MIN_INTERVAL = 0.001  # seconds: the shortest every= of a schedule


class ScheduleState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    FINISHED = "finished"  # the trigger has no more times (end reached)


class ScheduleRecord:
    def __init__(self, name: str, trigger: Trigger, blob: bytes, opts: dict[str, Any]) -> None:
        self.name = name
        self.trigger = trigger
        self.blob = blob  # the job, callable included, serialized once for every run
        self.max_instances: int = opts["max_instances"]
        self.overlap: str = opts["overlap"]
        self.grace: float | None = opts["misfire_grace"]
        self.coalesce: bool = opts["coalesce"]
        self.timeout: float | None = opts["timeout"]
        self.retries: int = opts["retries"]
        self.retry_backoff: float = opts["retry_backoff"]
        self.state = ScheduleState.ACTIVE
        self.next_time: float | None = None  # epoch
        self.generation = 0  # invalidates heap entries after pause/resume/cancel
        self.in_flight = 0
        self.queued_runs = 0
        self.runs = 0
        self.failures = 0
        self.skipped = 0
        self.missed = 0
        self.last_done = Outcome.known()  # the last run that returned
        self.last_failed = Outcome.known()  # the last run that failed
        self.last_run: float | None = None  # epoch of the last completed run
        self.cond = threading.Condition()


class Schedule:
    """The handle of a recurring job: cancel, pause/resume, and what it did so far."""

    def __init__(self, record: ScheduleRecord, pool: Pool) -> None:
        self._r = record
        self._pool = pool  # a schedule in hand keeps its pool (and so itself) alive

    @property
    def name(self) -> str:
        return self._r.name

    @property
    def state(self) -> ScheduleState:
        return self._r.state

    @property
    def next_run_time(self) -> datetime | None:
        """The next scheduled time (aware, local time zone), or None when paused or ended."""
        t = self._r.next_time
        if t is None or self._r.state is not ScheduleState.ACTIVE:
            return None
        return datetime.fromtimestamp(t).astimezone()

    @property
    def runs(self) -> int:
        """Completed runs, failed ones included."""
        return self._r.runs

    @property
    def failures(self) -> int:
        return self._r.failures

    @property
    def skipped(self) -> int:
        """Runs skipped because ``max_instances`` were already running (overlap='skip')."""
        return self._r.skipped

    @property
    def missed(self) -> int:
        """Scheduled times dropped for being later than the misfire grace."""
        return self._r.missed

    @property
    def last_result(self) -> Any:
        """What the last successful run returned (unpickled here, on first use)."""
        return self._r.last_done.get()[0]

    @property
    def last_error(self) -> BaseException | None:
        """What the last failed run raised, or how it crashed (unpickled here, on first use)."""
        return self._r.last_failed.get()[1]

    def cancel(self) -> None:
        """No more runs; a run under way finishes."""
        self._pool._call(self._pool._core.schedule_cancel, self._r)

    def pause(self) -> None:
        self._pool._call(self._pool._core.schedule_pause, self._r)

    def resume(self) -> None:
        """Resume from the next scheduled time after now (runs missed while paused are not made up)."""
        self._pool._call(self._pool._core.schedule_resume, self._r)

    def wait(self, runs: int, timeout: float) -> bool:
        """Block until at least ``runs`` runs completed; False if ``timeout`` ran out first."""
        with self._r.cond:
            return self._r.cond.wait_for(lambda: self._r.runs >= runs, timeout)

    def __repr__(self) -> str:
        return f"<Schedule {self.name!r} {self.state.value} runs={self.runs} next={self.next_run_time}>"
