"""Recurring jobs: the loop-side record of a schedule, the handle the caller holds, and the
dispatcher's part that turns a schedule's times into runs."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from ._cron import Cron
from ._errors import PoolClosed, ScheduleError
from ._events import LazyEvent, PoolEvent, PoolEventKind
from ._futures import Outcome
from ._jobs import Job
from ._state import DispatchState
from ._triggers import Every, Trigger, plan, to_epoch, to_seconds

if TYPE_CHECKING:
    from ._pool import Pool

HISTORY = 100  # finished runs a memory-only schedule keeps (a store keeps its own ``history``)


@dataclass(frozen=True)
class RunRecord:
    """One run of a schedule, as :meth:`Schedule.history` lists it."""

    fire_time: datetime | None  # the time it was scheduled for (aware, local time zone)
    state: str  # done, failed, missed, skipped, interrupted (and running, claimed, due: not over)
    started: datetime | None
    duration: float | None  # seconds it ran in its worker
    error: str | None  # what it raised or how it crashed, as text
    host: str | None = None  # the store's id of the host that ran it


DEFAULT_MISFIRE_GRACE = 300.0  # seconds; APScheduler's 1 s silently drops runs on a busy host


def make_trigger(
    every: float | timedelta | str | None,
    cron: str | None,
    tz: str | None,
    start: datetime | float | None,
    end: datetime | float | None,
) -> Trigger:
    """The trigger of ``Pool.schedule``'s arguments, or a ScheduleError that says what is wrong."""
    if (every is None) == (cron is None):
        raise ScheduleError("give exactly one of every= (an interval) or cron= (an expression)")
    start_t = to_epoch(start, "start") if start is not None else None
    end_t = to_epoch(end, "end") if end is not None else None
    if start_t is not None and end_t is not None and end_t < start_t:
        raise ScheduleError(f"end={end!r} is before start={start!r}")
    trigger: Trigger
    if every is not None:
        if tz is not None:
            raise ScheduleError("tz= applies to cron= schedules only")
        trigger = Every(to_seconds(every, "every"), start_t, end_t)  # Every checks the interval
    else:
        assert cron is not None
        trigger = Cron(cron, tz, start_t, end_t)
    return trigger


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
        self.interrupted = 0  # runs whose host died while they ran (a store's schedules)
        self.redeliver: bool = opts.get("redeliver", False)
        self.stored = False  # lives in the pool's store: the counters are the store's, all hosts'
        # Memory-only schedules' last runs: (fire time, ended, duration, outcome), made RunRecords
        # on the caller's thread (an outcome is never unpickled on the loop).
        self.history: deque[tuple[float | None, float, float | None, Outcome]] = deque(maxlen=HISTORY)
        self.cond = threading.Condition()

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def refresh(
        self,
        state: str,
        next_time: float | None,
        runs: int,
        failures: int,
        missed: int,
        skipped: int,
        interrupted: int,
    ) -> None:
        """A stored schedule's row as the store's thread last read it."""
        try:
            self.state = ScheduleState(state)
        except ValueError:
            pass
        self.next_time = next_time
        self.runs, self.failures, self.missed = runs, failures, missed
        self.skipped, self.interrupted = skipped, interrupted
        self.notify()

    def local_outcome(self, outcome: Outcome) -> None:
        """A run of a stored schedule ended on this host: its result is readable here."""
        self.last_run = time.time()
        if outcome.is_error:
            self.last_failed = outcome
        else:
            self.last_done = outcome


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

    @property
    def interrupted(self) -> int:
        """Runs whose host died while they ran (a pool with a store): recorded, not run again."""
        return self._r.interrupted

    @property
    def trigger(self) -> Trigger:
        return self._r.trigger

    def cancel(self) -> None:
        """No more runs; a run under way finishes. With a store: on every host sharing it."""
        if self._r.stored:
            self._pool._store_change(self._r, "cancel")
        else:
            self._pool._call(self._pool._core.schedule_cancel, self._r)

    def pause(self) -> None:
        """No runs until :meth:`resume`. With a store: on every host, within its ``poll``."""
        if self._r.stored:
            self._pool._store_change(self._r, "pause")
        else:
            self._pool._call(self._pool._core.schedule_pause, self._r)

    def resume(self) -> None:
        """Resume from the next scheduled time after now (runs missed while paused are not made up)."""
        if self._r.stored:
            self._pool._store_change(self._r, "resume")
        else:
            self._pool._call(self._pool._core.schedule_resume, self._r)

    def reschedule(
        self,
        *,
        every: float | timedelta | str | None = None,
        cron: str | None = None,
        tz: str | None = None,
        start: datetime | float | None = None,
        end: datetime | float | None = None,
    ) -> None:
        """Give the schedule a new trigger (the arguments are Pool.schedule's); its next run is the
        new trigger's first time from now, and a paused schedule stays paused."""
        trigger = make_trigger(every, cron, tz, start, end)
        if self._r.stored:
            self._pool._store_change(self._r, "reschedule", trigger)
        else:
            self._pool._call(self._pool._core.schedule_reschedule, self._r, trigger)

    def run_now(self) -> None:
        """One extra run now, outside the trigger's times (overlap rules apply)."""
        if self._r.stored:
            self._pool._store_change(self._r, "run_now")
        else:
            self._pool._call(self._pool._core.schedule_run_now, self._r)

    def history(self, limit: int = 20) -> list[RunRecord]:
        """The last ``limit`` runs, newest first (with a store: from every host, bounded by its
        ``history``; without one, the last 100 runs of this process)."""
        if self._r.stored:
            return self._pool._store_history(self._r.name, limit)
        out = []
        for fire, ended, ran, outcome in list(self._r.history)[::-1][:limit]:
            error = outcome.get()[1]
            out.append(
                RunRecord(
                    _local(fire),
                    "failed" if error is not None else "done",
                    _local(ended - (ran or 0.0)),
                    ran,
                    None if error is None else f"{type(error).__name__}: {error}",
                )
            )
        return out

    def wait(self, runs: int, timeout: float) -> bool:
        """Block until at least ``runs`` runs completed; False if ``timeout`` ran out first."""
        with self._r.cond:
            return self._r.cond.wait_for(lambda: self._r.runs >= runs, timeout)

    def __repr__(self) -> str:
        return f"<Schedule {self.name!r} {self.state.value} runs={self.runs} next={self.next_run_time}>"


