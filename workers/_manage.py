"""Managing schedules and timed jobs: the statements behind Pool.schedules(), Schedule.pause()...
when the pool has a store, and the handle of a timed job (:class:`TimedJob`), with or without one.

Each function here runs on the store's thread in one transaction (``StoreAgent.call``); a change
bumps the schedule's ``version``, which the other hosts read at their next tick, and deletes the
runs it made not yet started (a host that claimed one finds it gone when it tries to start it).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._errors import ScheduleError
from ._persist import trigger_row
from ._store import Cursor
from ._triggers import Every, Trigger

if TYPE_CHECKING:
    from ._jobs import Job
    from ._pool import Pool

_NOT_STARTED = "('due', 'claimed')"


def _anchored(trigger: Trigger, now: float) -> tuple[Trigger, float | None]:
    """An Every without a start is anchored at its first time, so that every host and every
    restart computes the same times; the first time."""
    first = trigger.first(now)
    if isinstance(trigger, Every) and trigger.start is None and first is not None:
        trigger = Every(trigger.interval, first, trigger.end)
    return trigger, first


def upsert_schedule(
    cur: Cursor,
    name: str,
    trigger: Trigger,
    user_start: float | None,
    call: tuple[str | None, bytes | None, bytes],
    options: str,
) -> None:
    """Add the schedule, or update the one of that name (a script declaring its schedules at each
    start): its runs so far, its next time, its runs not yet started, a pause and an end reached
    are kept unless the trigger changed."""
    now = time.time()
    func, pickled, args = call
    anchored, first = _anchored(trigger, now)
    a_trig, a_tz, a_start, a_end = trigger_row(anchored)
    # Insert unless the name is there: hosts declaring the same schedule at once on PostgreSQL
    # (where a SELECT first would let both insert) add it once.
    cur.execute(
        "INSERT INTO procworks_schedules (name, trig, tz, start_at, end_at, func, callable, args, options,"
        " state, next_time, created, updated, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
        " ON CONFLICT (name) DO NOTHING",
        (name, a_trig, a_tz, a_start, a_end, func, pickled, args, options,
         "active" if first is not None else "finished", first, now, now),
    )  # fmt: skip
    if cur.rowcount == 1:
        return
    trig, tz, _start, end = trigger_row(trigger)
    cur.execute(
        "SELECT trig, tz, start_at, end_at, state FROM procworks_schedules WHERE name = ?" + cur.lock_row,
        (name,),
    )
    row = cur.fetchone()
    old_trig, old_tz, old_start, old_end, state = row
    same = (
        old_trig == trig
        and old_tz == tz
        and old_end == end
        and (user_start is None or user_start == old_start)
        and state != "cancelled"  # declared again after a cancel: it starts anew
    )
    cur.execute(
        "UPDATE procworks_schedules SET func = ?, callable = ?, args = ?, options = ?, updated = ?,"
        " version = version + 1 WHERE name = ?",
        (func, pickled, args, options, now, name),
    )
    if not same:
        _retrigger(cur, name, trigger, now, "active")


def _retrigger(cur: Cursor, name: str, trigger: Trigger, now: float, state: str) -> None:
    anchored, first = _anchored(trigger, now)
    trig, tz, start, end = trigger_row(anchored)
    cur.execute(f"DELETE FROM procworks_runs WHERE schedule = ? AND state IN {_NOT_STARTED}", (name,))
    cur.execute(
        "UPDATE procworks_schedules SET trig = ?, tz = ?, start_at = ?, end_at = ?, next_time = ?, state = ?,"
        " updated = ?, version = version + 1 WHERE name = ?",
        (trig, tz, start, end, first, state if first is not None else "finished", now, name),
    )


def _one(cur: Cursor, name: str) -> tuple[Any, ...]:
    cur.execute(
        "SELECT state, trig, tz, start_at, end_at, next_time FROM procworks_schedules WHERE name = ?"
        + cur.lock_row,
        (name,),
    )
    row = cur.fetchone()
    if row is None:
        raise ScheduleError(f"no schedule named {name!r} in the store")
    return tuple(row)


def schedule_row(cur: Cursor, name: str) -> tuple[Any, ...]:
    """(name, trig, tz, start, end, options, state, next time, runs, failures, missed, skipped,
    interrupted) of one schedule; its next time is its earliest run not started, if any."""
    cur.execute(
        "SELECT s.name, s.trig, s.tz, s.start_at, s.end_at, s.options, s.state, s.next_time, s.runs,"
        " s.failures, s.missed, s.skipped, s.interrupted, (SELECT min(r.fire_time) FROM procworks_runs r"
        "  WHERE r.schedule = s.name AND r.state IN ('due', 'claimed'))"
        " FROM procworks_schedules s WHERE s.name = ?",
        (name,),
    )
    row = cur.fetchone()
    if row is None:
        raise ScheduleError(f"no schedule named {name!r} in the store (see Pool.schedules())")
    row = list(row)
    pending = row.pop()
    if pending is not None:
        row[7] = pending if row[7] is None else min(pending, row[7])
    return tuple(row)


def pause(cur: Cursor, name: str) -> None:
    if _one(cur, name)[0] != "active":
        return
    cur.execute(
        "UPDATE procworks_schedules SET state = 'paused', updated = ?, version = version + 1 WHERE name = ?",
        (time.time(), name),
    )
    cur.execute(f"DELETE FROM procworks_runs WHERE schedule = ? AND state IN {_NOT_STARTED}", (name,))


def resume(cur: Cursor, name: str, trigger: Trigger) -> None:
    """From the next time after now: runs missed while paused are not made up (as memory-only)."""
    if _one(cur, name)[0] != "paused":
        return
    now = time.time()
    first = trigger.first(now)
    cur.execute(
        "UPDATE procworks_schedules SET state = ?, next_time = ?, updated = ?, version = version + 1"
        " WHERE name = ?",
        ("active" if first is not None else "finished", first, now, name),
    )


def cancel(cur: Cursor, name: str) -> None:
    _one(cur, name)
    cur.execute(
        "UPDATE procworks_schedules SET state = 'cancelled', next_time = NULL, updated = ?,"
        " version = version + 1 WHERE name = ?",
        (time.time(), name),
    )
    cur.execute(f"DELETE FROM procworks_runs WHERE schedule = ? AND state IN {_NOT_STARTED}", (name,))


def reschedule(cur: Cursor, name: str, trigger: Trigger) -> None:
    state = _one(cur, name)[0]
    if state == "cancelled":
        raise ScheduleError(f"the schedule {name!r} is cancelled; schedule it anew")
    _retrigger(cur, name, trigger, time.time(), "paused" if state == "paused" else "active")


def run_now(cur: Cursor, name: str) -> None:
    if _one(cur, name)[0] == "cancelled":
        raise ScheduleError(f"the schedule {name!r} is cancelled")
    cur.execute(
        "INSERT INTO procworks_runs (schedule, fire_time, state) VALUES (?, ?, 'due')"
        " ON CONFLICT (schedule, fire_time) DO NOTHING",
        (name, time.time()),
    )


def schedule_names(cur: Cursor) -> list[str]:
    cur.execute("SELECT name FROM procworks_schedules ORDER BY name")
    return [r[0] for r in cur.fetchall()]


def history(cur: Cursor, name: str, limit: int) -> list[tuple[Any, ...]]:
    _one(cur, name)
    cur.execute(
        "SELECT fire_time, state, started, duration, error, host FROM procworks_runs WHERE schedule = ?"
        " ORDER BY fire_time DESC LIMIT ?",
        (name, limit),
    )
    return [tuple(r) for r in cur.fetchall()]


def list_jobs(cur: Cursor, name: str | None) -> list[tuple[Any, ...]]:
    where = "state IN ('due', 'claimed')" + (" AND name = ?" if name is not None else "")
    cur.execute(
        f"SELECT id, name, due, state FROM procworks_jobs WHERE {where} ORDER BY due",
        (name,) if name is not None else (),
    )
    return [tuple(r) for r in cur.fetchall()]


def job_set(cur: Cursor, key: str, action: str, due: float | None = None) -> None:
    """cancel, or move the due time (reschedule, run now) of a job not started."""
    cur.execute("SELECT state FROM procworks_jobs WHERE id = ?", (key,))
    row = cur.fetchone()
    if row is None or row[0] not in ("due", "claimed"):
        raise ScheduleError(f"the timed job {key!r} is not waiting any more ({row[0] if row else 'gone'})")
    if action == "cancel":
        cur.execute(
            "UPDATE procworks_jobs SET state = 'cancelled', finished = ? WHERE id = ?", (time.time(), key)
        )
    else:  # back to 'due': whichever host's claim goes, and the new time is claimed anew
        cur.execute("UPDATE procworks_jobs SET state = 'due', host = NULL, due = ? WHERE id = ?", (due, key))


class TimedJob:
    """A one-off timed job not yet started (``Pool.timed_jobs()``): cancel it, move it, run it now."""

    def __init__(
        self, pool: Pool, key: str | int, name: str, due: float, state: str, job: Job | None
    ) -> None:
        self._pool = pool
        self.id = key
        self.name = name
        self._due = due
        self.state = state  # due, claimed (a host holds it for its time); waiting (memory-only)
        self._job = job

    @property
    def due(self) -> datetime:
        """When it is to run (aware, local time zone)."""
        return datetime.fromtimestamp(self._due).astimezone()

    def cancel(self) -> None:
        self._pool._job_action(self, "cancel", None)

    def reschedule(self, when: datetime | float) -> None:
        """Run it at ``when`` instead (a datetime, naive meaning local time, or epoch seconds)."""
        from ._triggers import to_epoch

        self._pool._job_action(self, "move", to_epoch(when, "when"))

    def run_now(self) -> None:
        self._pool._job_action(self, "move", time.time())

    def __repr__(self) -> str:
        return f"<TimedJob {self.name!r} due={self.due.isoformat(timespec='seconds')} {self.state}>"
