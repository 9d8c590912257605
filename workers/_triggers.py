"""Triggers and the pure decision of what a schedule runs when its time comes.

All schedule times here are wall-clock epoch seconds (cron is defined on the wall clock); the pool
converts them to monotonic deadlines at the boundary, when it pushes them on its timed heap.

* :class:`Every` is anchored on its scheduled times, ``start + k * interval``: a run that starts late
  or takes long never shifts the runs after it (no drift).
* :class:`Cron` uses croniter in the given time zone, so daylight-saving changes behave as the
  wall clock says: in a repeated hour both instants fire, a skipped wall time fires at the first
  instant after the gap.
* :func:`plan` decides, for a schedule whose time has come, which runs to start, how many were missed
  beyond the misfire grace, and the next scheduled time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._errors import ScheduleError


class Trigger(Protocol):
    def first(self, now: float) -> float | None:
        """The first scheduled time at or after ``now`` (epoch seconds), or None if none."""

    def next_after(self, t: float) -> float | None:
        """The scheduled time that follows ``t``, or None when the trigger has ended."""


def to_epoch(value: datetime | float | int, what: str) -> float:
    """Epoch seconds from a datetime (naive means local time) or a number."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ScheduleError(f"{what}={value!r} must be a datetime or epoch seconds")


def to_seconds(value: timedelta | float | int, what: str, *, positive: bool = True) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        seconds = float(value)
    else:
        raise ScheduleError(f"{what}={value!r} must be a number of seconds or a timedelta")
    if seconds < 0 or (positive and seconds == 0):
        raise ScheduleError(f"{what}={value!r} must be {'> 0' if positive else '>= 0'} seconds")
    return seconds


@dataclass(frozen=True)
class Every:
    """Every ``interval`` seconds, anchored at ``start`` (default: one interval from now)."""

    interval: float
    start: float | None = None
    end: float | None = None

    def first(self, now: float) -> float | None:
        if self.start is None:
            t = now + self.interval
        elif self.start >= now:
            t = self.start
        else:  # the anchor is in the past: the first anchored time from now on
            t = self.start + math.ceil((now - self.start) / self.interval) * self.interval
        return self._bounded(t)

    def next_after(self, t: float) -> float | None:
        return self._bounded(t + self.interval)

    def skip_to(self, t: float, now: float) -> float:
        """The last anchored time at or before ``now``, counting from ``t`` (<= now)."""
        return t + math.floor((now - t) / self.interval) * self.interval

    def _bounded(self, t: float) -> float | None:
        return None if self.end is not None and t > self.end else t


class Cron:
    """A cron expression (5 or 6 fields, croniter syntax) evaluated in time zone ``tz``."""

    def __init__(
        self, expr: str, tz: str | tzinfo | None = None, start: float | None = None, end: float | None = None
    ) -> None:
        try:
            from croniter import croniter
        except ImportError:  # pragma: no cover - croniter is the `cron` extra
            raise ScheduleError("cron schedules need croniter (a dependency of procworks)") from None
        if not isinstance(expr, str) or not croniter.is_valid(expr):
            raise ScheduleError(
                f"cron={expr!r} is not a valid cron expression; use five fields "
                "'minute hour day-of-month month day-of-week', e.g. '*/5 * * * *' or '0 2 * * *'"
            )
        if isinstance(tz, str):
            try:
                tz = ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise ScheduleError(
                    f"tz={tz!r} is not a known time zone (e.g. 'Europe/Berlin', 'UTC')"
                ) from None
        self.expr = expr
        self.tz: tzinfo | None = tz
        self.start = start
        self.end = end
        self._croniter = croniter

    def first(self, now: float) -> float | None:
        base = max(now, self.start) if self.start is not None else now
        return self.next_after(base - 1e-6)

    def next_after(self, t: float) -> float | None:
        base = (
            datetime.fromtimestamp(t, self.tz)
            if self.tz is not None
            else datetime.fromtimestamp(t).astimezone()
        )
        nxt = float(self._croniter(self.expr, base).get_next(float))
        return None if self.end is not None and nxt > self.end else nxt

    def __repr__(self) -> str:
        return f"Cron({self.expr!r}, tz={self.tz!r})"


@dataclass(frozen=True)
class Plan:
    run: list[float]  # scheduled times to start now
    missed: int  # scheduled times dropped: later than the misfire grace
    coalesced: int  # scheduled times folded into one run
    next: float | None  # the next scheduled time, or None: the schedule has ended


MAX_BACKLOG = 1000  # at most this many missed times are examined one by one


def plan(trigger: Trigger, scheduled: float, now: float, grace: float | None, coalesce: bool) -> Plan:
    """What a schedule does at ``now`` for its time ``scheduled`` (<= now), all in epoch seconds.

    Args:
        grace: a scheduled time later than this many seconds is missed (None: never missed).
        coalesce: run once for all the times that came due, rather than once each.
    """
    due: list[float] = []
    skipped_in_bulk = 0
    t: float | None = scheduled
    if isinstance(trigger, Every) and now - scheduled > trigger.interval * MAX_BACKLOG:
        last = trigger.skip_to(scheduled, now)
        skipped_in_bulk = round((last - scheduled) / trigger.interval)
        t = last
    while t is not None and t <= now and len(due) < MAX_BACKLOG:
        due.append(t)
        t = trigger.next_after(t)
    while t is not None and t <= now:  # a longer backlog: count it, do not run it
        skipped_in_bulk += 1
        t = trigger.next_after(t)
    on_time = [d for d in due if grace is None or now - d <= grace]
    missed = len(due) - len(on_time) + skipped_in_bulk
    coalesced = 0
    if coalesce and len(on_time) > 1:
        coalesced = len(on_time) - 1
        on_time = on_time[-1:]
    return Plan(on_time, missed, coalesced, t)