def _local(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t).astimezone()


class ScheduleRuns(DispatchState):
    """The dispatcher's part for schedules (a base of workers._dispatch.Core): arm each one's next
    time on the timed queue, turn a due time into runs under its misfire, coalescing and overlap
    rules, and count what each run did. Runs on the I/O loop."""

    def schedule_add(self, sched: ScheduleRecord) -> None:
        records = self.schedule_records
        records[:] = [r for r in records if r.state is not ScheduleState.CANCELLED]
        records.append(sched)
        first = sched.trigger.first(self.wall())
        self.arm_schedule(sched, first)

    def schedule_reschedule(self, sched: ScheduleRecord, trigger: Trigger) -> None:
        sched.trigger = trigger
        sched.generation += 1
        if sched.state in (ScheduleState.ACTIVE, ScheduleState.FINISHED):
            sched.state = ScheduleState.ACTIVE
            self.arm_schedule(sched, trigger.first(self.wall()))
        else:
            sched.next_time = trigger.first(self.wall())

    def schedule_run_now(self, sched: ScheduleRecord) -> None:
        if sched.state is ScheduleState.CANCELLED:
            raise ScheduleError(f"the schedule {sched.name!r} is cancelled")
        self.start_run(sched, self.clock(), self.wall())
        self.dispatch()

    def arm_schedule(self, sched: ScheduleRecord, at: float | None) -> None:
        sched.next_time = at
        if at is None:
            if sched.state is ScheduleState.ACTIVE:
                sched.state = ScheduleState.FINISHED
            with sched.cond:
                sched.cond.notify_all()
            return
        wall = self.wall()  # first: a pause before the monotonic read makes it late, never early
        due = self.clock() + (at - wall)
        self.push(due, (sched, sched.generation))

    def fire_schedule(self, sched: ScheduleRecord) -> None:
        if sched.state is not ScheduleState.ACTIVE or sched.next_time is None:
            return
        now = self.wall()
        p = plan(sched.trigger, sched.next_time, now, sched.grace, sched.coalesce)
        if p.missed:
            sched.missed += p.missed
            self.events.emit(
                PoolEvent(
                    PoolEventKind.RUN_MISSED,
                    sched.name,
                    reason=f"{p.missed} run(s) later than the misfire grace of {sched.grace}s",
                )
            )
        for scheduled in p.run:
            self.start_run(sched, self.clock() - (now - scheduled), scheduled)
        self.arm_schedule(sched, p.next)

    def start_run(self, sched: ScheduleRecord, due: float, fire_time: float | None = None) -> None:
        if sched.in_flight >= sched.max_instances:
            if sched.overlap == "queue":
                sched.queued_runs += 1
                self.events.emit(
                    PoolEvent(PoolEventKind.RUN_QUEUED, sched.name, reason="an earlier run is still going")
                )
            else:
                sched.skipped += 1
                self.events.emit(
                    PoolEvent(
                        PoolEventKind.RUN_SKIPPED,
                        sched.name,
                        reason=f"max_instances={sched.max_instances} already running",
                    )
                )
            return
        sched.in_flight += 1
        job = Job(
            id=next(self.ids),
            name=sched.name,
            blob=sched.blob,
            due=due,
            timeout=sched.timeout,
            retries_left=sched.retries,
            retry_backoff=sched.retry_backoff,
            schedule=sched,
            fire_time=fire_time,
        )
        if self.broken is not None or self.closing:
            self.fail_final(job, self.broken or PoolClosed("the pool is shut down"))
        else:
            self.queue.append(job)

    def finish_schedule_run(self, job: Job, outcome: Outcome) -> None:
        if job.stored is not None:
            self.stored_finished(job, outcome)
            return
        sched = job.schedule
        if sched is None:
            return
        sched.runs += 1
        sched.last_run = self.wall()
        sched.history.append((job.fire_time, sched.last_run, job.ran, outcome))
        if outcome.is_error:
            sched.failures += 1
            sched.last_failed = outcome
        else:
            sched.last_done = outcome
        # RUN_DONE or RUN_FAILED, told apart once the outcome is unpickled on the event thread.
        self.events.emit(LazyEvent(PoolEventKind.RUN_DONE, sched.name, outcome, duration=job.ran))
        with sched.cond:
            sched.cond.notify_all()
        self.run_slot_freed(sched)

    def run_slot_freed(self, sched: ScheduleRecord) -> None:
        """One of the schedule's instances ended (or was dropped): start a queued run if any."""
        sched.in_flight -= 1
        if sched.queued_runs and sched.state is ScheduleState.ACTIVE:
            sched.queued_runs -= 1
            self.start_run(sched, self.clock())
            self.dispatch()

    def schedule_cancel(self, sched: ScheduleRecord) -> None:
        sched.state = ScheduleState.CANCELLED
        sched.generation += 1
        sched.queued_runs = 0
        with sched.cond:
            sched.cond.notify_all()

    def schedule_pause(self, sched: ScheduleRecord) -> None:
        if sched.state is ScheduleState.ACTIVE:
            sched.state = ScheduleState.PAUSED
            sched.generation += 1

    def schedule_resume(self, sched: ScheduleRecord) -> None:
        if sched.state is ScheduleState.PAUSED:
            sched.state = ScheduleState.ACTIVE
            sched.generation += 1
            now = self.wall()
            t = sched.next_time
            while t is not None and t <= now:
                t = sched.trigger.next_after(t)
            self.arm_schedule(sched, t)
